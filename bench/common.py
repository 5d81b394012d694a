"""Shared parts of the benchmarks: an HTTP server per node, a load-generating client, ifupdown run
safely inside a node namespace, cleanup by PID, statistics, tables and the machine's description.

Run as a module (``python -m bench.common``, from the repository root), this is also the two
programs the benchmarks start inside namespaces:

    python -m bench.common serve NAME PORT
        a threaded HTTP/1.0 server on 0.0.0.0:PORT answering every GET with NAME
    python -m bench.common client VIP PORT RATE TIMEOUT OUT MAX_SECONDS
        RATE requests per second to VIP:PORT, each given TIMEOUT seconds, one line per request
        to OUT: ``start end outcome body`` (wall-clock times, the clock of the kernel timestamps
        on the bridge capture); it stops on SIGTERM or after MAX_SECONDS
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

PORT = 8080
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


def wait_until(predicate: Callable[[], T | None], timeout: float,
               interval: float = 0.02) -> T | None:
    """Poll ``predicate``; return its first truthy value, or None after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            return None
        time.sleep(interval)


# ---- processes and namespaces -----------------------------------------------------------------


def netns_pids(ns: str) -> list[int]:
    """Every process whose network namespace is ``ns`` (daemonized ones included)."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                         timeout=10, check=False).stdout
    return [int(p) for p in out.split()]


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


def start_server(procs: Processes, ns: str, name: str, log: Path) -> subprocess.Popen[bytes]:
    process = procs.start(ns, [sys.executable, "-m", "bench.common", "serve", name, str(PORT)],
                          log, cwd=REPO)
    return process


def start_client(procs: Processes, ns: str, vip: str, rate: float, timeout: float, out: Path,
                 max_seconds: float, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "bench.common", "client", vip, str(PORT), str(rate),
            str(timeout), str(out), str(max_seconds)]
    return procs.start(ns, argv, log, cwd=REPO)


# ---- ifupdown inside a node namespace ---------------------------------------------------------

CARPD_COMMANDS = {
    "carpd": "from carpd.cli import main",
    "carpd-ifupdown": "from carpd.ifupdown.main import main",
    "carpctl": "from carpd.carpctl import main",
}
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
            for command, source in CARPD_COMMANDS.items():
                wrapper = directory / "bin" / command
                first = f"sys.path.insert(0, {str(carpd_src)!r})\n" if carpd_src else ""
                wrapper.write_text(f"#!{sys.executable}\nimport sys\n{first}{source}\n"
                                   "sys.exit(main())\n")
                wrapper.chmod(0o755)
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
        if self.carpd_src:
            env["PYTHONPATH"] = str(self.carpd_src)
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

    def start(self, procs: Processes, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """A process (an engine) in the same kind of private mount namespace, so that the
        ``ifup IFACE:ucarp`` of its scripts sees our interfaces file and state."""
        return procs.start(self.ns, self.argv(*argv), log, env=self.env())


def stanza(address: str, vip: str, password: str, vhid: int = 1, advbase: int = 1,
           advskew: int = 0) -> str:
    """The stanza Debian's ucarp users have (no ``ucarp-master``: no preemption)."""
    return f"""# written by carpd's benchmark for one node namespace
iface eth0 inet static
    address {address}/16
    ucarp-vid {vhid}
    ucarp-vip {vip}
    ucarp-password {password}
    ucarp-advskew {advskew}
    ucarp-advbase {advbase}

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
            requests.append(Request(float(parts[0]), float(parts[1]), parts[2],
                                    parts[3] if len(parts) > 3 else ""))
    requests.sort(key=lambda r: r.start)
    return requests


# ---- the programs run inside namespaces -------------------------------------------------------


def serve(name: str, port: int) -> int:
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


def client(vip: str, port: int, rate: float, timeout: float, out: str,
           max_seconds: float) -> int:
    """Open-loop load: a new connection every 1/rate s whatever the others are doing."""
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
        lines.append(f"{p.start_wall:.6f} {time.time():.6f} {outcome} {body}".rstrip())

    def launch() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        start_wall = time.time()
        fd = sock.fileno()
        pending[fd] = _Pending(sock, start_wall, time.monotonic() + timeout)
        err = sock.connect_ex((vip, port))
        if err not in (0, errno.EINPROGRESS):
            finish(fd, errno.errorcode.get(err, str(err)))
            return
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
                    p.sock.send(request)
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


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 3:
        return serve(argv[1], int(argv[2]))
    if argv[:1] == ["client"] and len(argv) == 7:
        vip, port, rate, timeout, out, max_seconds = argv[1:]
        return client(vip, int(port), float(rate), float(timeout), out, float(max_seconds))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
