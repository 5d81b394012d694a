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
  carpd-ifupdown and carpctl from this tree on PATH and in /usr/libexec/carpd and share/ as
  /usr/share/carpd, as the package installs them): ``ifup`` with the same ucarp-* stanza starts
  carpd; handover as for ucarp.

ifup/ifdown run inside the node's namespace in a private mount namespace where our interfaces
file, the node's own /run and hook folders holding only the wanted hook are bind-mounted over the
host's: the host's /etc/network, /run and interfaces are never touched.  Every namespace and
process this starts is removed at the end (by PID), also on failure or Ctrl-C.

``--keep DIR --trace`` keeps, per implementation, a pcap of the bridge, the nodes' address changes,
the client's ARP cache changes and ``timeline.txt``: around each handover, the bow-out advert, the
gratuitous ARPs for the VIP, the VIP added/removed on each node and every failed request, in ms.
``--carpd-src DIR`` measures a carpd package in DIR (e.g. a patched copy) instead of the tree's.
With ``--trace``, each failed request is also classified from the capture of its connection
(SYNs sent, who answered, who reset it; failures.txt).

``--tfo``: the client sends each request in its SYN (TCP Fast Open, ``sendto(MSG_FASTOPEN)``),
the servers accept data in the SYN (``TCP_FASTOPEN``), ``net.ipv4.tcp_fastopen=3`` is set in
the test's namespaces only; the table shows how many SYNs carried data and were accepted.
``--runs N`` runs the whole comparison N times on fresh test beds, with a total per engine.

    .venv/bin/python -m bench.handover [--count 20] [--quick] [--tfo] [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import itertools
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    CARPD_HOOKS,
    POLL,
    Bed,
    Deadline,
    Ifupdown,
    Processes,
    Request,
    add_counts,
    bench_main,
    between,
    enable_fastopen,
    engine_running,
    fmt,
    hand_overs,
    listed,
    machine_line,
    read_requests,
    stanza,
    start_server,
    summary,
    table,
    tcp_counters,
)
from lab.netns import PASSWORD, UCARP, VIP, Node
from lab.poll import Timeout, wait_for

UCARP_HOOK = Path("/etc/network/if-up.d/ucarp")
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


class Cluster(Bed):
    """Two server nodes and a client on one bridge, with one engine kind on both nodes, each
    run through its ifupdown integration; ``stanza_extra``: more ucarp-* lines for eth0."""

    def __init__(self, kind: str, directory: Path, rate: float, timeout: float,
                 trace: bool = False, carpd_src: Path | None = None,
                 stanza_extra: Sequence[str] = (), fastopen: bool = False) -> None:
        super().__init__(directory, prefix="carpbh")
        self.kind = kind
        self.fastopen = fastopen
        self.carpd_src = carpd_src
        self.trace = trace
        self.rate = rate
        self.timeout = timeout
        self.stanza_extra = list(stanza_extra)
        self.mode = ""
        self.ifupdown: dict[str, Ifupdown] = {}

    def setup(self) -> None:
        self.add_nodes()
        if self.fastopen:
            for node in (*self.nodes.values(), self.client_node):
                enable_fastopen(node.ns)
        for name, node in self.nodes.items():
            start_server(self.procs, node.ns, name, self.directory / f"server-{name}.log",
                         self.fastopen)
        if self.trace:
            self._start_trace()
        if self.kind == "ucarp":
            self.mode = "ucarp via Debian's if-up.d/ucarp + vip-up/vip-down; handover: ifdown/ifup"
            self._configure({"if-up.d": [UCARP_HOOK]})
        else:
            self.mode = ("carpd via our if-up.d/if-down.d hooks + ucarp-* stanza; "
                         "handover: ifdown/ifup")
            up, down = CARPD_HOOKS
            self._configure({"if-up.d": [up], "if-down.d": [down]}, carpd_commands=True)
            if self.carpd_src:
                self.mode += f" [carpd imported from {self.carpd_src}]"
        self._bring_up()

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
                stanza(str(node.address), str(VIP), PASSWORD.decode(),
                       extra_lines=self.stanza_extra),
                hooks, carpd_commands, self.carpd_src)
            # ifupdown owns eth0 from now on
            node.exec("ip", "addr", "flush", "dev", "eth0")
            node.exec("ip", "link", "set", "eth0", "down")

    def macs(self) -> dict[str, str]:
        """MAC address -> node name (the client too), as tcpdump prints them."""
        nodes = {**self.nodes, "client": self.client_node}
        return {node.mac.hex(":"): name for name, node in nodes.items()}

    def engine_running(self, name: str) -> bool:
        return engine_running(self.nodes[name].ns, self.kind)

    def ifup(self, name: str) -> None:
        """``ifup eth0`` on ``name``: its engine runs within 5 s, or RuntimeError."""
        self.ifupdown[name].must("ifup")
        try:
            wait_for(lambda: self.engine_running(name), 5, POLL,
                     what=f"{self.kind} running on {name}")
        except Timeout:
            raise RuntimeError(f"ifup eth0 on {name} started no {self.kind}") from None

    def _bring_up(self) -> None:
        self.ifup("a")
        try:
            wait_for(lambda: self.net.holders() == [self.a], 8, POLL, what="a the MASTER")
        except Timeout:
            raise RuntimeError("a never became MASTER") from None
        self.ifup("b")
        self.settle()

    def settle(self, timeout: float = 15) -> Node:
        """Exactly one node holds the VIP, unchanged for SETTLE s, both engines running."""
        return self.settle_on(lambda: all(self.engine_running(n) for n in self.nodes), SETTLE,
                              timeout)

    # ---- one handover -----------------------------------------------------------------------

    def handover(self, index: int) -> Handover:
        old = self.settle()
        new = self.peer(old)
        start = time.time()
        record = Handover(index, old.name, new.name, start, "ifdown/ifup")
        self.ifupdown[old.name].must("ifdown")
        try:
            wait_for(lambda: self.net.holders() == [new], 15, POLL, what=f"{new.name} the MASTER")
        except Timeout:
            record.error = "the peer did not take over within 15 s"
        with contextlib.suppress(Timeout):
            first = wait_for(lambda: self.net.capture.frames(source=new.address, since=start), 5,
                             POLL, what=f"an advert from {new.name}")
            record.takeover = first[0].time - start
        with contextlib.suppress(Timeout):
            wait_for(lambda: not self.engine_running(old.name), 10, POLL,
                     what=f"{old.name}'s engine gone")
        self.ifup(old.name)
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


