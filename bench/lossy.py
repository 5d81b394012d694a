"""Lossy links: does a BACKUP take over from a MASTER that is alive when the cluster link loses
a share of its frames?  carpd against Debian's ucarp, in the same run.

One two-node cluster per implementation and loss rate, each on its own bridge (so they cannot
hear each other), all running at the same time: a MASTER (advskew 0, an advert every second) and
a BACKUP (advskew 100, master-down 3 x 1 + 100/256 = 3.39 s), advbase 1 and deadratio 3 on both.
Once the BACKUP has settled, every frame the bridge forwards to either node is dropped at random
with probability LOSS, independently: nftables' ``numgen random`` in the bridge's forward hook
(``--loss-with nft``, the default), or ``tc qdisc ... netem loss LOSS%`` on the bridge-side veth
ports (``--loss-with netem``: needs a kernel with sch_netem, which the machine this was written
on lacks).  Both drop what leaves the bridge towards a node, so the bridge capture still sees
every advert sent.

Counted over SECONDS, from the up/down scripts each daemon runs (its event log):

  B->M      the BACKUP became MASTER though the MASTER never stopped: a spurious takeover
  M->B      the MASTER gave up (a protocol-exact MASTER keeps its role against a slower one)
  2 masters the time both nodes ran their up script last, in total and the longest stretch

and, for comparison, the takeovers the protocol itself calls for:

  expected  the BACKUP's timer fires when K = floor(master-down / interval) adverts in a row are
            lost (K = 3 here); with independent loss p a run of K or more starts at a given
            advert with probability (1 - p) p^K, so over N adverts about N (1 - p) p^K
            takeovers are expected (0.54 per 600 adverts at 10 %, 11 at 30 %)
  silences  the same counted on the frames that really arrived (a capture on the BACKUP's eth0):
            stretches longer than master-down without an advert from the MASTER; a
            protocol-exact BACKUP takes over once in each, and never otherwise

Every namespace and process this starts is removed at the end (by PID), also on failure.

    .venv/bin/python -m bench.lossy [--quick] [--seconds 600] [--loss 10 30] [--deadratio 3]
                                    [--only carpd|ucarp] [--loss-with nft|netem] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import can_run, finish_outcomes, machine_line, table
from lab.netns import UCARP, Capture, Daemon, Event, Network, Node, network, run, wait_for

ADVBASE = 1
MASTER_SKEW, BACKUP_SKEW = 0, 100
NFT_TABLE = "carpd_lossy"


def interval(advskew: int) -> float:
    return ADVBASE + advskew / 256


def master_down(deadratio: int) -> float:
    return deadratio * ADVBASE + BACKUP_SKEW / 256


def run_needed(deadratio: int) -> int:
    """Adverts lost in a row before the BACKUP's master-down timer fires."""
    return math.floor(master_down(deadratio) / interval(MASTER_SKEW))


def expected_takeovers(adverts: int, loss: float, deadratio: int) -> float:
    """Runs of ``run_needed`` or more lost adverts among ``adverts``, independent loss ``loss``."""
    return adverts * (1 - loss) * loss ** run_needed(deadratio)


# ---- loss on the bridge ports -----------------------------------------------------------------


