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

What the table counts, per engine:
- broken downloads: not every byte, or not the right ones, or reset, or stalled;
- closes lost: downloads whose serving node never saw the client's FIN (or not within STALL s
  of its own half close): its socket lingers, and a drain that waits for the connections to
  close (``--drain-connections``) would wait for it.  After a hand-over the client's FIN
  reaches the new MASTER, which must pass it on to the old one;
- ifdown returned after the last download ended (the client's view) and after the old MASTER's
  last close (its server closed the socket, the client's FIN having come): with a fixed drain
  the drain's remainder; with ``--drain-connections`` what the engine takes to notice.

    .venv/bin/python -m bench.longconn [--count 10] [--quick] [--drain-connections 60]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    POLL,
    STALL,
    Background,
    Close,
    Deadline,
    Download,
    Processes,
    Request,
    add_counts,
    bench_main,
    between,
    download_listening,
    fmt,
    hand_overs,
    listed,
    machine_line,
    read_closes,
    read_downloads,
    read_requests,
    span,
    start_download_server,
    start_downloads,
    summary,
    table,
)
from bench.handover import UCARP_HOOK, Cluster
from lab.netns import VIP
from lab.poll import Timeout, wait_for

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
    """When the last download ended at the client (however it ended)."""
    last_close: float | None = None
    """When the old MASTER's server closed the last socket of a download it served."""
    downloads: int = 0
    broken: int = 0
    unclosed: int = 0
    """Downloads whose server never saw the client's FIN: its socket lingers (a drain that
    waits for connections to close would wait for it)."""
    outcomes: dict[str, int] = field(default_factory=dict)
    closes: dict[str, int] = field(default_factory=dict)
    """How the servers saw the downloads end (``unknown``: no word from the server)."""
    failed: int = 0
    sent: int = 0
    error: str | None = None

    @property
    def release_after_last(self) -> float | None:
        return span(self.last_end, self.released)

    @property
    def release_after_last_close(self) -> float | None:
        return span(self.last_close, self.released)


class LongCluster(Cluster):
    """handover.py's cluster, with a download server on each node and, for carpd, a drain
    (and, with ``--drain-connections``, a drain until the connections have closed)."""

    def __init__(self, kind: str, directory: Path, args: argparse.Namespace) -> None:
        extra = carpd_lines(args) if kind == "carpd" else []
        super().__init__(kind, directory, args.rate, args.timeout, stanza_extra=extra)
        self.drain: float = args.drain

    def release(self, name: str) -> None:
        """Take ``name`` down for maintenance as handover.py does: ``ifdown eth0`` (our hook
        stops carpd, Debian's stops ucarp); it returns once the engine has let go of the VIP."""
        self.ifupdown[name].must("ifdown")

    def back(self, name: str) -> None:
        """``ifup eth0`` again, once the old engine has exited."""
        with contextlib.suppress(Timeout):
            wait_for(lambda: not self.engine_running(name), 10, POLL,
                     what=f"{name}'s engine gone")
        self.ifup(name)

    def start_download_servers(self) -> None:
        for name, node in self.nodes.items():
            start_download_server(self.procs, node, name, self.closes(name),
                                  self.directory / f"dl-{name}.log")
        for node in self.nodes.values():
            with contextlib.suppress(Timeout):
                wait_for(partial(download_listening, node), 10, POLL,
                         what=f"the download server on {node.name}")

    def closes(self, name: str) -> Path:
        return self.directory / f"closes-{name}.log"

    def close_outcomes(self) -> dict[int, Close]:
        """seed -> how and when the serving node saw the download end."""
        return read_closes(self.closes(name) for name in self.nodes)


def carpd_lines(args: argparse.Namespace) -> list[str]:
    """carpd's stanza lines beyond the shared ones: the drain, the connection drain."""
    lines = [f"ucarp-drain {args.drain:g}"]
    if args.drain_connections is not None:
        lines.append(f"ucarp-drain-connections {args.drain_connections:g}")
    return [*lines, *args.carpd_option]


def release_budget(args: argparse.Namespace) -> float:
    """The longest an ``ifdown`` of carpd may rightly take: its drain, or the connections'."""
    drain: float = args.drain
    return max(drain, args.drain_connections or 0.0)


def await_closes(cluster: LongCluster, downloads: list[Download],
                 last_end: float | None) -> dict[int, Close]:
    """The servers' word on each download: every one has it once the client's FIN came, or
    STALL s after the server's half close without it (``unclosed``); waits for that long
    after the last download ended, not longer (a server stuck sending to a client gone says
    nothing)."""
    seeds = {d.seed for d in downloads}
    until = (last_end or time.time()) + STALL + 1.0
    with contextlib.suppress(Timeout):
        wait_for(lambda: seeds <= cluster.close_outcomes().keys(), max(0.0, until - time.time()),
                 0.1, what="every download's close")
    return cluster.close_outcomes()


def one_round(cluster: LongCluster, args: argparse.Namespace, index: int) -> Round:
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
    try:
        wait_for(lambda: new.has(VIP), 15, POLL, what=f"the VIP on {new.name}")
        record.takeover = time.time() - record.start
    except Timeout:
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
    if not ifdown.join(release_budget(args) + 60):
        record.error = "ifdown did not return"
        return record
    record.released = ifdown.ended
    record.error = record.error or ifdown.error
    closes = await_closes(cluster, downloads, record.last_end)
    for d in downloads:
        d.close = closes[d.seed].outcome if d.seed in closes else "unknown"
    record.closes = dict(Counter(d.close for d in downloads))
    record.unclosed = sum(d.close != "clean" for d in downloads)
    record.last_close = max((closes[d.seed].at for d in downloads
                             if d.server == old.name and d.seed in closes), default=None)
    cluster.back(old.name)
    return record


def _described(r: Round) -> str:
    return (f"{r.old} -> {r.new}: {r.broken}/{r.downloads} broken {r.outcomes}, "
            f"{r.unclosed} closes lost {r.closes}, release {_seconds(r.release_after_last)} "
            f"after the last download, {_seconds(r.release_after_last_close)} after the old "
            f"MASTER's last close")


# ---- the run ----------------------------------------------------------------------------------


def analyse(rounds: list[Round], requests: list[Request], end: float) -> None:
    for r, window in zip(rounds, between([r.start for r in rounds], requests, end),
                         strict=True):
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
        needs = args.seconds + release_budget(args) + STALL + 20
        rounds, error = hand_overs(kind, args.count, deadline, needs,
                                   partial(one_round, cluster, args), _described)
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
        "rounds": [{**asdict(r), "release_after_last": r.release_after_last,
                    "release_after_last_close": r.release_after_last_close} for r in rounds],
        "broken": sum(r.broken for r in rounds),
        "unclosed": sum(r.unclosed for r in rounds),
        "downloads": sum(r.downloads for r in rounds),
        "failed": sum(r.failed for r in rounds), "sent": sum(r.sent for r in rounds),
        "release_after_last_s": summary([r.release_after_last for r in rounds
                                         if r.release_after_last is not None]),
        "release_after_last_close_s": summary([r.release_after_last_close for r in rounds
                                               if r.release_after_last_close is not None]),
        "takeover_s": summary([r.takeover for r in rounds if r.takeover is not None]),
        "outcomes": add_counts(r.outcomes for r in rounds),
        "closes": add_counts(r.closes for r in rounds),
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
            fmt(r["release_after_last_close_s"], 1, " s", 1),
            fmt(r["takeover_s"], 1000, " ms"),
        ])
    print(table(["engine", "hand-overs", "broken downloads", "closes lost",
                 "failed short requests", "ifdown returned after the last download ended",
                 "after the old MASTER's last close", "takeover"], rows))
    for kind, r in results.items():
        print(f"{kind}: {r['mode']} {' '.join(r['extra'])}")
        print(f"    download outcomes: {listed(r['outcomes'])}; as the servers saw them end: "
              f"{listed(r['closes'])}{'; ERROR: ' + r['error'] if r['error'] else ''}")
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
                        help="carpd's ucarp-drain (default: the downloads' length + 5 s; "
                             "with --drain-connections, carpd's default, 2 s)")
    parser.add_argument("--drain-connections", type=float, default=None, metavar="SECONDS",
                        help="carpd's ucarp-drain-connections: keep the VIP until the "
                             "connections of the hand-over have closed, at most SECONDS")
    parser.add_argument("--carpd-option", action="append", default=[],
                        help="another line for carpd's stanza (repeatable)")
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
    if args.drain is None:
        args.drain = 2.0 if args.drain_connections is not None else args.seconds + 5
    return args


def main() -> int:
    return bench_main("longconn", parse(), run_kind, report, needs=(UCARP_HOOK,))


if __name__ == "__main__":
    sys.exit(main())