SEGMENT = re.compile(r"^(\S+) (\S+) > \S+, .*?: \S+\.(\d+) > \S+\.(\d+): Flags \[([^\]]*)\]")


def classify(directory: Path, requests: list[Request], macs: dict[str, str]) -> dict[str, int]:
    """With --trace: each failed request by what the bridge saw of its connection (its
    client port): how many SYNs the client sent (more than one: retransmitted), who answered
    with a SYN-ACK and who reset it (by the sender's MAC: node a, b or the client).  Counts
    by kind; the list in failures.txt."""
    failed = [r for r in requests if not r.ok and r.outcome != "unfinished" and r.port]
    if not failed:
        return {}
    dump = subprocess.run(
        ["tcpdump", "-r", str(directory / "bridge.pcap"), "-n", "-tt", "-e",
         "tcp port 8080 and tcp[tcpflags] & (tcp-syn|tcp-rst) != 0"],
        capture_output=True, text=True, timeout=120, check=False).stdout
    seen: dict[int, list[tuple[float, str]]] = collections.defaultdict(list)
    for line in dump.splitlines():
        m = SEGMENT.match(line)
        if not m:
            continue
        when, who = float(m.group(1)), macs.get(m.group(2), m.group(2))
        sport, dport, flags = int(m.group(3)), int(m.group(4)), m.group(5)
        if flags == "S":
            seen[sport].append((when, "SYN"))
        elif "R" in flags:
            seen[dport].append((when, f"RST from {who}"))
        elif flags == "S.":
            seen[dport].append((when, f"SYN-ACK from {who}"))
    kinds: collections.Counter[str] = collections.Counter()
    lines = []
    for r in failed:
        port = r.port
        # a port comes back in later connections: this request's own segments only
        events = [e for t, e in seen.get(port, []) if r.start - 0.01 <= t <= r.end + 0.05]
        syns = events.count("SYN")
        others = sorted(set(e for e in events if e != "SYN"))
        kind = (f"{r.outcome}: {syns} SYN{'s (retransmitted)' if syns > 1 else ''}"
                f"{', ' if others else ''}{', '.join(others)}")
        kinds[kind] += 1
        lines.append(f"{r.start:.6f} port {port} {kind}")
    (directory / "failures.txt").write_text("\n".join(lines) + "\n")
    return dict(kinds)


FIN_LATE = 1.0


