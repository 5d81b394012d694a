"""Shared parts of the benchmarks: an HTTP server per node, a load-generating client, ifupdown run
safely inside a node namespace, cleanup by PID, statistics, tables and the machine's description.

Run as a module (``python -m bench.common``, from the repository root), this is also the two
programs the benchmarks start inside namespaces:

    python -m bench.common serve NAME PORT [tfo]
        a threaded HTTP/1.0 server on 0.0.0.0:PORT answering every GET with NAME (tfo:
        accepting TCP Fast Open, TCP_FASTOPEN)
    python -m bench.common client VIP PORT RATE TIMEOUT OUT MAX_SECONDS [tfo]
        RATE requests per second to VIP:PORT, each given TIMEOUT seconds, one line per request
        to OUT: ``start end outcome body port`` (wall-clock times, the clock of the kernel
        timestamps on the bridge capture; body ``-`` for none; the client's port); it stops on
        SIGTERM or after MAX_SECONDS (tfo: each request in the SYN, sendto MSG_FASTOPEN)
    python -m bench.common download-serve NAME PORT LOG
        rate-limited downloads on 0.0.0.0:PORT, a thread each: a request names a size, a duration
        and a seed; the answer is NAME, then that many bytes of ``random.Random(seed)`` at an
        even rate over the duration, then a half close; one line per download to LOG:
        ``SEED clean|data|unclosed|reset|error TIME`` (clean: the client's FIN reached this
        node; TIME: when its socket was closed, wall clock)
    python -m bench.common download-fetch VIP PORT COUNT SIZE SECONDS OUT
        COUNT concurrent downloads from VIP:PORT, each checked (SHA-256); one JSON line per
        download to OUT at the end
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import importlib.util
import json
import os
import platform
import random
import secrets
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from lab.netns import VIP, Network, Node, netns_pids
from lab.poll import Timeout, wait_for
from lab.tree import console_scripts, write_command

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

PORT = 8080
POLL = 0.02
"""The benchmarks' poll interval (s) for :func:`lab.poll.wait_for`."""
T = TypeVar("T")
CARPD_HOOKS = (REPO / "if-up.d" / "carpd", REPO / "if-down.d" / "carpd")


# ---- the machine and the numbers --------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": model,
            "python": platform.python_version()}


def machine_line() -> str:
    m = machine()
    return f"machine: nproc {m['nproc']}, kernel {m['kernel']}, CPU {m['cpu'] or 'unknown'}"


def span(start: float | None, end: float | None) -> float | None:
    """``end - start``: None while either is unknown."""
    return None if start is None or end is None else end - start


def summary(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "median": None, "min": None, "max": None}
    return {"count": len(values), "median": statistics.median(values), "min": min(values),
            "max": max(values)}


def fmt(stats: dict[str, Any], scale: float = 1.0, unit: str = "", digits: int = 0) -> str:
    """``median (min-max), n=count``."""
    if not stats["count"]:
        return "no samples"

    def num(x: float) -> str:
        return f"{x * scale:.{digits}f}{unit}"

    return (f"{num(stats['median'])} ({num(stats['min'])}-{num(stats['max'])}), "
            f"n={stats['count']}")


def median_max(stats: dict[str, Any], scale: float = 1.0, unit: str = "",
               digits: int = 0) -> str:
    """``median / max``, or ``-`` without samples."""
    if not stats["count"]:
        return "-"
    return (f"{stats['median'] * scale:.{digits}f}{unit} / "
            f"{stats['max'] * scale:.{digits}f}{unit}")


def add_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Outcome counts of several rounds added up."""
    total: Counter[str] = Counter()
    for one in counts:
        total.update(one)
    return dict(total)


def listed(counts: Mapping[str, int]) -> str:
    """``ok 729, timeout 892``, or ``none``."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(r) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False))
             for r in [list(headers), ["-" * w for w in widths], *rows]]
    return "\n".join(line.rstrip() for line in lines)


def run_seconds(pid: int) -> float:
    """CPU time of all the process's threads, as the scheduler counted it (nanoseconds)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"JSON results written to {path}")


class Deadline:
    """The whole run's time budget: loops ask it before starting another round."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0


