"""Long downloads across planned hand-overs: how many break, how many short requests beside them
fail, and how long the old MASTER's release (``ifdown`` returning) comes after the last of them
ended; carpd against Debian's ucarp in the same run.

The cluster is bench/handover.py's: two nodes with an HTTP server for short requests, a client
namespace, one CARP engine kind on both nodes through its ifupdown integration (ucarp: Debian's
if-up.d/ucarp hook and vip-up/vip-down; carpd: our hooks with the same ucarp-* stanza, plus
``ucarp-drain``).  Each node also runs a download server (port 8081): a request names a size, a
duration and a seed; the answer is the node's name, then that many bytes of
``random.Random(seed)`` sent at an even rate over the duration, then a half close.

COUNT times: DOWNLOADS concurrent downloads of SECONDS each start from the client; LEAD s later
the MASTER is taken down for maintenance (``ifdown eth0``, in the background: it returns when the
engine has released the VIP); the client checks every download's bytes (SHA-256); once ``ifdown``
has returned, ``ifup eth0`` brings the node back as BACKUP.  All along, 100 short requests per
second go to the VIP (bench/common.py's client).

    .venv/bin/python -m bench.longconn [--count 10] [--quick] [--json out.json]

Run as ``python -m bench.longconn serve NAME PORT LOG`` or ``python -m bench.longconn fetch VIP
PORT COUNT SIZE SECONDS OUT`` (from the repository root), this module is also the download server
and client started inside the namespaces.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    Deadline,
    Processes,
    Request,
    fmt,
    machine,
    machine_line,
    read_requests,
    stanza,
    start_client,
    summary,
    table,
    wait_until,
    write_json,
)
from bench.handover import UCARP_HOOK, VIP_DOWN, VIP_UP, Cluster
from lab.netns import CARPD, PASSWORD, VIP, Node

DOWNLOAD_PORT = 8081
STALL = 10.0
"""A download that receives nothing for this long is broken."""


# ---- the programs run inside namespaces -------------------------------------------------------


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


def serve(name: str, port: int, log: str) -> int:
    """Rate-limited downloads, a thread per connection; one line per download to ``log``:
    ``SEED clean|unclosed|reset|error``."""
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
            out.write(f"{seed} {outcome}\n")

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


def fetch(vip: str, port: int, count: int, size: int, seconds: float, out: str) -> int:
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


# ---- one hand-over ----------------------------------------------------------------------------


@dataclass
class Round:
    index: int
    old: str
    new: str
    start: float = 0.0
    """When ``ifdown`` began on the old MASTER."""
    takeover: float | None = None
    """From ``ifdown`` to the VIP on the new MASTER."""
    released: float | None = None
    """When ``ifdown`` returned on the old MASTER."""
    last_end: float | None = None
    """When the last download ended (however it ended)."""
    downloads: int = 0
    broken: int = 0
    unclosed: int = 0
    """Downloads whose server never saw the client's FIN: its socket lingers (a drain that
    waits for connections to close would wait for it)."""
    outcomes: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    sent: int = 0
    error: str | None = None

    @property
    def release_after_last(self) -> float | None:
        if self.released is None or self.last_end is None:
            return None
        return self.released - self.last_end


class Background:
    """The old MASTER's release in a thread: it ends when the engine has let go of the VIP."""

    def __init__(self, cluster: LongCluster, name: str) -> None:
        self.ended: float | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(cluster, name), daemon=True)
        self._thread.start()

    def _run(self, cluster: LongCluster, name: str) -> None:
        try:
            self.error = cluster.release(name)
        except (OSError, subprocess.SubprocessError) as error:
            self.error = f"release: {error}"
        self.ended = time.time()

    def wait(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


class LongCluster(Cluster):
    """handover.py's cluster, with a download server on each node and, for carpd, a drain."""

    def __init__(self, kind: str, directory: Path, args: argparse.Namespace) -> None:
        super().__init__(kind, directory, args.rate, args.timeout, carpd_mode=args.carpd_mode)
        self.drain: float = args.drain
        self.stanza_extra = [f"ucarp-drain {args.drain:g}", *args.carpd_option] \
            if kind == "carpd" else []
        self.direct_extra = [f"--{line.replace('ucarp-', '', 1).replace(' ', '=', 1)}"
                             for line in self.stanza_extra]

    def _configure(self, hooks: dict[str, list[Path]], carpd_commands: bool = False) -> None:
        """As handover.py's, with our extra ucarp-* lines in the eth0 stanza."""
        super()._configure(hooks, carpd_commands)
        for name, node in self.nodes.items():
            ifupdown = self.ifupdown[name]
            text = stanza(str(node.address), str(VIP), PASSWORD.decode())
            extra = "".join(f"    {line}\n" for line in self.stanza_extra)
            text = text.replace("\n\niface eth0:ucarp", f"\n{extra}\niface eth0:ucarp")
            ifupdown.interfaces.write_text(text)

    def _start_carpd(self, name: str) -> None:
        """As handover.py's (direct mode), with our extra options."""
        node = self.nodes[name]
        folder = self.directory / f"carpd-{name}"
        folder.mkdir(exist_ok=True)
        passfile = folder / "password"
        passfile.touch(mode=0o600)
        passfile.write_bytes(PASSWORD + b"\n")
        argv = [*CARPD, "-i", "eth0", "-s", str(node.address), "-v", "1", "-o", str(passfile),
                "-a", str(VIP), "-b", "1", "-k", "0", "-u", VIP_UP, "-d", VIP_DOWN, "-z",
                "-f", "none", "--state-dir", str(folder / "state"), *self.direct_extra]
        self.engines[name] = self.ifupdown[name].start(self.procs, argv, folder / "stderr.log")

    def release(self, name: str) -> str | None:
        """Take ``name`` down for maintenance as handover.py does: ``ifdown eth0`` (our hook
        stops carpd, Debian's stops ucarp); carpd started directly: SIGTERM (what our if-down
        hook does) and its exit awaited, then ``ifdown``.  Returns an error, or None."""
        engine = self.engines.get(name)
        if engine is not None:
            engine.send_signal(signal.SIGTERM)
            try:
                engine.wait(timeout=self.drain + 60)
            except subprocess.TimeoutExpired:
                return f"carpd on {name} did not exit"
        code = self.ifupdown[name].run("ifdown")
        return None if code == 0 else f"ifdown eth0 on {name} failed ({code})"

    def back(self, name: str) -> None:
        """``ifup eth0`` again (and carpd restarted, if started directly)."""
        wait_until(partial(self.stopped, name), 10)
        self._ifup(name)
        if name in self.engines:
            self._start_carpd(name)

    def stopped(self, name: str) -> bool:
        return not self._engine_running(name)

    def start_download_servers(self) -> None:
        for name, node in self.nodes.items():
            self.procs.start(node.ns, [sys.executable, "-m", "bench.longconn", "serve", name,
                                       str(DOWNLOAD_PORT), str(self.closes(name))],
                             self.directory / f"dl-{name}.log", cwd=REPO)
        for node in self.nodes.values():
            wait_until(partial(_listening, node), 10)

    def closes(self, name: str) -> Path:
        return self.directory / f"closes-{name}.log"

    def close_outcomes(self) -> dict[int, str]:
        """seed -> how the serving node saw the download end."""
        found: dict[int, str] = {}
        for name in self.nodes:
            path = self.closes(name)
            for line in path.read_text().splitlines() if path.exists() else []:
                seed, outcome = line.split()
                if seed.isdigit():
                    found[int(seed)] = outcome
        return found

    def other(self, node: Node) -> Node:
        return self.b if node is self.a else self.a


def _listening(node: Node) -> bool:
    return f":{DOWNLOAD_PORT} " in node.exec("ss", "-Htln").stdout


def _read_downloads(path: Path) -> list[Download]:
    if not path.exists():
        return []
    return [Download(**json.loads(line)) for line in path.read_text().splitlines() if line]


def one_round(cluster: LongCluster, index: int, args: argparse.Namespace) -> Round:
    old = cluster.settle()
    new = cluster.other(old)
    record = Round(index, old.name, new.name)
    out = cluster.directory / f"downloads-{index}.jsonl"
    size = int(args.rate_kb * 1024 * args.seconds)
    fetcher = cluster.procs.start(cluster.client_node.ns, [
        sys.executable, "-m", "bench.longconn", "fetch", str(VIP), str(DOWNLOAD_PORT),
        str(args.downloads), str(size), str(args.seconds), str(out)],
        cluster.directory / "fetch.log", cwd=REPO)
    time.sleep(args.lead)
    record.start = time.time()
    ifdown = Background(cluster, old.name)
    if wait_until(lambda: new.has(VIP), 15):
        record.takeover = time.time() - record.start
    else:
        record.error = "the peer did not take over within 15 s"
    try:
        fetcher.wait(timeout=args.seconds + 3 * STALL)
    except subprocess.TimeoutExpired:
        Processes.stop(fetcher)
    downloads = _read_downloads(out)
    record.downloads = len(downloads)
    record.outcomes = dict(Counter(d.outcome for d in downloads))
    record.broken = sum(d.outcome != "ok" for d in downloads) + args.downloads - len(downloads)
    record.last_end = max((d.end for d in downloads), default=None)
    if not ifdown.wait(args.drain + 60):
        record.error = "ifdown did not return"
        return record
    record.released = ifdown.ended
    record.error = record.error or ifdown.error
    time.sleep(0.5)  # the servers' last lines
    closes = cluster.close_outcomes()
    for d in downloads:
        d.close = closes.get(d.seed, "unknown")
    record.unclosed = sum(d.close != "clean" for d in downloads)
    cluster.back(old.name)
    return record


# ---- the run ----------------------------------------------------------------------------------


def analyse(rounds: list[Round], requests: list[Request], end: float) -> None:
    for i, r in enumerate(rounds):
        stop = rounds[i + 1].start if i + 1 < len(rounds) else end
        window = [q for q in requests if r.start <= q.start < stop and q.outcome != "unfinished"]
        r.sent = len(window)
        r.failed = sum(not q.ok for q in window)


def run_kind(kind: str, args: argparse.Namespace, deadline: Deadline,
             directory: Path) -> dict[str, Any]:
    directory.mkdir()
    cluster = LongCluster(kind, directory, args)
    rounds: list[Round] = []
    error = None
    try:
        cluster.setup()
        cluster.start_download_servers()
        print(f"[{time.strftime('%H:%M:%S')}] {kind}: {cluster.mode}; "
              f"{' '.join(cluster.stanza_extra) or 'no drain'}", flush=True)
        requests_path = directory / "requests.log"
        client = start_client(cluster.procs, cluster.client_node.ns, str(VIP), args.rate,
                              args.timeout, requests_path, max(10.0, deadline.left() + 60),
                              directory / "client.log")
        time.sleep(1.0)
        for index in range(args.count):
            if deadline.left() < args.seconds + args.drain + 20:
                error = f"time budget exhausted after {index} hand-overs"
                break
            r = one_round(cluster, index, args)
            rounds.append(r)
            print(f"  {kind} #{index + 1}: {r.old} -> {r.new}: {r.broken}/{r.downloads} broken "
                  f"{r.outcomes}, {r.unclosed} closes lost, release "
                  f"{_seconds(r.release_after_last)} after the last download"
                  f"{'  ' + r.error if r.error else ''}", flush=True)
            if r.error:
                error = r.error
                break
        cluster.settle()
        end = time.time()
        Processes.stop(client)
        analyse(rounds, read_requests(requests_path), end)
    except Exception as exc:  # reported in the table and the JSON
        error = f"{type(exc).__name__}: {exc}"
        print(f"  {kind}: {error}", flush=True)
    finally:
        cluster.close()
    return {
        "kind": kind, "mode": cluster.mode, "error": error, "extra": cluster.stanza_extra,
        "rounds": [{**asdict(r), "release_after_last": r.release_after_last} for r in rounds],
        "broken": sum(r.broken for r in rounds),
        "unclosed": sum(r.unclosed for r in rounds),
        "downloads": sum(r.downloads for r in rounds),
        "failed": sum(r.failed for r in rounds), "sent": sum(r.sent for r in rounds),
        "release_after_last_s": summary([r.release_after_last for r in rounds
                                         if r.release_after_last is not None]),
        "takeover_s": summary([r.takeover for r in rounds if r.takeover is not None]),
        "outcomes": dict(sum((Counter(r.outcomes) for r in rounds), Counter())),
    }


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:+.1f} s"


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nLong downloads across planned hand-overs: {args.count} per engine, each with "
          f"{args.downloads} downloads of {args.seconds:g} s at {args.rate_kb:g} KiB/s in "
          f"flight (hand-over {args.lead:g} s in) and {args.rate:g} short requests/s "
          f"(timeout {args.timeout:g} s)")
    rows = []
    for kind, r in results.items():
        rows.append([
            kind, f"{len(r['rounds'])}", f"{r['broken']}/{r['downloads']}",
            f"{r['unclosed']}/{r['downloads']}",
            f"{r['failed']}/{r['sent']}",
            fmt(r["release_after_last_s"], 1, " s", 1),
            fmt(r["takeover_s"], 1000, " ms"),
        ])
    print(table(["engine", "hand-overs", "broken downloads", "closes lost",
                 "failed short requests",
                 "ifdown returned after the last download ended", "takeover"], rows))
    for kind, r in results.items():
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        print(f"{kind}: {r['mode']} {' '.join(r['extra'])}")
        print(f"    download outcomes: {outcomes or 'none'}"
              f"{'; ERROR: ' + r['error'] if r['error'] else ''}")
    print(machine_line())


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10, help="hand-overs per engine")
    parser.add_argument("--quick", action="store_true",
                        help="2 hand-overs per engine, downloads of 8 s")
    parser.add_argument("--downloads", type=int, default=20, help="concurrent downloads")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of a download")
    parser.add_argument("--rate-kb", type=float, default=32.0, help="KiB/s of each download")
    parser.add_argument("--lead", type=float, default=None,
                        help="hand over this long after the downloads start (default: a "
                             "third of their length)")
    parser.add_argument("--drain", type=float, default=None,
                        help="carpd's ucarp-drain (default: the downloads' length + 5 s)")
    parser.add_argument("--carpd-option", action="append", default=[],
                        help="another line for carpd's stanza, e.g. "
                             "'ucarp-drain-connections 60' (repeatable)")
    parser.add_argument("--carpd-mode", choices=("auto", "hooks", "direct"), default="auto",
                        help="as bench/handover.py's: carpd through our ifupdown hooks, "
                             "started directly, or the hooks when they work (default)")
    parser.add_argument("--rate", type=float, default=100.0, help="short requests per second")
    parser.add_argument("--timeout", type=float, default=0.5, help="short request timeout, s")
    parser.add_argument("--only", choices=("carpd", "ucarp"), help="run one engine")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="time budget")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--keep", help="keep logs and records in this folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.count = min(args.count, 2)
        args.seconds = min(args.seconds, 8.0)
    args.lead = args.seconds / 3 if args.lead is None else args.lead
    args.drain = args.seconds + 5 if args.drain is None else args.drain
    return args


def main() -> int:
    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 5:
        return serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    if sys.argv[1:2] == ["fetch"] and len(sys.argv) == 8:
        vip, port, count, size, seconds, out = sys.argv[2:]
        return fetch(vip, int(port), int(count), int(size), float(seconds), out)
    args = parse()
    if os.geteuid() != 0:
        print("needs root (network namespaces, raw sockets, mounts)", file=sys.stderr)
        return 2
    if not UCARP_HOOK.exists():
        print(f"needs Debian's ucarp ({UCARP_HOOK})", file=sys.stderr)
        return 2
    kinds = [args.only] if args.only else ["ucarp", "carpd"]
    deadline = Deadline(args.max_seconds)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="carpd-longconn-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for n, kind in enumerate(kinds):
            share = Deadline(deadline.left() / (len(kinds) - n))
            results[kind] = run_kind(kind, args, share, root / f"{kind}-{os.getpid()}")
    report(results, args)
    write_json(args.json, {"benchmark": "longconn", "machine": machine(),
                           "config": {k: v for k, v in vars(args).items() if k != "json"},
                           "results": results})
    return 0 if all(r["error"] is None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
