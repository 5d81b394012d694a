"""Health and interface tracking (issue 11) with real carpd engines, real check scripts, the real
ucarp and real links, in network namespaces.

Every node's check is a shell script of its own (see :class:`Check`): it passes, fails (exit 7,
"service down") while the test's ``sick`` file exists, and hangs (``sleep 1000``) while its
``hang`` file exists.  Checks run every :data:`INTERVAL` seconds with fall and rise
:data:`FALL`/:data:`RISE` unless a test says otherwise; adverts use advbase 1 (master down after
3 s).  Node a (advskew 0) is the preferred node, b (advskew 100) the slower one.  The timing bounds
allow for a loaded 2-core CI machine; the wire is read from the bridge with kernel timestamps
(lab/netns.py's Capture).
"""

from __future__ import annotations

import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from lab.netns import CARPD, VIP, CarpFrame, Daemon, Network, Node, run, wait_for

pytestmark = [pytest.mark.netns]

ADVBASE = 1
MASTER_DOWN = 3.0  # advbase 1 x deadratio 3
SLACK = 0.75  # scheduling on a loaded CI machine
DRAIN = 2.0  # carpd keeps the VIP this long after a planned release (--drain's default)
UCARP_LATE = 1.25  # ucarp reads packets through libpcap's 1 s buffer
INTERVAL = 0.5
FALL = 2
RISE = 2
TIMEOUT = 1.0
LAST_RESORT_SKEW = 255
PREFERRED_SKEW = 0
SLOWER_SKEW = 100


# ---- checks, nodes and daemons ---------------------------------------------------------------


_CHECK = """#!/bin/sh
# the health check of {node}: hangs while the file $2 exists, fails while the file $1 exists
[ -e "$2" ] && exec sleep 1000
if [ -e "$1" ]; then echo "service down"; exit 7; fi
exit 0
"""


@dataclass(frozen=True)
class Check:
    """A check script for one node, steered by files the test creates and removes (the
    engine runs it with their paths as arguments: ``--track-script 'PATH SICK HANG'``)."""

    path: Path
    sick_file: Path
    hang_file: Path

    @classmethod
    def make(cls, net: Network, node: Node) -> Check:
        folder = net.directory / f"check-{node.name}"
        folder.mkdir()
        check = cls(folder / "check", folder / "sick", folder / "hang")
        check.path.write_text(_CHECK.format(node=node.name))
        check.path.chmod(0o755)
        return check

    @property
    def command(self) -> str:
        return f"{self.path} {self.sick_file} {self.hang_file}"

    def fail(self) -> float:
        """Make the check fail from now on; return the wall time."""
        self.sick_file.touch()
        return time.time()

    def hang(self) -> float:
        self.hang_file.touch()
        return time.time()

    def pass_again(self) -> float:
        self.sick_file.unlink(missing_ok=True)
        self.hang_file.unlink(missing_ok=True)
        return time.time()


def track(check: Check | None = None, *, interfaces: tuple[str, ...] = (), rise: int = RISE,
          timeout: float = TIMEOUT) -> list[str]:
    """The engine options that track ``check`` and ``interfaces``."""
    options = [f"--track-interface={name}" for name in interfaces]
    if check is not None:
        options += ["--track-script", check.command, "--track-interval", str(INTERVAL),
                    "--track-fall", str(FALL), "--track-rise", str(rise),
                    "--track-timeout", str(timeout)]
    return options


def field(daemon: Daemon, name: str) -> Any:
    reply = daemon.status_if_up()
    return None if reply is None else reply.get(name)


def healthy(daemon: Daemon) -> bool | None:
    value = field(daemon, "healthy")
    assert value is None or isinstance(value, bool), f"{daemon}: healthy is {value!r}"
    return value


def start_master(net: Network, node: Node, kind: str = "carpd", **options: Any) -> Daemon:
    """Start ``kind`` alone on ``node``; return once it holds the VIP (and, if carpd, is
    healthy)."""
    daemon = node.start(kind, **options)
    wait_for(lambda: daemon.alive() and net.holders() == [node],
             MASTER_DOWN + UCARP_LATE + 1 + 3)
    if kind == "carpd":
        wait_for(lambda: healthy(daemon) is True, 5)
    return daemon


def start_backup(net: Network, node: Node, master: Node, kind: str = "carpd",
                 **options: Any) -> Daemon:
    """Start ``kind`` (advskew 100 unless given) on ``node``; return once it listens to
    ``master``."""
    options.setdefault("advskew", SLOWER_SKEW)
    daemon = node.start(kind, **options)
    if kind == "carpd":
        wait_for(lambda: field(daemon, "state") == "BACKUP"
                 and field(daemon, "master") == str(master.address), MASTER_DOWN + 2)
    else:
        wait_for(daemon.events, 5)  # its down script at start
        time.sleep(UCARP_LATE)
    assert net.holders() == [master], f"{daemon} took the VIP from the running master"
    return daemon