class Background(Generic[T]):
    """A call in a thread (an ``ifdown`` that returns once the engine has let go of the VIP):
    its result or the error it raised, and when it started and ended (wall clock)."""

    def __init__(self, call: Callable[[], T]) -> None:
        self.started = time.time()
        self.result: T | None = None
        self.error: str | None = None
        self.ended: float | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], T]) -> None:
        try:
            self.result = call()
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            self.error = f"{type(error).__name__}: {error}"
        self.ended = time.time()

    def join(self, timeout: float) -> bool:
        """Whether the call has ended within ``timeout`` s."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


# ---- processes and namespaces -----------------------------------------------------------------


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def daemons_in(ns: str, kind: str) -> list[int]:
    """PIDs of ``kind`` (carpd or ucarp) engines running in namespace ``ns``."""
    found = []
    for pid in netns_pids(ns):
        argv = cmdline(pid)
        if not argv or argv[0] in ("ip", "unshare", "sh", "/bin/sh"):
            continue
        is_ucarp = Path(argv[0]).name == "ucarp"
        is_carpd = any(Path(a).name == "carpd" for a in argv[:3])
        if (kind == "ucarp" and is_ucarp) or (kind == "carpd" and is_carpd):
            found.append(pid)
    return found


def engine_running(ns: str, kind: str) -> bool:
    """Whether a ``kind`` engine ("carpd" or "ucarp") runs in network namespace ``ns``."""
    return bool(daemons_in(ns, kind))


def kill_namespace_processes(namespaces: Iterable[str]) -> None:
    """SIGKILL, by PID, every process left in namespaces this run created."""
    for ns in namespaces:
        for pid in netns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Processes:
    """Processes started by a benchmark, each in its own session; ended by PID."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, ns: str, argv: Sequence[str], log: Path,
              env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL, stdout=out,
                stderr=out, start_new_session=True, env=env, cwd=cwd)
        self.started.append(process)
        return process

    @staticmethod
    def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM,
             timeout: float = 10) -> int | None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return process.wait(timeout=5)

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


def start_server(procs: Processes, ns: str, name: str, log: Path,
                 fastopen: bool = False) -> subprocess.Popen[bytes]:
    """The HTTP server (``fastopen``: accepting data in the SYN, TCP_FASTOPEN)."""
    process = procs.start(ns, [sys.executable, "-m", "bench.common", "serve", name, str(PORT),
                               *(["tfo"] if fastopen else [])], log, cwd=REPO)
    return process


def start_client(procs: Processes, ns: str, vip: str, rate: float, timeout: float, out: Path,
                 max_seconds: float, log: Path, fastopen: bool = False) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "bench.common", "client", vip, str(PORT), str(rate),
            str(timeout), str(out), str(max_seconds), *(["tfo"] if fastopen else [])]
    return procs.start(ns, argv, log, cwd=REPO)


FASTOPEN_COUNTERS = ("TCPFastOpenActive", "TCPFastOpenActiveFail", "TCPFastOpenPassive",
                     "TCPFastOpenPassiveFail", "TCPFastOpenCookieReqd", "TCPSynRetrans")


def enable_fastopen(ns: str) -> None:
    """TCP Fast Open for clients and servers (net.ipv4.tcp_fastopen=3), in namespace ``ns``
    only (the sysctls are per network namespace), with a cookie key of its own, as two
    machines have: a cookie one node issued is refused by the other (the request then goes
    once connected)."""
    key = "-".join(secrets.token_hex(4) for _ in range(4))
    for setting in ("net.ipv4.tcp_fastopen=3", f"net.ipv4.tcp_fastopen_key={key}"):
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", setting], check=True,
                       timeout=10)


def tcp_counters(ns: str, names: Sequence[str] = FASTOPEN_COUNTERS) -> dict[str, int]:
    """TcpExt counters of namespace ``ns`` (/proc/net/netstat as seen from inside it)."""
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/netstat"],
                          capture_output=True, text=True, check=True, timeout=10).stdout
    lines = [line.split() for line in text.splitlines() if line.startswith("TcpExt:")]
    values = dict(zip(lines[0][1:], lines[1][1:], strict=True)) if len(lines) >= 2 else {}
    return {name: int(values.get(name, 0)) for name in names}


# ---- two server nodes and a client on one bridge ----------------------------------------------


