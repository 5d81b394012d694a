"""Fault campaign: inject faults into a 2-node cluster run through ifupdown, check after each one
that exactly one node holds the VIP within master-down + 1 s and that nothing is left behind;
carpd against Debian's ucarp in the same run, where the fault applies.

Each implementation runs on two nodes (lab/netns.py: a bridge in a switch namespace, one
namespace per node) brought up by the real ``ifup eth0`` with the same ucarp-* stanza (advbase 1,
advskew 0 and 10, no preemption): carpd through our if-up.d/if-down.d hooks (without a booted
systemd the hook runs ``carpd-ifupdown supervise eth0``, whose engine forks its watchdog), ucarp
through Debian's if-up.d/ucarp (Debian ships no if-down hook).  ifup/ifdown run in private mount
namespaces over the node's own /run and hook folders (bench/common.py's Ifupdown): the host's
/etc/network and /run are never touched.  The up/down scripts (``ucarp-upscript``/``-downscript``)
are wrappers around each one's default action (``ifup/ifdown eth0:ucarp``) that a fault can make
slow, hang after their work, or leave a child in the background.

Faults are drawn with a seeded RNG, in shuffled rounds of every kind (so ``--quick`` covers each
kind once).  For each: inject; watch the VIP holders from the fault (for a lasting fault, from its
end); check; heal.  A fault is *recovered* when exactly one node holds the VIP from a moment no
later than master-down + 1 s after the fault, the same node until at least AFTER s past that
limit (a late takeover counts), and the checks find nothing wrong:

- no VIP on a node without a live engine,
- no nftables table ``carpd_*`` left on a node (every drain is over by then),
- no orphaned process (one no engine, supervisor or ucarp descends from),
- ifupdown's state lists ``eth0:ucarp`` exactly on the node that holds the VIP,
- no stale file in /run/carpd (a socket without its engine, a leftover temporary, ...),
- after an ``ifdown eth0`` (the fault's or the heal's): no process, VIP, nftables table, state
  entry or /run/carpd file but the log and the hook lock is left on the node.

Healing undoes the fault (link up, loss, delay and isolation removed, script modes disarmed), kills
leftover script processes, restarts a node through ``ifdown``/``ifup`` when its engine is
missing, and waits for a healthy cluster before the next fault (a node that does not get there
is reset by force, which is noted).

``systemctl restart networking`` needs a booted systemd and is not injected here (see the
README paragraph written with the results).

    .venv/bin/python -m bench.faults [--count 100] [--quick] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.common import (
    CARPD_HOOKS,
    REPO,
    Background,
    Deadline,
    Ifupdown,
    cmdline,
    kill_namespace_processes,
    machine,
    machine_line,
    table,
    write_json,
)
from lab.netns import PASSWORD, UCARP, VIP, Network, Node, in_netns, netns_pids
from lab.poll import Timeout, wait_for

UCARP_HOOK = Path("/etc/network/if-up.d/ucarp")
ACTIONS = {"carpd": {"up": "/usr/share/carpd/vip-up", "down": "/usr/share/carpd/vip-down"},
           "ucarp": {"up": "/usr/share/ucarp/vip-up", "down": "/usr/share/ucarp/vip-down"}}
T = TypeVar("T")
ADVBASE = 1
SKEWS = {"a": 0, "b": 10}
ADDRESSES = {"a": "10.9.0.1", "b": "10.9.0.2"}
MASTER_DOWN = max(3 * ADVBASE + skew / 256 for skew in SKEWS.values())
LIMIT = MASTER_DOWN + 1.0
"""Exactly one holder from no later than this after the fault (or its end)."""
HOLD = max(3.0, MASTER_DOWN)
"""After SIGUSR2 a node stays BACKUP this long (carpd: max(3 s, master-down); ucarp: 3 s)."""
STABLE = 1.0
AFTER = 2.0
"""The single holder must stay the same at least this long past LIMIT: a late takeover counts."""
LATE = 8.0
"""How long past LIMIT an unrecovered fault is still watched, to tell late from never."""
SLOW = 1.5
BACKGROUND_CHILD = "sleep 3599"
"""What a backgrounding script leaves: the script's own doing, not an orphan of the engine."""
VHID = 1

WRAPPER = """#!/bin/sh
# bench/faults.py: {event} action of node {node}, around {action}.  A fault arms it (one run)
# by writing a mode into {mode}: "slow S" waits S s first, "hang" hangs after the work,
# "background" leaves a child holding the script's output open.
mode=$(cat {mode} 2>/dev/null); rm -f {mode}
echo "$(date +%s.%N) start {event} $$ $mode" >> {marks}
case "$mode" in slow*) sleep "${{mode#slow }}";; esac
{action} "$@"
rc=$?
echo "$(date +%s.%N) done {event} $$ $rc" >> {marks}
case "$mode" in
    hang) sleep 3600;;
    background) {background} &;;
esac
exit $rc
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sh(*argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)


# ---- the faults to inject ---------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One drawn fault: its kind and the random parts, drawn before any is injected."""

    index: int
    kind: str
    role: str
    """"master" or "backup": the node it hits, as the cluster stands when it is injected."""
    phase: float
    """Random moment: seconds (0 to advbase) waited before injecting."""
    duration: float
    """Lasting faults: how long they last; others: a random extra delay."""
    amount: float
    """Loss in % (20 to 60); delay: amount / 40 s (0.5 to 1.5 s)."""


