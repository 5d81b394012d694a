"""Node death under load: how long clients wait when the MASTER's link is cut, carpd against
Debian's ucarp in the same run.

Two nodes run an HTTP server (answering with the node's name) on 0.0.0.0:8080 and a CARP engine
(advbase 1, advskew 0, no preemption, up/down scripts adding/removing the VIP); a client namespace
on the same bridge sends RATE requests per second to the VIP, each given TIMEOUT seconds.  COUNT
times, the MASTER's bridge port is set down (a pulled cable: the node is gone from the LAN, its
engine sees its carrier drop), until the backup has taken over; then the port comes back, the
dead node's engine is restarted as after a reboot (``--keep-engine``: left running through the
cut), and the pair settles before the next fault.

Measured per fault, with the kernel's receive timestamps of the adverts on the bridge and the
client's wall clock (the same clock):

- from the master's last advert on the wire to the client's first successful response through
  the backup (the protocol's part is the master-down interval, 3 s + advskew/256 at advbase 1);
- from the fault (just before the port is set down) to that response;
- from the master's last advert to the backup's first advert (the election alone).

Requests are started every 1/RATE s, so the times are quantized to that (10 ms at 100/s).  Every
namespace and process this starts is removed at the end (by PID), also on failure or Ctrl-C.

    .venv/bin/python -m bench.failover [--count 10] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    POLL,
    Bed,
    Deadline,
    Processes,
    Request,
    can_run,
    finish,
    fmt,
    machine_line,
    read_requests,
    run_each,
    span,
    start_server,
    summary,
    table,
)
from lab.netns import UCARP, VIP, Node, run
from lab.poll import Timeout, wait_for

ADVBASE = 1
MASTER_DOWN = 3.0 * ADVBASE
SETTLE = 2.0
TAKEOVER_LIMIT = 15.0
GOAL = MASTER_DOWN + 0.050


@dataclass
class Fault:
    index: int
    master: str
    backup: str
    fault: float
    """Wall time just before the master's bridge port was set down."""
    fault_done: float
    restored: float | None = None
    last_advert: float | None = None
    backup_first_advert: float | None = None
    first_success: float | None = None
    """End of the first successful request answered by the backup after the fault."""
    error: str | None = None

    @property
    def from_last_advert(self) -> float | None:
        return span(self.last_advert, self.first_success)

    @property
    def from_fault(self) -> float | None:
        return span(self.fault, self.first_success)

    @property
    def election(self) -> float | None:
        return span(self.last_advert, self.backup_first_advert)


class Pair(Bed):
    """Two server nodes running ``kind`` and a client, on one bridge."""

    def __init__(self, kind: str, directory: Path, quiet: float = SETTLE,
                 reboot: bool = True) -> None:
        super().__init__(directory, prefix="carpbf")
        self.kind = kind
        self.reboot = reboot
        self.quiet = quiet

    def setup(self) -> None:
        self.add_nodes()
        for node in (self.a, self.b):
            start_server(self.procs, node.ns, node.name, self.directory / f"server-{node.name}.log")
        self.daemons = {"a": self.a.start(self.kind, advbase=ADVBASE)}
        try:
            wait_for(lambda: self.net.holders() == [self.a], MASTER_DOWN + 5, POLL,
                     what="a the MASTER")
        except Timeout:
            raise RuntimeError(f"{self.kind} on a never became MASTER") from None
        self.daemons["b"] = self.b.start(self.kind, advbase=ADVBASE)
        self.settle()

    def settle(self, timeout: float = 20) -> Node:
        """Exactly one node holds the VIP, unchanged for ``self.quiet`` s, both engines alive."""
        return self.settle_on(lambda: all(d.alive() for d in self.daemons.values()), self.quiet,
                              timeout, self.exited)

    def exited(self) -> list[str]:
        return [n for n, d in self.daemons.items() if not d.alive()]

    def port(self, node: Node, state: str) -> None:
        run("ip", "-n", self.net.switch, "link", "set", node.port, state)

    def fail(self, index: int) -> Fault:
        master = self.settle()
        backup = self.peer(master)
        time.sleep(random.uniform(0, ADVBASE))  # at any point of the advert cycle
        fault = time.time()
        self.port(master, "down")
        record = Fault(index, master.name, backup.name, fault, time.time())
        try:
            try:
                wait_for(lambda: backup.has(VIP), TAKEOVER_LIMIT, POLL,
                         what=f"the VIP on {backup.name}")
            except Timeout:
                record.error = f"{backup.name} did not take over within {TAKEOVER_LIMIT} s"
            time.sleep(0.7)  # let the client get through to the backup
        finally:
            self.port(master, "up")
            record.restored = time.time()
        if self.reboot:
            # the dead node comes back as after a reboot: a fresh engine, no VIP
            old = self.daemons[master.name]
            old.signal(signal.SIGTERM)
            try:
                old.wait_exit(10)
            except subprocess.TimeoutExpired:
                old.kill()
            master.remove_address(VIP)
            self.daemons[master.name] = master.start(self.kind, advbase=ADVBASE)
        return record


