"""The election of carpd.core.election.VirtualHost, on a fake clock and an in-memory link.

Times are exact: every interval is a multiple of 1/256 s and every link delay a power of two, so
the simulated clock has no rounding and "takes over at master-down" can be checked with ``==``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

import pytest
from cluster import KEY, VIP, Cluster, params
from frames import FUZZ_SEED, carp_cases, fuzz_inputs

from carpd.core import drainsignal, wire
from carpd.core.election import (
    Dropped,
    EndDrain,
    ForwardStrays,
    RunScript,
    Script,
    SendAdvert,
    SendDrainSignal,
    SendGratuitousArp,
    StartDrain,
    State,
    StopForwarding,
    Transition,
    VirtualHost,
    tie_break_key,
)

INF = float("inf")


def skew(ticks: int) -> float:
    return ticks / 256


_FRESH_COUNTERS = itertools.count(10**9, 10_000)


def packet_from(source: str, advbase: int = 1, advskew: int = 0, counter: int | None = None,
                vhid: int = 1, key: bytes = KEY) -> bytes:
    """An advert from ``source``; without ``counter``, one newer than any sent so far."""
    if counter is None:
        counter = next(_FRESH_COUNTERS)
    advert = wire.Advert(vhid, advbase, advskew, counter)
    return wire.encode_packet(advert, key, VIP, IPv4Address(source), ident=1)


def host(source: str = "10.0.0.1", **settings: Any) -> VirtualHost:
    counters = iter(range(1000, 2000))
    return VirtualHost(params(source, **settings), lambda: next(counters))


def started_master(source: str = "10.0.0.1", **settings: Any) -> VirtualHost:
    vh = host(source, **settings)
    vh.start(0.0)
    deadline = vh.next_deadline()
    assert deadline is not None
    vh.handle_timer(deadline)
    assert vh.state is State.MASTER
    return vh


# ---- elections ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("advbases", "advskews", "winner"),
    [
        ((1, 1), (100, 0), "n1"),
        ((1, 1, 1), (0, 50, 100), "n0"),
        ((1, 1, 1, 1, 1), (200, 30, 0, 90, 255), "n2"),
        ((2, 1, 1, 3, 1), (0, 200, 100, 0, 255), "n2"),
    ],
    ids=["2-nodes", "3-nodes", "5-nodes", "5-nodes-mixed-advbase"],
)
def test_election_ends_with_exactly_one_master_the_lowest_interval(
        advbases: tuple[int, ...], advskews: tuple[int, ...], winner: str) -> None:
    cluster = Cluster({f"n{i}": params(f"10.0.0.{i + 1}", advbase=b, advskew=k)
                       for i, (b, k) in enumerate(zip(advbases, advskews, strict=True))},
                      delay=1 / 1024)
    cluster.start()
    cluster.run_until(60)
    assert cluster.masters() == [winner]
    assert all(s is State.BACKUP for n, s in cluster.states().items() if n != winner)
    assert all(cluster.became_master_at(n) == [] for n in cluster.nodes if n != winner)


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_equal_intervals_elect_by_little_endian_address(order: tuple[str, str]) -> None:
    # Both take over at the same instant (the link delay hides each from the other), then each
    # hears the other as MASTER: 10.9.2.1 wins because ucarp compares the last octet first.
    addresses = {"a": "10.9.1.2", "b": "10.9.2.1"}
    cluster = Cluster({n: params(addresses[n]) for n in order}, delay=1 / 64)
    cluster.start()
    cluster.run_until(20)
    assert cluster.became_master_at("a") == cluster.became_master_at("b") == [3.0]
    assert cluster.masters() == ["b"]
    # a hears b's first advert, or (when a's random counter was ahead and it dropped b's as not
    # newer) b's answer to a's advert: one link delay or two.
    when, stepped_down = cluster.transitions("a")[-1]
    assert when in (3.0 + 1 / 64, 3.0 + 2 / 64)
    assert stepped_down == Transition(State.MASTER, State.BACKUP,
                                      "preferred master 10.9.2.1 advertised")


def test_numeric_address_compare_would_pick_the_other_master() -> None:
    ucarp_winner, numeric_winner = IPv4Address("10.9.2.1"), IPv4Address("10.9.1.2")
    assert int(numeric_winner) < int(ucarp_winner)
    assert tie_break_key(ucarp_winner) < tie_break_key(numeric_winner)


def test_master_steps_down_for_equal_interval_from_little_endian_lower_address() -> None:
    master = started_master("10.9.1.2")
    actions = master.receive(packet_from("10.9.2.1"), 5.0)
    assert master.state is State.BACKUP
    assert [type(a) for a in actions] == [SendAdvert, Transition, RunScript]


def test_farewell_advert_lost_on_the_way_does_not_shadow_the_masters_next() -> None:
    # The farewell takes the preferred master's counter + 1; lost, that master's next advert
    # carries the same counter: it must still keep us waiting.
    master = started_master("10.9.1.2")
    actions = master.receive(packet_from("10.9.2.1", counter=80_000), 5.0)
    assert [a.advert.counter for a in actions if isinstance(a, SendAdvert)] == [80_001]
    assert master.receive(packet_from("10.9.2.1", counter=80_001), 6.0) == []
    assert master.next_deadline() == 6.0 + 3
    assert master.rejected[wire.Reject.STALE] == 0


def test_the_farewell_counter_with_a_bow_out_is_still_stale() -> None:
    master = started_master("10.9.1.2")
    master.receive(packet_from("10.9.2.1", counter=80_000), 5.0)
    replayed = master.receive(packet_from("10.9.2.1", 255, 255, counter=80_001), 5.5)
    assert replayed == [Dropped(wire.Reject.STALE, IPv4Address("10.9.2.1"))]
    assert master.state is State.BACKUP


def test_master_keeps_vip_for_equal_interval_from_little_endian_higher_address() -> None:
    master = started_master("10.9.2.1")
    actions = master.receive(packet_from("10.9.1.2", counter=7_000), 5.0)
    assert master.state is State.MASTER
    # It answers at once with a counter past the other's, so the other master hears it.
    assert actions == [SendAdvert(wire.Advert(1, 1, 0, 7_001)), SendGratuitousArp()]


# ---- master failure -----------------------------------------------------------------------------


def test_best_backup_takes_over_exactly_at_master_down_after_the_last_advert() -> None:
    delay = 1 / 64
    cluster = Cluster({"m": params("10.0.0.1"), "b1": params("10.0.0.2", advskew=50),
                       "b2": params("10.0.0.3", advskew=100)}, delay=delay)
    cluster.start()
    cluster.run_until(10.5)
    last_advert = cluster.adverts("m")[-1][0]
    assert last_advert == 10.0
    cluster.crash("m")
    cluster.run_until(30)
    assert cluster.became_master_at("b1") == [last_advert + delay + 3 + skew(50)]
    assert cluster.masters() == ["b1"]
    assert cluster.became_master_at("b2") == []


def test_backup_does_not_take_over_a_moment_before_master_down() -> None:
    cluster = Cluster({"m": params("10.0.0.1"), "b": params("10.0.0.2", advskew=100)})
    cluster.start()
    cluster.run_until(10.5)
    cluster.crash("m")
    takeover = 10.0 + 3 + skew(100)
    cluster.run_until(takeover - 1 / 1024)
    assert cluster.states()["b"] is State.BACKUP
    cluster.run_until(takeover)
    assert cluster.masters() == ["b"]


# ---- preemption ---------------------------------------------------------------------------------


def test_preempting_backup_with_lower_interval_takes_over_at_once() -> None:
    cluster = Cluster({"slow": params("10.0.0.1", advskew=100),
                       "fast": params("10.0.0.2", preempt=True)})
    cluster.start("slow")
    cluster.run_until(10)
    cluster.start("fast")
    cluster.run_until(20)
    first_heard = next(t for t, _ in cluster.adverts("slow") if t >= 10)
    assert cluster.became_master_at("fast") == [first_heard]
    assert cluster.masters() == ["fast"]
    # The slow master hears the preferred one, sends one more advert and steps down.
    assert cluster.transitions("slow")[-1][0] == first_heard
    last_time, last_advert = cluster.adverts("slow")[-1]
    assert last_time == first_heard
    assert (last_advert.advbase, last_advert.advskew) == (1, 100)
    assert cluster.scripts("slow")[-1] == (first_heard, Script.DOWN)


def test_backup_without_preempt_leaves_a_slower_master_alone() -> None:
    cluster = Cluster({"slow": params("10.0.0.1", advskew=100), "fast": params("10.0.0.2")})
    cluster.start("slow")
    cluster.run_until(10)
    cluster.start("fast")
    cluster.run_until(100)
    assert cluster.masters() == ["slow"]
    assert cluster.became_master_at("fast") == []


def test_preempting_backup_does_not_take_over_from_an_equal_interval() -> None:
    cluster = Cluster({"m": params("10.0.0.2"), "b": params("10.9.2.1", preempt=True)})
    cluster.start("m")
    cluster.run_until(10)
    cluster.start("b")
    cluster.run_until(60)
    assert cluster.masters() == ["m"]


def backup_hearing(master: str = "10.0.0.9", counter: int | None = None,
                   **settings: Any) -> VirtualHost:
    """A started BACKUP that has accepted one advert from ``master`` (with ``counter``, if
    given: else a fresh one), at 0.5."""
    backup = host(settings.pop("source", "10.0.0.1"), **settings)
    backup.start(0.0)
    backup.receive(packet_from(master, counter=counter), 0.5)
    assert backup.state is State.BACKUP
    return backup


def test_backup_takes_over_at_once_when_its_master_bows_out() -> None:
    backup = backup_hearing("10.0.0.9")
    actions = backup.receive(packet_from("10.0.0.9", advbase=255, advskew=255), 1.0)
    assert backup.state is State.MASTER
    assert actions[0] == Transition(State.BACKUP, State.MASTER,
                                    "master 10.0.0.9 is bowing out")


def test_bow_out_from_another_address_than_the_master_is_not_acted_on() -> None:
    backup = backup_hearing("10.0.0.9")
    assert backup.receive(packet_from("10.0.0.66", advbase=255, advskew=255), 1.0) == []
    assert backup.state is State.BACKUP
    assert backup.next_deadline() == 1.0 + 3


def test_slow_advert_that_is_not_exactly_255_255_is_not_a_bow_out() -> None:
    # advbase 4 > our advbase 1 x deadratio 3: ucarp would take over; only 255/255 bows out.
    backup = backup_hearing("10.0.0.9")
    assert backup.receive(packet_from("10.0.0.9", advbase=4), 1.0) == []
    assert backup.state is State.BACKUP


def test_backup_waits_for_a_master_exactly_at_its_master_down_interval() -> None:
    backup = host(advbase=1, advskew=10, deadratio=3)
    backup.start(0.0)
    assert backup.receive(packet_from("10.0.0.9", advbase=3, advskew=10), 1.0) == []
    assert backup.state is State.BACKUP
    assert backup.next_deadline() == 1.0 + 3 + skew(10)


# ---- bow-out, demotion --------------------------------------------------------------------------


def released_at_10_5(cluster: Cluster, release: Callable[[str], object]) -> None:
    """m, MASTER from the start, is released at 10.5 (``release("m")``: stopped or demoted): it
    sends a bow-out advert and runs its down script at once."""
    cluster.start()
    cluster.run_until(10.5)
    release("m")
    _, bow_out = cluster.adverts("m")[-1]
    assert (bow_out.advbase, bow_out.advskew) == (255, 255)
    assert cluster.scripts("m")[-1] == (10.5, Script.DOWN)


def test_stopping_master_bows_out_and_backup_takes_over_at_once() -> None:
    delay = 1 / 256
    cluster = Cluster({"m": params("10.0.0.1"), "b": params("10.0.0.2", advskew=100)},
                      delay=delay)
    released_at_10_5(cluster, cluster.stop)
    cluster.run_until(30)
    assert cluster.became_master_at("b") == [10.5 + delay]
    assert cluster.masters() == ["b"]


def test_stopping_backup_sends_nothing_and_runs_no_script() -> None:
    backup = host()
    backup.start(0.0)
    assert backup.stop(1.0) == [Transition(State.BACKUP, State.INIT, "shutting down")]
    assert backup.next_deadline() is None


def test_stopped_host_ignores_carrier_changes() -> None:
    vh = host()
    vh.start(0.0)
    vh.stop(1.0)
    assert vh.link_changed(False, 2.0) == []
    assert vh.link_changed(True, 3.0) == []
    assert vh.state is State.INIT
    assert vh.next_deadline() is None


def test_demoted_master_bows_out_and_stays_backup_until_promoted() -> None:
    cluster = Cluster({"m": params("10.0.0.1", preempt=True),
                       "b": params("10.0.0.2", advskew=100)})
    released_at_10_5(cluster, cluster.demote)
    cluster.run_until(10.5)  # the bow-out is delivered
    assert cluster.became_master_at("b") == [10.5]
    cluster.run_until(100)
    assert cluster.masters() == ["b"]
    assert cluster["m"].demoted_until == INF
    cluster.promote("m")
    assert cluster["m"].demoted_until is None
    cluster.run_until(110)
    first_heard = next(t for t, _ in cluster.adverts("b") if t > 100)
    assert cluster.became_master_at("m")[-1] == first_heard
    assert cluster.masters() == ["m"]


def test_demotion_with_until_ends_by_itself() -> None:
    cluster = Cluster({"m": params("10.0.0.1", preempt=True),
                       "b": params("10.0.0.2", advskew=100)})
    cluster.start()
    cluster.run_until(10.5)
    cluster.demote("m", until=20.5)
    cluster.run_until(20.5)
    assert cluster.masters() == ["b"]
    cluster.run_until(30)
    first_heard_after = next(t for t, _ in cluster.adverts("b") if t >= 20.5)
    assert cluster.became_master_at("m")[-1] == first_heard_after
    assert cluster.masters() == ["m"]


def test_demoted_lone_node_never_takes_over_until_promoted() -> None:
    cluster = Cluster({"n": params("10.0.0.1")})
    cluster.start()
    cluster.demote("n")
    cluster.run_until(100)
    assert cluster.masters() == []
    cluster.promote("n")
    cluster.run_until(200)
    assert cluster.became_master_at("n") == [100 + 3.0]


def test_demotion_before_start_holds_from_the_start() -> None:
    # The engine demotes before start() when the demotion marker file survived a restart.
    vh = host()
    assert vh.demote(0.0) == []
    vh.start(0.0)
    for t in (3.0, 6.0, 9.0):
        assert vh.handle_timer(t) == []
    assert vh.state is State.BACKUP
    assert vh.next_deadline() == 12.0


def test_demoted_backup_ignores_a_bow_out() -> None:
    backup = host(preempt=True)
    backup.start(0.0)
    backup.demote(0.5)
    assert backup.receive(packet_from("10.0.0.9", advbase=255, advskew=255), 1.0) == []
    assert backup.state is State.BACKUP


# ---- carrier ------------------------------------------------------------------------------------


def test_master_losing_carrier_goes_init_with_down_script() -> None:
    cluster = Cluster({"m": params("10.0.0.1"), "b": params("10.0.0.2", advskew=100)})
    cluster.start()
    cluster.run_until(10.5)
    cluster.unplug("m")
    assert cluster.actions_between("m", 10.5, 10.5) == [
        Transition(State.MASTER, State.INIT, "carrier lost"), RunScript(Script.DOWN)]
    assert cluster["m"].next_deadline() is None
    cluster.run_until(20)
    assert cluster.actions_between("m", 10.6, 20) == []
    assert cluster.became_master_at("b") == [10.0 + 3 + skew(100)]


def test_carrier_back_rejoins_as_backup_with_master_down_armed() -> None:
    cluster = Cluster({"n": params("10.0.0.1", advskew=16)})
    cluster.start()
    cluster.run_until(10.5)
    cluster.unplug("n")
    cluster.run_until(20.25)
    cluster.plug("n")
    assert cluster.actions_between("n", 20.25, 20.25) == [
        Transition(State.INIT, State.BACKUP, "carrier back")]
    assert cluster["n"].next_deadline() == 20.25 + 3 + skew(16)
    cluster.run_until(30)
    assert cluster.became_master_at("n")[-1] == 20.25 + 3 + skew(16)


def test_backup_losing_carrier_runs_no_script() -> None:
    backup = host()
    backup.start(0.0)
    assert backup.link_changed(False, 1.0) == [
        Transition(State.BACKUP, State.INIT, "carrier lost")]
    assert backup.link_changed(False, 1.5) == []


def test_start_without_carrier_waits_in_init_for_it() -> None:
    vh = host()
    assert vh.link_changed(False, 0.0) == []
    assert vh.start(0.0) == [RunScript(Script.DOWN)]
    assert vh.state is State.INIT
    assert vh.next_deadline() is None
    assert vh.link_changed(True, 5.0) == [Transition(State.INIT, State.BACKUP, "carrier back")]
    assert vh.next_deadline() == 8.0


def test_carrier_flap_before_start_does_not_start_the_election() -> None:
    vh = host()
    vh.link_changed(False, 0.0)
    vh.link_changed(True, 1.0)
    assert vh.state is State.INIT
    assert vh.next_deadline() is None


# ---- timing -------------------------------------------------------------------------------------


def test_advbase_zero_with_advskew_gives_sub_second_intervals() -> None:
    cluster = Cluster({"n": params("10.0.0.1", advbase=0, advskew=64)})
    cluster.start()
    assert cluster["n"].next_deadline() == 0.25  # master-down collapses to one interval
    cluster.run_until(2)
    assert cluster.became_master_at("n") == [0.25]
    assert [t for t, _ in cluster.adverts("n")] == [0.25 * k for k in range(1, 9)]


def test_advbase_zero_backup_takes_over_one_interval_after_the_last_advert() -> None:
    cluster = Cluster({"m": params("10.0.0.1", advbase=0, advskew=32),
                       "b": params("10.0.0.2", advbase=0, advskew=64)})
    cluster.start()
    cluster.run_until(5.01)
    cluster.crash("m")
    cluster.run_until(10)
    assert cluster.became_master_at("b") == [5.0 + 0.25]


@pytest.mark.parametrize("deadratio", [1, 3, 5])
def test_deadratio_scales_the_master_down_interval(deadratio: int) -> None:
    cluster = Cluster({"m": params("10.0.0.1", advbase=2, deadratio=deadratio),
                       "b": params("10.0.0.2", advbase=2, advskew=10, deadratio=deadratio)})
    cluster.start()
    cluster.run_until(40.5)
    assert cluster.masters() == ["m"]
    last = cluster.adverts("m")[-1][0]
    cluster.crash("m")
    cluster.run_until(100)
    assert cluster.became_master_at("b") == [last + 2 * deadratio + skew(10)]


def test_next_deadline_is_exactly_the_computed_time() -> None:
    vh = host(advbase=2, advskew=50, deadratio=3)
    vh.start(7.0)
    master_down = 7.0 + 6 + skew(50)
    assert vh.next_deadline() == master_down
    assert vh.handle_timer(master_down - 1 / 1024) == []
    assert vh.next_deadline() == master_down
    takeover = vh.handle_timer(master_down)
    assert takeover[0] == Transition(State.BACKUP, State.MASTER, "master down timer expired")
    assert vh.next_deadline() == master_down + 2 + skew(50)
    vh.receive(packet_from("10.0.0.9", advbase=3), 14.0)  # slower peer: we stay MASTER
    assert vh.next_deadline() == master_down + 2 + skew(50)


def test_backup_rearms_master_down_on_every_advert() -> None:
    vh = host(advskew=1)
    vh.start(0.0)
    for t in (1.0, 2.0, 2.5):
        vh.receive(packet_from("10.0.0.9"), t)
        assert vh.next_deadline() == t + 3 + skew(1)


def test_every_timer_fires_exactly_at_its_deadline() -> None:
    cluster = Cluster({"a": params("10.0.0.1", advskew=7),
                       "b": params("10.0.0.2", advbase=0, advskew=200),
                       "c": params("10.0.0.3", advbase=2, deadratio=1)}, delay=1 / 128)
    cluster.start()
    cluster.run_until(30)
    cluster.crash("b")
    cluster.run_until(60)
    # The cluster calls handle_timer just before each deadline (nothing may happen) and exactly
    # at it (the timer must fire): see Cluster._step.
    fired = [f for node in cluster.nodes.values() for f in node.timer_fired_at]
    assert len(fired) > 50
    assert cluster.masters() == ["c"]


# ---- counter ------------------------------------------------------------------------------------


def sent_counters(vh: VirtualHost, times: tuple[float, ...]) -> list[int]:
    return [a.advert.counter for t in times for a in vh.handle_timer(t)
            if isinstance(a, SendAdvert)]


def test_counter_counts_up_by_one_from_a_random_start() -> None:
    vh = VirtualHost(params("10.0.0.1"), iter([11, 22, 33, 44]).__next__)
    vh.start(0.0)
    assert sent_counters(vh, (3.0, 4.0, 5.0, 6.0)) == [11, 12, 13, 14]
    assert vh.sent == 4


def test_counter_follows_a_newer_accepted_advert_plus_one() -> None:
    master = started_master("10.0.0.1")
    master.receive(packet_from("10.0.0.9", advskew=200, counter=50_000), 3.5)
    assert sent_counters(master, (4.0, 5.0))[-2:] == [50_002, 50_003]  # 50_001: the answer


def test_counter_wraps_at_64_bits() -> None:
    vh = VirtualHost(params("10.0.0.1"), iter([2**64 - 2]).__next__)
    vh.start(0.0)
    assert sent_counters(vh, (3.0, 4.0, 5.0, 6.0)) == [2**64 - 2, 2**64 - 1, 0, 1]


def test_counter_wrapped_past_zero_is_still_newer() -> None:
    backup = backup_hearing("10.0.0.9", counter=2**64 - 1)
    assert backup.receive(packet_from("10.0.0.9", advbase=255, advskew=255, counter=0), 1.0)
    assert backup.state is State.MASTER


def test_rejected_advert_does_not_set_the_counter() -> None:
    vh = VirtualHost(params("10.0.0.1"), iter([11, 22]).__next__)
    vh.start(0.0)
    vh.receive(packet_from("10.0.0.9", counter=500, key=b"wrong"), 1.0)
    assert sent_counters(vh, (3.0, 4.0)) == [11, 12]


def timed_adverts(vh: VirtualHost, until: float) -> list[tuple[float, wire.Advert]]:
    """Every advert ``vh`` sends on its timers up to ``until``, with when."""
    sent = []
    while (deadline := vh.next_deadline()) is not None and deadline <= until:
        sent += [(deadline, a.advert) for a in vh.handle_timer(deadline)
                 if isinstance(a, SendAdvert)]
    return sent


def advert_packet(source: str, advert: wire.Advert) -> bytes:
    return packet_from(source, advert.advbase, advert.advskew, counter=advert.counter)


@pytest.mark.parametrize("master_advskew", [0, 1])
def test_master_hears_the_takeover_advert_of_a_backup_that_missed_its_adverts(
    master_advskew: int,
) -> None:
    """On a lossy link a BACKUP stops hearing a MASTER that lives on and counts on.  Its
    takeover advert must be newer than every advert that MASTER sent meanwhile: else the MASTER
    drops it as a replay, and both hold the VIP until the MASTER's next advert."""
    master = started_master("10.0.0.1", advskew=master_advskew)
    backup = host("10.0.0.2", advskew=100)
    backup.start(3.0)
    heard = timed_adverts(master, 6.0)
    for at, advert in heard:
        backup.receive(advert_packet("10.0.0.1", advert), at)
    unheard = timed_adverts(master, 9.0)  # lost on the way to the BACKUP
    assert len(unheard) == 3 and backup.next_deadline() == heard[-1][0] + 3 + skew(100)
    takeover = [a.advert for a in backup.handle_timer(backup.next_deadline() or INF)
                if isinstance(a, SendAdvert)]
    assert backup.state is State.MASTER and len(takeover) == 1
    answer = [a.advert for a in master.receive(advert_packet("10.0.0.2", takeover[0]), 9.5)
              if isinstance(a, SendAdvert)]
    assert master.rejected[wire.Reject.STALE] == 0
    assert master.state is State.MASTER and len(answer) == 1  # answered at once
    backup.receive(advert_packet("10.0.0.1", answer[0]), 9.5)
    assert backup.state is State.BACKUP



