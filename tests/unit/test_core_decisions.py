"""The election core owns its decisions (issue 9, item 5), on a fake clock: the end of a script
is one of its inputs (gratuitous ARP waits for the up script, the drain's ARP rule for the down
script), ``step_down(now)``, ``start(now, carrier=, demoted=)``, ``status(now)``, the timers
armed from the state, and no INIT -> INIT transition."""

from __future__ import annotations

import random
from ipaddress import IPv4Address
from typing import Any

from cluster import KEY, VIP, params

from carpd.core import wire
from carpd.core.election import (
    Action,
    EndDrain,
    RunScript,
    Script,
    SendAdvert,
    SendGratuitousArp,
    StartDrain,
    State,
    Transition,
    VirtualHost,
)


def host(**settings: Any) -> VirtualHost:
    counters = iter(range(1000, 100_000))
    return VirtualHost(params("10.0.0.1", await_scripts=True, **settings),
                       lambda: next(counters))


def master(**settings: Any) -> tuple[VirtualHost, float]:
    """A host that took over at the master-down time (its start's down script reported)."""
    vh = host(**settings)
    vh.start(0.0)
    vh.script_finished(Script.DOWN, 0.1)
    now = vh.next_deadline()
    assert now is not None
    vh.handle_timer(now)
    assert vh.state is State.MASTER
    return vh, now


def advert_from(source: str, advskew: int, counter: int) -> bytes:
    advert = wire.Advert(1, 1, advskew, counter)
    return wire.encode_packet(advert, KEY, VIP, IPv4Address(source), ident=1)


def kinds(actions: list[Action]) -> list[type]:
    return [type(a) for a in actions]


# ---- the end of a script is an input ----------------------------------------------------------

def test_gratuitous_arp_waits_for_the_up_script_to_finish() -> None:
    vh = host()
    vh.start(0.0)
    vh.script_finished(Script.DOWN, 0.1)
    took_over = vh.handle_timer(3.0)
    assert RunScript(Script.UP) in took_over and SendAdvert in kinds(took_over)
    assert SendGratuitousArp() not in took_over, "announced before the up script added the VIP"
    assert vh.script_finished(Script.UP, 3.2) == [SendGratuitousArp()]


def test_without_await_scripts_the_takeover_announces_at_once_as_ucarp_does() -> None:
    counters = iter(range(1000, 2000))
    vh = VirtualHost(params("10.0.0.1"), lambda: next(counters))
    vh.start(0.0)
    assert SendGratuitousArp() in vh.handle_timer(3.0)


def test_an_up_script_finishing_after_a_step_down_announces_nothing() -> None:
    vh, now = master()
    vh.step_down(now + 0.5)
    assert vh.script_finished(Script.UP, now + 1.0) == []


def test_the_drains_arp_rule_is_lifted_only_after_the_down_script() -> None:
    vh, now = master(drain=2.0)
    vh.script_finished(Script.UP, now + 0.1)
    assert StartDrain() in vh.demote(now + 1.0)
    end = vh.handle_timer(now + 3.0)
    assert RunScript(Script.DOWN) in end and EndDrain() not in end
    assert vh.script_finished(Script.DOWN, now + 3.5) == [EndDrain()]
    assert vh.script_finished(Script.DOWN, now + 4.0) == [], "lifted once"


def test_a_takeover_during_the_drain_lifts_the_rule_at_once_keeping_the_vip() -> None:
    vh, now = master(drain=20.0)
    vh.script_finished(Script.UP, now)
    vh.step_down(now + 1.0)  # drains for 20 s, stays BACKUP for the hold
    hold = vh.step_down_hold
    actions = vh.handle_timer(now + 1.0 + hold + vh.params.master_down_interval)
    assert vh.state is State.MASTER
    assert EndDrain() in actions and RunScript(Script.DOWN) not in actions


# ---- step_down, start, status ----------------------------------------------------------------