def analyse(pair: Pair, faults: list[Fault], requests: list[Request]) -> None:
    nodes = {"a": pair.a, "b": pair.b}
    for f in faults:
        restored = f.restored or time.time()
        before = [fr for fr in pair.net.capture.frames(source=nodes[f.master].address,
                                                       since=f.fault - 5)
                  if fr.time < restored and not fr.bow_out]
        if before:
            f.last_advert = before[-1].time
        after = pair.net.capture.frames(source=nodes[f.backup].address, since=f.fault)
        if after:
            f.backup_first_advert = after[0].time
        ok = [r.end for r in requests
              if r.ok and r.body == f.backup and f.fault < r.end < restored + 5]
        if ok:
            f.first_success = min(ok)


def run_kind(kind: str, args: argparse.Namespace, deadline: Deadline,
             directory: Path) -> dict[str, Any]:
    directory.mkdir()
    pair = Pair(kind, directory, args.settle, reboot=not args.keep_engine)
    faults: list[Fault] = []
    error = None
    try:
        pair.setup()
        client = pair.start_load(args.rate, args.timeout, deadline.left() + 30)
        time.sleep(1.0)
        for index in range(args.count):
            if deadline.left() < 10:
                error = f"time budget exhausted after {index} faults"
                break
            f = pair.fail(index)
            faults.append(f)
            print(f"  {kind} #{index + 1}: cut {f.master}'s link, {f.backup} took over"
                  f"{'  ' + f.error if f.error else ''}", flush=True)
            if f.error:
                error = f.error
                break
        pair.settle()
        Processes.stop(client)
        analyse(pair, faults, read_requests(pair.requests_path))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        print(f"  {kind}: {error}", flush=True)
    finally:
        pair.close()

    def values(name: str) -> list[float]:
        return [v for f in faults if (v := getattr(f, name)) is not None]

    return {
        "kind": kind,
        "error": error,
        "faults": [{**asdict(f), "from_last_advert": f.from_last_advert,
                    "from_fault": f.from_fault, "election": f.election} for f in faults],
        "from_last_advert_s": summary(values("from_last_advert")),
        "from_fault_s": summary(values("from_fault")),
        "election_s": summary(values("election")),
        "within_goal": sum(v <= GOAL for v in values("from_last_advert")),
    }


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    comeback = "same engine kept" if args.keep_engine else "engine restarted"
    print(f"\nNode death (bridge port down; on return: {comeback}), {args.count} faults per "
          f"implementation, advbase {ADVBASE} (master down {MASTER_DOWN:g} s),\n"
          f"client {args.rate:g} req/s to {VIP}:8080, "
          f"timeout {args.timeout:g} s (times quantized to {1000 / args.rate:g} ms)")
    rows = []
    for kind, r in results.items():
        n = r["from_last_advert_s"]["count"]
        rows.append([
            kind,
            fmt(r["from_last_advert_s"], 1, " s", 3),
            fmt(r["from_fault_s"], 1, " s", 3),
            fmt(r["election_s"], 1, " s", 3),
            f"{r['within_goal']}/{n}",
        ])
    print(table(["engine", "last advert -> 1st success", "fault -> 1st success",
                 "last advert -> backup's 1st advert", f"<= {GOAL:.2f} s"], rows))
    for kind, r in results.items():
        if r["error"]:
            print(f"{kind}: ERROR: {r['error']}")
    print(machine_line())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10, help="faults per implementation")
    parser.add_argument("--quick", action="store_true", help="2 faults per implementation")
    parser.add_argument("--rate", type=float, default=100.0, help="client requests per second")
    parser.add_argument("--timeout", type=float, default=0.5, help="per-request timeout, s")
    parser.add_argument("--only", choices=("carpd", "ucarp"), help="run one implementation")
    parser.add_argument("--max-seconds", type=float, default=290.0,
                        help="time budget of the whole run")
    parser.add_argument("--settle", type=float, default=SETTLE,
                        help="seconds the pair must be stable (one VIP holder) before a fault")
    parser.add_argument("--keep-engine", action="store_true",
                        help="keep the dead node's engine running through the cut instead of "
                             "restarting it when the link comes back (as after a reboot)")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--keep", help="keep logs and request records in this folder")
    args = parser.parse_args()
    if args.quick:
        args.count = min(args.count, 2)
        args.max_seconds = min(args.max_seconds, 58.0)
    if not can_run(needs=(Path(UCARP),)):
        return 2
    kinds = [args.only] if args.only else ["ucarp", "carpd"]
    results = run_each(kinds, args, "carpd-failover-", run_kind)
    report(results, args)
    return finish("failover", args, results)


if __name__ == "__main__":
    sys.exit(main())
