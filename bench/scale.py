"""Memory and scale: one carpd engine running 1 and N VIP groups (default 255) against as many
ucarp processes, in the same run (issue 9, item 8).

Each case runs alone on a node of a throw-away network (lab/netns.py), as the only node, so
every group becomes MASTER and advertises every second (advbase 1, advskew 0, no scripts).
Once all are MASTER the case is measured for SECONDS:

- memory: PSS (proportional set size, /proc/PID/smaps_rollup) summed over every process of the
  case (carpd: the engine and its watchdog; ucarp: every ucarp process), and RSS beside it;
- CPU: the time the scheduler counted for those processes over the window, per minute;
- adverts: for every group, each interval between two of its adverts on the bridge (kernel
  receive timestamps) against the configured 1 s: the largest and the 99th percentile lateness.

Goals (issue 9): one group at most 30 MB PSS, N=255 groups at most 40 MB, every advert within
5 ms of its schedule.  Every namespace and process this starts is removed at the end.

    .venv/bin/python -m bench.scale [--groups 255] [--seconds 60] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address
from itertools import pairwise
from pathlib import Path

from bench.common import machine_line, run_seconds, table, wait_until, write_json
from carpd import control
from lab.netns import CARPD, PASSWORD, UCARP, Network, Node

GOALS_MB = {1: 30.0, 255: 40.0}
ADVERT_GOAL_MS = 5.0


def vip(vhid: int) -> IPv4Address:
    return IPv4Address(f"10.9.3.{vhid}")


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


def start_carpd(net: Network, node: Node, groups: int) -> list[subprocess.Popen[bytes]]:
    directory = Path(tempfile.mkdtemp(dir=net.directory))
    config = directory / "c.json"
    config.touch(mode=0o600)
    config.write_text(json.dumps({
        "interface": "eth0", "facility": "none", "state_dir": str(directory / "s"),
        "groups": [{"vhid": v, "addr": str(vip(v)), "srcip": str(node.address),
                    "password": PASSWORD.decode(), "drain": 0} for v in range(1, groups + 1)]}))
    with open(directory / "log", "wb") as log:
        process = subprocess.Popen(["ip", "netns", "exec", node.ns, *CARPD, "--config",
                                    str(config)], stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=log, start_new_session=True)

    def all_master() -> bool:
        try:
            reply = control.request(control.socket_path(directory / "s", "eth0"),
                                    {"cmd": "status"})
        except (OSError, ValueError):
            return False
        return [g["state"] for g in reply["groups"]] == ["MASTER"] * groups

    if not wait_until(all_master, 30, 0.2):
        raise RuntimeError(f"carpd with {groups} groups did not become MASTER: "
                           f"{(directory / 'log').read_text()[-2000:]}")
    return [process]


def start_ucarp(node: Node, groups: int) -> list[subprocess.Popen[bytes]]:
    passfile = Path(tempfile.mkdtemp(dir=node.network.directory)) / "p"
    passfile.touch(mode=0o600)
    passfile.write_bytes(PASSWORD + b"\n")
    processes = []
    for v in range(1, groups + 1):
        processes.append(subprocess.Popen(
            ["ip", "netns", "exec", node.ns, UCARP, "-i", "eth0", "-s", str(node.address),
             "-v", str(v), "-o", str(passfile), "-a", str(vip(v)), "-u", "/bin/true",
             "-d", "/bin/true", "-f", "none"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
    time.sleep(4.5)  # master-down (3 s) and the first adverts
    return processes


def lateness_ms(net: Network, node: Node, since: float) -> list[float]:
    by_vhid: dict[int, list[float]] = defaultdict(list)
    for frame in net.capture.frames(source=node.address, since=since):
        by_vhid[frame.advert.vhid].append(frame.time)
    late = []
    for times in by_vhid.values():
        late += [abs(b - a - 1.0) * 1000 for a, b in pairwise(times)]
    return sorted(late)


def measure(net: Network, node: Node, kind: str, groups: int, seconds: float) -> Result:
    processes = start_carpd(net, node, groups) if kind == "carpd" else start_ucarp(node, groups)
    try:
        pids = tree([p.pid for p in processes])
        cpu_before = sum(run_seconds(p) for p in pids)
        since = time.time()
        time.sleep(seconds)
        cpu = sum(run_seconds(p) for p in pids) - cpu_before
        pss, rss = memory_mb(pids)
        late = lateness_ms(net, node, since)
        p99 = late[min(len(late) - 1, int(len(late) * 0.99))] if late else None
        return Result(kind, groups, len(pids), round(pss, 1), round(rss, 1),
                      round(cpu * 60 / seconds, 3), None if p99 is None else round(p99, 2),
                      round(late[-1], 2) if late else None, len(late))
    finally:
        for process in processes:
            with_kill(process)


def with_kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, 15)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(timeout=5)


def run(groups: int, seconds: float) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="scale") as tmp:
        net = Network(Path(tmp), prefix="carps")
        try:
            for count in (1, groups):
                for kind in ("carpd", "ucarp"):
                    node = net.add_node(f"10.9.1.{len(net.nodes) + 1}")
                    results.append(measure(net, node, kind, count, seconds))
                    print(f"  {kind} x{count}: done", file=sys.stderr)
        finally:
            net.close()
    return results


def report(results: list[Result]) -> str:
    rows = []
    for r in results:
        goal = GOALS_MB.get(r.groups) if r.daemon == "carpd" else None
        met = "met" if goal is not None and r.pss_mb <= goal else "NOT met"
        verdict = "" if goal is None else f" (goal <={goal:.0f}: {met})"
        rows.append([r.daemon, str(r.groups), str(r.processes), f"{r.pss_mb:.1f}{verdict}",
                     f"{r.rss_mb:.1f}", f"{r.cpu_s_per_min:.3f}",
                     "-" if r.late_p99_ms is None else f"{r.late_p99_ms:.2f}",
                     "-" if r.late_max_ms is None else f"{r.late_max_ms:.2f}", str(r.adverts)])
    return table(["daemon", "groups", "procs", "PSS MB", "RSS MB", "CPU s/min",
                  "late p99 ms", "late max ms", "intervals"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=255)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="10 s windows")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/scale.py needs root (network namespaces)", file=sys.stderr)
        return 2
    seconds = 10.0 if args.quick else args.seconds
    results = run(args.groups, seconds)
    print(machine_line())
    print(f"window {seconds:.0f} s per case; adverts every 1 s (advbase 1); "
          f"lateness goal {ADVERT_GOAL_MS:.0f} ms")
    print(report(results))
    write_json(args.json, {"seconds": seconds, "results": [asdict(r) for r in results]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
