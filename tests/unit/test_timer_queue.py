"""The engine's timer handling on a fake clock, with real election cores:
carpd.engine.daemon.TimerQueue
(the groups' timer instants, soonest first) and the schedule it runs MASTERs on (each a few ms
early, spread by vhid, so that 255 groups due at one instant do not go out in one burst)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from carpd.core import election, wire
from carpd.engine import daemon

VHIDS = range(1, 256)
INTERVALS = 60
SEED = 1202
WAKE_LATE = 0.002
"""How late epoll wakes the loop after a sleep of about a second: up to 1 ms of rounding to
whole milliseconds and up to 1 ms of timer slack (0.1 % of the sleep)."""


@dataclass
class FakeGroup:
    """What the loop sees of a carpd.engine.group.Group: its core, its vhid, its timers; the adverts
    its core asks for are noted with the (fake) time the loop ran them."""

    host: election.VirtualHost
    sent: list[tuple[float, wire.Advert]] = field(default_factory=list)
    clock: list[float] = field(default_factory=lambda: [0.0])

    @property
    def vhid(self) -> int:
        return self.host.params.vhid

    def next_deadline(self) -> float | None:
        return self.host.next_deadline()

    def on_timer(self, now: float) -> None:
        for action in self.host.handle_timer(now):
            if isinstance(action, election.SendAdvert):
                self.sent.append((self.clock[0], action.advert))


def core(vhid: int, advbase: int = 1, advskew: int = 0) -> election.VirtualHost:
    params = election.Params(vhid=vhid, key=b"s3cret-pass", vip=IPv4Address(f"10.9.3.{vhid}"),
                             source=IPv4Address("10.9.1.1"), advbase=advbase, advskew=advskew)
    return election.VirtualHost(params, lambda: 1)


def masters_taken_over_together(vhids: range, at: float) -> list[FakeGroup]:
    """Every group alone on its link: all take over at the same turn (one ``now``), as 255
    groups started together do."""
    groups = [FakeGroup(core(v)) for v in vhids]
    for group in groups:
        group.host.start(0.0)
        group.clock[0] = at
        group.on_timer(at)
        assert group.host.state is election.State.MASTER
    return groups


def run_loop(groups: list[FakeGroup], start: float, until: float, wake_late: float,
             rng: random.Random) -> list[int]:
    """The loop's timer part, as Engine._loop_once runs it: sleep to the soonest instant, wake
    up to ``wake_late`` after it, run every group due.  The number of groups each turn ran."""
    queue: daemon.TimerQueue[FakeGroup] = daemon.TimerQueue(daemon.timers_due_at)
    queue.rebuild(groups)
    now, turns = start, []
    while True:
        soonest = queue.soonest()
        assert soonest is not None
        now = max(now, soonest) + rng.uniform(0.0, wake_late)
        if now > until:
            return turns
        due = queue.pop_due(now)
        for group in due:
            group.clock[0] = now
            group.on_timer(now + daemon.timer_lead(group))
            queue.push(group)
        turns.append(len(due))


def test_queue_gives_the_due_groups_soonest_first_and_ties_in_order() -> None:
    deadlines = {"a": 3.0, "b": 1.0, "c": 1.0, "d": None, "e": 2.5}
    queue: daemon.TimerQueue[str] = daemon.TimerQueue(deadlines.get)
    queue.rebuild(deadlines)
    assert queue.soonest() == 1.0
    assert queue.pop_due(0.5) == []
    assert queue.pop_due(2.5) == ["b", "c", "e"]
    assert queue.soonest() == 3.0
    deadlines["b"] = 4.0
    queue.push("b")
    assert queue.pop_due(10.0) == ["a", "b"]
    assert queue.soonest() is None


def test_an_invalidated_queue_is_rebuilt_from_every_group() -> None:
    deadlines: dict[str, float | None] = {"a": 1.0, "b": 2.0}
    queue: daemon.TimerQueue[str] = daemon.TimerQueue(deadlines.get)
    assert not queue.valid
    queue.rebuild(deadlines)
    deadlines["b"] = 0.5  # fed a frame, say: the loop invalidates
    queue.invalidate()
    assert not queue.valid
    queue.rebuild(deadlines)
    assert queue.pop_due(0.75) == ["b"]


def test_255_groups_due_together_advertise_in_bursts_of_at_most_32() -> None:
    groups = masters_taken_over_together(VHIDS, at=10.0)
    turns = run_loop(groups, 10.0, 10.0 + INTERVALS, 0.0, random.Random(SEED))
    slots = daemon.SCHEDULE_SLOTS
    assert max(turns) <= math.ceil(len(VHIDS) / slots)
    assert sum(turns) == len(VHIDS) * INTERVALS


def test_a_master_advertises_early_by_at_most_its_lead_never_late_and_keeps_its_interval(
) -> None:
    """However late (up to WAKE_LATE) the loop wakes, each advert goes out between its
    schedule (the core's less the vhid's offset) less ADVERT_LEAD and that schedule, and the
    core's schedule never drifts: advert k of a group is due at takeover + k intervals."""
    takeover = 10.0
    groups = masters_taken_over_together(VHIDS, at=takeover)
    run_loop(groups, takeover, takeover + INTERVALS + 0.5, WAKE_LATE, random.Random(SEED))
    for group in groups:
        interval = group.host.params.advert_interval
        schedule = [takeover + k * interval - daemon.schedule_offset(group.vhid)
                    for k in range(len(group.sent))]
        assert len(group.sent) == INTERVALS + 1
        for (at, _advert), planned in zip(group.sent[1:], schedule[1:], strict=True):
            assert planned - daemon.ADVERT_LEAD - 1e-9 <= at <= planned + 1e-9


def test_a_backup_takes_over_at_its_master_down_never_early() -> None:
    """The lead is a MASTER's only: a BACKUP's master-down timer runs when it expires."""
    group = FakeGroup(core(5))
    group.host.start(0.0)
    master_down = group.host.next_deadline()
    assert master_down is not None
    assert daemon.timers_due_at(group) == master_down
    assert daemon.timer_lead(group) == 0.0
