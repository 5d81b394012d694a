"""Planned handovers under load: how many client requests fail while the MASTER is taken down for
maintenance, carpd against Debian's ucarp in the same run.

Two nodes run an HTTP server (answering with the node's name) on 0.0.0.0:8080 and a CARP engine
for one VIP; a client namespace on the same bridge sends RATE requests per second to the VIP, each
given TIMEOUT seconds.  COUNT times, the current MASTER is taken down the way an administrator
does for maintenance and brought back once the peer has taken over, so the MASTER alternates.

- ucarp runs through Debian's own integration: its /etc/network/if-up.d/ucarp hook started by
  ``ifup eth0``, /usr/share/ucarp/vip-up and vip-down (``ifup/ifdown eth0:ucarp``).  Handover:
  ``ifdown eth0`` on the MASTER, ``ifup eth0`` after the peer took over.
- carpd runs through our ifupdown hooks (if-up.d/carpd, if-down.d/carpd, with carpd,
  carpd-ifupdown and carpctl from this tree on PATH and share/ as /usr/share/carpd, as the
  package installs them) when they work: ``ifup`` with the same ucarp-* stanza starts carpd;
  handover as for ucarp.  Otherwise (or ``--carpd-mode direct``) carpd is started directly with
  Debian's vip-up/vip-down as its scripts, and the handover is SIGTERM to the engine (what its
  if-down hook does), then ``ifdown eth0``/``ifup eth0`` and a restart.  The output says which.

ifup/ifdown run inside the node's namespace in a private mount namespace where our interfaces
file, the node's own /run and hook folders holding only the wanted hook are bind-mounted over the
host's: the host's /etc/network, /run and interfaces are never touched.  Every namespace and
process this starts is removed at the end (by PID), also on failure or Ctrl-C.

``--keep DIR --trace`` keeps, per implementation, a pcap of the bridge, the nodes' address changes,
the client's ARP cache changes and ``timeline.txt``: around each handover, the bow-out advert, the
gratuitous ARPs for the VIP, the VIP added/removed on each node and every failed request, in ms.
``--carpd-src DIR`` measures a carpd package in DIR (e.g. a patched copy) instead of the tree's.

    .venv/bin/python -m bench.handover [--count 20] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.util
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    CARPD_HOOKS,
    REPO,
    Deadline,
    Ifupdown,
    Processes,
    Request,
    daemons_in,
    fmt,
    kill_namespace_processes,
    machine,
    machine_line,
    read_requests,
    stanza,
    start_client,
    start_server,
    summary,
    table,
    wait_until,
    write_json,
)
from lab.netns import CARPD, PASSWORD, UCARP, VIP, Network, Node

UCARP_HOOK = Path("/etc/network/if-up.d/ucarp")
VIP_UP = "/usr/share/ucarp/vip-up"
VIP_DOWN = "/usr/share/ucarp/vip-down"
SETTLE = 2.0  # the restarted node must hear adverts before the next handover


@dataclass
class Handover:
    index: int
    old: str
    new: str
    start: float
    method: str
    takeover: float | None = None
    """From the start of the handover to the new MASTER's first advert on the wire."""
    failed: int = 0
    sent: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    longest_gap: float | None = None
    """Longest time without a successful response around this handover."""
    error: str | None = None