def adverts(net: Network, node: Node, since: float = 0.0) -> list[CarpFrame]:
    return net.capture.frames(source=node.address, vhid=1, since=since)


def bow_out(net: Network, node: Node, since: float, timeout: float) -> CarpFrame:
    return net.capture.wait_frame(lambda f: f.source == node.address and f.bow_out, timeout,
                                  since=since)


def first_advert(net: Network, node: Node, since: float, timeout: float) -> CarpFrame:
    return net.capture.wait_frame(lambda f: f.source == node.address and not f.bow_out,
                                  timeout, since=since)


def state_changes(daemon: Daemon, since: float) -> list[str]:
    """The scripts it ran since ``since``: "up" on becoming MASTER, "down" on leaving it."""
    return [e.event for e in daemon.events() if e.time >= since]


def script_entry(reply: dict[str, Any], check: Check) -> dict[str, Any]:
    entries = [e for e in reply["health"] if e["kind"] == "script"
               and e["name"] == check.command]
    assert len(entries) == 1, reply["health"]
    entry: dict[str, Any] = entries[0]
    return entry


def assert_unhealthy_because_of(daemon: Daemon, check: Check, state: str = "BACKUP") -> None:
    """Its status says: ``state``, unhealthy, and why (the check, failing with exit 7)."""
    reply = daemon.status_if_up()
    assert reply is not None
    assert reply["state"] == state, reply
    assert reply["healthy"] is False, reply
    why = reply["why"]
    assert isinstance(why, str) and why.startswith(
        f"unhealthy: check '{check.command}' failing since "), why
    assert "(exit 7): service down" in why, why
    assert why.endswith(": holding the VIP as a last resort") is (state == "MASTER"), why
    entry = script_entry(reply, check)
    assert entry["healthy"] is False
    assert entry["rc"] == 7 and "service down" in entry["output"], entry
    assert 0 <= time.time() - entry["since"] < 60, entry  # a wall time, in the recent past


def assert_drained(daemon: Daemon, peer_took_over: float) -> None:
    """``daemon`` stepped down by plan: it kept the VIP for the drain after its peer took over,
    then ran its down script."""
    (down,) = [e for e in daemon.events() if e.event == "down" and e.time > peer_took_over]
    held = down.time - peer_took_over
    assert DRAIN - 0.3 <= held <= DRAIN + SLACK, f"{daemon} released the VIP after {held:.3f} s"


def node_pids(node: Node) -> list[int]:
    return [int(p) for p in run("ip", "netns", "pids", node.ns, check=False).stdout.split()]


def commands_in(node: Node) -> list[str]:
    found = []
    for pid in node_pids(node):
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


@pytest.fixture
def lab(net: Network) -> Iterator[Network]:
    """``net``, and when the test ends: every process left in its node namespaces (a check the
    engine may have left hanging) killed by pid before the namespaces go."""
    try:
        yield net
    finally:
        for node in net.nodes:
            for daemon in node.daemons:
                daemon.kill()
            for pid in node_pids(node):
                run("kill", "-KILL", str(pid), check=False)


def pair(lab: Network, *, a_preempt: bool = False, a_rise: int = RISE, b_kind: str = "carpd",
         b_preempt: bool = False) -> tuple[Node, Node, Check, Check, Daemon, Daemon]:
    """a (checked, advskew 0) as MASTER and b (advskew 100; checked if carpd) as BACKUP."""
    a, b = lab.add_node("10.9.1.2"), lab.add_node("10.9.1.3")
    check_a, check_b = Check.make(lab, a), Check.make(lab, b)
    master = start_master(lab, a, advskew=PREFERRED_SKEW, preempt=a_preempt,
                          extra=track(check_a, rise=a_rise))
    backup = start_backup(lab, b, a, b_kind, preempt=b_preempt,
                          extra=track(check_b) if b_kind == "carpd" else [])
    return a, b, check_a, check_b, master, backup


# ---- an unhealthy MASTER ------------------------------------------------------------------------


def test_unhealthy_master_bows_out_and_the_peer_takes_over_at_once_without_preempt(
        lab: Network) -> None:
    a, b, check_a, _, master, backup = pair(lab)

    sick = check_a.fail()
    took_over = FALL * INTERVAL + 1.0 + SLACK
    bow = bow_out(lab, a, sick, took_over)
    first = first_advert(lab, b, sick, took_over + 1)
    print(f"bow-out {bow.time - sick:.3f} s, take-over {first.time - sick:.3f} s after the "
          "check started failing")
    # one failure is not enough: it bows out only at the fall-th failure in a row
    assert bow.time - sick >= (FALL - 1) * INTERVAL - 0.1
    assert first.time - sick <= took_over
    assert first.time - bow.time < SLACK, "the peer did not take over at the bow-out"
    wait_for(lambda: lab.holders() == [b], DRAIN + SLACK + 1)
    assert_drained(master, first.time)
    assert_unhealthy_because_of(master, check_a)
    assert field(backup, "state") == "MASTER" and healthy(backup) is True

    settled = time.time()
    time.sleep(3)
    assert lab.holders() == [b]
    assert state_changes(master, settled) == state_changes(backup, settled) == []
    assert adverts(lab, a, since=bow.time + 0.001) == [], "the unhealthy node kept advertising"


