"""An attacker on the link replays captured adverts (issue 8, items 2 and 3).

CARP's HMAC covers the vhid, the VIP and the counter, but not advbase, advskew or the IP source:
whoever captured one advert can re-send it with those fields changed, without the password
(lab/replay.py).  Every scenario has an attacker namespace on the same bridge running no daemon;
it captures a real advert from the wire and re-sends it through a raw socket.

carpd must drop a replayed advert (its counter is not newer than the newest it accepted) under the
rejection reason ``stale``, log it at a rate limit and change nothing; it must forward a bowed-out
master's connections only to that master.  Debian's ucarp checks no counter: the tests that show
what the same attacks do to it back the README's Security section.  The legitimate cases that do
not count up (a lone ucarp MASTER's random counters, an engine restart, a healed partition) must
still work with the check on.

advbase 1 everywhere: adverts every second, master down after 3 s.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from itertools import pairwise

import pytest

from lab.netns import PASSWORD, VIP, CarpFrame, Daemon, Network, Node, decode_frame, wait_for
from lab.replay import Injector, bow_out, forge

pytestmark = [pytest.mark.netns]

MASTER_DOWN = 3.0  # advbase 1 x deadratio 3
SLACK = 0.75  # scheduling on a loaded CI machine
UCARP_LATE = 1.25  # ucarp reads packets through libpcap's 1 s buffer
WATCH = 2.0  # how long a replay must change nothing
ATTACKER = IPv4Address("10.9.1.66")
BROADCAST = IPv4Address("255.255.255.255")
BACKUP_SKEW = 100
STALE = re.compile(r"stale|replay", re.IGNORECASE)


# ---- the cluster ------------------------------------------------------------------------------


def nodes(net: Network) -> tuple[Node, Node, Node]:
    """Two cluster nodes and the attacker, who runs no daemon."""
    return net.add_node("10.9.1.2"), net.add_node("10.9.1.3"), net.add_node(str(ATTACKER), "x")


def hears(daemon: Daemon, master: Node) -> bool:
    """A carpd BACKUP has accepted an advert of ``master``."""
    status = daemon.status_if_up()
    return status is not None and status["state"] == "BACKUP" and status["master"] == str(
        master.address)


def start_master(net: Network, node: Node, kind: str, **options: object) -> Daemon:
    daemon = node.start(kind, **options)  # type: ignore[arg-type]
    wait_for(lambda: daemon.alive() and net.holders() == [node], MASTER_DOWN + UCARP_LATE + 3)
    return daemon


def start_backup(net: Network, node: Node, kind: str, master: Node,
                 **options: object) -> Daemon:
    """Start ``kind`` as the slower node; return once it has accepted the master's adverts."""
    daemon = node.start(kind, advskew=BACKUP_SKEW, **options)  # type: ignore[arg-type]
    if kind == "carpd":
        wait_for(lambda: hears(daemon, master), MASTER_DOWN)
    else:
        wait_for(daemon.events, 5)  # its down script at start
        time.sleep(UCARP_LATE)
    assert net.holders() == [master], f"{daemon} took the VIP from the running master"
    return daemon


def carpd_pair(net: Network, a: Node, b: Node, backup_extra: tuple[str, ...] = (),
               master_extra: tuple[str, ...] = ()) -> tuple[Daemon, Daemon]:
    master = start_master(net, a, "carpd", extra=master_extra)
    return master, start_backup(net, b, "carpd", a, extra=backup_extra)


def state_changes(daemon: Daemon, since: float) -> list[str]:
    """The scripts it ran since ``since``: "up" on becoming MASTER, "down" on leaving it."""
    return [e.event for e in daemon.events() if e.time >= since]


def unmoved(daemon: Daemon, before: dict[str, object], state: str) -> None:
    """A carpd engine is still in ``state`` and has not changed state since ``before``."""
    now = daemon.status()
    assert now["state"] == state, f"{daemon} went {before['state']} -> {now['state']}"
    assert abs(float(str(now["since"])) - float(str(before["since"]))) < 0.01, (
        f"{daemon} changed state and back")