def backup_that_missed_three_adverts() -> tuple[VirtualHost, VirtualHost, list[wire.Advert]]:
    """A MASTER (10.0.0.1) and a BACKUP (10.0.0.2) that heard it until 6.0, missed its next
    three adverts and has just taken over; with the BACKUP's takeover advert."""
    master = started_master("10.0.0.1")
    backup = host("10.0.0.2", advskew=100)
    backup.start(3.0)
    for at, advert in timed_adverts(master, 6.0):
        backup.receive(advert_packet("10.0.0.1", advert), at)
    assert len(timed_adverts(master, 9.0)) == 3
    takeover = [a.advert for a in backup.handle_timer(backup.next_deadline() or INF)
                if isinstance(a, SendAdvert)]
    assert backup.state is State.MASTER
    return master, backup, takeover


def test_backup_that_took_over_still_steps_down_at_the_masters_next_advert() -> None:
    """The MASTER missed the takeover advert too: its next advert, behind the BACKUP's jumped
    counter but from the master it followed and never heard before, still sends it back."""
    master, backup, _ = backup_that_missed_three_adverts()
    ((at, advert),) = timed_adverts(master, 10.0)
    backup.receive(advert_packet("10.0.0.1", advert), at)
    assert backup.state is State.BACKUP and backup.rejected[wire.Reject.STALE] == 0
    ((at, later),) = timed_adverts(master, 11.0)  # and it follows that master on
    backup.receive(advert_packet("10.0.0.1", later), at)
    assert backup.rejected[wire.Reject.STALE] == 0 and backup.next_deadline() == at + 3 + skew(100)


