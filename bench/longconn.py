"""Long downloads across planned hand-overs: how many break, how many short requests beside them
fail, and how long the old MASTER's release (``ifdown`` returning) comes after the last of them
ended; carpd against Debian's ucarp in the same run.

The cluster is bench/handover.py's: two nodes with an HTTP server for short requests, a client
namespace, one CARP engine kind on both nodes through its ifupdown integration (ucarp: Debian's
if-up.d/ucarp hook and vip-up/vip-down; carpd: our hooks with the same ucarp-* stanza, plus
``ucarp-drain``).  Each node also runs bench/common.py's rate-limited download server (port
8081): a request names a size, a duration and a seed; the answer is the node's name, then that
many bytes of ``random.Random(seed)`` sent at an even rate over the duration, then a half close.

COUNT times: DOWNLOADS concurrent downloads of SECONDS each start from the client; LEAD s later
the MASTER is taken down for maintenance (``ifdown eth0``, in the background: it returns when the
engine has released the VIP); the client checks every download's bytes (SHA-256); once ``ifdown``
has returned, ``ifup eth0`` brings the node back as BACKUP.  All along, 100 short requests per
second go to the VIP (bench/common.py's client).

    .venv/bin/python -m bench.longconn [--count 10] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    STALL,
    Background,
    Deadline,
    Processes,
    Request,
    add_counts,
    download_listening,
    finish,
    finished_between,
    fmt,
    listed,
    machine_line,
    read_closes,
    read_downloads,
    read_requests,
    run_each,
    start_download_server,
    start_downloads,
    summary,
    table,
    wait_until,
)
from bench.handover import UCARP_HOOK, Cluster
from lab.netns import VIP

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


class LongCluster(Cluster):
    """handover.py's cluster, with a download server on each node and, for carpd, a drain."""

    def __init__(self, kind: str, directory: Path, args: argparse.Namespace) -> None:
        extra = [f"ucarp-drain {args.drain:g}", *args.carpd_option] if kind == "carpd" else []
        super().__init__(kind, directory, args.rate, args.timeout, stanza_extra=extra)
        self.drain: float = args.drain

    def release(self, name: str) -> None:
        """Take ``name`` down for maintenance as handover.py does: ``ifdown eth0`` (our hook
        stops carpd, Debian's stops ucarp); it returns once the engine has let go of the VIP."""
        self.ifupdown[name].must("ifdown")

    def back(self, name: str) -> None:
        """``ifup eth0`` again, once the old engine has exited."""
        wait_until(lambda: not self.engine_running(name), 10)
        self.ifup(name)

    def start_download_servers(self) -> None:
        for name, node in self.nodes.items():
            start_download_server(self.procs, node, name, self.closes(name),
                                  self.directory / f"dl-{name}.log")
        for node in self.nodes.values():
            wait_until(partial(download_listening, node), 10)

    def closes(self, name: str) -> Path:
        return self.directory / f"closes-{name}.log"

    def close_outcomes(self) -> dict[int, str]:
        """seed -> how the serving node saw the download end."""
        return read_closes(self.closes(name) for name in self.nodes)


def one_round(cluster: LongCluster, index: int, args: argparse.Namespace) -> Round:
    old = cluster.settle()
    new = cluster.peer(old)
    record = Round(index, old.name, new.name)
    out = cluster.directory / f"downloads-{index}.jsonl"
    size = int(args.rate_kb * 1024 * args.seconds)
    fetcher = start_downloads(cluster.procs, cluster.client_node.ns, args.downloads, size,
                              args.seconds, out, cluster.directory / "fetch.log")
    time.sleep(args.lead)
    record.start = time.time()
    ifdown = Background(partial(cluster.release, old.name))
    if wait_until(lambda: new.has(VIP), 15):
        record.takeover = time.time() - record.start
    else:
        record.error = "the peer did not take over within 15 s"
    try:
        fetcher.wait(timeout=args.seconds + 3 * STALL)
    except subprocess.TimeoutExpired:
        Processes.stop(fetcher)
    downloads = read_downloads(out)
    record.downloads = len(downloads)
    record.outcomes = dict(Counter(d.outcome for d in downloads))
    record.broken = sum(d.outcome != "ok" for d in downloads) + args.downloads - len(downloads)
    record.last_end = max((d.end for d in downloads), default=None)
    if not ifdown.join(args.drain + 60):
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
        window = finished_between(requests, r.start, stop)
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
        client = cluster.start_load(args.rate, args.timeout, deadline.left() + 60)
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
        analyse(rounds, read_requests(cluster.requests_path), end)
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
        "outcomes": add_counts(r.outcomes for r in rounds),
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
        print(f"{kind}: {r['mode']} {' '.join(r['extra'])}")
        print(f"    download outcomes: {listed(r['outcomes'])}"
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
    args = parse()
    if os.geteuid() != 0:
        print("needs root (network namespaces, raw sockets, mounts)", file=sys.stderr)
        return 2
    if not UCARP_HOOK.exists():
        print(f"needs Debian's ucarp ({UCARP_HOOK})", file=sys.stderr)
        return 2
    kinds = [args.only] if args.only else ["ucarp", "carpd"]
    results = run_each(kinds, args, "carpd-longconn-", run_kind)
    report(results, args)
    return finish("longconn", args, results)


if __name__ == "__main__":
    sys.exit(main())