class Holders:
    """Who holds the VIP, sampled every 50 ms in a thread: (wall time, node names)."""

    def __init__(self, net: Network) -> None:
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self._net = net
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            names = tuple(n.name for n in self._net.holders())
            self.samples.append((time.time(), names))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def longest(self, count: int) -> float:
        """The longest stretch of samples with ``count`` holders, in seconds."""
        longest, start = 0.0, None
        for when, names in self.samples:
            if len(names) == count:
                start = when if start is None else start
                longest = max(longest, when - start)
            else:
                start = None
        return longest


def assert_last_resort(lab: Network, holder: Node, other: Node, checks: dict[str, Check],
                       daemons: dict[str, Daemon], since: float) -> None:
    """``holder`` keeps the VIP as MASTER though unhealthy, advertising advskew 255; ``other``
    listens to it."""
    assert_unhealthy_because_of(daemons[holder.name], checks[holder.name], state="MASTER")
    assert healthy(daemons[other.name]) is False
    assert field(daemons[other.name], "state") == "BACKUP"
    assert field(daemons[other.name], "master") == str(holder.address)
    sent = adverts(lab, holder, since=since)
    assert len(sent) >= 2, sent
    assert {(f.advert.advbase, f.advert.advskew) for f in sent} == {(ADVBASE, LAST_RESORT_SKEW)}
    assert adverts(lab, other, since=since) == []


def test_when_both_nodes_are_unhealthy_exactly_one_keeps_the_vip_advertising_advskew_255(
        lab: Network) -> None:
    a, b, check_a, check_b, master, backup = pair(lab)
    check_b.fail()
    wait_for(lambda: healthy(backup) is False, FALL * (INTERVAL + TIMEOUT) + SLACK)
    time.sleep(2)
    assert lab.holders() == [a], "an unhealthy BACKUP took the VIP from a live MASTER"
    assert state_changes(backup, time.time() - 2) == []

    holders = Holders(lab)
    try:
        sick = check_a.fail()
        wait_for(lambda: healthy(master) is False, FALL * INTERVAL + 1 + SLACK)
        time.sleep(ADVBASE + DRAIN + MASTER_DOWN)
        settled = time.time()
        time.sleep(6)
    finally:
        holders.stop()
    assert len(holders.samples) > 50
    print(f"no holder for at most {holders.longest(0):.2f} s, two for at most "
          f"{holders.longest(2):.2f} s")
    assert holders.longest(0) <= MASTER_DOWN, "the VIP was on no node"
    assert holders.longest(2) <= DRAIN + SLACK, "the VIP was on both nodes"
    assert not [names for when, names in holders.samples if when >= settled and len(names) != 1]
    (holder,) = lab.holders()
    other = b if holder is a else a
    print(f"{holder.name} holds the VIP as a last resort")
    daemons, checks = {"a": master, "b": backup}, {"a": check_a, "b": check_b}
    assert_last_resort(lab, holder, other, checks, daemons, settled)
    assert state_changes(master, settled) == state_changes(backup, settled) == []
    assert sick < settled


def test_nodes_unhealthy_from_the_start_still_put_the_vip_on_exactly_one(lab: Network) -> None:
    a, b = lab.add_node("10.9.1.2"), lab.add_node("10.9.1.3")
    checks = {n.name: Check.make(lab, n) for n in (a, b)}
    for check in checks.values():
        check.fail()
    daemons = {n.name: n.start("carpd", advskew=skew, extra=track(checks[n.name]))
               for n, skew in ((a, PREFERRED_SKEW), (b, SLOWER_SKEW))}

    # master down (3 s), one interval longer for an unhealthy node, and start-up
    wait_for(lambda: len(lab.holders()) == 1, MASTER_DOWN + ADVBASE + 3 + SLACK)
    time.sleep(ADVBASE + DRAIN)
    settled = time.time()
    time.sleep(5)
    (holder,) = lab.holders()
    other = b if holder is a else a
    assert_last_resort(lab, holder, other, checks, daemons, settled)
    assert state_changes(daemons["a"], settled) == state_changes(daemons["b"], settled) == []