def stale_drops(daemon: Daemon) -> int:
    counts = daemon.status()["rejected"]
    assert isinstance(counts, dict)
    return int(counts.get("stale", 0))


def stale_log_lines(daemon: Daemon) -> list[str]:
    """Its log lines about stale adverts (the test's own paths, which may say "replayed",
    left out)."""
    lines = daemon.log().replace(str(daemon.directory.parent), "").splitlines()
    return [line for line in lines if STALE.search(line)]


# ---- the attacker -----------------------------------------------------------------------------


def recent_adverts(net: Network, node: Node, count: int = 1) -> list[CarpFrame]:
    """``node``'s latest real adverts, the newest at least 0.2 s old: long enough for a carpd
    on the link to have accepted it."""
    started = time.time()
    net.capture.wait_frame(lambda f: f.source == node.address and not f.bow_out, 3, started)
    time.sleep(0.2)
    frames = [f for f in net.capture.frames(source=node.address) if not f.bow_out]
    return frames[-count:]


def authenticates(frame: bytes) -> CarpFrame:
    """The forged frame passes every receive check: only the counter can give it away."""
    decoded = decode_frame(time.time(), frame)
    assert decoded is not None and decoded.valid_for(1, PASSWORD), "forged advert is invalid"
    return decoded


def inject(attacker: Node, *frames: bytes, interval: float = 0.0) -> float:
    """Send ``frames`` from ``attacker``; the time of the first."""
    for frame in frames:
        authenticates(frame)
    with Injector(attacker) as injector:
        sent = time.time()
        for frame in frames:
            injector.send(frame)
            time.sleep(interval)
    return sent


def fast(advert: CarpFrame, attacker: Node) -> bytes:
    """``advert`` re-sent from the attacker's address as the fastest master there can be."""
    return forge(advert, eth_src=attacker.mac, source=attacker.address, advbase=0, advskew=1)


def ruleset(node: Node) -> str:
    return node.exec("nft", "list", "ruleset").stdout


def forwarding_to(node: Node, to: IPv4Address) -> str:
    """``node``'s nftables ruleset if it copies segments to ``to``, else ""."""
    rules = ruleset(node)
    return rules if f"dup to {to}" in rules else ""