class Bed:
    """Nodes a and b (10.9.0.1, .2) and a client node (10.9.0.10) on one bridge, in namespaces
    whose names start with ``prefix``; ``close()`` ends every process started in them (by PID)
    and removes them."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.directory = directory
        self.procs = Processes()
        self.net = Network(directory, prefix=prefix)
        self.namespaces = [self.net.switch]
        self.nodes: dict[str, Node] = {}

    def close(self) -> None:
        self.procs.close()
        kill_namespace_processes(self.namespaces)
        self.net.close()

    def add(self, address: str, name: str) -> Node:
        node = self.net.add_node(address, name)
        self.namespaces.append(node.ns)
        return node

    def add_nodes(self) -> None:
        self.a = self.add("10.9.0.1", "a")
        self.b = self.add("10.9.0.2", "b")
        self.client_node = self.add("10.9.0.10", "cl")
        self.nodes = {"a": self.a, "b": self.b}

    def peer(self, node: Node) -> Node:
        return self.b if node is self.a else self.a

    def start_load(self, rate: float, timeout: float, seconds: float,
                   fastopen: bool = False) -> subprocess.Popen[bytes]:
        """The client (RATE requests/s to the VIP; ``fastopen``: each request in the SYN,
        MSG_FASTOPEN) for at most ``seconds`` (10 at least), recording to ``requests_path``."""
        return start_client(self.procs, self.client_node.ns, str(VIP), rate, timeout,
                            self.requests_path, max(10.0, seconds),
                            self.directory / "client.log", fastopen)

    @property
    def requests_path(self) -> Path:
        return self.directory / "requests.log"

    def settle_on(self, ready: Callable[[], bool], quiet: float, timeout: float,
                  exited: Callable[[], list[str]] | None = None) -> Node:
        """Exactly one node holds the VIP, unchanged for ``quiet`` s, with ``ready()`` true
        before and after; else RuntimeError (naming the holders and ``exited()``)."""
        def stable() -> Node | None:
            holders = self.net.holders()
            if len(holders) != 1 or not ready():
                return None
            time.sleep(quiet)
            return holders[0] if self.net.holders() == holders and ready() else None

        try:
            return wait_for(stable, timeout, 0.1, what="one stable MASTER")
        except Timeout:
            dead = f", exited {exited()}" if exited else ""
            raise RuntimeError(f"no stable MASTER within {timeout} s: holders "
                               f"{[n.name for n in self.net.holders()]}{dead}") from None


# ---- ifupdown inside a node namespace ---------------------------------------------------------

def carpd_source() -> Path:
    """The folder holding the ``carpd`` package this process imports (``PYTHONPATH=$PWD/src``
    in a worktree, else the venv's editable install): the carpd a benchmark measures."""
    spec = importlib.util.find_spec("carpd")
    if spec is None or spec.origin is None:
        raise RuntimeError("carpd cannot be imported")
    return Path(spec.origin).resolve().parents[1]


ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Ifupdown:
    """ifup/ifdown for one node, run as ``ip netns exec NS unshare -m --propagation private``
    with, over the host's files in that private mount namespace only: our interfaces file, the
    node's own /run (kept across calls: ifupdown's state in /run/network, also used by the
    ``ifup IFACE:ucarp`` of Debian's vip-up/vip-down, and /run/carpd), and hook folders holding
    only the hooks given.  With ``carpd_commands``, carpd, carpd-ifupdown and carpctl from this
    tree are on PATH in /usr/local/sbin, carpd-ifupdown is in /usr/libexec/carpd and its share/ is
    /usr/share/carpd, as the package installs them.  The host's /etc/network, /run and
    interfaces are never touched."""

    def __init__(self, ns: str, directory: Path, interfaces: str,
                 hooks: Mapping[str, Sequence[Path]], carpd_commands: bool = False,
                 carpd_src: Path | None = None) -> None:
        self.ns = ns
        self.carpd_src = carpd_src
        self.source = carpd_src or carpd_source()
        self.directory = directory
        self.carpd_commands = carpd_commands
        directory.mkdir(parents=True, exist_ok=True)
        self.interfaces = directory / "interfaces"
        self.interfaces.write_text(interfaces)
        self.interfaces.chmod(0o600)
        self.run_dir = directory / "run"
        self.state = self.run_dir / "network"
        for folder in (self.state, self.run_dir / "carpd"):
            folder.mkdir(parents=True, exist_ok=True)
        self.hooks = directory / "hooks"
        for phase in ("if-pre-up.d", "if-up.d", "if-down.d", "if-post-down.d"):
            folder = self.hooks / phase
            folder.mkdir(parents=True, exist_ok=True)
            for hook in hooks.get(phase, ()):
                target = folder / hook.name
                target.write_bytes(hook.read_bytes())
                target.chmod(0o755)
        if carpd_commands:
            (directory / "bin").mkdir(exist_ok=True)
            for command in console_scripts():
                # The engine's supervisor starts it with a clean environment (no PYTHONPATH):
                # without ``src`` it would import the venv's carpd, not the one measured.
                write_command(directory / "bin" / command, command, sys.executable, self.source)
            libexec = directory / "libexec" / "carpd"  # the hooks run carpd-ifupdown from here
            libexec.mkdir(parents=True, exist_ok=True)
            if not (libexec / "carpd-ifupdown").exists():
                (libexec / "carpd-ifupdown").symlink_to(directory / "bin" / "carpd-ifupdown")
            (directory / "share").mkdir(exist_ok=True)
            link = directory / "share" / "carpd"
            if not link.exists():
                link.symlink_to(REPO / "share")
        self.log = directory / "ifupdown.log"

    def _mounts(self) -> str:
        lines = ["set -e", f"mount --bind {self.run_dir} /run",
                 f"mount --bind {self.interfaces} /etc/network/interfaces"]
        lines += [f"mount --bind {self.hooks / phase} /etc/network/{phase}"
                  for phase in ("if-pre-up.d", "if-up.d", "if-down.d", "if-post-down.d")]
        if self.carpd_commands:
            lines += [f"mount --bind {self.directory / 'bin'} /usr/local/sbin",
                      "mount -t overlay overlay -o "
                      f"lowerdir={self.directory / 'share'}:/usr/share /usr/share",
                      "mount -t overlay overlay -o "
                      f"lowerdir={self.directory / 'libexec'}:/usr/libexec /usr/libexec"]
        return "\n".join([*lines, 'exec "$@"', ""])

    def argv(self, *command: str) -> list[str]:
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", self._mounts(), "sh",
                *command]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IFUPDOWN", "IF_"))}
        env["PATH"] = ROOT_PATH
        if self.carpd_commands:
            env["PYTHONPATH"] = str(self.source)
        return env

    def run(self, verb: str, iface: str = "eth0") -> int:
        """``ifup``/``ifdown`` IFACE; output to the log (a daemon it starts may keep it open)."""
        with open(self.log, "ab") as out:
            out.write(f"\n## {time.time():.3f} {verb} {iface}\n".encode())
            out.flush()
            done = subprocess.run(
                ["ip", "netns", "exec", self.ns,
                 *self.argv(verb, "-v", "-i", "/etc/network/interfaces",
                            "--state-dir", "/run/network", iface)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self.env(),
                timeout=60, check=False)
        return done.returncode

    def must(self, verb: str, iface: str = "eth0") -> None:
        """``ifup``/``ifdown`` IFACE, raising RuntimeError (naming the log) if it fails."""
        code = self.run(verb, iface)
        if code != 0:
            raise RuntimeError(f"{verb} {iface} in {self.ns} failed ({code}): see {self.log}")

    def start(self, procs: Processes, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """A process (an engine) in the same kind of private mount namespace, so that the
        ``ifup IFACE:ucarp`` of its scripts sees our interfaces file and state."""
        return procs.start(self.ns, self.argv(*argv), log, env=self.env())


def stanza(address: str, vip: str, password: str, vhid: int = 1, advbase: int = 1,
           advskew: int = 0, extra_lines: Sequence[str] = ()) -> str:
    """The stanza Debian's ucarp users have (no ``ucarp-master``: no preemption), with
    ``extra_lines`` (e.g. ``ucarp-drain 30``) at the end of eth0's."""
    extra = "".join(f"    {line}\n" for line in extra_lines)
    return f"""# written by carpd's benchmark for one node namespace
iface eth0 inet static
    address {address}/16
    ucarp-vid {vhid}
    ucarp-vip {vip}
    ucarp-password {password}
    ucarp-advskew {advskew}
    ucarp-advbase {advbase}
{extra}
iface eth0:ucarp inet static
    address {vip}
    netmask 255.255.255.255
"""


# ---- client results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    start: float
    end: float
    outcome: str
    body: str
    port: int = 0
    """The client's port: finds the request's segments in a capture."""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def read_requests(path: Path) -> list[Request]:
    requests: list[Request] = []
    if not path.exists():
        return requests
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            body = parts[3] if len(parts) > 3 and parts[3] != "-" else ""
            port = int(parts[4]) if len(parts) > 4 else 0
            requests.append(Request(float(parts[0]), float(parts[1]), parts[2], body, port))
    requests.sort(key=lambda r: r.start)
    return requests


def finished_between(requests: Iterable[Request], start: float, stop: float) -> list[Request]:
    """The requests started in [start, stop) that ended before the client stopped."""
    return [r for r in requests if start <= r.start < stop and r.outcome != "unfinished"]


def between(starts: Sequence[float], requests: Sequence[Request],
            end: float) -> list[list[Request]]:
    """The requests of each round: started from its start to the next round's (the last's to
    ``end``), ended before the client stopped."""
    stops = [*starts[1:], end]
    return [finished_between(requests, start, stop) for start, stop in zip(starts, stops,
                                                                           strict=True)]


# ---- the hand-overs of one engine kind, one after the other -----------------------------------


class HasError(Protocol):
    error: str | None


R = TypeVar("R", bound=HasError)


def hand_overs(kind: str, count: int, deadline: Deadline, needs: float,
               one: Callable[[int], R], describe: Callable[[R], str]) -> tuple[list[R], str | None]:
    """Up to ``count`` hand-overs (``one(index)``), each begun only while ``deadline`` leaves
    ``needs`` s and printed as ``describe`` says; the rounds, and why they stopped early (the
    time budget, or the first round with an error)."""
    rounds: list[R] = []
    for index in range(count):
        if deadline.left() < needs:
            return rounds, f"time budget exhausted after {index} hand-overs"
        record = one(index)
        rounds.append(record)
        print(f"  {kind} #{index + 1}: {describe(record)}"
              f"{'  ' + record.error if record.error else ''}", flush=True)
        if record.error:
            return rounds, record.error
    return rounds, None


# ---- one run: each engine in turn, a table, the JSON ------------------------------------------

RunKind = Callable[[str, argparse.Namespace, Deadline, Path], dict[str, Any]]


def run_each(kinds: Sequence[str], args: argparse.Namespace, prefix: str,
             run_kind: RunKind) -> dict[str, dict[str, Any]]:
    """``run_kind`` for each engine kind in a folder of its own (under ``args.keep`` if given,
    else a temporary one), sharing what is left of ``args.max_seconds`` between the kinds still
    to run."""
    deadline = Deadline(args.max_seconds)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for n, kind in enumerate(kinds):
            share = Deadline(deadline.left() / (len(kinds) - n))
            results[kind] = run_kind(kind, args, share, root / f"{kind}-{os.getpid()}")
    return results


Report = Callable[[dict[str, dict[str, Any]], argparse.Namespace], None]


def can_run(needs: Sequence[Path] = (), root_for: str = "network namespaces, raw sockets") -> bool:
    """Whether a comparison can run here: as root (for ``root_for``), with Debian's ucarp
    (``needs``) there; if not, it says why on stderr."""
    if os.geteuid() != 0:
        print(f"needs root ({root_for})", file=sys.stderr)
        return False
    missing = [str(path) for path in needs if not path.exists()]
    if missing:
        print(f"needs Debian's ucarp ({', '.join(missing)})", file=sys.stderr)
        return False
    return True


def bench_main(benchmark: str, args: argparse.Namespace, run_kind: RunKind, report: Report,
               needs: Sequence[Path] = ()) -> int:
    """A comparison's main: as root, with ``needs`` there, ``run_kind`` for carpd and ucarp
    (or ``args.only``; ``args.runs`` times if given), the table, the JSON and the exit
    status."""
    if not can_run(needs, root_for="network namespaces, raw sockets, mounts"):
        return 2
    kinds = [args.only] if args.only else ["ucarp", "carpd"]
    runs: int = getattr(args, "runs", 1)
    results: dict[str, dict[str, Any]] = {}
    for run in range(1, runs + 1):  # each run a fresh test bed, labelled "KIND run N"
        if runs > 1:
            print(f"[{time.strftime('%H:%M:%S')}] run {run} of {runs}", flush=True)
        this = argparse.Namespace(**vars(args))
        if runs > 1 and args.keep:
            this.keep = str(Path(args.keep) / f"run{run}")
        for kind, result in run_each(kinds, this, f"carpd-{benchmark}-", run_kind).items():
            results[f"{kind} run {run}" if runs > 1 else kind] = {**result, "run": run}
    report(results, args)
    return finish(benchmark, args, results)


def finish(benchmark: str, args: argparse.Namespace, results: dict[str, dict[str, Any]],
           **extra: Any) -> int:
    """The JSON (with ``--json``) and the exit status: 1 if any kind reported an error."""
    write_results(benchmark, args, results, **extra)
    return 0 if all(r["error"] is None for r in results.values()) else 1


class Outcome(Protocol):
    """One measured run of a benchmark that keeps its results as objects."""

    @property
    def error(self) -> str | None: ...

    def as_json(self) -> dict[str, Any]: ...


def finish_outcomes(benchmark: str, args: argparse.Namespace, outcomes: Sequence[Outcome]) -> int:
    """:func:`finish` for results kept as :class:`Outcome` objects, in a list."""
    write_results(benchmark, args, [outcome.as_json() for outcome in outcomes])
    return 0 if all(outcome.error is None for outcome in outcomes) else 1


def write_results(benchmark: str, args: argparse.Namespace, results: object,
                  **extra: Any) -> None:
    """With ``--json``: the benchmark's name, the machine, its options and its results."""
    write_json(args.json, {"benchmark": benchmark, "machine": machine(),
                           "config": {k: v for k, v in vars(args).items() if k != "json"},
                           **extra, "results": results})


# ---- the programs run inside namespaces -------------------------------------------------------


def serve(name: str, port: int, fastopen: bool = False) -> int:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = name.encode() + b"\n"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512

        def server_bind(self) -> None:
            if fastopen:  # a queue of pending Fast Open requests as long as the backlog
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 512)
            super().server_bind()

    with Server(("0.0.0.0", port), Handler) as server:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server.serve_forever(poll_interval=0.2)
    return 0


def _complete_body(data: bytes) -> bytes | None:
    """The body of a complete 200 response with a Content-Length, else None."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        return None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or b"-1")
            return body[:length] if len(body) >= length >= 0 else None
    return None


@dataclass
class _Pending:
    sock: socket.socket
    start_wall: float
    deadline: float
    sent: bool = False
    data: bytes = b""
    port: int = 0
    unsent: bytes = b""


def _open(sock: socket.socket, address: tuple[str, int], request: bytes,
          fastopen: bool) -> int:
    """Start connecting; how much of ``request`` went with the SYN (Fast Open with a cookie:
    all of it; without one the kernel sends a SYN asking for a cookie, and the request goes
    once connected, as without Fast Open).  OSError if it failed at once."""
    if fastopen:
        try:
            return sock.sendto(request, socket.MSG_FASTOPEN, address)
        except BlockingIOError:  # EINPROGRESS: nothing went with the SYN
            return 0
    err = sock.connect_ex(address)
    if err not in (0, errno.EINPROGRESS):
        raise OSError(err, os.strerror(err))
    return 0


def client(vip: str, port: int, rate: float, timeout: float, out: str,
           max_seconds: float, fastopen: bool = False) -> int:
    """Open-loop load: a new connection every 1/rate s whatever the others are doing; with
    ``fastopen``, each request sent in the SYN (MSG_FASTOPEN) once the server gave a cookie."""
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sel = selectors.DefaultSelector()
    pending: dict[int, _Pending] = {}
    request = f"GET / HTTP/1.0\r\nHost: {vip}\r\n\r\n".encode()
    interval = 1.0 / rate
    began = time.monotonic()
    next_at = began
    lines: list[str] = []
    sink = open(out, "a")  # noqa: SIM115 - flushed in the loop, closed at the end

    def finish(fd: int, outcome: str, body: str = "") -> None:
        p = pending.pop(fd)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(p.sock)
        p.sock.close()
        lines.append(f"{p.start_wall:.6f} {time.time():.6f} {outcome} {body or '-'} {p.port}")

    def launch() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        start_wall = time.time()
        fd = sock.fileno()
        p = pending[fd] = _Pending(sock, start_wall, time.monotonic() + timeout)
        try:
            sent = _open(sock, (vip, port), request, fastopen)
        except OSError as error:
            finish(fd, errno.errorcode.get(error.errno or 0, "error"))
            return
        with contextlib.suppress(OSError):
            p.port = sock.getsockname()[1]
        p.unsent = request[sent:]
        if not p.unsent:
            p.sent = True
            sel.register(sock, selectors.EVENT_READ, fd)
        else:
            sel.register(sock, selectors.EVENT_WRITE, fd)

    last_flush = began
    while not stopping and time.monotonic() - began < max_seconds:
        now = time.monotonic()
        while next_at <= now:
            launch()
            next_at += interval
        for fd in [fd for fd, p in pending.items() if p.deadline <= now]:
            finish(fd, "timeout")
        wake = min([next_at, *(p.deadline for p in pending.values())])
        for key, _events in sel.select(max(0.0, wake - time.monotonic())):
            fd = key.data
            p = pending.get(fd)
            if p is None:
                continue
            try:
                if not p.sent:
                    err = p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        finish(fd, errno.errorcode.get(err, str(err)))
                        continue
                    p.sock.sendall(p.unsent)
                    p.sent = True
                    sel.modify(p.sock, selectors.EVENT_READ, fd)
                    continue
                chunk = p.sock.recv(65536)
            except OSError as error:
                finish(fd, errno.errorcode.get(error.errno or 0, "error"))
                continue
            if chunk:
                p.data += chunk
                body = _complete_body(p.data)
                if body is not None:  # as an HTTP client does: done at Content-Length
                    finish(fd, "ok", body.decode(errors="replace").strip() or "-")
                continue
            head, _, body = p.data.partition(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"):
                finish(fd, "ok", body.decode(errors="replace").strip() or "-")
            else:
                finish(fd, "bad-reply" if head else "empty-reply")
        if time.monotonic() - last_flush > 0.5:
            sink.write("".join(f"{line}\n" for line in lines))
            sink.flush()
            lines.clear()
            last_flush = time.monotonic()
    for fd in list(pending):
        finish(fd, "unfinished")
    sink.write("".join(f"{line}\n" for line in lines))
    sink.close()
    return 0


# ---- rate-limited, checksummed downloads -------------------------------------------------------

DOWNLOAD_PORT = 8081
STALL = 10.0
"""A download that receives nothing for this long is broken."""


def _send_download(conn: socket.socket, name: bytes) -> tuple[str, str]:
    """Serve one download; (its seed, how it ended: "clean" when the client's FIN came)."""
    with conn, conn.makefile("rb") as lines:
        size_text, seconds_text, seed = lines.readline().decode().split()
        size, seconds = int(size_text), float(seconds_text)
        data = random.Random(int(seed)).randbytes(size)
        conn.sendall(name + b"\n")
        chunk = max(1, size // max(1, int(seconds * 20)))
        start = time.monotonic()
        for sent in range(0, size, chunk):
            time.sleep(max(0.0, start + seconds * sent / size - time.monotonic()))
            conn.sendall(data[sent:sent + chunk])
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(STALL)
        try:
            return seed, "clean" if conn.recv(1) == b"" else "data"
        except TimeoutError:
            return seed, "unclosed"


def download_serve(name: str, port: int, log: str) -> int:
    """Rate-limited downloads, a thread per connection; one line per download to ``log``:
    ``SEED clean|data|unclosed|reset|error``."""
    server = socket.create_server(("0.0.0.0", port), backlog=256)
    lock = threading.Lock()

    def one(conn: socket.socket) -> None:
        seed, outcome = "?", "error"
        try:
            seed, outcome = _send_download(conn, name.encode())
        except ConnectionResetError:
            outcome = "reset"
        except (OSError, ValueError):
            pass
        with lock, open(log, "a") as out:
            out.write(f"{seed} {outcome} {time.time():.6f}\n")

    while True:
        conn, _ = server.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


@dataclass
class Download:
    seed: int
    start: float = 0.0
    end: float = 0.0
    outcome: str = "unfinished"
    received: int = 0
    server: str = ""
    close: str = ""
    """How the server saw it end ("clean": the client's FIN reached the node serving it)."""


def _receive(sock: socket.socket, record: Download, size: int, seconds: float) -> str:
    sha = hashlib.sha256()
    sock.settimeout(STALL)
    sock.sendall(f"{size} {seconds} {record.seed}\n".encode())
    head = b""
    while not head.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            return "no-reply"
        head += byte
    record.server = head.decode(errors="replace").strip()
    while chunk := sock.recv(65536):
        sha.update(chunk)
        record.received += len(chunk)
    if record.received != size:
        return "short"
    expected = hashlib.sha256(random.Random(record.seed).randbytes(size)).hexdigest()
    return "ok" if sha.hexdigest() == expected else "corrupt"


def _fetch_one(vip: str, port: int, record: Download, size: int, seconds: float) -> None:
    record.start = time.time()
    try:
        with socket.create_connection((vip, port), timeout=STALL) as sock:
            record.outcome = _receive(sock, record, size, seconds)
    except ConnectionResetError:
        record.outcome = "reset"
    except TimeoutError:
        record.outcome = "stalled"
    except OSError as error:
        record.outcome = type(error).__name__
    record.end = time.time()


def download_fetch(vip: str, port: int, count: int, size: int, seconds: float, out: str) -> int:
    """``count`` concurrent downloads; one JSON line per download to ``out`` at the end."""
    base = random.randrange(1 << 30)
    records = [Download(base + i) for i in range(count)]
    threads = [threading.Thread(target=_fetch_one, args=(vip, port, r, size, seconds))
               for r in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    Path(out).write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    return 0


def start_download_server(procs: Processes, node: Node, name: str, closes: Path,
                          log: Path) -> subprocess.Popen[bytes]:
    return procs.start(node.ns, [sys.executable, "-m", "bench.common", "download-serve", name,
                                 str(DOWNLOAD_PORT), str(closes)], log, cwd=REPO)


def download_listening(node: Node) -> bool:
    return f":{DOWNLOAD_PORT} " in node.exec("ss", "-Htln").stdout


def start_downloads(procs: Processes, ns: str, count: int, size: int, seconds: float, out: Path,
                    log: Path) -> subprocess.Popen[bytes]:
    """``count`` downloads of ``size`` bytes over ``seconds`` from the VIP, results to ``out``
    (:func:`read_downloads`)."""
    return procs.start(ns, [sys.executable, "-m", "bench.common", "download-fetch", str(VIP),
                            str(DOWNLOAD_PORT), str(count), str(size), str(seconds), str(out)],
                       log, cwd=REPO)


def read_downloads(path: Path) -> list[Download]:
    if not path.exists():
        return []
    return [Download(**json.loads(line)) for line in path.read_text().splitlines() if line]


@dataclass(frozen=True)
class Close:
    """How and when the serving node saw a download end (download-serve's log)."""

    outcome: str
    """clean (the client's FIN came), unclosed (it never came), data, reset or error."""
    at: float
    """When the server closed its socket (wall clock)."""


def read_closes(paths: Iterable[Path]) -> dict[int, Close]:
    """seed -> how and when the serving node saw the download end, from download-serve's
    logs."""
    found: dict[int, Close] = {}
    for path in paths:
        for line in path.read_text().splitlines() if path.exists() else []:
            seed, outcome, at = line.split()
            if seed.isdigit():
                found[int(seed)] = Close(outcome, float(at))
    return found


def main(argv: list[str]) -> int:
    fastopen = argv[-1:] == ["tfo"]
    argv = argv[:-1] if fastopen else argv
    if argv[:1] == ["serve"] and len(argv) == 3:
        return serve(argv[1], int(argv[2]), fastopen)
    if argv[:1] == ["client"] and len(argv) == 7:
        vip, port, rate, timeout, out, max_seconds = argv[1:]
        return client(vip, int(port), float(rate), float(timeout), out, float(max_seconds),
                      fastopen)
    if argv[:1] == ["download-serve"] and len(argv) == 4:
        return download_serve(argv[1], int(argv[2]), argv[3])
    if argv[:1] == ["download-fetch"] and len(argv) == 7:
        vip, port, count, size, seconds, out = argv[1:]
        return download_fetch(vip, int(port), int(count), int(size), float(seconds), out)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