def test_unhealthy_backup_takes_over_one_advert_interval_after_master_down(
        lab: Network) -> None:
    a, b, _, check_b, master, backup = pair(lab)
    check_b.fail()
    wait_for(lambda: healthy(backup) is False, FALL * INTERVAL + 1 + SLACK)
    # b, unhealthy now, hears one more advert: its timer is armed afresh, not only moved on
    first_advert(lab, a, time.time() + 0.05, ADVBASE + SLACK)

    master.kill()
    a.remove_address(VIP)  # a crashed daemon leaves its VIP behind
    killed = time.time()
    first = first_advert(lab, b, killed, 2 * MASTER_DOWN + 2)
    last = adverts(lab, a)[-1]
    gap = first.time - last.time
    # b's master-down time (3 x advbase + advskew/256), then one advert interval of its own
    expected = MASTER_DOWN + SLOWER_SKEW / 256 + ADVBASE + SLOWER_SKEW / 256
    print(f"took over {gap:.3f} s after the last advert (expected {expected:.3f} s)")
    assert expected - 0.1 <= gap <= expected + SLACK
    assert first.advert.advskew == LAST_RESORT_SKEW
    wait_for(lambda: lab.holders() == [b], 2)
    assert_unhealthy_because_of(backup, check_b, state="MASTER")


def wait_last_resort(lab: Network, node: Node) -> None:
    """Until ``node`` alone holds the VIP and advertises advskew 255."""
    since = time.time()
    net_wait = MASTER_DOWN + 2 * ADVBASE + DRAIN + SLACK + 2
    wait_for(lambda: lab.holders() == [node], net_wait)
    first_advert(lab, node, since, net_wait)
    assert {f.advert.advskew for f in adverts(lab, node, since=time.time() - 0.5)} <= {
        LAST_RESORT_SKEW}


def test_healthy_node_takes_the_vip_from_a_last_resort_master_without_preempt(
        lab: Network) -> None:
    a, b, check_a, check_b, master, backup = pair(lab)
    check_b.fail()
    wait_for(lambda: healthy(backup) is False, FALL * INTERVAL + 1 + SLACK)
    check_a.fail()
    wait_last_resort(lab, b)

    healed = check_a.pass_again()
    bound = RISE * INTERVAL + INTERVAL + ADVBASE + SLOWER_SKEW / 256 + SLACK
    first = first_advert(lab, a, healed, bound + 2)
    print(f"took the VIP back {first.time - healed:.3f} s after its check passed again")
    assert first.time - healed <= bound
    assert first.advert.advskew == PREFERRED_SKEW
    wait_for(lambda: lab.holders() == [a], DRAIN + SLACK + 1)
    assert field(master, "state") == "MASTER" and healthy(master) is True
    assert field(backup, "state") == "BACKUP" and field(backup, "master") == str(a.address)
    settled = time.time()
    time.sleep(2.5)
    assert lab.holders() == [a]
    assert state_changes(master, settled) == state_changes(backup, settled) == []


def test_demoted_node_leaves_the_vip_to_an_unhealthy_peer_until_promoted(lab: Network) -> None:
    a, b, _, check_b, master, backup = pair(lab)
    check_b.fail()
    wait_for(lambda: healthy(backup) is False, FALL * INTERVAL + 1 + SLACK)

    assert master.control("demote")["ok"] is True
    wait_last_resort(lab, b)
    settled = time.time()
    time.sleep(MASTER_DOWN + 1)
    assert lab.holders() == [b], "a demoted node took the VIP"
    assert field(master, "state") == "BACKUP" and field(master, "demoted") is True
    assert healthy(master) is True and field(backup, "state") == "MASTER"
    assert {f.advert.advskew for f in adverts(lab, b, since=settled)} == {LAST_RESORT_SKEW}
    assert adverts(lab, a, since=settled) == []

    promoted = time.time()
    assert master.control("promote")["ok"] is True
    # healthy again in the election, and preferred to a last-resort master: it takes over at
    # b's next advert, preempt or not
    first = first_advert(lab, a, promoted, ADVBASE + SLOWER_SKEW / 256 + SLACK + 2)
    assert first.time - promoted <= ADVBASE + SLOWER_SKEW / 256 + SLACK
    wait_for(lambda: lab.holders() == [a], DRAIN + SLACK + 1)


def test_lone_unhealthy_node_takes_the_vip_back_as_a_last_resort_within_master_down(
        lab: Network) -> None:
    """Alone, an unhealthy MASTER still bows out and drains (it cannot know nobody will take
    over), then takes the VIP back when its master-down timer expires: the VIP is on no node
    for the master-down time plus one advert interval, less the drain."""
    (a,) = (lab.add_node("10.9.1.2"),)
    check = Check.make(lab, a)
    daemon = start_master(lab, a, advskew=PREFERRED_SKEW, extra=track(check))
    holders = Holders(lab)
    try:
        sick = check.fail()
        bow = bow_out(lab, a, sick, FALL * INTERVAL + 1 + SLACK)
        first = first_advert(lab, a, bow.time + 0.001, MASTER_DOWN + ADVBASE + SLACK + 1)
        wait_for(lambda: lab.holders() == [a], 2)
        time.sleep(2)
    finally:
        holders.stop()
    print(f"took the VIP back {first.time - bow.time:.3f} s after its bow-out, none held it "
          f"for {holders.longest(0):.3f} s")
    assert first.time - bow.time <= MASTER_DOWN + ADVBASE + SLACK
    assert first.advert.advskew == LAST_RESORT_SKEW
    assert holders.longest(0) <= MASTER_DOWN, "the VIP was on no node"
    assert_unhealthy_because_of(daemon, check, state="MASTER")