class Loss:
    """Frames the bridge forwards to ``ports`` are dropped with probability ``percent`` / 100."""

    def __init__(self, net: Network, ports: Sequence[str], percent: float, method: str) -> None:
        self.switch, self.ports, self.method = net.switch, list(ports), method
        if method == "netem":
            for port in self.ports:
                run("ip", "netns", "exec", self.switch, "tc", "qdisc", "add", "dev", port, "root",
                    "netem", "loss", f"{percent:g}%")
        else:
            names = ", ".join(f'"{p}"' for p in self.ports)
            rules = (f"table bridge {NFT_TABLE} {{\n chain forward {{\n"
                     "  type filter hook forward priority 0; policy accept;\n"
                     f"  oifname {{ {names} }} counter numgen random mod 10000 < "
                     f"{round(percent * 100)} counter drop\n }}\n}}\n")
            nft_apply(self.switch, rules)

    def counts(self) -> tuple[int, int]:
        """Frames that reached the ports' egress so far, and how many of them were dropped."""
        if self.method == "netem":
            total = dropped = 0
            for port in self.ports:
                out = run("ip", "netns", "exec", self.switch, "tc", "-s", "-j", "qdisc", "show",
                          "dev", port).stdout
                stats = next(q for q in json.loads(out) if q.get("kind") == "netem")
                total += stats["packets"] + stats["drops"]
                dropped += stats["drops"]
            return total, dropped
        out = run("ip", "netns", "exec", self.switch, "nft", "-j", "list", "table", "bridge",
                  NFT_TABLE).stdout
        rule = next(o["rule"] for o in json.loads(out)["nftables"] if "rule" in o)
        seen, dropped = (e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        return seen, dropped


def nft_apply(ns: str, rules: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True, capture_output=True, timeout=30)


# ---- one cluster ------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str
    loss: float
    deadratio: int
    method: str
    seconds: float = 0.0
    adverts: int = 0
    """The MASTER's adverts seen on the bridge during the run."""
    frames_to_nodes: int = 0
    frames_dropped: int = 0
    heard: int = 0
    """The MASTER's adverts that reached the BACKUP (a capture on its eth0)."""
    silences: list[float] = field(default_factory=list)
    """Stretches longer than master-down without an advert reaching the BACKUP: the takeovers
    a protocol-exact BACKUP makes, given the frames that were actually lost."""
    takeovers: list[float] = field(default_factory=list)
    """Times (s into the run) the BACKUP ran its up script."""
    silence_before: list[float] = field(default_factory=list)
    """For each takeover (its first advert on the bridge): time since the last advert that
    reached the BACKUP's interface."""
    stepdowns: list[float] = field(default_factory=list)
    """Times the MASTER ran its down script."""
    two_masters: list[float] = field(default_factory=list)
    """Length of each stretch during which both nodes had last run their up script."""
    holders_at_end: list[str] = field(default_factory=list)
    rejected: dict[str, dict[str, int]] = field(default_factory=dict)
    """carpd only: each daemon's rejection counters at the end (role -> reason -> count)."""
    logs: dict[str, list[str]] = field(default_factory=dict)
    """What each daemon wrote to stderr (the JSON only)."""
    error: str | None = None

    def measured_loss(self) -> float | None:
        return self.frames_dropped / self.frames_to_nodes if self.frames_to_nodes else None

    def expected(self) -> float:
        return expected_takeovers(self.adverts, self.loss / 100, self.deadratio)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "loss_percent": self.loss, "deadratio": self.deadratio,
            "loss_with": self.method, "seconds": round(self.seconds, 1),
            "master_adverts": self.adverts, "frames_to_nodes": self.frames_to_nodes,
            "frames_dropped": self.frames_dropped, "measured_loss": self.measured_loss(),
            "adverts_lost_in_a_row_for_takeover": run_needed(self.deadratio),
            "expected_takeovers": round(self.expected(), 3), "master_adverts_heard": self.heard,
            "silences_over_master_down_s": [round(t, 3) for t in self.silences],
            "silence_before_takeover_s": [round(t, 3) for t in self.silence_before],
            "takeovers_s": [round(t, 3) for t in self.takeovers],
            "master_stepdowns_s": [round(t, 3) for t in self.stepdowns],
            "two_masters_s": [round(t, 3) for t in self.two_masters],
            "holders_at_end": self.holders_at_end, "rejected": self.rejected,
            "logs": self.logs, "error": self.error,
        }