@pytest.mark.parametrize("source", ["10.0.0.1", "10.0.0.66"])
def test_counters_the_takeover_skipped_are_taken_once_and_only_from_the_old_master(
    source: str,
) -> None:
    master, backup, _ = backup_that_missed_three_adverts()
    ((_, advert),) = timed_adverts(master, 10.0)
    replayed = advert_packet(source, advert)
    if source == "10.0.0.1":
        assert backup.receive(replayed, 10.0)[-1] == RunScript(Script.DOWN)
    assert backup.receive(replayed, 10.1) == [Dropped(wire.Reject.STALE, IPv4Address(source))]


# ---- replay check -------------------------------------------------------------------------------


def test_replayed_advert_turned_into_a_bow_out_is_dropped_as_stale() -> None:
    backup = backup_hearing("10.0.0.9", counter=500)
    actions = backup.receive(packet_from("10.0.0.9", advbase=255, advskew=255, counter=500), 1.0)
    assert actions == [Dropped(wire.Reject.STALE, IPv4Address("10.0.0.9"))]
    assert backup.state is State.BACKUP
    assert backup.rejected[wire.Reject.STALE] == 1
    assert backup.next_deadline() == 0.5 + 3  # the stale advert did not even rearm the timer


def test_older_counter_from_the_master_is_stale() -> None:
    backup = backup_hearing("10.0.0.9", counter=500)
    assert backup.receive(packet_from("10.0.0.9", counter=499), 1.0) == [
        Dropped(wire.Reject.STALE, IPv4Address("10.0.0.9"))]