# ---- recovery -----------------------------------------------------------------------------------


def test_recovered_node_without_preempt_stays_backup_while_the_healthy_peer_is_master(
        lab: Network) -> None:
    a, b, check_a, _, master, backup = pair(lab)
    check_a.fail()
    wait_for(lambda: lab.holders() == [b], FALL * INTERVAL + 1 + SLACK + DRAIN + 1)

    check_a.pass_again()
    wait_for(lambda: healthy(master) is True, RISE * INTERVAL + 1 + SLACK)
    recovered = time.time()
    time.sleep(MASTER_DOWN + 1)
    assert lab.holders() == [b]
    assert field(master, "state") == "BACKUP" and field(master, "why") is None
    assert field(master, "master") == str(b.address)
    assert state_changes(master, recovered) == state_changes(backup, recovered) == []
    assert {f.advert.advskew for f in adverts(lab, b, since=recovered)} == {SLOWER_SKEW}


def test_recovered_node_with_preempt_and_the_better_advskew_takes_the_vip_back_after_rise(
        lab: Network) -> None:
    rise = 3
    a, b, check_a, _, master, backup = pair(lab, a_preempt=True, a_rise=rise)
    check_a.fail()
    wait_for(lambda: lab.holders() == [b], FALL * INTERVAL + 1 + SLACK + DRAIN + 1)
    watched = time.time()
    time.sleep(MASTER_DOWN)
    assert lab.holders() == [b], "an unhealthy node preempted"
    assert adverts(lab, a, since=watched) == [], "an unhealthy node preempted"
    assert field(master, "state") == "BACKUP"

    healed = check_a.pass_again()
    first = first_advert(lab, a, healed, rise * INTERVAL + INTERVAL + ADVBASE + SLACK + 2)
    took = first.time - healed
    print(f"took the VIP back {took:.3f} s after the check passed again (rise {rise})")
    assert (rise - 1) * INTERVAL - 0.1 <= took <= rise * INTERVAL + INTERVAL + ADVBASE + SLACK
    assert first.advert.advskew == PREFERRED_SKEW
    wait_for(lambda: lab.holders() == [a], DRAIN + SLACK + 1)
    assert_drained(backup, first.time)  # preempted by a carpd: a planned hand-over
    assert field(master, "state") == "MASTER" and healthy(master) is True
    assert field(backup, "state") == "BACKUP"
    settled = time.time()
    time.sleep(2.5)
    assert lab.holders() == [a]
    assert state_changes(master, settled) == state_changes(backup, settled) == []


# ---- a hung check -------------------------------------------------------------------------------


def hung_checks(node: Node) -> int:
    return sum(1 for command in commands_in(node) if command.startswith("sleep 1000"))


def answers_at_once(daemon: Daemon) -> bool:
    asked = time.monotonic()
    reply = daemon.status_if_up()
    return reply is not None and time.monotonic() - asked < 0.5


def test_hung_check_on_the_backup_makes_it_unhealthy_and_moves_nothing(lab: Network) -> None:
    a, b, _, check_b, master, backup = pair(lab)
    before = master.status_if_up()
    assert before is not None

    hung = check_b.hang()
    wait_for(lambda: healthy(backup) is False, FALL * (TIMEOUT + INTERVAL) + 1 + SLACK)
    took = time.time() - hung
    print(f"unhealthy {took:.3f} s after the check started hanging")
    # fall runs in a row, each failing only at its timeout
    assert took >= FALL * TIMEOUT - 0.1, "a hung check failed before its timeout"
    assert answers_at_once(backup)
    time.sleep(MASTER_DOWN + 1)
    assert lab.holders() == [a]
    after = master.status_if_up()
    assert after is not None and after["state"] == "MASTER" and after["since"] == before["since"]
    assert field(backup, "state") == "BACKUP" and healthy(backup) is False
    assert str(field(backup, "why")).startswith(
        f"unhealthy: check '{check_b.command}' failing since "), field(backup, "why")
    assert "(timed out after 1 s)" in str(field(backup, "why"))
    assert state_changes(master, hung) == state_changes(backup, hung) == []
    assert adverts(lab, b, since=hung) == []
    # a check past its timeout is ended, not left to pile up
    assert hung_checks(b) <= 2, commands_in(b)