class Cluster:
    """Two server nodes and a client on one bridge, with one engine kind on both nodes."""

    def __init__(self, kind: str, directory: Path, rate: float, timeout: float,
                 trace: bool = False, carpd_mode: str = "auto",
                 carpd_src: Path | None = None) -> None:
        self.kind = kind
        self.carpd_src = carpd_src
        self.carpd_mode = carpd_mode
        self.trace = trace
        self.directory = directory
        self.rate = rate
        self.timeout = timeout
        self.procs = Processes()
        self.net = Network(directory, prefix="carpbh")
        self.namespaces = [self.net.switch]
        self.mode = ""
        self.engines: dict[str, subprocess.Popen[bytes]] = {}
        self.ifupdown: dict[str, Ifupdown] = {}

    def close(self) -> None:
        self.procs.close()
        kill_namespace_processes(self.namespaces)
        self.net.close()

    def add(self, address: str, name: str) -> Node:
        node = self.net.add_node(address, name)
        self.namespaces.append(node.ns)
        return node

    def setup(self) -> None:
        self.a = self.add("10.9.0.1", "a")
        self.b = self.add("10.9.0.2", "b")
        self.client_node = self.add("10.9.0.10", "cl")
        self.nodes = {"a": self.a, "b": self.b}
        for name, node in self.nodes.items():
            start_server(self.procs, node.ns, name, self.directory / f"server-{name}.log")
        if self.trace:
            self._start_trace()
        if self.kind == "ucarp":
            self.mode = "ucarp via Debian's if-up.d/ucarp + vip-up/vip-down; handover: ifdown/ifup"
            self._configure({"if-up.d": [UCARP_HOOK]})
            self._bring_up_ifupdown()
        else:
            why = "--carpd-mode direct" if self.carpd_mode == "direct" else self._try_carpd_hooks()
            if why is not None and self.carpd_mode == "hooks":
                raise RuntimeError(f"cannot run carpd through our hooks: {why}")
            if why is None:
                self.mode = ("carpd via our if-up.d/if-down.d hooks + ucarp-* stanza; "
                             "handover: ifdown/ifup")
            else:
                self.mode = (f"carpd started directly ({why}), scripts vip-up/vip-down "
                             "(ifup/ifdown eth0:ucarp); handover: SIGTERM, then ifdown/ifup "
                             "eth0 and restart")
                self._configure({})
                self._bring_up_direct()
            if self.carpd_src:
                self.mode += f" [carpd imported from {self.carpd_src}]"

    def _start_trace(self) -> None:
        """For investigations: every ARP, CARP and HTTP frame on the bridge (pcap), address
        changes on the nodes and the client's ARP cache changes, with timestamps."""
        self.procs.start(self.net.switch, [
            "tcpdump", "-i", "br0", "-n", "-U", "-w", str(self.directory / "bridge.pcap"),
            "arp or ip proto 112 or tcp port 8080"], self.directory / "tcpdump.log")
        for name, node in self.nodes.items():
            self.procs.start(node.ns, ["stdbuf", "-oL", "ip", "-ts", "monitor", "address"],
                             self.directory / f"addresses-{name}.log")
        self.procs.start(self.client_node.ns, ["stdbuf", "-oL", "ip", "-ts", "monitor", "neigh"],
                         self.directory / "neigh-client.log")

    # ---- engines ----------------------------------------------------------------------------

    def _configure(self, hooks: dict[str, list[Path]], carpd_commands: bool = False) -> None:
        for name, node in self.nodes.items():
            node_dir = self.directory / f"ifupdown-{name}"
            if node_dir.exists():
                shutil.rmtree(node_dir)
            self.ifupdown[name] = Ifupdown(
                node.ns, node_dir,
                stanza(str(node.address), str(VIP), PASSWORD.decode()), hooks, carpd_commands,
                self.carpd_src)
            # ifupdown owns eth0 from now on
            node.exec("ip", "addr", "flush", "dev", "eth0")
            node.exec("ip", "link", "set", "eth0", "down")

    def _ifup(self, name: str, verb: str = "ifup") -> None:
        code = self.ifupdown[name].run(verb)
        if code != 0:
            raise RuntimeError(f"{verb} eth0 on {name} failed ({code}): see "
                               f"{self.ifupdown[name].log}")

    def _engine_running(self, name: str) -> bool:
        return bool(daemons_in(self.nodes[name].ns, self.kind))

    def _bring_up_ifupdown(self) -> None:
        self._ifup("a")
        if not wait_until(lambda: self._engine_running("a"), 5):
            raise RuntimeError(f"ifup eth0 on a started no {self.kind}")
        if not wait_until(lambda: self.net.holders() == [self.a], 8):
            raise RuntimeError("a never became MASTER")
        self._ifup("b")
        if not wait_until(lambda: self._engine_running("b"), 5):
            raise RuntimeError(f"ifup eth0 on b started no {self.kind}")
        self.settle()

    def _try_carpd_hooks(self) -> str | None:
        """Use our hooks if they exist and start carpd; else say why not."""
        up, down = CARPD_HOOKS
        if not up.exists():
            return f"{up.relative_to(REPO)} does not exist yet"
        if importlib.util.find_spec("carpd.ifupdown.main") is None:
            return "carpd.ifupdown.main (the carpd-ifupdown command) does not exist yet"
        hooks = {"if-up.d": [up]}
        if down.exists():
            hooks["if-down.d"] = [down]
        self._configure(hooks, carpd_commands=True)
        try:
            self._ifup("a")
        except RuntimeError as error:
            return f"our if-up hook failed: {error}"
        if not wait_until(lambda: self._engine_running("a"), 5):
            self.ifupdown["a"].run("ifdown")
            return "ifup with a ucarp-* stanza started no carpd"
        if not down.exists():
            self.ifupdown["a"].run("ifdown")
            for pid in daemons_in(self.a.ns, "carpd"):
                os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not self._engine_running("a"), 10)
            return f"{down.relative_to(REPO)} does not exist yet"
        if not wait_until(lambda: self.net.holders() == [self.a], 8):
            raise RuntimeError("a never became MASTER")
        self._ifup("b")
        if not wait_until(lambda: self._engine_running("b"), 5):
            raise RuntimeError("ifup eth0 on b started no carpd")
        self.settle()
        return None

    def _start_carpd(self, name: str) -> None:
        node = self.nodes[name]
        folder = self.directory / f"carpd-{name}"
        folder.mkdir(exist_ok=True)
        passfile = folder / "password"
        passfile.touch(mode=0o600)
        passfile.write_bytes(PASSWORD + b"\n")
        argv = [*CARPD, "-i", "eth0", "-s", str(node.address), "-v", "1", "-o", str(passfile),
                "-a", str(VIP), "-b", "1", "-k", "0", "-u", VIP_UP, "-d", VIP_DOWN, "-z",
                "-f", "none", "--state-dir", str(folder / "state")]
        self.engines[name] = self.ifupdown[name].start(self.procs, argv, folder / "stderr.log")

    def _bring_up_direct(self) -> None:
        self._ifup("a")
        self._start_carpd("a")
        if not wait_until(lambda: self.net.holders() == [self.a], 8):
            raise RuntimeError("a never became MASTER")
        self._ifup("b")
        self._start_carpd("b")
        self.settle()

    def settle(self, timeout: float = 15) -> Node:
        """Exactly one node holds the VIP, unchanged for SETTLE s, both engines running."""
        def stable() -> Node | None:
            holders = self.net.holders()
            if len(holders) != 1 or not all(self._engine_running(n) for n in self.nodes):
                return None
            time.sleep(SETTLE)
            return holders[0] if self.net.holders() == holders else None

        holder = wait_until(stable, timeout, interval=0.1)
        if holder is None:
            raise RuntimeError(f"no stable MASTER within {timeout} s: holders "
                               f"{[n.name for n in self.net.holders()]}")
        return holder

    # ---- one handover -----------------------------------------------------------------------

    def handover(self, index: int) -> Handover:
        old = self.settle()
        new = self.b if old is self.a else self.a
        start = time.time()
        direct = self.kind == "carpd" and self.engines
        record = Handover(index, old.name, new.name, start,
                          "SIGTERM + ifdown/ifup" if direct else "ifdown/ifup")
        if direct:
            engine = self.engines[old.name]
            os.kill(engine.pid, signal.SIGTERM)
        else:
            self._ifup(old.name, "ifdown")
        took = wait_until(lambda: self.net.holders() == [new], 15)
        first = wait_until(lambda: self.net.capture.frames(source=new.address, since=start), 5)
        if first:
            record.takeover = first[0].time - start
        if not took:
            record.error = "the peer did not take over within 15 s"
        if direct:
            try:
                engine.wait(timeout=15)
            except subprocess.TimeoutExpired:
                record.error = "carpd did not exit within 15 s of SIGTERM"
            self._ifup(old.name, "ifdown")
            self._ifup(old.name)
            self._start_carpd(old.name)
        else:
            wait_until(lambda: not self._engine_running(old.name), 10)
            self._ifup(old.name)
        return record