def test_replay_of_our_own_advert_with_a_faster_timing_does_not_move_the_master() -> None:
    master = started_master("10.0.0.1")
    ours = sent_counters(master, (4.0,))[0]
    for source in ("10.0.0.66", "10.0.0.2"):
        actions = master.receive(packet_from(source, advbase=0, advskew=1, counter=ours), 4.5)
        assert actions == [Dropped(wire.Reject.STALE, IPv4Address(source))]
    assert master.state is State.MASTER


def test_stale_advert_runs_no_script_and_installs_no_rule() -> None:
    backup = host(drain=2.0, preempt=True, advskew=0)
    backup.start(0.0)
    backup.receive(packet_from("10.0.0.9", advskew=100, counter=900), 0.1)  # preempts
    assert backup.state is State.MASTER
    backup.demote(0.5, until=0.6)  # bows out, drains
    replays = [backup.receive(packet_from("10.0.0.9", advbase=b, advskew=k, counter=900), 1.0)
               for b, k in ((255, 255), (0, 1), (2, 0))]
    assert all(r == [Dropped(wire.Reject.STALE, IPv4Address("10.0.0.9"))] for r in replays)
    assert backup.state is State.BACKUP and backup.draining


def test_lone_ucarp_master_with_a_random_counter_in_every_advert_keeps_the_backup() -> None:
    rng = random.Random(7)
    backup = host()
    backup.start(0.0)
    t = 0.5
    for _ in range(300):
        actions = backup.receive(packet_from("10.0.0.9", counter=rng.getrandbits(63)), t)
        assert not any(isinstance(a, Transition | Dropped) for a in actions)
        backup.handle_timer(t)
        t += 1.0
    assert backup.state is State.BACKUP
    assert backup.rejected == {}