def test_hung_check_on_the_master_keeps_its_adverts_on_time_until_it_bows_out(
        lab: Network) -> None:
    a, b, check_a, _, master, backup = pair(lab)

    hung = check_a.hang()
    bow = bow_out(lab, a, hung, FALL * (TIMEOUT + INTERVAL) + 1 + SLACK)
    print(f"bowed out {bow.time - hung:.3f} s after the check started hanging")
    assert bow.time - hung >= FALL * TIMEOUT - 0.1
    sent = [f for f in adverts(lab, a, since=hung - 2 * ADVBASE) if f.time <= bow.time]
    gaps = [later.time - earlier.time for earlier, later in pairwise(sent)]
    print("advert gaps:", " ".join(f"{gap:.3f}" for gap in gaps))
    assert len(sent) >= 3 and max(gaps) <= ADVBASE + 0.5, "a hung check delayed the adverts"
    first = first_advert(lab, b, hung, MASTER_DOWN + 2)
    assert bow.time <= first.time < bow.time + SLACK, "the peer took over before the bow-out"
    wait_for(lambda: lab.holders() == [b], DRAIN + SLACK + 1)
    assert answers_at_once(master)
    reply = master.status_if_up()
    assert reply is not None and reply["state"] == "BACKUP" and reply["healthy"] is False
    assert str(check_a.path) in str(reply["why"])
    time.sleep(2)
    assert lab.holders() == [b]
    assert hung_checks(a) <= 2, commands_in(a)


def test_engine_stopping_while_a_check_hangs_exits_at_once_and_leaves_no_check_behind(
        lab: Network) -> None:
    a, b, check_a, _, master, backup = pair(lab)
    check_a.hang()
    wait_for(lambda: hung_checks(a) == 1, INTERVAL + 1)

    stopped = time.monotonic()
    master.signal(signal.SIGTERM)
    assert master.wait_exit(DRAIN + 5) == 0
    took = time.monotonic() - stopped
    print(f"exited {took:.3f} s after SIGTERM")
    assert took < DRAIN + SLACK + 1, "the engine waited for its hung check"
    assert hung_checks(a) == 0, commands_in(a)
    wait_for(lambda: lab.holders() == [b], 2)
    assert field(backup, "state") == "MASTER"


# ---- a tracked interface ------------------------------------------------------------------------


def tracked_link(net: Network, node: Node) -> str:
    """A veth ``eth1`` in ``node`` whose other end (returned) is in the switch namespace, plugged
    into nothing: setting that end down takes eth1's carrier away."""
    peer = f"t{node.name}{net.tag[-8:]}"
    run("ip", "link", "add", "eth1", "netns", node.ns, "type", "veth", "peer", "name", peer,
        "netns", net.switch)
    run("ip", "-n", net.switch, "link", "set", peer, "up")
    run("ip", "-n", node.ns, "link", "set", "eth1", "up")
    wait_for(lambda: carrier(node, "eth1"), 5)
    return peer


def carrier(node: Node, interface: str) -> bool:
    return node.exec("cat", f"/sys/class/net/{interface}/carrier", check=False).stdout == "1\n"


@dataclass
class TrackingPair:
    a: Node
    b: Node
    peer: str
    """The other end of a's eth1, in the switch namespace (tracked_link)."""
    master: Daemon
    backup: Daemon


def tracking_pair(lab: Network) -> TrackingPair:
    """a MASTER (preferred, preempting) tracking its eth1, b its BACKUP."""
    a, b = lab.add_node("10.9.1.2"), lab.add_node("10.9.1.3")
    peer = tracked_link(lab, a)
    master = start_master(lab, a, advskew=PREFERRED_SKEW, preempt=True,
                          extra=track(interfaces=("eth1",)))
    return TrackingPair(a, b, peer, master, start_backup(lab, b, a))


def test_tracked_interface_losing_carrier_makes_the_master_bow_out_at_once_and_come_back(
        lab: Network) -> None:
    pair = tracking_pair(lab)
    a, b, peer, master, backup = pair.a, pair.b, pair.peer, pair.master, pair.backup

    cut = time.time()
    run("ip", "-n", lab.switch, "link", "set", peer, "down")
    bow = bow_out(lab, a, cut, 2.0 + 1)
    print(f"bowed out {bow.time - cut:.3f} s after eth1 lost its carrier")
    assert bow.time - cut < 2.0
    first = first_advert(lab, b, cut, MASTER_DOWN + 2)
    assert first.time - bow.time < SLACK, "the peer did not take over at the bow-out"
    wait_for(lambda: lab.holders() == [b], DRAIN + SLACK + 1)
    reply = master.status_if_up()
    assert reply is not None and reply["state"] == "BACKUP" and reply["healthy"] is False
    assert str(reply["why"]).startswith("unhealthy: interface eth1 down since "), reply["why"]
    assert str(reply["why"]).endswith(": no carrier"), reply["why"]
    (entry,) = [e for e in reply["health"] if e["kind"] == "interface"]
    assert entry["name"] == "eth1" and entry["healthy"] is False

    restored = time.time()
    run("ip", "-n", lab.switch, "link", "set", peer, "up")
    wait_for(lambda: healthy(master) is True, 5)
    print(f"healthy again {time.time() - restored:.3f} s after the carrier came back")
    # preempting, with the better advskew: it takes the VIP back at b's next advert
    wait_for(lambda: lab.holders() == [a], ADVBASE + DRAIN + SLACK + 2)
    assert field(master, "state") == "MASTER" and field(master, "why") is None
    assert field(backup, "state") == "BACKUP"