@dataclass
class Outcome:
    index: int
    kind: str
    engine: str
    detail: str = ""
    recovery: float | None = None
    """From the fault (or its end) to the start of the final stretch with exactly one holder."""
    most_holders: int = 0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def recovered(self) -> bool:
        return self.recovery is not None and self.recovery <= LIMIT and not self.violations


@dataclass
class Procs:
    """What runs in a node's namespace, by role."""

    supervisors: list[int] = field(default_factory=list)
    engines: list[int] = field(default_factory=list)
    watchdogs: list[int] = field(default_factory=list)
    ucarps: list[int] = field(default_factory=list)
    scripts: list[tuple[int, str]] = field(default_factory=list)
    """Processes an engine, a supervisor or ucarp descends from (scripts it runs)."""
    background: list[int] = field(default_factory=list)
    orphans: list[tuple[int, str]] = field(default_factory=list)


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def shown(argv: list[str]) -> str:
    """A command line fit for a report: Debian's ucarp hook puts the password on it."""
    return " ".join("<password>" if argv[i - 1:i] == ["-p"] else a for i, a in enumerate(argv))


def classify(ns: str) -> Procs:
    procs = Procs()
    others: dict[int, str] = {}
    for pid in netns_pids(ns):
        argv = cmdline(pid)
        text = shown(argv)
        if not argv:
            continue
        if "carpd.debian.ifupdown.main" in text and "supervise" in argv:
            procs.supervisors.append(pid)
        elif "carpd.engine.watchdog" in argv or any(a.endswith("/carpd/engine/watchdog.py")
                                                           for a in argv[:4]):
            procs.watchdogs.append(pid)
        elif "--config" in argv and any(Path(a).name == "carpd" for a in argv[:3]):
            procs.engines.append(pid)
        elif Path(argv[0]).name == "ucarp":
            procs.ucarps.append(pid)
        elif text == BACKGROUND_CHILD:
            procs.background.append(pid)
        else:
            others[pid] = text
    owners = {*procs.supervisors, *procs.engines, *procs.ucarps}
    for pid, text in others.items():
        ancestor = pid
        for _ in range(20):
            ancestor = _parent(ancestor)
            if ancestor in owners or ancestor <= 1:
                break
        (procs.scripts if ancestor in owners else procs.orphans).append((pid, text))
    return procs


# ---- one cluster --------------------------------------------------------------------------------