def test_random_counter_from_another_address_than_the_master_is_stale() -> None:
    backup = backup_hearing("10.0.0.9", counter=2**62)
    assert backup.receive(packet_from("10.0.0.66", counter=5), 1.0) == [
        Dropped(wire.Reject.STALE, IPv4Address("10.0.0.66"))]


def test_exact_replay_of_a_random_counter_is_stale() -> None:
    backup = backup_hearing("10.0.0.9", counter=5)
    backup.receive(packet_from("10.0.0.9", counter=2**62), 1.5)
    assert backup.receive(packet_from("10.0.0.9", counter=5), 2.0) == [
        Dropped(wire.Reject.STALE, IPv4Address("10.0.0.9"))]


def test_random_counter_cannot_carry_a_bow_out() -> None:
    backup = backup_hearing("10.0.0.9", counter=2**62)
    actions = backup.receive(packet_from("10.0.0.9", advbase=255, advskew=255, counter=9), 1.0)
    assert actions == [Dropped(wire.Reject.STALE, IPv4Address("10.0.0.9"))]
    assert backup.state is State.BACKUP


def test_replay_check_off_acts_on_a_replayed_bow_out() -> None:
    backup = host(replay_check=False)
    backup.start(0.0)
    backup.receive(packet_from("10.0.0.9", counter=500), 0.5)
    backup.receive(packet_from("10.0.0.9", advbase=255, advskew=255, counter=500), 1.0)
    assert backup.state is State.MASTER