@dataclass
class _Connection:
    served_by: str = ""
    """The MAC that answered the SYN."""
    sent_to: set[str] = field(default_factory=set)
    """The MACs the client's segments after the SYN went to."""
    first_fin: float | None = None
    """When the client sent its first FIN."""
    fin_reached_server: float | None = None
    """When a FIN of the client first reached the MAC that served it (straight, or passed
    on)."""

    def fin_late(self) -> bool:
        """The client's FIN reached the node serving it only a second later (a
        retransmission that went there once the ARP caches moved back), or never."""
        if self.fin_reached_server is None or self.first_fin is None:
            return True
        return self.fin_reached_server - self.first_fin > FIN_LATE


def strays(directory: Path, macs: dict[str, str]) -> dict[str, int]:
    """With --trace: the connections one node answered whose later segments the client sent to
    the other node (in flight when the client's ARP cache moved: the new MASTER must pass
    them on), and of those, the ones whose closing FIN reached the node serving them only
    late, or never (its socket lingers meanwhile: a connection drain would wait for it; the
    request itself may have succeeded)."""
    dump = subprocess.run(["tcpdump", "-r", str(directory / "bridge.pcap"), "-n", "-tt", "-e",
                           "tcp port 8080"], capture_output=True, text=True, timeout=300,
                          check=False).stdout
    client = next((mac for mac, name in macs.items() if name == "client"), "")
    connections: dict[int, list[_Connection]] = collections.defaultdict(list)
    for line in dump.splitlines():
        m = SEGMENT.match(line)
        if not m:
            continue
        when, source, port, flags = float(m.group(1)), m.group(2), int(m.group(3)), m.group(5)
        destination = line.split(" > ", 1)[1].split(",", 1)[0]
        if port == 8080:  # from a node to the client
            port = int(m.group(4))
            if flags == "S." and connections[port]:
                connections[port][-1].served_by = connections[port][-1].served_by or source
            continue
        if flags == "S" and source == client:
            connections[port].append(_Connection())
            continue
        one = connections[port][-1] if connections[port] else None
        if one is None:
            continue
        if source == client:
            one.sent_to.add(destination)
            if "F" in flags and one.first_fin is None:
                one.first_fin = when
        if "F" in flags and destination == one.served_by and one.fin_reached_server is None:
            one.fin_reached_server = when
    stray = [c for cs in connections.values() for c in cs
             if c.served_by and c.sent_to - {c.served_by}]
    return {"stray connections": len(stray),
            f"their FIN reached the server >{FIN_LATE:g} s late or never":
                sum(c.fin_late() for c in stray)}


def analyse(handovers: list[Handover], requests: list[Request], end: float) -> None:
    for h, window in zip(handovers, between([h.start for h in handovers], requests, end),
                         strict=True):
        h.sent = len(window)
        h.failed = sum(not r.ok for r in window)
        h.outcomes = dict(collections.Counter(r.outcome for r in window))
        ends = [h.start, *sorted(r.end for r in window if r.ok)]
        h.longest_gap = max((b - a for a, b in itertools.pairwise(ends)), default=None)


def run_kind(kind: str, args: argparse.Namespace, deadline: Deadline,
             directory: Path) -> dict[str, Any]:
    directory.mkdir()
    cluster = Cluster(kind, directory, args.rate, args.timeout, trace=args.trace,
                      carpd_src=args.carpd_src, fastopen=args.tfo)
    handovers: list[Handover] = []
    error = None
    baseline: list[Request] = []
    counters: dict[str, dict[str, int]] = {}
    failures: dict[str, int] = {}
    stray: dict[str, int] = {}
    try:
        cluster.setup()
        print(f"[{time.strftime('%H:%M:%S')}] {kind}: {cluster.mode}"
              f"{'; TCP Fast Open' if args.tfo else ''}", flush=True)
        client = cluster.start_load(args.rate, args.timeout, deadline.left() + 30, args.tfo)
        began = time.time()
        time.sleep(1.0)
        handovers, error = hand_overs(kind, args.count, deadline, 10, cluster.handover,
                                      _described)
        cluster.settle()
        time.sleep(1.0)
        end = time.time()
        Processes.stop(client)
        requests = read_requests(cluster.requests_path)
        baseline = [r for r in requests if began <= r.start < (handovers[0].start if handovers
                                                                 else end)]
        analyse(handovers, requests, end)
        counters = {name: tcp_counters(node.ns)
                    for name, node in [*cluster.nodes.items(), ("client", cluster.client_node)]}
        if args.trace:
            cluster.procs.close()  # flush the captures
            timeline(directory, handovers, requests)
            failures = classify(directory, requests, cluster.macs())
            stray = strays(directory, cluster.macs())
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
        "outcomes": add_counts(h.outcomes for h in handovers),
        "tcp_counters": counters,
        "failures": failures,
        "strays": stray,
    }