class Cluster:
    """A MASTER and a settled BACKUP of one implementation on a bridge of their own."""

    def __init__(self, net: Network, result: Result) -> None:
        self.net, self.result = net, result
        self.master_node = net.add_node("10.9.1.2")
        self.backup_node = net.add_node("10.9.1.3")
        self.master = self._start(self.master_node, MASTER_SKEW)
        wait_for(lambda: net.holders() == [self.master_node], timeout=10)
        self.backup = self._start(self.backup_node, BACKUP_SKEW)
        wait_for(self.backup.events, timeout=5)  # its down script ran: it is listening
        self.loss: Loss | None = None
        self.heard: Capture | None = None
        self.began = 0.0

    def _start(self, node: Node, advskew: int) -> Daemon:
        extra = ["-r", str(self.result.deadratio)]
        if self.result.kind == "ucarp":
            extra += ["-f", "none"]  # never the host's syslog
        return node.start(self.result.kind, advskew=advskew, extra=extra)

    def settled(self) -> bool:
        return (self.net.holders() == [self.master_node] and self.master.is_master()
                and not self.backup.is_master())

    def begin(self) -> None:
        ports = [self.master_node.port, self.backup_node.port]
        self.heard = Capture(self.backup_node.ns, "eth0")
        self.loss = Loss(self.net, ports, self.result.loss, self.result.method)
        self.began = time.time()

    def finish(self) -> None:
        r, ended = self.result, time.time()
        r.seconds = ended - self.began
        if self.loss is not None:
            r.frames_to_nodes, r.frames_dropped = self.loss.counts()
        r.adverts = len(self.net.capture.frames(source=self.master_node.address,
                                                since=self.began))
        master_events = self._window(self.master)
        backup_events = self._window(self.backup)
        ups = [e.time for e in backup_events if e.event == "up"]
        r.takeovers = [t - self.began for t in ups]
        if self.heard is not None:
            heard = [f.time for f in self.heard.frames(source=self.master_node.address)
                     if f.time >= self.began]
            self.close()
            r.heard = len(heard)
            r.silences = silences([self.began, *heard, ended], master_down(r.deadratio))
            r.silence_before = [t - max([self.began, *(h for h in heard if h < t)])
                                for t in map(self._first_advert, ups)]
        r.stepdowns = [e.time - self.began for e in master_events if e.event == "down"]
        r.two_masters = both_up(master_events, backup_events, self.began, ended)
        r.holders_at_end = [n.name for n in self.net.holders()]
        daemons = {"MASTER": self.master, "BACKUP": self.backup}
        r.logs = {role: d.log().splitlines() for role, d in daemons.items()}
        if r.kind == "carpd":
            r.rejected = {role: rejections(d) for role, d in daemons.items()}
        if not (self.master.alive() and self.backup.alive()):
            r.error = "a daemon exited during the run"

    def _first_advert(self, up: float) -> float:
        """When the BACKUP took over: its first advert on the bridge (its up script runs a
        moment later), or the script's own time."""
        sent = [f.time for f in self.net.capture.frames(source=self.backup_node.address,
                                                        since=up - 1.0) if f.time <= up + 0.5]
        return min(sent, default=up)

    def close(self) -> None:
        if self.heard is not None:
            self.heard.close()
            self.heard = None

    def _window(self, daemon: Daemon) -> list[Event]:
        return [e for e in daemon.events() if self.began <= e.time]


def rejections(daemon: Daemon) -> dict[str, int]:
    try:
        rejected = daemon.status()["rejected"]
    except OSError as error:
        return {"status failed": error.errno or 0}
    assert isinstance(rejected, dict)
    return {str(k): int(v) for k, v in rejected.items() if v}


def silences(times: list[float], limit: float) -> list[float]:
    """Gaps longer than ``limit`` between consecutive ``times``."""
    return [b - a for a, b in itertools.pairwise(times) if b - a > limit]


def both_up(first: list[Event], second: list[Event], began: float, ended: float) -> list[float]:
    """Stretches in [began, ended] during which both daemons' last event was "up" (the first one
    starts as MASTER, the second as BACKUP)."""
    state = {0: "up", 1: "down"}
    stretches: list[float] = []
    since: float | None = None
    merged = sorted([(e.time, 0, e.event) for e in first] + [(e.time, 1, e.event) for e in second])
    for when, who, event in merged:
        state[who] = event
        if state[0] == state[1] == "up" and since is None:
            since = when
        elif since is not None and "down" in state.values():
            stretches.append(when - since)
            since = None
    if since is not None:
        stretches.append(ended - since)
    return stretches