def _wall(stamp: str) -> float:
    """``ip -ts monitor``'s local ISO time -> Unix time."""
    return datetime.datetime.fromisoformat(stamp).timestamp()


def timeline(directory: Path, handovers: list[Handover], requests: list[Request]) -> None:
    """With --trace: what happened around each handover, from the captures, to timeline.txt."""
    events: list[tuple[float, str]] = []
    pcap = subprocess.run(
        ["tcpdump", "-r", str(directory / "bridge.pcap"), "-n", "-tt", "-e",
         "arp or ip proto 112"], capture_output=True, text=True, timeout=60, check=False).stdout
    vip = str(VIP)
    for line in pcap.splitlines():
        fields = line.split()
        when, mac = float(fields[0]), fields[1]
        if "intvl 255s" in line:
            events.append((when, f"bow-out advert from {mac}"))
        elif f"who-has {vip}" in line and f"tell {vip}" in line:
            events.append((when, f"gratuitous ARP for the VIP from {mac}"))
        elif f"{vip} is-at" in line:
            events.append((when, f"ARP reply for the VIP from {mac}"))
    for name in ("a", "b"):
        path = directory / f"addresses-{name}.log"
        for line in path.read_text().splitlines() if path.exists() else []:
            m = re.match(rf"\[(.*?)\] (Deleted )?.*inet {re.escape(vip)}/", line)
            if m:
                what = "removed from" if m.group(2) else "added on"
                events.append((_wall(m.group(1)), f"VIP {what} {name}"))
    path = directory / "neigh-client.log"
    for line in path.read_text().splitlines() if path.exists() else []:
        m = re.match(r"\[(.*?)\] (.*)", line)
        if m and vip in line:
            events.append((_wall(m.group(1)), f"client ARP cache: {m.group(2).strip()}"))
    for r in requests:
        if not r.ok and r.outcome != "unfinished":
            events.append((r.start, f"FAILED request started ({r.outcome} after "
                                    f"{(r.end - r.start) * 1000:.0f} ms)"))
    events.sort()
    lines = []
    for h in handovers:
        lines.append(f"--- handover {h.index + 1}: {h.old} -> {h.new} ({h.method}), "
                     f"times from its start")
        lines += [f"  {(t - h.start) * 1000:+9.1f} ms  {e}" for t, e in events
                  if h.start - 0.2 <= t <= h.start + 2.6]
    (directory / "timeline.txt").write_text("\n".join(lines) + "\n")