def test_restarted_peer_with_a_lower_counter_is_heard_within_one_master_down_interval() -> None:
    # a's counter is far ahead of b's random start: b's adverts are stale to a, so a takes over
    # at master-down; b then hears a's newer counter, jumps past it and is heard again.
    cluster = Cluster({"a": params("10.0.0.1", advskew=100), "b": params("10.0.0.2")},
                      delay=1 / 1024)
    cluster.nodes["a"].host = None
    cluster.start("b")
    cluster.run_until(10)
    assert cluster.masters() == ["b"]
    cluster.start("a")
    cluster.run_until(40)
    assert cluster.masters() == ["b"]
    assert cluster.became_master_at("a") == []


def test_masters_that_took_over_in_step_with_equal_counters_converge() -> None:
    cluster = Cluster({"a": params("10.9.1.2"), "b": params("10.9.2.1")}, delay=1 / 64)
    cluster.start()
    for seed, node in enumerate(cluster.nodes.values()):
        assert node.host is not None
        rng = random.Random(seed)  # the same start, then each node's own random skips
        draws = iter(lambda r=rng: r.getrandbits(64), None)  # type: ignore[misc]
        node.host.random_counter = itertools.chain([5000], draws).__next__
    cluster.run_until(30)
    assert cluster.masters() == ["b"]


# ---- rate limits --------------------------------------------------------------------------------


def test_flapping_adverts_cause_at_most_a_few_transitions_per_second() -> None:
    vh = host("10.0.0.5", preempt=True, advskew=50)
    vh.start(0.0)
    t, transitions = 1.0, 0
    for i in range(1000):  # for 1 s, 1000 fresh adverts alternately preferred and slower
        actions = vh.receive(packet_from("10.0.0.9", advskew=0 if i % 2 else 100), t)
        transitions += sum(isinstance(a, Transition) for a in actions)
        t += 0.001
    assert transitions <= 4 + 2  # the burst, then two a second
    assert vh.rejected[wire.Reject.RATE_LIMITED] > 400


# ---- scripts ------------------------------------------------------------------------------------


def test_start_runs_the_down_script() -> None:
    assert host().start(0.0) == [Transition(State.INIT, State.BACKUP, "started"),
                                 RunScript(Script.DOWN)]


def test_start_with_neutral_runs_no_script() -> None:
    assert host(neutral=True).start(0.0) == [Transition(State.INIT, State.BACKUP, "started")]


def test_scripts_run_up_on_becoming_master_and_down_on_leaving_it() -> None:
    cluster = Cluster({"slow": params("10.0.0.1", advskew=100),
                       "fast": params("10.0.0.2", preempt=True, neutral=True)})
    cluster.start("slow")
    cluster.run_until(10)
    cluster.start("fast")
    cluster.run_until(20)
    cluster.stop("fast")
    cluster.run_until(30)
    assert [s for _, s in cluster.scripts("slow")] == [
        Script.DOWN, Script.UP, Script.DOWN, Script.UP]
    assert [s for _, s in cluster.scripts("fast")] == [Script.UP, Script.DOWN]


def test_backup_hearing_adverts_runs_no_script() -> None:
    vh = host()
    vh.start(0.0)
    assert vh.receive(packet_from("10.0.0.9"), 1.0) == []


# ---- gratuitous ARP -----------------------------------------------------------------------------


def test_takeover_runs_up_announces_and_advertises_at_once() -> None:
    vh = host()
    vh.start(0.0)
    actions = vh.handle_timer(3.0)
    assert [type(a) for a in actions] == [Transition, RunScript, SendGratuitousArp, SendAdvert]
    assert actions[1] == RunScript(Script.UP)


def test_lone_node_announces_like_the_ucarp_capture() -> None:
    # v1 capture: ARP, advert, advert, advert, ARP (with the third advert), advert, advert.
    cluster = Cluster({"n": params("10.0.0.1")})
    cluster.start()
    cluster.run_until(7.5)
    kinds = [("arp" if isinstance(a, SendGratuitousArp) else "carp")
             for _, a in cluster.nodes["n"].log if isinstance(a, SendGratuitousArp | SendAdvert)]
    assert kinds == ["arp", "carp", "carp", "carp", "arp", "carp", "carp"]
    assert cluster.garps("n") == [3.0, 5.0]


def test_master_hearing_a_slower_master_announces_now_and_two_adverts_later() -> None:
    master = started_master()  # adverts at 3 (1st), 4, 5 (3rd: the takeover's second ARP)
    garps = []
    for t in (4.0, 5.0, 6.0):
        garps += [t for a in master.handle_timer(t) if isinstance(a, SendGratuitousArp)]
    assert garps == [5.0]
    answer = master.receive(packet_from("10.0.0.9", advskew=50), 6.5)
    assert [type(a) for a in answer] == [SendAdvert, SendGratuitousArp]
    for t in (7.0, 8.0, 9.0, 10.0):
        garps += [t for a in master.handle_timer(t) if isinstance(a, SendGratuitousArp)]
    assert garps == [5.0, 8.0]


# ---- receiving ----------------------------------------------------------------------------------


def test_rejected_packet_is_counted_and_reported_with_its_source() -> None:
    vh = host()
    vh.start(0.0)
    assert vh.receive(packet_from("10.0.0.9", key=b"wrong"), 1.0) == [
        Dropped(wire.Reject.BAD_HMAC, IPv4Address("10.0.0.9"))]
    assert vh.rejected[wire.Reject.BAD_HMAC] == 1
    assert vh.accepted == 0
    assert vh.next_deadline() == 3.0  # a forged advert does not hold off the takeover


