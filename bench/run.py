"""carpd against ucarp, same run, same test network: failover time, reaction time, idle cost.

Runs as root: each measurement builds its own network namespaces (lab/netns.py) and
takes its timestamps from the kernel's receive time of each advert on the bridge.

  failover   kill -9 the master; time from its last advert to the backup's first advert, against
             the protocol's master-down interval (advbase x 3 + advskew/256)
  reaction   a preempting node (advskew 0) joins a slower master (advskew 100): time from the
             master's advert to the preempter's first advert
  bow-out    a carpd master is stopped (SIGTERM): time from its bow-out advert to the backup's
             first advert (ucarp sends no bow-out, so only the backup's kind varies)
  idle       VmRSS and CPU time per minute of a MASTER and a BACKUP: utime + stime (10 ms ticks)
             and the scheduler's nanosecond count (/proc/PID/task/*/schedstat)

Usage: .venv/bin/python -m bench.run [--quick] [--reps N] [--idle-seconds S] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import TypeVar

from bench.common import run_seconds
from lab.netns import VIP, CarpFrame, Daemon, Network, Node, network, wait_for

KINDS = ("carpd", "ucarp")
ADVBASE = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def bench_network() -> AbstractContextManager[Network]:
    return network("carpbr", "carpd-bench-")


def master_down(advskew: int) -> float:
    return ADVBASE * 3 + advskew / 256


def sole_holder(net: Network, node: Node) -> Callable[[], bool]:
    return lambda: net.holders() == [node]


def first_from(net: Network, node: Node, since: float, timeout: float) -> CarpFrame:
    return net.capture.wait_frame(lambda f: f.source == node.address, timeout, since=since)


def start_as_backup(node: Node, kind: str, advskew: int) -> Daemon:
    daemon = node.start(kind, advskew=advskew)
    wait_for(daemon.events, timeout=5)  # its down script ran: it is listening
    time.sleep(1.5)  # and has heard the master
    return daemon


# ---- measurements -----------------------------------------------------------------------------


def failover(kind: str, advskew: int, reps: int) -> list[float]:
    """Two nodes take turns: kill -9 the master, time the takeover, restart it as the backup."""
    gaps = []
    with bench_network() as net:
        nodes = [net.add_node("10.9.1.2"), net.add_node("10.9.1.3")]
        master = nodes[0].start(kind, advskew=advskew)
        wait_for(sole_holder(net, nodes[0]), timeout=10)
        backup = start_as_backup(nodes[1], kind, advskew=advskew)
        for _ in range(reps):
            master.kill()
            master.node.remove_address(VIP)
            killed = time.time()
            first = first_from(net, backup.node, killed, timeout=master_down(advskew) + 5)
            last = net.capture.frames(source=master.node.address)[-1]
            gaps.append(first.time - last.time)
            wait_for(sole_holder(net, backup.node), timeout=5)
            master, backup = backup, start_as_backup(master.node, kind, advskew=advskew)
    return gaps


def reaction(kind: str, reps: int) -> list[float]:
    """A slower master (advskew 100) and a preempter (-P, advskew 0) joining it, again and again."""
    delays = []
    with bench_network() as net:
        slow_node, fast_node = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
        slow_node.start(kind, advskew=100)
        for _ in range(reps):
            wait_for(sole_holder(net, slow_node), timeout=10)
            started = time.time()
            fast = fast_node.start(kind, advskew=0, preempt=True)
            first = first_from(net, fast_node, started, timeout=master_down(0) + 5)
            heard = [f for f in net.capture.frames(source=slow_node.address) if f.time < first.time]
            delays.append(first.time - heard[-1].time)
            wait_for(sole_holder(net, fast_node), timeout=5)
            fast.kill()
            fast_node.remove_address(VIP)
    return delays


def bow_out(backup_kind: str, reps: int) -> list[float]:
    """A carpd master is terminated; time from its bow-out advert to the backup's first advert."""
    delays = []
    with bench_network() as net:
        master_node, backup_node = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
        backup = None
        for _ in range(reps):
            master = master_node.start("carpd", advskew=0)
            wait_for(sole_holder(net, master_node), timeout=10)
            backup = start_as_backup(backup_node, backup_kind, advskew=100)
            stopped = time.time()
            master.signal(signal.SIGTERM)
            bow = net.capture.wait_frame(
                lambda f: f.source == master_node.address and f.bow_out, timeout=2, since=stopped
            )
            first = first_from(net, backup_node, bow.time, timeout=master_down(100) + 5)
            delays.append(first.time - bow.time)
            master.wait_exit(timeout=10)
            backup.kill()
            backup_node.remove_address(VIP)
    return delays


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for {pid}")