def analyse(handovers: list[Handover], requests: list[Request], end: float) -> None:
    for i, h in enumerate(handovers):
        stop = handovers[i + 1].start if i + 1 < len(handovers) else end
        window = [r for r in requests if h.start <= r.start < stop and r.outcome != "unfinished"]
        h.sent = len(window)
        h.failed = sum(not r.ok for r in window)
        h.outcomes = dict(collections.Counter(r.outcome for r in window))
        ends = [h.start, *sorted(r.end for r in window if r.ok)]
        h.longest_gap = max((b - a for a, b in itertools.pairwise(ends)), default=None)


def run_kind(kind: str, args: argparse.Namespace, deadline: Deadline,
             directory: Path) -> dict[str, Any]:
    directory.mkdir()
    cluster = Cluster(kind, directory, args.rate, args.timeout, trace=args.trace,
                      carpd_mode=args.carpd_mode, carpd_src=args.carpd_src)
    handovers: list[Handover] = []
    requests_path = directory / "requests.log"
    error = None
    baseline: list[Request] = []
    try:
        cluster.setup()
        print(f"[{time.strftime('%H:%M:%S')}] {kind}: {cluster.mode}", flush=True)
        client = start_client(cluster.procs, cluster.client_node.ns, str(VIP), args.rate,
                              args.timeout, requests_path, max(10.0, deadline.left() + 30),
                              directory / "client.log")
        began = time.time()
        time.sleep(1.0)
        for index in range(args.count):
            if deadline.left() < 10:
                error = f"time budget exhausted after {index} handovers"
                break
            h = cluster.handover(index)
            handovers.append(h)
            print(f"  {kind} #{index + 1}: {h.old} -> {h.new}, takeover "
                  f"{'?' if h.takeover is None else f'{h.takeover * 1000:.0f} ms'}"
                  f"{'  ' + h.error if h.error else ''}", flush=True)
            if h.error:
                error = h.error
                break
        cluster.settle()
        time.sleep(1.0)
        end = time.time()
        Processes.stop(client)
        requests = read_requests(requests_path)
        baseline = [r for r in requests if began <= r.start < (handovers[0].start if handovers
                                                                 else end)]
        analyse(handovers, requests, end)
        if args.trace:
            cluster.procs.close()  # flush the captures
            timeline(directory, handovers, requests)
    except Exception as exc:  # reported in the table and the JSON
        error = f"{type(exc).__name__}: {exc}"
        print(f"  {kind}: {error}", flush=True)
    finally:
        cluster.close()
    failed = [h.failed for h in handovers]
    return {
        "kind": kind,
        "mode": cluster.mode,
        "error": error,
        "handovers": [asdict(h) for h in handovers],
        "baseline_failed": sum(not r.ok for r in baseline),
        "failed_per_handover": summary(failed),
        "failed_total": sum(failed),
        "sent_total": sum(h.sent for h in handovers),
        "takeover_s": summary([h.takeover for h in handovers if h.takeover is not None]),
        "longest_gap_s": summary([h.longest_gap for h in handovers
                                  if h.longest_gap is not None]),
        "outcomes": dict(sum((collections.Counter(h.outcomes) for h in handovers),
                             collections.Counter())),
    }


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nPlanned handovers: {args.count} per implementation, client {args.rate:g} req/s "
          f"to {VIP}:8080, timeout {args.timeout:g} s, advbase 1")
    rows = []
    for kind, r in results.items():
        rows.append([
            kind,
            fmt(r["failed_per_handover"]),
            f"{r['failed_total']}/{r['sent_total']}",
            fmt(r["takeover_s"], 1000, " ms"),
            fmt(r["longest_gap_s"], 1000, " ms"),
        ])
    print(table(["engine", "failed requests per handover", "failed/sent",
                 "takeover (1st advert of new)", "longest gap w/o success"], rows))
    for kind, r in results.items():
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        print(f"{kind}: {r['mode']}")
        print(f"    outcomes: {outcomes or 'none'}; failures before the first handover: "
              f"{r['baseline_failed']}{'; ERROR: ' + r['error'] if r['error'] else ''}")
    print(machine_line())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20, help="handovers per implementation")
    parser.add_argument("--quick", action="store_true", help="3 handovers per implementation")
    parser.add_argument("--rate", type=float, default=100.0, help="client requests per second")
    parser.add_argument("--timeout", type=float, default=0.5, help="per-request timeout, s")
    parser.add_argument("--only", choices=("carpd", "ucarp"), help="run one implementation")
    parser.add_argument("--carpd-mode", choices=("auto", "hooks", "direct"), default="auto",
                        help="carpd through our ifupdown hooks, started directly, or the hooks "
                             "when they work (default)")
    parser.add_argument("--carpd-src", type=Path,
                        help="import carpd from this folder (holding a carpd/ package) instead "
                             "of the installed one: to measure a change before it lands")
    parser.add_argument("--max-seconds", type=float, default=290.0,
                        help="time budget of the whole run")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--keep", help="keep logs and request records in this folder")
    parser.add_argument("--trace", action="store_true",
                        help="with --keep: also a pcap of the bridge, the nodes' address "
                             "changes and the client's ARP cache changes")
    args = parser.parse_args()
    if args.quick:
        args.count = min(args.count, 3)
        args.max_seconds = min(args.max_seconds, 58.0)
    if args.trace and not args.keep:
        parser.error("--trace needs --keep DIR")
    if os.geteuid() != 0:
        print("needs root (network namespaces, raw sockets, mounts)", file=sys.stderr)
        return 2
    if not Path(UCARP).exists() or not UCARP_HOOK.exists():
        print(f"needs Debian's ucarp ({UCARP}, {UCARP_HOOK})", file=sys.stderr)
        return 2
    kinds = [args.only] if args.only else ["ucarp", "carpd"]
    deadline = Deadline(args.max_seconds)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="carpd-handover-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for n, kind in enumerate(kinds):
            # share what is left of the budget between the implementations still to run
            share = Deadline(deadline.left() / (len(kinds) - n))
            results[kind] = run_kind(kind, args, share, root / f"{kind}-{os.getpid()}")
    report(results, args)
    write_json(args.json, {"benchmark": "handover", "machine": machine(),
                           "config": {k: v for k, v in vars(args).items() if k != "json"},
                           "results": results})
    return 0 if all(r["error"] is None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