def test_advert_of_another_vhid_is_counted_silently() -> None:
    vh = host()
    vh.start(0.0)
    assert vh.receive(packet_from("10.0.0.9", vhid=2), 1.0) == []
    assert vh.rejected[wire.Reject.OTHER_VHID] == 1


def test_accepted_advert_is_counted_and_its_sender_noted_as_master() -> None:
    vh = host()
    vh.start(0.0)
    vh.receive(packet_from("10.0.0.9", advbase=2, advskew=5), 1.0)
    assert vh.accepted == 1
    assert vh.master is not None
    assert (vh.master.address, vh.master.advbase, vh.master.advskew, vh.master.since) == (
        IPv4Address("10.0.0.9"), 2, 5, 1.0)


def test_stopped_host_ignores_adverts() -> None:
    vh = host(preempt=True)
    vh.start(0.0)
    vh.stop(1.0)
    assert vh.receive(packet_from("10.0.0.9", advskew=200), 2.0) == []
    assert vh.state is State.INIT


def test_master_does_not_report_a_slower_peer_as_its_master() -> None:
    master = started_master()
    master.receive(packet_from("10.0.0.9", advskew=50), 5.0)
    assert master.master is None


def test_master_stepping_down_reports_the_preferred_master() -> None:
    master = started_master(advskew=50)
    master.receive(packet_from("10.0.0.9"), 5.0)
    assert master.master is not None
    assert master.master.address == IPv4Address("10.0.0.9")


def test_carrier_loss_forgets_the_master_heard() -> None:
    backup = host()
    backup.start(0.0)
    backup.receive(packet_from("10.0.0.9"), 1.0)
    backup.link_changed(False, 2.0)
    assert backup.master is None


def test_short_demotion_does_not_cut_a_longer_one_short() -> None:
    vh = host()
    vh.start(0.0)
    vh.demote(1.0)  # the operator: until promoted
    vh.demote(2.0, until=5.0)  # SIGUSR2: at least 3 s
    assert vh.demoted_until == INF
    vh.handle_timer(100.0)
    assert vh.state is State.BACKUP


def test_longer_demotion_extends_a_short_one() -> None:
    vh = host()
    vh.start(0.0)
    vh.demote(1.0, until=4.0)
    vh.demote(2.0)
    assert vh.demoted_until == INF


def test_new_demotion_replaces_one_that_has_ended() -> None:
    vh = host()
    vh.start(0.0)
    vh.demote(0.0, until=10.0)
    vh.demote(20.0, until=21.0)
    assert vh.demoted_until == 21.0


# ---- drain and re-announce (ours: keep the VIP a moment after a planned release) -------------


def test_planned_step_down_drains_then_runs_the_down_script() -> None:
    master = started_master(advskew=50, drain=2.0)
    actions = master.demote(5.0)
    assert [type(a) for a in actions] == [SendAdvert, Transition, StartDrain]
    assert master.state is State.BACKUP and master.draining
    assert master.next_deadline() == 7.0
    assert master.handle_timer(7.0) == [RunScript(Script.DOWN), EndDrain()]
    assert not master.draining
    assert master.next_deadline() == 5.0 + 3 + skew(50)


def test_stepping_down_to_a_preferred_master_releases_at_once_even_with_a_drain() -> None:
    master = started_master(advskew=50, drain=2.0)
    actions = master.receive(packet_from("10.0.0.9"), 5.0)
    assert RunScript(Script.DOWN) in actions and StartDrain() not in actions
    assert not master.draining


def test_preempted_by_a_preferred_carpd_master_drains_like_any_planned_release() -> None:
    # issue 11: a node back in health takes the VIP back "with a planned hand-over"
    master = started_master(advskew=50, drain=2.0)
    actions = master.receive(packet_from("10.0.0.9"), 5.0, sender_drains=True)
    assert StartDrain() in actions and RunScript(Script.DOWN) not in actions
    assert master.draining
    actions = master.handle_timer(7.0)
    assert actions[:2] == [RunScript(Script.DOWN), EndDrain()]
    assert [type(a) for a in actions[2:]] == [SendDrainSignal]  # "drained", to the preempter


def test_stepping_down_to_an_equal_carpd_master_after_a_partition_releases_at_once() -> None:
    master = started_master("10.0.0.9", drain=2.0)
    actions = master.receive(packet_from("10.0.0.1"), 5.0, sender_drains=True)  # wins the tie
    assert master.state is State.BACKUP
    assert RunScript(Script.DOWN) in actions and StartDrain() not in actions
    assert not master.draining


def test_preempting_a_carpd_master_passes_its_drained_connections_back() -> None:
    backup = backup_hearing("10.0.0.9", advskew=0, preempt=True, drain=2.0)
    actions = backup.receive(packet_from("10.0.0.9", advskew=100), 1.0, sender_drains=True)
    assert backup.state is State.MASTER
    assert [a.to for a in actions if isinstance(a, ForwardStrays)] == [IPv4Address("10.0.0.9")]


def test_preempting_a_ucarp_master_forwards_nothing_to_it() -> None:
    backup = backup_hearing("10.0.0.9", advskew=0, preempt=True, drain=2.0)
    actions = backup.receive(packet_from("10.0.0.9", advskew=100), 1.0)
    assert backup.state is State.MASTER
    assert not any(isinstance(a, ForwardStrays) for a in actions)


def test_stop_as_master_bows_out_and_drains() -> None:
    master = started_master(drain=1.5)
    actions = master.stop(10.0)
    assert [type(a) for a in actions] == [SendAdvert, Transition, StartDrain]
    assert master.next_deadline() == 11.5
    assert master.handle_timer(11.5) == [RunScript(Script.DOWN), EndDrain()]
    assert master.next_deadline() is None


def test_takeover_during_a_drain_keeps_the_vip_without_down_script() -> None:
    master = started_master(advskew=50, drain=5.0, deadratio=1)
    master.demote(5.0, until=6.0)  # a short step-down: drain until 10
    takeover = 5.0 + 1 + skew(50)  # nobody else takes over
    actions = master.handle_timer(takeover)
    assert actions[:3] == [EndDrain(), Transition(State.BACKUP, State.MASTER,
                                                   "master down timer expired"),
                           RunScript(Script.UP)]
    assert RunScript(Script.DOWN) not in actions