def test_tracked_interface_deleted_and_created_again_is_followed_by_name(
        lab: Network) -> None:
    pair = tracking_pair(lab)
    a, b, peer, master = pair.a, pair.b, pair.peer, pair.master

    deleted = time.time()
    run("ip", "-n", lab.switch, "link", "del", peer)  # both ends of the veth go
    bow = bow_out(lab, a, deleted, 2.0 + 1)
    assert bow.time - deleted < 2.0
    wait_for(lambda: lab.holders() == [b], DRAIN + SLACK + 1)
    assert str(field(master, "why")).endswith(": no such interface"), field(master, "why")

    tracked_link(lab, a)
    wait_for(lambda: healthy(master) is True, 5)
    wait_for(lambda: lab.holders() == [a], ADVBASE + DRAIN + SLACK + 2)


def test_tracked_interface_that_does_not_exist_keeps_the_node_unhealthy(lab: Network) -> None:
    a, b = lab.add_node("10.9.1.2"), lab.add_node("10.9.1.3")
    start_master(lab, a, advskew=SLOWER_SKEW)
    missing = b.start("carpd", advskew=PREFERRED_SKEW, preempt=True,
                      extra=track(interfaces=("nosuch0",)))
    wait_for(lambda: healthy(missing) is False, 5)
    time.sleep(MASTER_DOWN + 1)
    assert lab.holders() == [a], "an unhealthy node preempted"
    assert adverts(lab, b) == [], "an unhealthy node preempted (and gave the VIP back)"
    assert state_changes(missing, 0) == ["down"]  # at start only
    assert "nosuch0" in str(field(missing, "why"))


# ---- a mixed cluster: ucarp as the peer ---------------------------------------------------------


@pytest.mark.ucarp
@pytest.mark.parametrize("ucarp_preempt", [True, False], ids=["ucarp-P", "ucarp-no-P"])
def test_ucarp_peer_takes_over_from_an_unhealthy_carpd_master(
        lab: Network, ucarp_preempt: bool) -> None:
    """carpd (advskew 0, checked) is MASTER, Debian's ucarp (advskew 100) its BACKUP; carpd's
    check starts failing.  carpd bows out (an advert with advbase 255, advskew 255), drains and
    goes silent as an unhealthy BACKUP.

    What ucarp does with that bow-out does not depend on -P: ucarp's BACKUP treats a master
    advertising an interval longer than its own master-down time (255 s > 3 x 1 s) as down at
    once ("the master is going to advertise at such a low frequency that it is guaranteed to
    time out"), so with or without -P it takes over as soon as it reads the bow-out (through its
    libpcap buffer: up to about a second late), not at master down.  carpd, unhealthy, never
    takes the VIP back from the live ucarp MASTER.
    """
    a, b, check_a, _, carpd, ucarp = pair(lab, b_kind="ucarp", b_preempt=ucarp_preempt)

    sick = check_a.fail()
    bow = bow_out(lab, a, sick, FALL * INTERVAL + 1 + SLACK)
    first = first_advert(lab, b, sick, MASTER_DOWN + UCARP_LATE + SLACK + 2)
    took = first.time - bow.time
    print(f"ucarp ({'with' if ucarp_preempt else 'without'} -P) took over {took:.3f} s after "
          "the bow-out")
    assert 0 <= took < UCARP_LATE + 0.5 < MASTER_DOWN
    wait_for(lambda: lab.holders() == [b], DRAIN + SLACK + 1)
    assert ucarp.is_master() and not carpd.is_master()
    settled = time.time()
    time.sleep(MASTER_DOWN + 1)
    assert lab.holders() == [b]
    assert adverts(lab, a, since=bow.time + 0.001) == [], "the unhealthy carpd kept advertising"
    assert_unhealthy_because_of(carpd, check_a)
    assert field(carpd, "master") == str(b.address)
    assert state_changes(carpd, settled) == state_changes(ucarp, settled) == []