class Cluster:
    def __init__(self, engine: str, directory: Path) -> None:
        self.engine = engine
        self.directory = directory
        self.net = Network(directory, prefix="carpfl")
        self.nodes: dict[str, Node] = {}
        self.ifupdown: dict[str, Ifupdown] = {}
        self.down: set[str] = set()
        """Nodes a fault took down with ifdown: the heal brings them up again."""
        self.ifdowns: dict[str, Background[int]] = {}

    def close(self) -> None:
        kill_namespace_processes(n.ns for n in self.nodes.values())
        self.net.close()

    # ---- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        for name, address in ADDRESSES.items():
            node = self.net.add_node(address, name)
            self.nodes[name] = node
            folder = self.directory / f"ifupdown-{name}"
            hooks: dict[str, Sequence[Path]] = ({"if-up.d": [UCARP_HOOK]} if self.engine == "ucarp"
                     else {"if-up.d": [CARPD_HOOKS[0]], "if-down.d": [CARPD_HOOKS[1]]})
            self.ifupdown[name] = Ifupdown(node.ns, folder, self._stanza(name, folder), hooks,
                                           carpd_commands=self.engine == "carpd")
            node.exec("ip", "addr", "flush", "dev", "eth0")
            node.exec("ip", "link", "set", "eth0", "down")
        for name in self.nodes:
            self.ifup(name)
            if name == "a":
                wait_for(lambda: self.holders() == ["a"], 10, 0.02,
                         what=f"{self.engine}: a MASTER", detail=self.holders)
        if not self.wait_healthy(20):
            raise RuntimeError(f"{self.engine}: the cluster never became healthy: "
                               f"{self.health_problems()}")

    def _stanza(self, name: str, folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        scripts = {}
        for event, action in ACTIONS[self.engine].items():
            path = folder / f"fault-{event}"
            path.write_text(WRAPPER.format(event=event, node=name, action=action,
                                           mode=folder / f"mode-{event}",
                                           marks=folder / "marks", background=BACKGROUND_CHILD))
            path.chmod(0o755)
            scripts[event] = path
        return f"""# written by bench/faults.py for node {name}
iface eth0 inet static
    address {ADDRESSES[name]}/16
    ucarp-vid {VHID}
    ucarp-vip {VIP}
    ucarp-password {PASSWORD.decode()}
    ucarp-advskew {SKEWS[name]}
    ucarp-advbase {ADVBASE}
    ucarp-upscript {scripts["up"]}
    ucarp-downscript {scripts["down"]}

iface eth0:ucarp inet static
    address {VIP}
    netmask 255.255.255.255
"""

    # ---- looking -------------------------------------------------------------------------

    def holds(self, name: str) -> bool:
        out = sh("ip", "-n", self.nodes[name].ns, "-o", "-4", "addr", "show", "dev", "eth0").stdout
        return f" {VIP}/" in out

    def holders(self) -> list[str]:
        return [name for name in self.nodes if self.holds(name)]

    def procs(self, name: str) -> Procs:
        return classify(self.nodes[name].ns)

    def engine_pids(self, name: str) -> list[int]:
        procs = self.procs(name)
        return procs.engines if self.engine == "carpd" else procs.ucarps

    def nft_tables(self, name: str) -> list[str]:
        out = sh("ip", "netns", "exec", self.nodes[name].ns, "nft", "list", "tables").stdout
        return [line.split()[-1] for line in out.splitlines()
                if line.split() and line.split()[-1].startswith("carpd_")]

    def state_has(self, name: str, logical: str) -> bool:
        """ifupdown records ``logical`` as up (an ``IFACE=LOGICAL`` line in its state)."""
        path = self.ifupdown[name].state / "ifstate"
        lines = path.read_text().split() if path.exists() else []
        return any(line.split("=")[0] == logical for line in lines)

    def run_files(self, name: str) -> list[str]:
        folder = self.ifupdown[name].run_dir / "carpd"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    def marks(self, name: str) -> list[list[str]]:
        path = self.ifupdown[name].directory / "marks"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def wait_mark(self, name: str, word: str, event: str, since: float,
                  timeout: float) -> float | None:
        def found() -> float | None:
            for fields in self.marks(name):
                if fields[1:3] == [word, event] and float(fields[0]) >= since:
                    return float(fields[0])
            return None
        try:
            return wait_for(found, timeout, 0.01, what=f"{name}: {word} {event}")
        except Timeout:
            return None

    def roles(self) -> dict[str, str]:
        holders = self.holders()
        if len(holders) != 1:
            raise RuntimeError(f"no single holder: {holders}")
        master = holders[0]
        return {"master": master, "backup": next(n for n in self.nodes if n != master)}

    # ---- acting ----------------------------------------------------------------------------

    def ifup(self, name: str) -> None:
        self.ifupdown[name].must("ifup")

    def ifdown(self, name: str) -> int:
        return self.ifupdown[name].run("ifdown")

    def ifdown_in_background(self, name: str) -> Background[int]:
        self.down.add(name)
        job = Background(lambda: self.ifdown(name))
        self.ifdowns[name] = job
        return job

    def arm(self, name: str, event: str, mode: str) -> None:
        (self.ifupdown[name].directory / f"mode-{event}").write_text(mode)

    def disarm(self) -> None:
        for name in self.nodes:
            for event in ("up", "down"):
                with contextlib.suppress(FileNotFoundError):
                    (self.ifupdown[name].directory / f"mode-{event}").unlink()

    def kill(self, pids: list[int], signum: int = signal.SIGKILL) -> float:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        return time.time()

    def demote(self, name: str) -> float:
        """SIGUSR2: carpd and ucarp both step down to BACKUP (and stay there HOLD s)."""
        return self.kill(self.engine_pids(name), signal.SIGUSR2)

    # ---- health ----------------------------------------------------------------------------

    def engine_problems(self, name: str) -> list[str]:
        procs = self.procs(name)
        if self.engine == "ucarp":
            counts = {"ucarp": len(procs.ucarps)}
        else:
            counts = {"supervisor": len(procs.supervisors), "engine": len(procs.engines),
                      "watchdog": len(procs.watchdogs)}
        problems = [f"{name}: {n} {what}" for what, n in counts.items() if n != 1]
        problems += [f"{name}: script running: {text}" for _pid, text in procs.scripts]
        problems += [f"{name}: orphan: {text}" for _pid, text in procs.orphans]
        return problems

    def health_problems(self) -> list[str]:
        problems = [p for name in self.nodes for p in self.engine_problems(name)]
        holders = self.holders()
        if len(holders) != 1:
            problems.append(f"holders: {holders}")
        for name in self.nodes:
            if self.state_has(name, "eth0:ucarp") != (name in holders):
                problems.append(f"{name}: ifupdown state and VIP disagree")
            if self.nft_tables(name):
                problems.append(f"{name}: nft {self.nft_tables(name)}")
        return problems

    def wait_healthy(self, timeout: float) -> bool:
        def healthy() -> bool:
            if self.health_problems():
                return False
            holders = self.holders()
            time.sleep(STABLE)
            return self.holders() == holders and not self.health_problems()
        try:
            return wait_for(healthy, timeout, 0.2, what="a healthy cluster")
        except Timeout:
            return False


# ---- watching and checking ----------------------------------------------------------------------


def observe(cluster: Cluster, ref: float, outcome: Outcome) -> None:
    """Watch the holders from ``ref`` on; set the recovery time (None: not within LATE)."""
    since: float | None = None
    current: list[str] = []
    end = ref + LIMIT + LATE
    while True:
        now = time.time()
        holders = cluster.holders()
        outcome.most_holders = max(outcome.most_holders, len(holders))
        if len(holders) == 1 and holders == current and since is not None:
            pass
        elif len(holders) == 1:
            since = now
        else:
            since = None
        current = holders
        if since is not None and now - since >= STABLE and now >= ref + LIMIT + AFTER:
            outcome.recovery = max(0.0, since - ref)
            return
        if now >= end:
            return
        time.sleep(0.04)


def check_node(cluster: Cluster, name: str, outcome: Outcome) -> None:
    procs = cluster.procs(name)
    holds = cluster.holds(name)
    alive = procs.engines if cluster.engine == "carpd" else procs.ucarps
    if holds and not alive:
        outcome.violations.append(f"{name}: VIP held without a live engine")
    for table_name in cluster.nft_tables(name):
        outcome.violations.append(f"{name}: nftables table {table_name} left (no drain running)")
    for pid, text in procs.orphans:
        outcome.violations.append(f"{name}: orphaned process {pid}: {text}")
    for pid, text in procs.scripts:
        outcome.notes.append(f"{name}: script still running: {pid} {text}")
    if cluster.state_has(name, "eth0:ucarp") != holds:
        outcome.violations.append(
            f"{name}: ifupdown state {'lists' if not holds else 'lacks'} eth0:ucarp but the VIP "
            f"is {'not ' if not holds else ''}there")
    if cluster.engine == "carpd" and name not in cluster.down:
        outcome.violations += stale_files(cluster, name, procs)
    if not alive and name not in cluster.down:
        outcome.notes.append(f"{name}: no engine running (redundancy lost until the heal)")


def stale_files(cluster: Cluster, name: str, procs: Procs) -> list[str]:
    allowed = {"eth0.log", "eth0.hook"}
    if procs.supervisors or cluster.state_has(name, "eth0"):
        # eth0.groups: every group ifupdown has up, kept with the conf (src/carpd/debian/ifupdown)
        allowed |= {"eth0.conf", "eth0.env", "eth0.supervisor", "eth0.groups"}
    if procs.engines:
        allowed |= {f"eth0.{VHID}.sock", "eth0.sock"}  # a group's socket, the interface's
    return [f"{name}: stale file /run/carpd/{f}" for f in cluster.run_files(name)
            if f not in allowed]


def check_after_ifdown(cluster: Cluster, name: str, outcome: Outcome, what: str) -> None:
    """Nothing of the engine may be left once ``ifdown eth0`` returned."""
    def leftovers() -> list[str]:
        procs = cluster.procs(name)
        left = [f"process {pid} {shown(cmdline(pid))}" for pid in cluster_pids(procs)]
        if cluster.holds(name):
            left.append("the VIP")
        left += [f"nftables table {t}" for t in cluster.nft_tables(name)]
        left += [f"ifupdown state {logical}" for logical in ("eth0", "eth0:ucarp")
                 if cluster.state_has(name, logical)]
        left += [f"/run/carpd/{f}" for f in cluster.run_files(name)
                 if f not in ("eth0.log", "eth0.hook")]
        return left

    with contextlib.suppress(Timeout):
        wait_for(lambda: not leftovers(), 2.0, 0.1, what=f"{name} clean after {what}")
        return
    for item in leftovers():
        outcome.violations.append(f"{name}: after {what}: {item} left")


def cluster_pids(procs: Procs) -> list[int]:
    return [*procs.supervisors, *procs.engines, *procs.watchdogs, *procs.ucarps,
            *(pid for pid, _ in procs.scripts), *(pid for pid, _ in procs.orphans)]


def check(cluster: Cluster, outcome: Outcome) -> None:
    for name, job in list(cluster.ifdowns.items()):
        if not job.join(60):
            outcome.violations.append(f"{name}: ifdown eth0 still running after 60 s")
            continue
        took = (job.ended or job.started) - job.started
        outcome.notes.append(f"{name}: ifdown eth0 took {took:.2f} s (status {job.result})")
        check_after_ifdown(cluster, name, outcome, "the fault's ifdown eth0")
    cluster.ifdowns.clear()
    for name in cluster.nodes:
        check_node(cluster, name, outcome)


# ---- the kinds of fault -------------------------------------------------------------------------


Inject = Callable[[Cluster, Fault, Outcome], float]
"""Injects a fault; returns the wall time recovery is measured from."""


def kill_targets(cluster: Cluster, name: str, what: str) -> list[int]:
    procs = cluster.procs(name)
    if cluster.engine == "ucarp":
        return procs.ucarps
    return {"engine": procs.engines, "supervisor": procs.supervisors,
            "watchdog": procs.watchdogs}[what]


def kill_now(cluster: Cluster, name: str, what: str, fault: Fault) -> float:
    """SIGKILL ``what`` on ``name``; the watchdog first, then the engine it guards."""
    if what == "watchdog":
        cluster.kill(kill_targets(cluster, name, "watchdog"))
        time.sleep(0.2 + fault.duration / 10)
        what = "engine"
    return cluster.kill(kill_targets(cluster, name, what))


def kill_steady(what: str) -> Inject:
    def inject(cluster: Cluster, fault: Fault, outcome: Outcome) -> float:
        name = cluster.roles()[fault.role]
        time.sleep(fault.phase)
        outcome.detail = f"SIGKILL {what} on the {fault.role} {name}"
        return kill_now(cluster, name, what, fault)
    return inject


def kill_mid_script(what: str) -> Inject:
    """SIGUSR2 the MASTER with both nodes' next script slowed; kill while one runs."""
    def inject(cluster: Cluster, fault: Fault, outcome: Outcome) -> float:
        roles = cluster.roles()
        name = roles[fault.role]
        event = "down" if fault.role == "master" else "up"
        cluster.arm(roles["master"], "down", f"slow {SLOW}")
        cluster.arm(roles["backup"], "up", f"slow {SLOW}")
        demoted = cluster.demote(roles["master"])
        started = cluster.wait_mark(name, "start", event, demoted - 0.1, 6.0)
        outcome.detail = (f"SIGUSR2 the master {roles['master']}, SIGKILL {what} on "
                          f"{name} while its {event} script runs")
        if started is None:
            outcome.notes.append(f"{name}: its {event} script did not start within 6 s")
        time.sleep(fault.phase * SLOW / 2)
        killed = kill_now(cluster, name, what, fault)
        return max(killed, demoted + HOLD)
    return inject


def kill_mid_drain(what: str) -> Inject:
    """SIGUSR2 the MASTER; kill while it drains (its nftables ARP rule is in place)."""
    def inject(cluster: Cluster, fault: Fault, outcome: Outcome) -> float:
        name = cluster.roles()["master"]
        cluster.demote(name)
        outcome.detail = f"SIGUSR2 the master {name}, SIGKILL {what} while it drains"
        try:
            wait_for(lambda: cluster.nft_tables(name), 3.0, 0.01, what=f"{name} draining")
        except Timeout:
            outcome.notes.append(f"{name}: no drain seen within 3 s")
        time.sleep(fault.phase)
        return kill_now(cluster, name, what, fault)
    return inject


def link_flap(cluster: Cluster, fault: Fault, outcome: Outcome) -> float:
    name = cluster.roles()[fault.role]
    port = cluster.nodes[name].port
    time.sleep(fault.phase)
    sh("ip", "-n", cluster.net.switch, "link", "set", port, "down", check=True)
    time.sleep(fault.duration / 3)
    sh("ip", "-n", cluster.net.switch, "link", "set", port, "up", check=True)
    outcome.detail = f"carrier lost on the {fault.role} {name} for {fault.duration / 3:.1f} s"
    return time.time()


def admin_down(cluster: Cluster, fault: Fault, outcome: Outcome) -> float:
    name = cluster.roles()[fault.role]
    ns = cluster.nodes[name].ns
    time.sleep(fault.phase)
    sh("ip", "-n", ns, "link", "set", "eth0", "down", check=True)
    time.sleep(fault.duration)
    sh("ip", "-n", ns, "link", "set", "eth0", "up", check=True)
    outcome.detail = f"ip link set eth0 down on the {fault.role} {name} for {fault.duration:.1f} s"
    return time.time()


def vip_deleted(cluster: Cluster, fault: Fault, outcome: Outcome) -> float:
    name = cluster.roles()["master"]
    time.sleep(fault.phase)
    sh("ip", "-n", cluster.nodes[name].ns, "addr", "del", f"{VIP}/32", "dev", "eth0", check=True)
    outcome.detail = f"ip addr del VIP on the master {name}"
    return time.time()


def partition(cluster: Cluster, fault: Fault, outcome: Outcome) -> float:
    time.sleep(fault.phase)
    cluster.net.partition(*cluster.nodes.values())
    time.sleep(fault.duration)
    cluster.net.heal()
    outcome.detail = f"partition of a and b for {fault.duration:.1f} s"
    return time.time()


def lossy(cluster: Cluster, fault: Fault, outcome: Outcome) -> float:
    """Drop ``amount`` % of the frames to and from the node's bridge port, at random (nftables
    numgen in the switch: this kernel has no sch_netem)."""
    name = cluster.roles()[fault.role]
    port = cluster.nodes[name].port
    percent = int(fault.amount)
    rules = (f"add table bridge carpfault {{ chain forward {{ type filter hook forward priority "
             f'0; iifname "{port}" numgen random mod 100 < {percent} drop; '
             f'oifname "{port}" numgen random mod 100 < {percent} drop ; }}; }}')
    time.sleep(fault.phase)
    sh("ip", "netns", "exec", cluster.net.switch, "nft", rules, check=True)
    time.sleep(fault.duration)
    sh("ip", "netns", "exec", cluster.net.switch, "nft", "delete table bridge carpfault",
       check=True)
    outcome.detail = (f"{percent} % loss both ways on the {fault.role} {name} for "
                      f"{fault.duration:.1f} s")
    return time.time()


def delayed(cluster: Cluster, fault: Fault, outcome: Outcome) -> float:
    name = cluster.roles()[fault.role]
    delay = fault.amount / 40
    time.sleep(fault.phase)
    relay = DelayRelay(cluster.net.switch, cluster.nodes[name].port, delay)
    try:
        time.sleep(fault.duration)
    finally:
        relay.close()
    outcome.detail = (f"{delay * 1000:.0f} ms delay both ways on the {fault.role} {name} for "
                      f"{fault.duration:.1f} s")
    return time.time()


class DelayRelay:
    """Every frame to and from a node delayed by ``delay`` s (this kernel has no sch_netem): the
    node's port leaves the bridge, a veth pair takes its place, and two AF_PACKET sockets carry
    the frames across, each after the delay.  Frames whose checksum the sender left to offload
    (TCP and UDP over veth) arrive with a bad one; CARP adverts and ARP, all that matters here,
    carry complete ones."""

    def __init__(self, switch: str, port: str, delay: float) -> None:
        self.switch, self.port, self.delay = switch, port, delay
        self.bridge_end, self.relay_end = f"q0{port}"[:15], f"q1{port}"[:15]
        sh("ip", "-n", switch, "link", "add", self.bridge_end, "type", "veth", "peer", "name",
           self.relay_end, check=True)
        sh("ip", "-n", switch, "link", "set", port, "nomaster", check=True)
        for link in (port, self.relay_end):
            sh("ip", "-n", switch, "link", "set", link, "promisc", "on", "up", check=True)
        sh("ip", "-n", switch, "link", "set", self.bridge_end, "master", "br0", "up", check=True)
        self._stop = threading.Event()
        with in_netns(switch):
            self._node = self._socket(port)
            self._bridge = self._socket(self.relay_end)
        self._threads = [threading.Thread(target=self._carry, args=pair, daemon=True)
                         for pair in ((self._node, self._bridge), (self._bridge, self._node))]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _socket(link: str) -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sock.bind((link, 0))
        sock.settimeout(0.05)
        return sock

    def _carry(self, source: socket.socket, target: socket.socket) -> None:
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                frame, address = source.recvfrom(65535)
                if address[2] != socket.PACKET_OUTGOING:
                    queue.append((time.monotonic() + self.delay, frame))
            while queue and queue[0][0] <= time.monotonic():
                with contextlib.suppress(OSError):
                    target.send(queue.popleft()[1])

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        self._node.close()
        self._bridge.close()
        sh("ip", "-n", self.switch, "link", "del", self.bridge_end)
        sh("ip", "-n", self.switch, "link", "set", self.port, "promisc", "off", "master", "br0",
           "up")


def script_fault(mode: str) -> Inject:
    """The backup's up script misbehaves after its work (hangs, or leaves a child holding its
    output); SIGUSR2 the MASTER so the backup takes over, then SIGUSR2 the backup: the VIP must
    go back."""
    def inject(cluster: Cluster, fault: Fault, outcome: Outcome) -> float:
        roles = cluster.roles()
        cluster.arm(roles["backup"], "up", mode)
        demoted = cluster.demote(roles["master"])
        done = cluster.wait_mark(roles["backup"], "done", "up", demoted - 0.1, 6.0)
        if done is None:
            outcome.notes.append(f"{roles['backup']}: its up script did not finish within 6 s")
        time.sleep(max(0.0, demoted + HOLD + 0.3 + fault.phase - time.time()))
        outcome.detail = (f"up script of {roles['backup']} {mode}s after its work; SIGUSR2 "
                          f"{roles['master']}, then SIGUSR2 {roles['backup']}")
        return cluster.demote(roles["backup"])
    return inject


def ifdown_demoting(cluster: Cluster, fault: Fault, outcome: Outcome) -> float:
    """ifdown eth0 on the MASTER while it steps down (draining or running its down script)."""
    name = cluster.roles()["master"]
    cluster.arm(name, "down", f"slow {SLOW}")
    cluster.demote(name)
    time.sleep(fault.duration / 3)
    outcome.detail = (f"SIGUSR2 the master {name}, ifdown eth0 on it "
                      f"{fault.duration / 3:.1f} s later")
    return cluster.ifdown_in_background(name).started


def ifdown_taking_over(cluster: Cluster, fault: Fault, outcome: Outcome) -> float:
    """ifdown eth0 on the BACKUP while its (slowed) up script runs after the MASTER stepped
    down."""
    roles = cluster.roles()
    cluster.arm(roles["backup"], "up", f"slow {SLOW}")
    demoted = cluster.demote(roles["master"])
    started = cluster.wait_mark(roles["backup"], "start", "up", demoted - 0.1, 6.0)
    if started is None:
        outcome.notes.append(f"{roles['backup']}: its up script did not start within 6 s")
    time.sleep(fault.phase * SLOW / 2)
    outcome.detail = (f"SIGUSR2 the master {roles['master']}, ifdown eth0 on "
                      f"{roles['backup']} during its up script")
    job = cluster.ifdown_in_background(roles["backup"])
    return max(job.started, demoted + HOLD)


@dataclass(frozen=True)
class Kind:
    name: str
    inject: Inject
    engines: tuple[str, ...] = ("carpd", "ucarp")
    roles: tuple[str, ...] = ("master", "backup")


BOTH = ("carpd", "ucarp")
CARPD = ("carpd",)
KINDS = [
    Kind("kill engine", kill_steady("engine")),
    Kind("kill engine mid-script", kill_mid_script("engine")),
    Kind("kill engine mid-drain", kill_mid_drain("engine"), CARPD, ("master",)),
    Kind("kill watchdog, then engine", kill_steady("watchdog"), CARPD),
    Kind("kill watchdog+engine mid-drain", kill_mid_drain("watchdog"), CARPD, ("master",)),
    Kind("kill supervisor", kill_steady("supervisor"), CARPD),
    Kind("kill supervisor mid-script", kill_mid_script("supervisor"), CARPD),
    Kind("kill supervisor mid-drain", kill_mid_drain("supervisor"), CARPD, ("master",)),
    Kind("link flap (carrier)", link_flap),
    Kind("admin link down", admin_down),
    Kind("VIP deleted", vip_deleted, BOTH, ("master",)),
    Kind("partition", partition, BOTH, ("master",)),
    Kind("packet loss", lossy),
    Kind("packet delay", delayed),
    Kind("hung up script", script_fault("hang"), BOTH, ("backup",)),
    Kind("backgrounding up script", script_fault("background"), BOTH, ("backup",)),
    Kind("ifdown while demoting", ifdown_demoting, BOTH, ("master",)),
    Kind("ifdown while taking over", ifdown_taking_over, BOTH, ("backup",)),
]
NOT_INJECTED = {"systemctl restart networking": (
    "needs a booted systemd; tests/ifupdown/test_systemd_boot.py stops and starts "
    "networking.service on one booted trixie node, not a restart in a campaign")}


def draw(count: int, seed: int, only: list[str] | None = None) -> list[Fault]:
    """``count`` faults in shuffled rounds of every kind, the random parts drawn up front."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    while len(faults) < count:
        round_ = [k for k in KINDS if not only or k.name in only]
        rng.shuffle(round_)
        for kind in round_[:count - len(faults)]:
            faults.append(Fault(len(faults), kind.name, rng.choice(kind.roles),
                                rng.uniform(0, ADVBASE), rng.uniform(2.0, 6.0),
                                rng.uniform(20, 60)))
    return faults


# ---- healing -------------------------------------------------------------------------------------


def undo(cluster: Cluster) -> None:
    cluster.disarm()
    cluster.net.heal()
    sh("ip", "netns", "exec", cluster.net.switch, "nft", "delete table bridge carpfault")
    for name, node in cluster.nodes.items():
        sh("ip", "-n", node.ns, "link", "set", "eth0", "up")
        sh("ip", "-n", cluster.net.switch, "link", "set", node.port, "up")
        procs = cluster.procs(name)
        cluster.kill([*procs.background, *(pid for pid, _ in procs.scripts + procs.orphans)])


def restart(cluster: Cluster, name: str, outcome: Outcome) -> None:
    """ifdown (and the checks after it), then ifup: how an admin restarts a node's engine."""
    if cluster.engine == "ucarp":
        # nothing stops ucarp on ifdown: the admin kills it and takes the alias down
        cluster.kill(cluster.procs(name).ucarps)
        cluster.ifupdown[name].run("ifdown", "eth0:ucarp")
        cluster.ifdown(name)
    else:
        cluster.ifdown(name)
        check_after_ifdown(cluster, name, outcome, "the heal's ifdown eth0")
        undo(cluster)
    cluster.ifup(name)


def reset(cluster: Cluster, name: str) -> None:
    """By force: kill everything in the node, forget its state, ifup again."""
    node = cluster.nodes[name]
    kill_namespace_processes([node.ns])
    with contextlib.suppress(Timeout):  # ifup below says if something was left
        wait_for(lambda: not netns_pids(node.ns), 5, 0.02, what=f"{name}'s processes gone")
    sh("ip", "-n", node.ns, "addr", "flush", "dev", "eth0")
    sh("ip", "-n", node.ns, "link", "set", "eth0", "down")
    ifupdown = cluster.ifupdown[name]
    for path in ifupdown.state.glob("ifstate*"):
        path.unlink()
    for path in (ifupdown.run_dir / "carpd").glob("*"):
        if not path.name.endswith(".log"):
            path.unlink()
    cluster.ifup(name)


def heal(cluster: Cluster, outcome: Outcome) -> None:
    undo(cluster)
    # the supervisor restarts a killed engine after its back-off: give it a moment first
    with contextlib.suppress(Timeout):  # those still failing are restarted below
        wait_for(lambda: not any(cluster.engine_problems(n) for n in cluster.nodes
                                 if n not in cluster.down), 3.0, 0.2, what="engines back")
    for name in cluster.nodes:
        if name in cluster.down and cluster.engine == "carpd":
            cluster.ifup(name)
        elif name in cluster.down or cluster.engine_problems(name):
            outcome.notes.append(f"heal: restarted {name} (ifdown/ifup): "
                                 f"{'; '.join(cluster.engine_problems(name))}")
            restart(cluster, name, outcome)
    cluster.down.clear()
    if cluster.wait_healthy(12):
        return
    problems = cluster.health_problems()
    outcome.notes.append(f"heal: reset by force: {'; '.join(problems)}")
    for name in cluster.nodes:
        reset(cluster, name)
    if not cluster.wait_healthy(20):
        raise RuntimeError(f"not healthy after a reset: {cluster.health_problems()}")


# ---- the campaign --------------------------------------------------------------------------------


def run_one(cluster: Cluster, fault: Fault) -> Outcome:
    kind = next(k for k in KINDS if k.name == fault.kind)
    outcome = Outcome(fault.index, fault.kind, cluster.engine)
    ref = kind.inject(cluster, fault, outcome)
    observe(cluster, ref, outcome)
    if outcome.recovery is None or outcome.recovery > LIMIT:
        outcome.violations.insert(0, f"not exactly one holder within {LIMIT:.2f} s "
                                     f"(holders now: {cluster.holders()})")
    check(cluster, outcome)
    heal(cluster, outcome)
    return outcome


def campaign(engine: str, faults: list[Fault], directory: Path,
             deadline: Deadline) -> dict[str, Any]:
    directory.mkdir(parents=True)
    cluster = Cluster(engine, directory)
    outcomes: list[Outcome] = []
    error = None
    try:
        cluster.setup()
        for fault in faults:
            if deadline.left() < 30:
                error = f"time budget exhausted after {len(outcomes)} faults"
                break
            outcome = run_one(cluster, fault)
            outcomes.append(outcome)
            took = "never" if outcome.recovery is None else f"{outcome.recovery:.2f} s"
            log(f"{engine} #{fault.index + 1} {fault.kind}: {outcome.detail}: "
                f"{'recovered' if outcome.recovered else 'UNRECOVERED'} ({took})"
                + "".join(f"\n    ! {v}" for v in outcome.violations))
    except Exception as exc:  # reported in the table and the JSON
        error = f"{type(exc).__name__}: {exc}"
        log(f"{engine}: {error}")
    finally:
        cluster.close()
    return {"engine": engine, "error": error, "outcomes": [asdict(o) for o in outcomes],
            "_objects": outcomes}


# ---- the report ----------------------------------------------------------------------------------


def row_cells(outcomes: list[Outcome]) -> list[str]:
    if not outcomes:
        return ["n/a", "", "", ""]
    recovered = [o for o in outcomes if o.recovered]
    times = [o.recovery for o in outcomes if o.recovery is not None]
    never = sum(o.recovery is None for o in outcomes)
    worst = ", ".join(([f"{max(times):.2f}"] if times else [])
                      + ([f"{never}x never"] if never else []))
    return [str(len(outcomes)), str(len(recovered)), str(len(outcomes) - len(recovered)), worst]


def report_rows(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    engines = list(results)
    headers = ["fault kind"]
    for engine in engines:
        headers += [f"{engine} injected", "recovered", "unrecovered", "worst (s)"]
    rows = []
    for kind in KINDS:
        row = [kind.name]
        for engine in engines:
            outcomes = [o for o in results[engine]["_objects"] if o.kind == kind.name]
            row += row_cells(outcomes) if engine in kind.engines else ["n/a", "", "", ""]
        rows.append(row)
    total = ["all"]
    for engine in engines:
        total += row_cells(results[engine]["_objects"])
    rows.append(total)
    return headers, rows


def report(results: dict[str, dict[str, Any]]) -> str:
    return table(*report_rows(results)) + "".join(
        f"\nnot injected: {name}: {why}" for name, why in NOT_INJECTED.items())


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """The table of :func:`report` for the README."""
    headers, rows = report_rows(results)
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def details(results: dict[str, dict[str, Any]]) -> str:
    lines = []
    for engine, result in results.items():
        for o in result["_objects"]:
            if not o.recovered:
                took = "never" if o.recovery is None else f"{o.recovery:.2f} s"
                lines.append(f"{engine} #{o.index + 1} {o.kind} ({o.detail}): {took}")
                lines += [f"    ! {v}" for v in o.violations]
                lines += [f"    . {n}" for n in o.notes]
        if result["error"]:
            lines.append(f"{engine}: ERROR: {result['error']}")
    return "\n".join(lines)


def applicable(faults: list[Fault], engine: str) -> list[Fault]:
    return [f for f in faults if engine in next(k for k in KINDS if k.name == f.kind).engines]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=108, help="faults drawn (default 108: six "
                        "rounds of every kind); ucarp gets those that apply to it")
    parser.add_argument("--quick", action="store_true", help="20 faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=("carpd", "ucarp"), help="run one implementation")
    parser.add_argument("--kind", action="append", choices=[k.name for k in KINDS],
                        help="inject only this kind (repeatable): to reproduce one")
    parser.add_argument("--max-seconds", type=float, default=1500.0,
                        help="time budget of the whole run")
    parser.add_argument("--sequential", action="store_true",
                        help="one implementation after the other (default: both at once, each "
                             "on its own cluster)")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--markdown", action="store_true", help="also print the table as "
                        "Markdown (for the README)")
    parser.add_argument("--keep", help="keep logs (ifupdown, supervisor, engines) in this folder")
    args = parser.parse_args()
    if args.quick:
        args.count = min(args.count, 20)
    if os.geteuid() != 0:
        print("needs root (network namespaces, raw sockets, mounts)", file=sys.stderr)
        return 2
    if not Path(UCARP).exists() or not UCARP_HOOK.exists() or not shutil.which("nft"):
        print(f"needs Debian's ucarp ({UCARP}, {UCARP_HOOK}) and nft", file=sys.stderr)
        return 2
    faults = draw(args.count, args.seed, args.kind)
    engines = [args.only] if args.only else ["carpd", "ucarp"]
    deadline = Deadline(args.max_seconds)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="carpd-faults-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        jobs = {engine: applicable(faults, engine) for engine in engines}
        for engine, chosen in jobs.items():
            log(f"{engine}: {len(chosen)} faults")
        if args.sequential:
            for engine, chosen in jobs.items():
                results[engine] = campaign(engine, chosen, root / f"{engine}-{os.getpid()}",
                                           Deadline(deadline.left() * len(chosen) / sum(
                                               len(jobs[e]) for e in engines
                                               if e not in results)))
        else:
            with concurrent.futures.ThreadPoolExecutor(len(engines)) as pool:
                futures = {engine: pool.submit(campaign, engine, chosen,
                                               root / f"{engine}-{os.getpid()}", deadline)
                           for engine, chosen in jobs.items()}
                results = {engine: future.result() for engine, future in futures.items()}
    print(f"\nFault campaign: {args.count} faults drawn (seed {args.seed}), 2 nodes via ifupdown, "
          f"advbase {ADVBASE}, master-down {MASTER_DOWN:.2f} s, limit {LIMIT:.2f} s\n")
    print(report(results))
    print(f"\n{details(results)}\n{machine_line()}")
    if args.markdown:
        print(f"\n{markdown(results)}")
    for result in results.values():
        del result["_objects"]
    write_json(args.json, {"benchmark": "faults", "machine": machine(), "config": vars(args),
                           "limit_s": LIMIT, "results": results, "repo": str(REPO)})
    return 0 if all(r["error"] is None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
