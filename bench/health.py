"""Service death under load: how long clients wait when the MASTER's HTTP server dies while its
CARP engine keeps running, carpd (tracking the server with a check script) against Debian's ucarp
(which tracks nothing) in the same run.

Two nodes run an HTTP server (answering with the node's name) on 0.0.0.0:8080 and a CARP engine
(advbase 1, advskew 0, no preemption, up/down scripts adding/removing the VIP).  carpd runs with
``--track-script 'CHECK' --track-interval 0.2 --track-fall 2 --track-rise 2``, CHECK being this
tree's share/checks/http-url on http://127.0.0.1:8080/ (the node's own server; a small check
written by the bench if that file is missing).  A client namespace on the same bridge sends RATE
requests per second to the VIP, each a new TCP connection given TIMEOUT seconds.

KILLS times: the current MASTER's HTTP server is SIGKILLed (by PID, at a random point of the
advert and check cycles); the bench waits until the peer holds the VIP (at most CAP s) and a
second more, then starts the server again and lets the pair settle (one VIP holder, both checks
passing).  Without preemption the VIP stays on the peer, so the next kill hits the peer's server:
always the current MASTER's.  ucarp's VIP stays on the node whose server is dead, so its "first
success via the peer" never comes: it is reported as CAP (capped).

Measured per kill, on the client's wall clock: the time from the kill to the end of the first
successful request answered by the peer (quantized to 1/RATE s), against the goal
``fall x interval + 100 ms``; the requests that failed (ending after the kill, started before
the next one); and for carpd the time from the kill to its bow-out advert on the bridge (kernel
receive time, the same clock).  Every namespace and process this starts is removed at the end
(by PID), also on failure or Ctrl-C.

    .venv/bin/python -m bench.health [--kills 10] [--quick] [--only carpd|ucarp] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import (
    PORT,
    Deadline,
    Processes,
    Request,
    add_counts,
    can_run,
    finish,
    listed,
    machine_line,
    median_max,
    read_requests,
    run_each,
    summary,
    table,
)
from bench.health_lab import Cluster, Kill, Tracking, carpd_tracks, check_command
from lab.netns import UCARP, VIP

LINGER = 1.0
"""Seconds the killed server stays down once the peer holds the VIP (the client gets through)."""


def analyse(kills: list[Kill], requests: list[Request], end: float) -> None:
    for i, k in enumerate(kills):
        stop = kills[i + 1].kill if i + 1 < len(kills) else end
        window = [r for r in requests
                  if r.end >= k.kill and r.start < stop and r.outcome != "unfinished"]
        k.sent = len(window)
        k.failed = sum(not r.ok for r in window)
        k.outcomes = dict(collections.Counter(r.outcome for r in window if not r.ok))
        served = [r.end for r in window if r.ok and r.body == k.peer]
        k.first_success = min(served) if served else None


def tracking_for(kind: str, args: argparse.Namespace, directory: Path) -> Tracking | None:
    if kind != "carpd" or args.no_track:
        return None
    check = check_command(directory, prefer_repo=not args.own_check)
    return Tracking(check, args.interval, args.fall, args.rise)


def run_kind(kind: str, args: argparse.Namespace, deadline: Deadline,
             directory: Path) -> dict[str, Any]:
    directory.mkdir()
    tracking = tracking_for(kind, args, directory)
    cluster = Cluster(kind, directory, tracking, args.settle)
    kills: list[Kill] = []
    error = None
    baseline: list[Request] = []
    try:
        cluster.setup()
        client = cluster.start_load(args.rate, args.timeout, deadline.left() + 30)
        began = time.time()
        time.sleep(1.0)
        for index in range(args.kills):
            if deadline.left() < args.cap + 15:
                error = f"time budget exhausted after {index} kills"
                break
            k = cluster.kill(index, args.cap, LINGER)
            kills.append(k)
            moved = ("VIP stayed" if k.vip_moved is None
                     else f"VIP on {k.peer} after {k.vip_moved - k.kill:.2f} s")
            print(f"  {kind} #{index + 1}: killed {k.master}'s server, {moved}", flush=True)
        cluster.settle()
        time.sleep(1.0)
        end = time.time()
        Processes.stop(client)
        requests = read_requests(cluster.requests_path)
        first = kills[0].kill if kills else end
        baseline = [r for r in requests if began <= r.start and r.end < first]
        analyse(kills, requests, end)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        print(f"  {kind}: {error}", flush=True)
    finally:
        cluster.close()
    return summarise(kind, tracking, args, kills, baseline, error)


def summarise(kind: str, tracking: Tracking | None, args: argparse.Namespace, kills: list[Kill],
              baseline: list[Request], error: str | None) -> dict[str, Any]:
    goal = args.fall * args.interval + 0.1
    times = [k.to_first_success(args.cap) for k in kills]
    bow_outs = [k.bow_out - k.kill for k in kills if k.bow_out is not None]
    return {
        "kind": kind,
        "tracking": asdict(tracking) if tracking else None,
        "error": error,
        "kills": [{**asdict(k), "to_first_success": k.to_first_success(args.cap),
                   "capped": k.capped(args.cap)} for k in kills],
        "to_first_success_s": summary(times),
        "capped": sum(k.capped(args.cap) for k in kills),
        "within_goal": sum(t <= goal for t in times),
        "vip_moved": sum(k.vip_moved is not None for k in kills),
        "failed_per_kill": summary([k.failed for k in kills]),
        "failed_total": sum(k.failed for k in kills),
        "sent_total": sum(k.sent for k in kills),
        "kill_to_bow_out_s": summary(bow_outs),
        "outcomes": add_counts(k.outcomes for k in kills),
        "baseline_failed": sum(not r.ok for r in baseline),
    }


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    goal = args.fall * args.interval + 0.1
    print(f"\nService death (the MASTER's HTTP server SIGKILLed), {args.kills} kills per "
          f"implementation, advbase 1, no preemption;\ncarpd checks its server every "
          f"{args.interval:g} s, fall {args.fall}, rise {args.rise}; client {args.rate:g} req/s "
          f"to {VIP}:{PORT}, timeout {args.timeout:g} s;\ntimes quantized to "
          f"{1000 / args.rate:g} ms, capped at {args.cap:g} s; median / max over the kills")
    rows = []
    for kind, r in results.items():
        n = len(r["kills"])
        rows.append([
            kind,
            median_max(r["to_first_success_s"], 1, " s", 3)
            + (f" ({r['capped']} capped)" if r["capped"] else ""),
            f"{r['within_goal']}/{n}",
            median_max(r["failed_per_kill"]),
            median_max(r["kill_to_bow_out_s"], 1, " s", 3),
            f"{r['vip_moved']}/{n}",
        ])
    print(table(["engine", "kill -> 1st success via peer", f"<= {goal:.2f} s",
                 "failed requests per kill", "kill -> bow-out", "VIP moved"], rows))
    for kind, r in results.items():
        check = r["tracking"]["check"] if r["tracking"] else "no health tracking"
        print(f"{kind}: {check}; failures: {listed(r['outcomes'])}; before the first kill: "
              f"{r['baseline_failed']}{'; ERROR: ' + r['error'] if r['error'] else ''}")
    print(f"goal: fall x interval + 100 ms = {args.fall} x {args.interval:g} s + 0.1 s = "
          f"{goal:.2f} s")
    print(machine_line())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = parser.add_argument
    a("--kills", type=int, default=10, help="server kills per implementation (default 10)")
    a("--quick", action="store_true",
      help="smoke test: 1 kill per implementation, cap 3 s, settle 1 s")
    a("--rate", type=float, default=100.0, help="client requests per second (default 100)")
    a("--timeout", type=float, default=0.3, help="per-request timeout, s (default 0.3)")
    a("--interval", type=float, default=0.2, help="carpd --track-interval (default 0.2)")
    a("--fall", type=int, default=2, help="carpd --track-fall (default 2)")
    a("--rise", type=int, default=2, help="carpd --track-rise (default 2)")
    a("--cap", type=float, default=10.0,
      help="seconds to wait for the VIP to move after a kill; the time to the first success "
           "is reported as at most this (default 10)")
    a("--settle", type=float, default=2.0,
      help="seconds the pair must be stable (one VIP holder, healthy) before a kill")
    a("--only", choices=("carpd", "ucarp"), help="run one implementation")
    a("--no-track", action="store_true", help="run carpd without health tracking")
    a("--own-check", action="store_true",
      help="use the bench's own check script, not share/checks/http-url")
    a("--max-seconds", type=float, default=600.0, help="time budget of the whole run")
    a("--json", help="write the results to this file")
    a("--keep", help="keep logs and request records in this folder")
    args = parser.parse_args()
    if args.quick:
        args.kills = min(args.kills, 1)
        args.cap = min(args.cap, 3.0)
        args.settle = min(args.settle, 1.0)
    return args


def main() -> int:
    args = parse_args()
    if not can_run(needs=(Path(UCARP),)):
        return 2
    kinds = [args.only] if args.only else ["carpd", "ucarp"]
    if "carpd" in kinds and not args.no_track and not carpd_tracks():
        print("this tree's carpd has no --track-script: run with --no-track", file=sys.stderr)
        return 2
    results = run_each(kinds, args, "carpd-health-", run_kind)
    report(results, args)
    return finish("health", args, results, goal_s=args.fall * args.interval + 0.1)


if __name__ == "__main__":
    sys.exit(main())