@pytest.mark.ucarp
@pytest.mark.parametrize("ucarp_preempt", [True, False], ids=["ucarp-P", "ucarp-no-P"])
def test_ucarp_joining_a_last_resort_carpd_master_sees_only_a_slower_master(
        lab: Network, ucarp_preempt: bool) -> None:
    """carpd alone and unhealthy holds the VIP as a last resort, advertising advbase 1 with
    advskew 255: an interval of 1.996 s as ucarp reckons it.  ucarp (advskew 100: 1.39 s)
    joins.  ucarp knows nothing of health: with -P it preempts the slower master (and carpd,
    hearing a faster master, steps down); without -P it stays BACKUP, since 2 s adverts are well
    within its 3 s master-down time, and the VIP stays on the unhealthy carpd."""
    a, b = lab.add_node("10.9.1.2"), lab.add_node("10.9.1.3")
    check_a = Check.make(lab, a)
    check_a.fail()
    carpd = a.start("carpd", advskew=PREFERRED_SKEW, extra=track(check_a))
    wait_last_resort(lab, a)

    joined = time.time()
    ucarp = b.start("ucarp", advskew=SLOWER_SKEW, preempt=ucarp_preempt)
    if ucarp_preempt:
        first = first_advert(lab, b, joined, MASTER_DOWN + UCARP_LATE + 2)
        print(f"ucarp -P preempted {first.time - joined:.3f} s after it started")
        wait_for(lambda: lab.holders() == [b], UCARP_LATE + SLACK + 1)
        assert field(carpd, "state") == "BACKUP" and healthy(carpd) is False
        settled = time.time()
        time.sleep(MASTER_DOWN + 1)
        assert lab.holders() == [b] and adverts(lab, a, since=settled) == []
        return
    wait_for(ucarp.events, 5)  # its down script at start
    time.sleep(MASTER_DOWN + UCARP_LATE + 2)
    assert lab.holders() == [a]
    assert not ucarp.is_master() and adverts(lab, b, since=joined) == []
    assert_unhealthy_because_of(carpd, check_a, state="MASTER")


# ---- a demotion that survives reboots ----------------------------------------------------------


def carpctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CARPD[0], "-m", "carpd.debian.carpctl", "--state-dir", str(daemon.directory / "state"),
         *args],
        capture_output=True, text=True, timeout=30, check=False)


def reboot(daemon: Daemon, **options: Any) -> Daemon:
    """Stop the engine, wipe its run dir (as a reboot does /run) and start a new one with a new
    state dir and the same options."""
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(10) == 0
    shutil.rmtree(daemon.directory / "state")
    again = daemon.node.start("carpd", **options)
    wait_for(lambda: again.status_if_up() is not None, 5)
    return again


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "plain"])
def test_persistent_demotion_survives_a_reboot_until_promoted_and_a_plain_one_does_not(
        lab: Network, persistent: bool) -> None:
    a, b = lab.add_node("10.9.1.2"), lab.add_node("10.9.1.3")
    persist = lab.directory / "persist"
    options: dict[str, Any] = {"advskew": PREFERRED_SKEW, "preempt": True,
                               "extra": ["--persist-dir", str(persist)]}
    first = start_master(lab, a, **options)
    start_backup(lab, b, a)

    demote = carpctl(first, "demote", "eth0", *(["--persistent"] if persistent else []))
    assert demote.returncode == 0, demote.stderr
    wait_for(lambda: lab.holders() == [b], ADVBASE + DRAIN + SLACK + 1)
    reply = first.status_if_up()
    assert reply is not None and reply["demoted"] is True
    assert reply["demotion"]["persistent"] is persistent
    assert 0 <= time.time() - reply["demotion"]["since"] < 60, reply["demotion"]
    assert "demoted" in str(reply["why"])
    marker = persist / "demoted" / "eth0.1"
    assert marker.exists() is persistent
    if persistent:
        assert stat.S_IMODE(marker.stat().st_mode) == 0o644

    second = reboot(first, **options)
    if not persistent:  # preempting, with the better advskew: it takes the VIP back
        wait_for(lambda: lab.holders() == [a], MASTER_DOWN + ADVBASE + SLACK + 2)
        assert field(second, "demoted") is False
        return
    time.sleep(MASTER_DOWN + 2)
    assert lab.holders() == [b], "the persistent demotion did not survive the reboot"
    reply = second.status_if_up()
    assert reply is not None and reply["state"] == "BACKUP" and reply["demoted"] is True
    assert reply["demotion"]["persistent"] is True
    assert "demoted (persistent)" in str(reply["why"])

    promote = carpctl(second, "promote", "eth0")
    assert promote.returncode == 0, promote.stderr
    wait_for(lambda: lab.holders() == [a], ADVBASE + DRAIN + SLACK + 2)
    assert not marker.exists()
    reply = second.status_if_up()
    assert reply is not None and reply["demoted"] is False and reply["demotion"] is None
    assert reply["why"] is None