def test_step_down_hands_over_and_status_says_demoted_only_while_the_hold_lasts() -> None:
    vh, now = master()
    actions = vh.step_down(now)
    bow_out = [a for a in actions if isinstance(a, SendAdvert)]
    assert [(a.advert.advbase, a.advert.advskew) for a in bow_out] == [(255, 255)]
    assert Transition(State.MASTER, State.BACKUP, "demoted: bowing out") in actions
    during = vh.status(now + 1.0)
    assert during["demoted"] is True
    assert (during["demoted_since"], during["demoted_until"]) == (now, now + vh.step_down_hold)
    after = vh.status(now + vh.step_down_hold + 0.01)
    assert after["demoted"] is False
    assert (after["demoted_since"], after["demoted_until"]) == (None, None)


def test_step_down_keeps_an_operators_demotion() -> None:
    vh, now = master()
    vh.demote(now)
    vh.step_down(now + 1.0)
    assert vh.status(now + 3600.0)["demoted"] is True
    assert vh.status(now + 3600.0)["demoted_until"] is None  # until promoted


def test_start_with_the_carrier_down_waits_in_init_without_a_transition() -> None:
    vh = host()
    actions = vh.start(0.0, carrier=False)
    assert actions == [RunScript(Script.DOWN)]
    assert vh.state is State.INIT and vh.next_deadline() is None
    assert vh.link_changed(True, 5.0)[0] == Transition(State.INIT, State.BACKUP, "carrier back")
    assert vh.next_deadline() == 5.0 + vh.params.master_down_interval


def test_a_demoted_start_stays_backup_until_promoted() -> None:
    vh = host()
    vh.start(0.0, demoted=True)
    assert vh.state is State.BACKUP and vh.status(0.0)["demoted"] is True
    for t in (3.0, 6.0, 9.0, 12.0):
        vh.handle_timer(t)
    assert vh.state is State.BACKUP
    vh.promote(12.5)
    vh.handle_timer(12.5 + vh.params.master_down_interval)
    assert vh.state is State.MASTER


def test_status_reports_the_master_heard_and_the_counters() -> None:
    vh = host()
    vh.start(0.0)
    vh.receive(advert_from("10.0.0.2", 0, 5), 1.0)
    status = vh.status(1.5)
    assert (status["state"], status["master"], status["master_since"]) == (
        "BACKUP", "10.0.0.2", 1.0)
    assert (status["accepted"], status["transitions"]) == (1, 1)


# ---- timers from the state; no INIT -> INIT ----------------------------------------------------

def test_the_timers_follow_the_state() -> None:
    vh, now = master()
    assert vh.next_deadline() == now + vh.params.advert_interval  # a MASTER advertises
    vh.receive(advert_from("10.0.0.0", 0, 10**9), now + 0.5)  # preferred (lower tie-break)
    assert vh.state is State.BACKUP
    assert vh.next_deadline() == now + 0.5 + vh.params.master_down_interval
    vh.link_changed(False, now + 1.0)
    assert vh.state is State.INIT and vh.next_deadline() is None


def test_no_input_ever_makes_an_init_to_init_transition() -> None:
    rng = random.Random(9)
    for _ in range(200):
        vh = host(drain=rng.choice((0.0, 1.0)))
        now = 0.0
        seen: list[Action] = list(vh.start(now, carrier=rng.random() < 0.5,
                                           demoted=rng.random() < 0.2))
        for _ in range(40):
            now += rng.choice((0.1, 1.0, 3.5))
            step = rng.randrange(7)
            if step == 0:
                seen += vh.link_changed(rng.random() < 0.5, now)
            elif step == 1:
                seen += vh.step_down(now)
            elif step == 2:
                seen += vh.stop(now)
            elif step == 3:
                seen += vh.script_finished(rng.choice(list(Script)), now)
            elif step == 4:
                seen += vh.promote(now)
            else:
                seen += vh.handle_timer(now)
        assert not [a for a in seen if isinstance(a, Transition)
                    and a.old is a.new is State.INIT]


def test_a_late_loop_turn_does_not_push_the_next_advert_back() -> None:
    vh, now = master()
    due = vh.next_deadline()
    assert due is not None
    vh.handle_timer(due + 0.004)  # the loop got to it 4 ms late (255 groups sending)
    assert vh.next_deadline() == due + vh.params.advert_interval
    later = due + vh.params.advert_interval
    vh.handle_timer(later + 5.0)  # a stalled engine is not caught up with a burst
    assert vh.next_deadline() == later + 5.0 + vh.params.advert_interval
