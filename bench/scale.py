"""Memory and scale: one carpd engine running 1 and N VIP groups (default 255) against as many
ucarp processes, in the same run (issue 9, item 8).

Each case runs alone on a node of a throw-away network (lab/netns.py), as the only node, so
every group becomes MASTER and advertises every second (advbase 1, advskew 0, no scripts).
Once all are MASTER the case is measured for SECONDS:

- memory: PSS (proportional set size, /proc/PID/smaps_rollup) summed over every process of the
  case (carpd: the engine and its watchdog; ucarp: every ucarp process), and RSS beside it;
- CPU: the time the scheduler counted for those processes over the window, per minute;
- adverts: for every group, each interval between two of its adverts on the bridge (kernel
  receive timestamps) against the configured 1 s: the largest and the 99th percentile lateness
  ("late", both daemons);
- carpd also against its schedule: a MASTER's core schedules advert k at the instant it took
  over + k intervals (it counts each interval from when the advert was due, so this never
  drifts), and the engine sends it up to ``carpd.engine.daemon.schedule_offset(vhid)`` earlier (the
  groups spread over a few ms) plus ``ADVERT_LEAD`` (for the loop's own wake-up lateness).
  The bench reads each group's takeover instant ("since", wall clock to the ms) from the
  control socket and reports each advert's time on the bridge less (since + k intervals -
  schedule_offset(vhid)): positive is late, negative early ("vs schedule": p99, max, and the
  most early).  ucarp has no such schedule to read (it counts each interval from when it
  sent the last advert).

Failover, then, with N groups on two nodes (carpd: one engine per node with a --config groups
file; ucarp: N processes per node; both with /bin/true as up and down script): node a is MASTER
of every group (advskew 0), node b BACKUP of every group (advskew 100).  Node a dies: its link is
cut at the bridge (its port set down: nothing it sends reaches the wire any more), then every
process of a is SIGKILLed.  For every group, the time from a's last advert to b's first advert
for that vhid (kernel timestamps on the bridge) less b's master-down interval for that group
(3 x advbase + advskew/256): its median, p99 and max, and how many groups took over within
master-down + 50 ms; b's CPU from the cut until the last group was taken over beside it.

Goals (issue 9): one group at most 30 MB PSS, N=255 groups at most 40 MB, every advert within
5 ms of its schedule, every group failed over within master-down + 50 ms.  Every namespace and
process this starts is removed at the end.

    .venv/bin/python -m bench.scale [--groups 255] [--seconds 60] [--quick] [--json out.json]
                                    [--only memory|failover ...] [--failovers N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address
from itertools import pairwise
from pathlib import Path

from bench.common import machine_line, run_seconds, table, write_json
from carpd.engine import control
from carpd.engine.daemon import schedule_offset
from lab.netns import CARPD, PASSWORD, UCARP, CarpFrame, Network, Node, network
from lab.netns import run as sh
from lab.poll import Timeout, wait_for

GOALS_MB = {1: 30.0, 255: 40.0}
ADVERT_GOAL_MS = 5.0
FAILOVER_GOAL_MS = 50.0
ADVBASE = 1
MASTER_SKEW = 0
BACKUP_SKEW = 100
SCRIPT = "/bin/true"
KINDS = ("carpd", "ucarp")


def vip(vhid: int) -> IPv4Address:
    return IPv4Address(f"10.9.3.{vhid}")


def master_down(advskew: int, advbase: int = ADVBASE) -> float:
    """A backup's master-down interval (its own advbase and advskew; ucarp's dead ratio 3)."""
    return 3 * advbase + advskew / 256


@dataclass
class Result:
    daemon: str
    groups: int
    processes: int
    pss_mb: float
    rss_mb: float
    cpu_s_per_min: float
    late_p99_ms: float | None
    late_max_ms: float | None
    adverts: int
    schedule_p99_ms: float | None = None
    """carpd: the 99th percentile of (time on the bridge - the engine's schedule)."""
    schedule_max_ms: float | None = None
    schedule_min_ms: float | None = None
    """The most early advert (negative: before its schedule)."""


@dataclass
class Failover:
    """One failover of every group from node a (killed) to node b."""

    daemon: str
    groups: int
    master_down_s: float
    taken_over: int
    """Groups b advertised before the bench gave up waiting."""
    within_goal: int
    """Groups whose takeover came at most FAILOVER_GOAL_MS after their master-down."""
    over_min_ms: float | None
    over_median_ms: float | None
    over_p99_ms: float | None
    over_max_ms: float | None
    last_after_cut_s: float | None
    """From the link cut to b's first advert of the last group it took over."""
    backup_cpu_s: float
    """CPU of b's daemon processes (not of the scripts they ran) from the cut until the bench
    had seen every takeover (at least master-down + 1 s) or gave up waiting."""
    over_ms: dict[int, float] = field(default_factory=dict)
    """Per vhid: (b's first advert - a's last advert - master-down), ms."""


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def tree(pids: list[int]) -> list[int]:
    """``pids`` and all their descendants."""
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            todo += [int(c) for c in task.read_text().split()]
    return found


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(PSS, RSS) summed over ``pids``, in MB."""
    pss = rss = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == "Pss":
                pss += int(rest.split()[0])
            elif name == "Rss":
                rss += int(rest.split()[0])
    return pss / 1024, rss / 1024


def cpu_of(pids: list[int]) -> float:
    """Scheduler CPU seconds of ``pids``; a process gone meanwhile counts nothing."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += run_seconds(pid)
    return total


# ---- the daemons ------------------------------------------------------------------------------


@dataclass
class Started:
    """The processes of one kind on one node, all in their own process groups."""

    kind: str
    node: Node
    groups: int
    processes: list[subprocess.Popen[bytes]]
    state_dir: Path | None = None
    """carpd: its control socket's folder."""
    log: Path | None = None

    def states(self) -> list[str] | None:
        """carpd: every group's state, by vhid; None while its control socket does not answer."""
        assert self.state_dir is not None
        try:
            reply = control.request(control.socket_path(self.state_dir, "eth0"),
                                    {"cmd": "status"})
        except (OSError, ValueError):
            return None
        return [g["state"] for g in sorted(reply["groups"], key=lambda g: int(g["vhid"]))]

    def masters_since(self) -> dict[int, float]:
        """carpd: per vhid, when it became MASTER (wall clock, to the ms)."""
        assert self.state_dir is not None
        reply = control.request(control.socket_path(self.state_dir, "eth0"), {"cmd": "status"})
        return {int(g["vhid"]): float(g["since"]) for g in reply["groups"]
                if g["state"] == "MASTER"}

    def all_in(self, state: str) -> bool:
        return self.states() == [state] * self.groups

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log else ""

    def sigkill(self) -> None:
        """Each process and its children (scripts, carpd's watchdog): their process group."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)

    def stop(self) -> None:
        for process in self.processes:
            with_kill(process)


def start_carpd(net: Network, node: Node, groups: int, advskew: int = MASTER_SKEW,
                scripts: bool = False) -> Started:
    directory = Path(tempfile.mkdtemp(dir=net.directory))
    config = directory / "c.json"
    config.touch(mode=0o600)
    actions = {"upscript": SCRIPT, "downscript": SCRIPT} if scripts else {}
    config.write_text(json.dumps({
        "interface": "eth0", "facility": "none", "state_dir": str(directory / "s"),
        "groups": [{"vhid": v, "addr": str(vip(v)), "srcip": str(node.address),
                    "password": PASSWORD.decode(), "drain": 0, "advbase": ADVBASE,
                    "advskew": advskew, **actions} for v in range(1, groups + 1)]}))
    log = directory / "log"
    with open(log, "wb") as out:
        process = subprocess.Popen(["ip", "netns", "exec", node.ns, *CARPD, "--config",
                                    str(config)], stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=out, start_new_session=True)
    return Started("carpd", node, groups, [process], directory / "s", log)


def start_ucarp(node: Node, groups: int, advskew: int = MASTER_SKEW) -> Started:
    passfile = Path(tempfile.mkdtemp(dir=node.network.directory)) / "p"
    passfile.touch(mode=0o600)
    passfile.write_bytes(PASSWORD + b"\n")
    processes = []
    for v in range(1, groups + 1):
        processes.append(subprocess.Popen(
            ["ip", "netns", "exec", node.ns, UCARP, "-i", "eth0", "-s", str(node.address),
             "-v", str(v), "-o", str(passfile), "-a", str(vip(v)), "-b", str(ADVBASE),
             "-k", str(advskew), "-u", SCRIPT, "-d", SCRIPT, "-f", "none"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
    return Started("ucarp", node, groups, processes)


def start(net: Network, node: Node, kind: str, groups: int, advskew: int = MASTER_SKEW,
          scripts: bool = False) -> Started:
    if kind == "carpd":
        return start_carpd(net, node, groups, advskew, scripts)
    return start_ucarp(node, groups, advskew)


def advertised_vhids(net: Network, node: Node, since: float) -> set[int]:
    return {f.advert.vhid for f in net.capture.frames(source=node.address, since=since)}


def advertising_all(net: Network, started: Started, window: float = 1.5) -> bool:
    """Every group of ``started`` sent an advert in the last ``window`` seconds."""
    recent = advertised_vhids(net, started.node, time.time() - window)
    return recent == set(range(1, started.groups + 1))


def wait_masters(net: Network, started: Started) -> None:
    def ready() -> bool:
        if started.kind == "carpd" and not started.all_in("MASTER"):
            return False
        return advertising_all(net, started)

    try:
        wait_for(ready, 30, 0.2, what=f"{started.kind} MASTER of all")
    except Timeout:
        raise RuntimeError(f"{started.kind} with {started.groups} groups on {started.node} did "
                           f"not become MASTER of all: {started.log_tail()}") from None


def wait_backups(net: Network, started: Started, master: Started) -> None:
    """``started`` is listening (BACKUP of every group, silent) and ``master`` still MASTER."""
    settle = master_down(BACKUP_SKEW) + 1.5  # ucarp has no status: past its master-down
    since = time.time()
    if started.kind == "carpd":
        try:
            wait_for(lambda: started.all_in("BACKUP"), 30, 0.2, what="carpd BACKUP of all")
        except Timeout:
            raise RuntimeError(f"carpd on {started.node} did not become BACKUP of all: "
                               f"{started.log_tail()}") from None
    time.sleep(max(0.0, since + settle - time.time()))
    alive = all(p.poll() is None for p in started.processes)
    if not alive or advertised_vhids(net, started.node, since) or not advertising_all(net, master):
        raise RuntimeError(f"{started.kind} on {started.node}: not a silent backup of a "
                           f"master advertising every group: {started.log_tail()}")


# ---- memory, CPU and advert lateness of one node alone ----------------------------------------


def start_alone(net: Network, node: Node, kind: str, groups: int) -> Started:
    started = start(net, node, kind, groups)
    try:
        wait_masters(net, started)
    except BaseException:
        started.stop()
        raise
    return started


def lateness_ms(net: Network, node: Node, since: float) -> list[float]:
    by_vhid: dict[int, list[float]] = defaultdict(list)
    for frame in net.capture.frames(source=node.address, since=since):
        by_vhid[frame.advert.vhid].append(frame.time)
    late = []
    for times in by_vhid.values():
        late += [abs(b - a - ADVBASE) * 1000 for a, b in pairwise(times)]
    return sorted(late)


def schedule_lateness_ms(net: Network, node: Node, since: float,
                         anchors: dict[int, float]) -> list[float]:
    """carpd: each advert's time on the bridge less its engine's schedule (see the top)."""
    late = []
    for frame in net.capture.frames(source=node.address, since=since):
        vhid = frame.advert.vhid
        if vhid not in anchors:
            continue
        offset = schedule_offset(vhid)
        k = round((frame.time - anchors[vhid] + offset) / ADVBASE)
        late.append((frame.time - (anchors[vhid] + k * ADVBASE - offset)) * 1000)
    return sorted(late)


def measure(net: Network, node: Node, kind: str, groups: int, seconds: float) -> Result:
    started = start_alone(net, node, kind, groups)
    try:
        pids = tree([p.pid for p in started.processes])
        anchors = started.masters_since() if kind == "carpd" else {}
        cpu_before = cpu_of(pids)
        since = time.time()
        time.sleep(seconds)
        cpu = cpu_of(pids) - cpu_before
        pss, rss = memory_mb(pids)
        late = lateness_ms(net, node, since)
        vs_schedule = schedule_lateness_ms(net, node, since, anchors)
        return Result(kind, groups, len(pids), round(pss, 1), round(rss, 1),
                      round(cpu * 60 / seconds, 3),
                      round(percentile(late, 0.99), 2) if late else None,
                      round(late[-1], 2) if late else None, len(late),
                      round(percentile(vs_schedule, 0.99), 2) if vs_schedule else None,
                      round(vs_schedule[-1], 2) if vs_schedule else None,
                      round(vs_schedule[0], 2) if vs_schedule else None)
    finally:
        started.stop()


def with_kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, 15)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(timeout=5)


# ---- failover: node a dies, node b takes every group over -------------------------------------


def kill_node(net: Network, started: Started) -> float:
    """Cut ``started``'s node off the bridge, then SIGKILL all its processes; the cut's time."""
    cut = time.time()
    sh("ip", "-n", net.switch, "link", "set", started.node.port, "down")
    started.sigkill()
    return cut


def wait_takeover(net: Network, backup: Started, cut: float) -> None:
    """Until b advertised every group, or 10 s past master-down.  The bench keeps off the CPU
    until a second past master-down: looking through the capture would compete with b."""
    time.sleep(master_down(BACKUP_SKEW) + 1.0)
    every = set(range(1, backup.groups + 1))
    with contextlib.suppress(Timeout):
        wait_for(lambda: advertised_vhids(net, backup.node, cut) == every, 9.0, 0.5,
                 what=f"every group advertised by {backup.node}")


def first_and_last(frames: list[CarpFrame], first: IPv4Address,
                   last: IPv4Address) -> tuple[dict[int, float], dict[int, float]]:
    """Per vhid: the time of ``first``'s first advert and of ``last``'s last advert."""
    firsts: dict[int, float] = {}
    lasts: dict[int, float] = {}
    for frame in frames:
        if frame.source == first:
            firsts.setdefault(frame.advert.vhid, frame.time)
        elif frame.source == last:
            lasts[frame.advert.vhid] = frame.time
    return firsts, lasts


def takeovers(net: Network, dead: Started, backup: Started, since: float,
              cut: float) -> tuple[dict[int, float], float | None]:
    """Per vhid b took over: (b's first advert - a's last advert - master-down), in ms; and the
    time from the cut to b's first advert of the last group it took over, in s."""
    frames = [f for f in net.capture.frames(since=since)
              if f.time >= cut or f.source == dead.node.address]
    firsts, lasts = first_and_last(frames, backup.node.address, dead.node.address)
    expected = master_down(BACKUP_SKEW)
    over = {v: round((firsts[v] - lasts[v] - expected) * 1000, 3)
            for v in sorted(firsts) if v in lasts}
    return over, (max(firsts.values()) - cut if firsts else None)


def failover(net: Network, kind: str, groups: int) -> Failover:
    a = net.add_node(f"10.9.1.{len(net.nodes) + 1}")
    b = net.add_node(f"10.9.1.{len(net.nodes) + 1}")
    master = start(net, a, kind, groups, MASTER_SKEW, scripts=True)
    backup: Started | None = None
    try:
        wait_masters(net, master)
        backup = start(net, b, kind, groups, BACKUP_SKEW, scripts=True)
        wait_backups(net, backup, master)
        return fail_over(net, master, backup)
    finally:
        master.stop()
        if backup is not None:
            backup.stop()


def fail_over(net: Network, master: Started, backup: Started) -> Failover:
    pids = tree([p.pid for p in backup.processes])
    since = time.time() - 3 * ADVBASE
    cpu_before = cpu_of(pids)
    cut = kill_node(net, master)
    wait_takeover(net, backup, cut)
    cpu = cpu_of(tree([p.pid for p in backup.processes])) - cpu_before
    over, last = takeovers(net, master, backup, since, cut)
    return summarise(backup, over, last, cpu)


def summarise(backup: Started, over: dict[int, float], last: float | None,
              cpu: float) -> Failover:
    ordered = sorted(over.values())

    def stat(pick: Callable[[list[float]], float]) -> float | None:
        return round(pick(ordered), 2) if ordered else None

    return Failover(
        backup.kind, backup.groups, master_down(BACKUP_SKEW), len(ordered),
        sum(1 for x in ordered if x <= FAILOVER_GOAL_MS), stat(min),
        stat(lambda o: percentile(o, 0.5)), stat(lambda o: percentile(o, 0.99)), stat(max),
        None if last is None else round(last, 3), round(cpu, 3), over)


# ---- the run ----------------------------------------------------------------------------------


def run(groups: int, seconds: float, only: list[str],
        failovers: int) -> tuple[list[Result], list[Failover]]:
    results, failed_over = [], []
    with network("carps", "scale") as net:
        for count in (1, groups) if "memory" in only else ():
            for kind in KINDS:
                node = net.add_node(f"10.9.1.{len(net.nodes) + 1}")
                results.append(measure(net, node, kind, count, seconds))
                print(f"  {kind} x{count}: done", file=sys.stderr)
        for n in range(failovers if "failover" in only else 0):
            for kind in KINDS:
                failed_over.append(failover(net, kind, groups))
                print(f"  failover {n + 1} {kind} x{groups}: done", file=sys.stderr)
    return results, failed_over


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(results: list[Result]) -> str:
    rows = []
    for r in results:
        goal = GOALS_MB.get(r.groups) if r.daemon == "carpd" else None
        met = "met" if goal is not None and r.pss_mb <= goal else "NOT met"
        verdict = "" if goal is None else f" (goal <={goal:.0f}: {met})"
        on_time = r.schedule_max_ms is not None and r.schedule_max_ms <= ADVERT_GOAL_MS
        schedule_verdict = "" if r.schedule_max_ms is None else \
            f" ({'met' if on_time else 'NOT met'})"
        rows.append([r.daemon, str(r.groups), str(r.processes), f"{r.pss_mb:.1f}{verdict}",
                     f"{r.rss_mb:.1f}", f"{r.cpu_s_per_min:.3f}", number(r.late_p99_ms),
                     number(r.late_max_ms), str(r.adverts), number(r.schedule_p99_ms),
                     number(r.schedule_max_ms) + schedule_verdict, number(r.schedule_min_ms)])
    return table(["daemon", "groups", "procs", "PSS MB", "RSS MB", "CPU s/min",
                  "late p99 ms", "late max ms", "intervals", "vs schedule p99 ms", "max",
                  "most early"], rows)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def report_failover(runs: list[Failover]) -> str:
    rows = []
    for f in runs:
        met = "met" if f.within_goal == f.groups else "NOT met"
        verdict = f" (goal: all, {met})" if f.daemon == "carpd" else ""
        rows.append([f.daemon, str(f.groups), f"{f.master_down_s:.3f}",
                     f"{f.taken_over}", f"{f.within_goal}{verdict}", ms(f.over_min_ms),
                     ms(f.over_median_ms), ms(f.over_p99_ms), ms(f.over_max_ms),
                     "-" if f.last_after_cut_s is None else f"{f.last_after_cut_s:.3f}",
                     f"{f.backup_cpu_s:.3f}"])
    return table(["daemon", "groups", "master-down s", "taken over",
                  f"within +{FAILOVER_GOAL_MS:.0f} ms", "over min ms", "p50", "p99", "max",
                  "last after cut s", "b CPU s"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=255)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="10 s windows, one failover")
    parser.add_argument("--failovers", type=int, help="failovers per daemon (default 3)")
    parser.add_argument("--only", nargs="+", choices=["memory", "failover"],
                        default=["memory", "failover"])
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/scale.py needs root (network namespaces)", file=sys.stderr)
        return 2
    seconds = 10.0 if args.quick else args.seconds
    failovers = args.failovers or (1 if args.quick else 3)
    results, failed_over = run(args.groups, seconds, args.only, failovers)
    print(machine_line())
    if results:
        print(f"window {seconds:.0f} s per case; adverts every {ADVBASE} s (advbase "
              f"{ADVBASE}); lateness goal {ADVERT_GOAL_MS:.0f} ms")
        print(report(results))
    if failed_over:
        print(f"\nfailover: a MASTER of all (advskew {MASTER_SKEW}), b BACKUP of all (advskew "
              f"{BACKUP_SKEW}); a's bridge port set down, then its processes SIGKILLed; "
              f"scripts {SCRIPT}.\n\"over\": per group, b's first advert - a's last advert - "
              f"master-down (3 x advbase + advskew/256); goal: all within "
              f"+{FAILOVER_GOAL_MS:.0f} ms.  \"b CPU\": b's daemons (not their scripts) "
              "from the cut to the last takeover")
        print(report_failover(failed_over))
    write_json(args.json, {"seconds": seconds, "results": [asdict(r) for r in results],
                           "failover": [asdict(f) for f in failed_over]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
