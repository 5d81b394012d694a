"""Floods of bad frames: does the MASTER keep sending its adverts, and how fast is a real advert
acted on, while an attacker on the same LAN sends RATE bad frames per second?  carpd against
Debian's ucarp in the same run.

Three namespaces on one bridge: a MASTER (advskew 100), a second node and an attacker.  The
attacker (lab/attacker.py, its own process) sends, round robin, frames a receiver must drop:
adverts of another vhid, with TTL 64, with a bad HMAC (our vhid, TTL 255, to the group), to a
node's unicast address, random garbage, and replays of an advert captured from the MASTER with
a broken checksum, another destination or CARP version 3.

For each implementation and each rate (0, the baseline, then RATE):

  hold      the MASTER and a BACKUP (advskew 200) for SECONDS: the gaps between the MASTER's
            consecutive adverts (its interval is 1 + 100/256 s; a missed advert shows as a gap of
            two intervals), whether either node changed state, the engines' CPU use
  preempt   REPS times, a preempting node (-P, advskew 0) joins in place of the BACKUP: time
            from the MASTER's advert to the preempter's first advert ("advert acted on")

ucarp writes a line to its log for every bad frame it sees (about 2 MB/s per node at 50,000
frames/s): it runs with ``-f none`` here, so its stderr file in the run's temporary folder gets
them, never the host's syslog.

Times are the kernel's receive timestamps of the adverts on each node's bridge port (a filtered
capture: the bridge-wide one would drown in the flood).  Every namespace and process this starts
is removed at the end (by PID), also on failure or Ctrl-C.

    .venv/bin/python -m bench.flood [--quick] [--rate 50000] [--seconds 30] [--reps 10]
                                    [--only carpd|ucarp] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    can_run,
    finish_outcomes,
    fmt,
    machine_line,
    run_seconds,
    summary,
    table,
)
from lab.attacker import KINDS as FRAME_KINDS
from lab.attacker import PASSING_FILTER, Flood, SentBy, Target, bad_frames, gaps
from lab.netns import UCARP, VIP, Daemon, Network, Node, network, wait_for

ADVBASE = 1
MASTER_SKEW, BACKUP_SKEW = 100, 200
INTERVAL = ADVBASE + MASTER_SKEW / 256
MASTER_DOWN = 3 * ADVBASE + MASTER_SKEW / 256
ON_TIME = INTERVAL + 0.050
ACTED_ON_GOAL = 0.005
SAMPLE_FRAMES = 8000


@dataclass
class Result:
    kind: str
    rate: float
    sent_per_s: float = 0.0
    advert_gaps: list[float] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    """State changes (scripts run) during the hold phase: there should be none."""
    cpu_ms_per_s: dict[str, float] = field(default_factory=dict)
    reached_engine: dict[str, int] = field(default_factory=dict)
    """carpd only: the rejection counters of the MASTER (what the kernel filter let through)."""
    acted_on: list[float] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "rate": self.rate, "sent_per_s": round(self.sent_per_s),
            "error": self.error, "advert_gaps_s": self.advert_gaps,
            "advert_gap_summary_s": summary(self.advert_gaps),
            "late_adverts": self.late(), "changes": self.changes,
            "cpu_ms_per_s": self.cpu_ms_per_s, "reached_engine": self.reached_engine,
            "acted_on_s": self.acted_on, "acted_on_summary_s": summary(self.acted_on),
            "acted_on_within_goal": self.within_goal(),
        }

    def late(self) -> int:
        return sum(g > ON_TIME for g in self.advert_gaps)

    def within_goal(self) -> int:
        return sum(d <= ACTED_ON_GOAL for d in self.acted_on)


def start(node: Node, kind: str, advskew: int, preempt: bool = False) -> Daemon:
    # ucarp logs every bad frame: to stderr only, never to the host's syslog
    extra = ["-f", "none"] if kind == "ucarp" else []
    return node.start(kind, advskew=advskew, preempt=preempt, extra=extra)


def sole_holder(net: Network, node: Node) -> bool:
    return net.holders() == [node]


class Bench:
    """One implementation at one rate: the three nodes, the captures, the flood."""

    def __init__(self, net: Network, kind: str, rate: float, seconds: float) -> None:
        self.net, self.kind, self.rate = net, kind, rate
        self.master_node = net.add_node("10.9.1.2")
        self.other_node = net.add_node("10.9.1.3")
        self.attacker_node = net.add_node("10.9.1.66")
        self.master = start(self.master_node, kind, MASTER_SKEW)
        wait_for(lambda: sole_holder(net, self.master_node), timeout=10)
        sample = net.capture.wait_frame(lambda f: f.source == self.master_node.address, 5).packet
        net.capture.close()  # it would decode every frame of the flood
        self.from_master = SentBy(net, self.master_node)
        self.from_other = SentBy(net, self.other_node)
        frames = bad_frames(Target(1, VIP, victim=self.master_node.address), SAMPLE_FRAMES,
                            sample=sample)
        self.flood = (Flood(self.attacker_node.ns, frames, rate, seconds,
                            net.directory / "attacker") if rate else None)

    def hold(self, result: Result, seconds: float) -> None:
        backup = start(self.other_node, self.kind, BACKUP_SKEW)
        wait_for(backup.events, timeout=5)  # its down script ran: it is listening
        time.sleep(1.0)
        daemons = {"MASTER": self.master, "BACKUP": backup}
        before = {role: run_seconds(d.pid) for role, d in daemons.items()}
        began = time.time()
        time.sleep(seconds)
        elapsed = time.time() - began
        result.cpu_ms_per_s = {role: round((run_seconds(d.pid) - before[role]) * 1000 / elapsed,
                                           1) for role, d in daemons.items()}
        result.advert_gaps = gaps(self.from_master.frames(since=began))
        result.changes = [f"{d} {e.event}" for d in daemons.values() for e in d.events()
                          if e.time >= began]
        result.changes += [f"{backup} sent an advert"
                           for _ in self.from_other.frames(since=began)[:1]]
        if self.kind == "carpd":
            rejected = self.master.status()["rejected"]
            assert isinstance(rejected, dict)
            result.reached_engine = {str(k): int(v) for k, v in rejected.items()}
        backup.kill()

    def preempt_once(self) -> float:
        wait_for(lambda: sole_holder(self.net, self.master_node), timeout=MASTER_DOWN + 5)
        time.sleep(0.5)
        started = time.time()
        fast = start(self.other_node, self.kind, 0, preempt=True)
        try:
            first = wait_for(lambda: self.from_other.frames(since=started)[:1],
                             timeout=MASTER_DOWN + 5)[0]
            heard = [f for f in self.from_master.frames(since=started) if f.time < first.time]
            if not heard:
                raise RuntimeError("the preempter took over without hearing the MASTER")
            delay: float = first.time - heard[-1].time
            wait_for(lambda: sole_holder(self.net, self.other_node), timeout=5)
        finally:
            fast.kill()
            self.other_node.remove_address(VIP)
        return delay

    def close(self, result: Result) -> None:
        if self.flood is not None:
            sent = self.flood.stop()
            result.sent_per_s = sent["sent"] / sent["seconds"]
        self.from_master.close()
        self.from_other.close()


def run_one(kind: str, rate: float, args: argparse.Namespace) -> Result:
    result = Result(kind, rate)
    flood_seconds = args.seconds + args.reps * (MASTER_DOWN + 4) + 30
    with network("carpfl", "carpd-flood-") as net:
        bench = None
        try:
            bench = Bench(net, kind, rate, flood_seconds)
            bench.hold(result, args.seconds)
            for _ in range(args.reps):
                result.acted_on.append(bench.preempt_once())
        except (AssertionError, RuntimeError, TimeoutError, OSError) as error:
            result.error = f"{type(error).__name__}: {error}"
        finally:
            if bench is not None:
                bench.close(result)
    return result


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(f"\nFlood: {args.rate:g} bad frames/s from a third node ({', '.join(FRAME_KINDS)});"
          f"\nMASTER advskew {MASTER_SKEW} (interval {INTERVAL:.3f} s), BACKUP advskew "
          f"{BACKUP_SKEW}, {args.seconds:g} s held, then {args.reps} preemptions (advskew 0, -P)")
    rows = []
    for r in results:
        rows.append([
            r.kind, f"{r.sent_per_s:,.0f}" if r.rate else "0",
            f"{len(r.advert_gaps)}", f"{max(r.advert_gaps, default=0) * 1000:.1f}",
            f"{r.late()}", str(len(r.changes)),
            f"{r.cpu_ms_per_s.get('MASTER', 0):.0f}/{r.cpu_ms_per_s.get('BACKUP', 0):.0f}",
            fmt(summary(r.acted_on), 1000, " ms", 2),
            f"{r.within_goal()}/{len(r.acted_on)}",
        ])
    print(table(["impl", "frames/s", "gaps", "max gap ms", f"> {ON_TIME * 1000:.0f} ms",
                 "changes", "CPU ms/s M/B", "advert acted on", f"<= {ACTED_ON_GOAL * 1000:g} ms"],
                rows))
    for r in results:
        if r.reached_engine:
            let_through = ", ".join(f"{k} {v}" for k, v in sorted(r.reached_engine.items()))
            print(f"{r.kind} at {r.rate:g}/s: reached the MASTER's receive checks: {let_through}"
                  f" (kinds only the key tells apart: {', '.join(PASSING_FILTER)})")
        if r.changes:
            print(f"{r.kind} at {r.rate:g}/s: state changes: {', '.join(r.changes)}")
        if r.error:
            print(f"{r.kind} at {r.rate:g}/s: ERROR: {r.error}")
    print(machine_line())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50000.0, help="bad frames per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the hold phase")
    parser.add_argument("--reps", type=int, default=10, help="preemptions per run")
    parser.add_argument("--quick", action="store_true", help="10 s held, 3 preemptions")
    parser.add_argument("--only", choices=("carpd", "ucarp"), help="run one implementation")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without flood")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.reps = min(args.seconds, 10.0), min(args.reps, 3)
    if not can_run(needs=(Path(UCARP),)):
        return 2
    kinds = [args.only] if args.only else ["carpd", "ucarp"]
    rates = [args.rate] if args.no_baseline else [0.0, args.rate]
    results = []
    for kind in kinds:
        for rate in rates:
            began = time.monotonic()
            print(f"  {kind} at {rate:g} frames/s ...", end="", flush=True, file=sys.stderr)
            results.append(run_one(kind, rate, args))
            print(f" {time.monotonic() - began:.0f} s", file=sys.stderr)
    report(results, args)
    return finish_outcomes("flood", args, results)


if __name__ == "__main__":
    sys.exit(main())