def run_all(results: list[Result], seconds: float) -> None:
    """Every cluster at once: build them, let them settle, drop frames for ``seconds``."""
    with ExitStack() as stack:
        clusters = []
        for result in results:
            try:
                net = stack.enter_context(network("carplo", "carpd-lossy-"))
                clusters.append(Cluster(net, result))
                stack.callback(clusters[-1].close)
            except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError) as error:
                result.error = f"{type(error).__name__}: {error}"
        time.sleep(1.5)  # every BACKUP has heard its MASTER
        for cluster in clusters:
            if not cluster.settled():
                cluster.result.error = "the cluster did not settle before the loss began"
            cluster.begin()
        time.sleep(seconds)
        for cluster in clusters:
            cluster.finish()


# ---- report -----------------------------------------------------------------------------------


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(f"\nLossy link: {' and '.join(f'{x:g} %' for x in args.loss)} of the frames towards "
          f"each node dropped ({args.loss_with}), {args.seconds:g} s, advbase {ADVBASE}, "
          f"deadratio {args.deadratio};\nMASTER advskew {MASTER_SKEW} (an advert every "
          f"{interval(MASTER_SKEW):g} s), BACKUP advskew {BACKUP_SKEW} (master-down "
          f"{master_down(args.deadratio):.2f} s: {run_needed(args.deadratio)} adverts lost "
          "in a row); all clusters at the same time")
    rows = []
    for r in results:
        measured = r.measured_loss()
        two = r.two_masters
        rows.append([
            r.kind, f"{r.loss:g}", f"{measured * 100:.1f}" if measured is not None else "-",
            f"{r.heard}/{r.adverts}", f"{r.expected():.1f}", str(len(r.silences)),
            str(len(r.takeovers)), str(len(r.stepdowns)),
            f"{sum(two):.2f}", f"{max(two, default=0):.2f}",
            ",".join(r.holders_at_end) or "none",
        ])
    print(table(["impl", "loss %", "measured %", "heard/sent", "expected", "silences", "B->M",
                 "M->B",
                 "2 masters s", "longest s", "VIP at end"], rows))
    for r in results:
        if r.takeovers or r.stepdowns:
            print(f"{r.kind} at {r.loss:g} %: B->M at {times(r.takeovers)}; "
                  f"M->B at {times(r.stepdowns)}; silence before each B->M: "
                  f"{times(r.silence_before, 2)}")
        for role, counts in r.rejected.items():
            if counts:
                print(f"{r.kind} at {r.loss:g} %: the {role} rejected "
                      + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if r.error:
            print(f"{r.kind} at {r.loss:g} %: ERROR: {r.error}")
    print(machine_line())


def times(values: list[float], digits: int = 1) -> str:
    return ", ".join(f"{v:.{digits}f} s" for v in values) or "never"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the lossy run")
    parser.add_argument("--loss", type=float, nargs="+", default=[10.0, 30.0],
                        help="loss rates in percent")
    parser.add_argument("--deadratio", type=int, default=3, help="-r of both daemons")
    parser.add_argument("--quick", action="store_true", help="60 s instead of 600 s")
    parser.add_argument("--only", choices=("carpd", "ucarp"), help="run one implementation")
    parser.add_argument("--loss-with", choices=("nft", "netem"), default="nft",
                        help="nftables numgen random (default) or tc netem")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.seconds = min(args.seconds, 60.0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C
    if not can_run(needs=(Path(UCARP),)):
        return 2
    kinds = [args.only] if args.only else ["carpd", "ucarp"]
    results = [Result(kind, loss, args.deadratio, args.loss_with)
               for kind in kinds for loss in args.loss]
    began = time.monotonic()
    print(f"  {len(results)} clusters for {args.seconds:g} s ...", end="", flush=True,
          file=sys.stderr)
    run_all(results, args.seconds)
    print(f" {time.monotonic() - began:.0f} s", file=sys.stderr)
    report(results, args)
    return finish_outcomes("lossy", args, results)


if __name__ == "__main__":
    sys.exit(main())