def _described(h: Handover) -> str:
    return (f"{h.old} -> {h.new}, takeover "
            f"{'?' if h.takeover is None else f'{h.takeover * 1000:.0f} ms'}")


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nPlanned handovers: {args.count} per implementation"
          f"{f' in each of {args.runs} runs' if args.runs > 1 else ''}, client {args.rate:g} "
          f"req/s to {VIP}:8080{' with TCP Fast Open' if args.tfo else ''}, timeout "
          f"{args.timeout:g} s, advbase 1")
    rows = [[label, fmt(r["failed_per_handover"]), f"{r['failed_total']}/{r['sent_total']}",
             fmt(r["takeover_s"], 1000, " ms"), fmt(r["longest_gap_s"], 1000, " ms"),
             fastopen_line(r.get("tcp_counters", {}))]
            for label, r in results.items()]
    if args.runs > 1:
        rows += [total_row(kind, [r for r in results.values() if r["kind"] == kind])
                 for kind in dict.fromkeys(r["kind"] for r in results.values())]
    print(table(["engine", "failed requests per handover", "failed/sent",
                 "takeover (1st advert of new)", "longest gap w/o success",
                 "TFO data in SYN accepted/sent, client SYN retransmits"], rows))
    for label, r in results.items():
        print(f"{label}: {r['mode']}")
        print(f"    outcomes: {listed(r['outcomes'])}; failures before the first handover: "
              f"{r['baseline_failed']}{'; ERROR: ' + r['error'] if r['error'] else ''}")
        if r.get("failures"):
            print(f"    failures as the bridge saw them: {listed(r['failures'])}")
        if r.get("strays"):
            print(f"    connections across the ARP move: {listed(r['strays'])}")
    print(machine_line())


def fastopen_line(counters: dict[str, dict[str, int]]) -> str:
    """Data in SYNs the servers accepted / SYNs with data the client sent (a SYN with a cookie
    the new MASTER did not issue is refused: the data goes again once connected), and the
    client's SYN retransmissions."""
    if not counters:
        return "-"
    client = counters.get("client", {})
    servers = [c for n, c in counters.items() if n != "client"]
    accepted = sum(c.get("TCPFastOpenPassive", 0) for c in servers)
    refused = sum(c.get("TCPFastOpenPassiveFail", 0) for c in servers)
    return (f"{accepted}/{client.get('TCPFastOpenActive', 0)} ({refused} refused), "
            f"{client.get('TCPSynRetrans', 0)}")


def total_row(kind: str, runs: list[dict[str, Any]]) -> list[str]:
    per_run = [r["failed_total"] for r in runs]
    return [f"{kind}, {len(runs)} runs", f"per run: {' '.join(map(str, per_run))}",
            f"{sum(per_run)}/{sum(r['sent_total'] for r in runs)}", "", "",
            f"{sum(len(r['handovers']) for r in runs)} hand-overs"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20, help="handovers per implementation")
    parser.add_argument("--quick", action="store_true", help="3 handovers per implementation")
    parser.add_argument("--runs", type=int, default=1,
                        help="the whole comparison this many times, each on a fresh test bed")
    parser.add_argument("--rate", type=float, default=100.0, help="client requests per second")
    parser.add_argument("--timeout", type=float, default=0.5, help="per-request timeout, s")
    parser.add_argument("--tfo", action="store_true",
                        help="TCP Fast Open: the client sends each request in its SYN "
                             "(MSG_FASTOPEN), the servers accept it (TCP_FASTOPEN), "
                             "net.ipv4.tcp_fastopen=3 in the test's namespaces only")
    parser.add_argument("--only", choices=("carpd", "ucarp"), help="run one implementation")
    parser.add_argument("--carpd-src", type=Path,
                        help="import carpd from this folder (holding a carpd/ package) instead "
                             "of the installed one: to measure a change before it lands")
    parser.add_argument("--max-seconds", type=float, default=290.0,
                        help="time budget of each run")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--keep", help="keep logs and request records in this folder")
    parser.add_argument("--trace", action="store_true",
                        help="with --keep: also a pcap of the bridge, the nodes' address "
                             "changes and the client's ARP cache changes")
    args = parser.parse_args(argv)
    if args.quick:
        args.count = min(args.count, 3)
        args.max_seconds = min(args.max_seconds, 58.0)
    if args.trace and not args.keep:
        parser.error("--trace needs --keep DIR")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main() -> int:
    return bench_main("handover", parse(), run_kind, report, needs=(Path(UCARP), UCARP_HOOK))


if __name__ == "__main__":
    sys.exit(main())