def test_carrier_loss_during_a_drain_releases_at_once() -> None:
    master = started_master(advskew=50, drain=5.0)
    master.demote(5.0)
    assert master.link_changed(False, 6.0) == [
        Transition(State.BACKUP, State.INIT, "carrier lost"), RunScript(Script.DOWN), EndDrain()]


def test_carrier_loss_as_master_does_not_drain() -> None:
    master = started_master(drain=5.0)
    assert master.link_changed(False, 6.0) == [
        Transition(State.MASTER, State.INIT, "carrier lost"), RunScript(Script.DOWN)]
    assert not master.draining


def test_new_master_announces_again_once_a_peers_drain_is_over() -> None:
    vh = host(drain=2.0)
    vh.start(0.0)
    vh.handle_timer(3.0)
    vh.handle_timer(4.0)
    vh.handle_timer(5.0)
    assert vh.next_deadline() == 3.0 + 2.0 + 0.2
    assert vh.handle_timer(5.2) == [SendGratuitousArp()]
    assert vh.next_deadline() == 6.0


def test_master_reannounces_periodically() -> None:
    cluster = Cluster({"n": params("10.0.0.1", reannounce=4.0)})
    cluster.start()
    cluster.run_until(16)
    # Takeover at 3, with the third advert at 5, then every 4 s from the takeover.
    assert cluster.garps("n") == [3.0, 5.0, 7.0, 11.0, 15.0]


@pytest.mark.parametrize(
    "settings",
    [{"advbase": 0, "advskew": 0}, {"deadratio": 0}, {"vhid": 0}, {"vhid": 256},
     {"advbase": 256}, {"advskew": -1}],
    ids=["zero-interval", "deadratio-0", "vhid-0", "vhid-256", "advbase-256", "advskew-negative"],
)
def test_params_refuse_values_that_would_break_the_timers_or_the_wire(
        settings: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        params("10.0.0.1", **settings)


# ---- fuzzing: the election never raises -------------------------------------------------------


def forged_adverts(rng: random.Random, count: int) -> list[bytes]:
    """Adverts with a valid HMAC but any advbase, advskew and source (neither is authenticated)."""
    return [packet_from(f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
                        advbase=rng.randrange(256), advskew=rng.randrange(256),
                        counter=rng.getrandbits(64)) for _ in range(count)]


def test_receive_never_raises_whatever_arrives_in_any_state() -> None:
    rng = random.Random(FUZZ_SEED)
    cases = [c for c in carp_cases() if c.vhid == 1 and c.password == KEY]
    inputs = fuzz_inputs(rng, cases, 1500) + forged_adverts(rng, 1500)
    rng.shuffle(inputs)
    vh = host("10.99.0.11", preempt=True)
    vh.start(0.0)
    now, states = 0.0, set()
    for data in inputs:
        now += rng.choice((0.0, 0.01, 0.5, 2.0))
        vh.handle_timer(now)
        if rng.random() < 0.01:
            vh.link_changed(not vh.link_up, now)
        if rng.random() < 0.01 and vh.demoted_until is None:
            vh.demote(now, until=now + 2)
        elif rng.random() < 0.01:
            vh.promote(now)
        vh.receive(data, now)
        states.add(vh.state)
        assert vh.next_deadline() is not None or vh.state is State.INIT
    assert states == set(State)
    assert vh.accepted > 1000


def test_taking_over_from_a_bowing_out_master_forwards_its_strays_until_it_falls_silent() -> None:
    backup = backup_hearing("10.0.0.1", source="10.0.0.2", drain=2.0)
    bow_out = packet_from("10.0.0.1", advbase=255, advskew=255)
    actions = backup.receive(bow_out, 1.0, sender_mac=b"\x02\0\0\0\0\x01")
    assert backup.state is State.MASTER
    counter = wire.inspect(bow_out, backup._expect)
    assert isinstance(counter, wire.Received)
    assert actions[-1] == ForwardStrays(IPv4Address("10.0.0.1"), b"\x02\0\0\0\0\x01",
                                        counter.advert.counter)
    assert StopForwarding() not in backup.handle_timer(1.0 + drainsignal.SILENCE - 0.01)
    assert StopForwarding() in backup.handle_timer(1.0 + drainsignal.SILENCE)


def test_forwarding_goes_on_when_the_new_master_is_preempted() -> None:
    """The old MASTER's drain, not our state, decides (its signal falls silent here)."""
    backup = backup_hearing("10.0.0.1", source="10.0.0.2", drain=2.0, advskew=50)
    backup.receive(packet_from("10.0.0.1", advbase=255, advskew=255), 1.0)
    actions = backup.receive(packet_from("10.0.0.9"), 1.5)
    assert StopForwarding() not in actions and backup.state is State.BACKUP
    assert StopForwarding() in backup.handle_timer(1.0 + drainsignal.SILENCE)


def test_a_new_master_without_a_drain_of_its_own_still_forwards_the_old_masters() -> None:
    """The nodes may have different settings: the old MASTER's signal says how long."""
    backup = backup_hearing("10.0.0.1", source="10.0.0.2")
    actions = backup.receive(packet_from("10.0.0.1", advbase=255, advskew=255), 1.0)
    assert any(isinstance(a, ForwardStrays) for a in actions)


# ---- the VIP deleted by someone else ------------------------------------------------------------


def test_master_whose_vip_was_deleted_runs_the_up_action_again() -> None:
    master = started_master()
    assert master.vip_lost(5.0) == [RunScript(Script.UP)]
    assert master.state is State.MASTER


def test_vip_deleted_again_and_again_makes_the_master_hand_over() -> None:
    master = started_master()
    master.vip_lost(5.0)
    master.vip_lost(6.0)
    actions = master.vip_lost(7.0)
    assert [a.advert.advbase for a in actions if isinstance(a, SendAdvert)] == [255]
    assert master.state is State.BACKUP
    assert master.handle_timer(7.0 + 3.0 - 0.01) == []  # held BACKUP for the step-down hold


def test_vip_deleted_while_backup_changes_nothing() -> None:
    vh = host()
    vh.start(0.0)
    assert vh.vip_lost(1.0) == []