def idle(seconds: float) -> dict[tuple[str, str], tuple[int, float, float]]:
    """Both kinds at once, each a MASTER/BACKUP pair in its own network.

    Per daemon: VmRSS (KiB), CPU ms per minute from utime + stime (10 ms ticks), and the same from
    the scheduler's nanosecond run time of all its threads (/proc/PID/task/*/schedstat)."""
    results: dict[tuple[str, str], tuple[int, float, float]] = {}
    with bench_network() as carpd_net, bench_network() as ucarp_net:
        pairs: dict[str, tuple[Daemon, Daemon]] = {}
        for kind, net in (("carpd", carpd_net), ("ucarp", ucarp_net)):
            a, b = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
            master = a.start(kind)
            pairs[kind] = (master, b.start(kind, advskew=100))
        for kind, net in (("carpd", carpd_net), ("ucarp", ucarp_net)):
            wait_for(sole_holder(net, pairs[kind][0].node), timeout=10)
        time.sleep(2)  # past start-up and the first scripts
        daemons = [d for pair in pairs.values() for d in pair]
        before = {d.pid: (cpu_seconds(d.pid), run_seconds(d.pid)) for d in daemons}
        began = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - began
        for kind, (master, backup) in pairs.items():
            for role, daemon in (("MASTER", master), ("BACKUP", backup)):
                assert daemon.is_master() == (role == "MASTER"), f"{daemon} changed role"
                ticks, ran = before[daemon.pid]
                per_minute = 60 * 1000 / elapsed
                results[kind, role] = (
                    rss_kib(daemon.pid),
                    (cpu_seconds(daemon.pid) - ticks) * per_minute,
                    (run_seconds(daemon.pid) - ran) * per_minute,
                )
    return results


# ---- report -----------------------------------------------------------------------------------


def row(cells: list[str], widths: list[int]) -> str:
    first, *rest = zip(cells, widths, strict=True)
    return "  ".join([first[0].ljust(first[1]), *(c.rjust(w) for c, w in rest)])


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for r in [header, ["-" * w for w in widths], *rows]:
        print(row(r, widths))


def summary(values: list[float], scale: float = 1.0, digits: int = 3) -> list[str]:
    picked = (statistics.median(values), min(values), max(values))
    return [str(len(values)), *(f"{v * scale:.{digits}f}" for v in picked)]


def timed(label: str, work: Callable[[], T]) -> T:
    began = time.monotonic()
    print(f"  {label} ...", end="", flush=True, file=sys.stderr)
    result = work()
    print(f" {time.monotonic() - began:.0f} s", file=sys.stderr)
    return result


def report_failover(reps: int) -> None:
    rows = []
    for advskew in (0, 100):
        for kind in KINDS:
            gaps = timed(f"failover {kind} advskew {advskew}",
                         partial(failover, kind, advskew, reps))
            expected = master_down(advskew)
            rows.append([kind, str(advskew), f"{expected:.3f}", *summary(gaps),
                         f"{statistics.median(gaps) - expected:+.3f}"])
    table("Failover after kill -9: master's last advert -> backup's first advert (s)",
          ["impl", "advskew", "master-down", "n", "median", "min", "max", "median-md"], rows)


def report_reaction(reps: int) -> None:
    rows = []
    for kind in KINDS:
        delays = timed(f"reaction {kind}", partial(reaction, kind, reps))
        rows.append([kind, *summary(delays, 1000, 1)])
    table("Preemption: slower master's advert -> preempter's first advert (ms)",
          ["impl", "n", "median", "min", "max"], rows)


def report_bow_out(reps: int) -> None:
    rows = []
    for kind in KINDS:
        delays = timed(f"bow-out, {kind} backup", partial(bow_out, kind, reps))
        rows.append([f"carpd -> {kind}", f"{master_down(100):.3f}", *summary(delays, 1000, 1)])
    table("Bow-out on SIGTERM: master's bow-out advert -> backup's first advert (ms)",
          ["master -> backup", "master-down s", "n", "median", "min", "max"], rows)


def report_idle(seconds: float) -> None:
    results = timed(f"idle {seconds:.0f} s", partial(idle, seconds))
    rows = [[kind, role, str(rss), f"{ticks:.0f}", f"{ran:.1f}"]
            for (kind, role), (rss, ticks, ran) in sorted(results.items())]
    table(f"Idle over {seconds:.0f} s (advbase 1): CPU ms per minute",
          ["impl", "role", "VmRSS KiB", "utime+stime", "schedstat"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions, 10 s of idle")
    parser.add_argument("--reps", type=int, help="repetitions per timing (default 10)")
    parser.add_argument("--idle-seconds", type=float, help="idle measurement (default 60)")
    parser.add_argument("--only", nargs="+", choices=["failover", "reaction", "bow-out", "idle"],
                        default=["failover", "reaction", "bow-out", "idle"])
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    reps = args.reps or (3 if args.quick else 10)
    idle_seconds = args.idle_seconds or (10.0 if args.quick else 60.0)
    print(f"carpd vs ucarp, {reps} repetitions, advbase {ADVBASE}; times are the kernel's "
          "receive timestamps of the adverts on the bridge", file=sys.stderr)
    if "failover" in args.only:
        report_failover(reps)
    if "reaction" in args.only:
        report_reaction(reps)
    if "bow-out" in args.only:
        report_bow_out(reps)
    if "idle" in args.only:
        report_idle(idle_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