def watch(seconds: float, check: Callable[[], None], interval: float = 0.05) -> None:
    """Run ``check`` repeatedly for ``seconds``: what it asserts must hold all along."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        time.sleep(interval)


# ---- carpd against replays (item 2) -----------------------------------------------------------


def test_replayed_advert_turned_bow_out_does_not_make_carpd_backup_take_over(
        net: Network) -> None:
    a, b, x = nodes(net)
    master, backup = carpd_pair(net, a, b)
    before = backup.status()

    (advert,) = recent_adverts(net, a)
    sent = inject(x, bow_out(advert, x.mac))  # from the master's own address
    time.sleep(WATCH)

    assert state_changes(backup, sent) == [], "the backup took over on a replayed bow-out"
    unmoved(backup, before, "BACKUP")
    assert net.holders() == [a] and master.is_master()
    assert stale_drops(backup) == 1
    assert stale_log_lines(backup), "the stale advert was not logged"


def test_replayed_fast_advert_from_another_address_does_not_make_carpd_master_step_down(
        net: Network) -> None:
    """Once, then 20 times over 2 s: no flap."""
    a, b, x = nodes(net)
    master, backup = carpd_pair(net, a, b)
    before_master, before_backup = master.status(), backup.status()
    adverts = recent_adverts(net, a, count=20)

    sent = inject(x, fast(adverts[-1], x))
    time.sleep(WATCH)
    assert state_changes(master, sent) == [], "the master stepped down on a replayed advert"
    unmoved(master, before_master, "MASTER")

    inject(x, *(fast(adverts[i % len(adverts)], x) for i in range(20)), interval=0.1)
    time.sleep(WATCH)
    assert state_changes(master, sent) == state_changes(backup, sent) == []
    unmoved(master, before_master, "MASTER")
    unmoved(backup, before_backup, "BACKUP")
    assert net.holders() == [a]
    assert stale_drops(master) == 21
    assert 1 <= len(stale_log_lines(master)) <= 2, "stale adverts are logged at a rate limit"


@pytest.mark.ucarp
def test_ucarp_advert_replayed_as_bow_out_does_not_make_carpd_backup_take_over(
        net: Network) -> None:
    a, b, x = nodes(net)
    ucarp = start_master(net, a, "ucarp")
    carpd = start_backup(net, b, "carpd", a)
    before = carpd.status()

    (advert,) = recent_adverts(net, a)
    sent = inject(x, bow_out(advert, x.mac))
    time.sleep(WATCH)

    assert state_changes(carpd, sent) == [], "carpd took over on a replayed ucarp advert"
    unmoved(carpd, before, "BACKUP")
    assert net.holders() == [a] and ucarp.is_master()
    assert stale_drops(carpd) == 1


def test_carpd_acts_on_a_replayed_bow_out_with_no_replay_check(net: Network) -> None:
    """The switch works: with the check off, carpd trusts the advert as ucarp does."""
    a, b, x = nodes(net)
    _, backup = carpd_pair(net, a, b, backup_extra=("--no-replay-check",))

    (advert,) = recent_adverts(net, a)
    sent = inject(x, bow_out(advert, x.mac))
    wait_for(lambda: "up" in state_changes(backup, sent), SLACK + 0.5)
    assert stale_drops(backup) == 0


# ---- legitimate adverts that do not count up, with the check on -------------------------------


@pytest.mark.ucarp
def test_lone_ucarp_master_with_random_counters_keeps_carpd_backup_quiet(net: Network) -> None:
    """A ucarp MASTER that never heard a peer sends a fresh random counter in every advert; a
    carpd BACKUP (which sends nothing) must keep accepting them: no takeover for 15 s."""
    a, b, _ = nodes(net)
    ucarp = start_master(net, a, "ucarp")
    carpd = start_backup(net, b, "carpd", a)
    before = carpd.status()
    watched = time.time()

    time.sleep(15)

    counters = [f.advert.counter for f in net.capture.frames(source=a.address, since=watched)]
    assert len(counters) >= 12
    assert not any(later == earlier + 1 for earlier, later in pairwise(counters)), (
        "ucarp heard a peer: its counters count up, the scenario is not the random one")
    assert state_changes(carpd, watched) == state_changes(ucarp, watched) == []
    unmoved(carpd, before, "BACKUP")
    assert carpd.status()["master"] == str(a.address)
    assert net.holders() == [a] and ucarp.is_master()


def accepted(daemon: Daemon) -> int:
    return int(str(daemon.status()["accepted"]))


def counter_behind(counter: int, newest: int) -> bool:
    """Not newer in serial-number arithmetic over 64 bits."""
    return not 0 < (counter - newest) % (1 << 64) < (1 << 63)


def restart(net: Network, master: Daemon, backup: Daemon) -> tuple[Daemon, bool]:
    """Kill the master's engine (its watchdog removes the VIP) and start a new one; return it
    once ``backup`` has accepted its adverts, which must be within one master-down interval of
    its first, and whether its first counter was behind the last one of the old engine."""
    node, accepted_before = master.node, accepted(backup)
    os.kill(master.pid, signal.SIGKILL)
    master.process.wait(5)
    wait_for(lambda: not node.has(VIP), 3)
    killed = time.time()
    last = net.capture.frames(source=node.address)[-1]
    again = node.start("carpd")
    first = net.capture.wait_frame(lambda f: f.source == node.address, MASTER_DOWN + 3, killed)
    wait_for(lambda: accepted(backup) > accepted_before,
             max(0.1, first.time + MASTER_DOWN + SLACK - time.time()))
    assert backup.status()["master"] == str(node.address)
    wait_for(lambda: net.holders() == [node], 2)
    return again, counter_behind(first.advert.counter, last.advert.counter)


def test_restarted_carpd_master_is_accepted_again_within_one_master_down_interval(
        net: Network) -> None:
    """The restarted engine counts from a new random start, behind the counter the backup last
    accepted half the time: restart until that happened (at most 5 times).  The backup
    (deadratio 10) waits longer than the master takes to come back, so it must accept it
    again, not take over, and go on accepting it."""
    a, b, _ = nodes(net)
    master, backup = carpd_pair(net, a, b, backup_extra=("-r", "10"))
    before = backup.status()

    for _ in range(5):
        master, behind = restart(net, master, backup)
        if behind:
            break
    heard = accepted(backup)
    time.sleep(2.5)

    assert accepted(backup) >= heard + 2, "the restarted master's adverts are dropped"
    unmoved(backup, before, "BACKUP")
    assert net.holders() == [a] and master.is_master()


def test_healed_partition_converges_to_exactly_one_master(net: Network) -> None:
    """b, faster but not preempting, becomes MASTER in the partition.  Unless its counter took
    a random start ahead of a's, it has counted less far than a (which kept advertising) when
    the partition heals: the winner's counter is then behind the loser's."""
    a, b, _ = nodes(net)
    slow = start_master(net, a, "carpd", advskew=200)
    fast_node = b.start("carpd", advskew=0)
    wait_for(lambda: hears(fast_node, a), MASTER_DOWN)

    net.partition(a, b)
    wait_for(lambda: fast_node.is_master() and slow.is_master(), MASTER_DOWN + 2)
    time.sleep(1.5)
    healed = time.time()
    net.heal()

    wait_for(lambda: net.holders() == [b], 1 + SLACK + 1)
    settled = time.time()
    time.sleep(3)
    assert net.holders() == [b]
    assert state_changes(slow, healed) == ["down"]
    assert state_changes(fast_node, settled) == []
    assert slow.status()["state"] == "BACKUP" and fast_node.status()["state"] == "MASTER"


# ---- forwarding after a bow-out (item 3) ------------------------------------------------------


@pytest.mark.parametrize("check", ["replay-check-on", "replay-check-off"])
@pytest.mark.parametrize("source", [ATTACKER, BROADCAST], ids=["never-heard", "broadcast"])
def test_forged_bow_out_from_another_source_installs_no_forwarding_to_it(
        net: Network, source: IPv4Address, check: str) -> None:
    a, b, x = nodes(net)
    extra = ("--no-replay-check",) if check == "replay-check-off" else ()
    master, _ = carpd_pair(net, a, b, backup_extra=extra)

    (advert,) = recent_adverts(net, a)
    inject(x, bow_out(advert, x.mac, source=source))

    def no_rule_to_source() -> None:
        rules = ruleset(b)
        assert str(source) not in rules, f"traffic for the VIP is sent to {source}:\n{rules}"

    watch(WATCH, no_rule_to_source)
    assert master.is_master()


def test_bow_out_of_a_terminated_carpd_master_forwards_its_connections_to_it(
        net: Network) -> None:
    a, b, _ = nodes(net)
    master, backup = carpd_pair(net, a, b, master_extra=("--drain", "2"))

    master.signal(signal.SIGTERM)

    rules = wait_for(lambda: forwarding_to(b, a.address), SLACK + 1)
    assert f'dup to {a.address} device "eth0"' in rules
    assert master.wait_exit(5) == 0
    wait_for(lambda: net.holders() == [b], 2)
    assert backup.is_master()


# ---- what the same attacks do to ucarp (no counter check) -------------------------------------


@pytest.mark.ucarp
def test_ucarp_backup_takes_over_from_a_live_master_on_a_replayed_bow_out(net: Network) -> None:
    a, b, x = nodes(net)
    master = start_master(net, a, "ucarp")
    backup = start_backup(net, b, "ucarp", a)

    (advert,) = recent_adverts(net, a)
    sent = inject(x, bow_out(advert, x.mac))

    wait_for(lambda: "up" in state_changes(backup, sent), UCARP_LATE + SLACK + 1)
    assert master.alive() and state_changes(master, sent) == [], "the master was never down"


@pytest.mark.ucarp
def test_ucarp_master_steps_down_on_a_replayed_fast_advert_from_any_address(
        net: Network) -> None:
    a, _, x = nodes(net)
    master = start_master(net, a, "ucarp")

    (advert,) = recent_adverts(net, a)
    sent = inject(x, fast(advert, x))

    wait_for(lambda: "down" in state_changes(master, sent), UCARP_LATE + SLACK + 1)
    assert master.alive()
