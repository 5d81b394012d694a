"""The engine's timer handling on a fake clock, with real election cores:
carpd.engine.daemon.TimerQueue (the groups' timer instants, soonest first) and the schedule it runs
MASTERs on (each a few ms early, spread by vhid, so that 255 groups due at one instant do not go out
in one burst)."""

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

    def on_timer(self, now: float, lead: float = 0.0) -> None:
        for action in self.host.handle_timer(now, lead):
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
            group.on_timer(now, daemon.timer_lead(group))
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


class CountingDeadlines(dict[str, float | None]):
    """Each item's instant; counts how often the queue asks for one."""

    asked = 0

    def due_at(self, item: str) -> float | None:
        self.asked += 1
        return self.get(item)


def test_a_touched_item_whose_deadline_moved_later_is_not_given_out_at_its_old_one() -> None:
    deadlines = CountingDeadlines(a=1.0, b=2.0)
    queue: daemon.TimerQueue[str] = daemon.TimerQueue(deadlines.due_at)
    queue.rebuild(deadlines)
    deadlines["a"] = 5.0  # fed a frame, say: its master-down timer restarts
    queue.touch("a")
    assert queue.soonest() == 2.0
    assert queue.pop_due(3.0) == ["b"]
    assert queue.pop_due(4.9) == []
    assert queue.pop_due(5.0) == ["a"]


def test_a_touched_item_whose_deadline_moved_earlier_is_given_out_then() -> None:
    deadlines = CountingDeadlines(a=1.0, b=2.0)
    queue: daemon.TimerQueue[str] = daemon.TimerQueue(deadlines.due_at)
    queue.rebuild(deadlines)
    deadlines["b"] = 0.5
    queue.touch("b")
    assert queue.pop_due(0.75) == ["b"]
    assert queue.pop_due(10.0) == ["a"]


def test_a_touched_item_without_timers_leaves_the_queue_and_a_discarded_one_never_comes(
) -> None:
    deadlines = CountingDeadlines(a=1.0, b=2.0, c=3.0)
    queue: daemon.TimerQueue[str] = daemon.TimerQueue(deadlines.due_at)
    queue.rebuild(deadlines)
    deadlines["a"] = None
    queue.touch("a")
    queue.discard("b")
    assert len(queue) == 1
    assert queue.pop_due(10.0) == ["c"]


def test_after_a_turn_only_the_groups_it_touched_are_asked_for_their_instant() -> None:
    """The queue is no longer rebuilt from all 255 groups after a turn that had input."""
    names = [f"g{v}" for v in VHIDS]
    deadlines = CountingDeadlines({name: 100.0 + v for v, name in zip(VHIDS, names, strict=True)})
    queue: daemon.TimerQueue[str] = daemon.TimerQueue(deadlines.due_at)
    queue.rebuild(names)
    deadlines.asked = 0
    for name in (names[6], names[8]):
        deadlines[name] = 50.0
        queue.touch(name)
    assert queue.pop_due(60.0) == ["g7", "g9"]
    assert deadlines.asked == 2


def test_stale_entries_do_not_pile_up_in_the_heap() -> None:
    """A BACKUP hearing its MASTER every second moves its deadline each time: the entries it
    leaves behind are swept, the heap stays in proportion to the groups."""
    names = [f"g{v}" for v in range(10)]  # items are told apart by identity, as groups are
    deadlines = CountingDeadlines({name: 3.0 for name in names})
    queue: daemon.TimerQueue[str] = daemon.TimerQueue(deadlines.due_at)
    queue.rebuild(names)
    for step in range(10_000):
        deadlines[names[1]] = 3.0 + step
        queue.touch(names[1])
        queue.soonest()
    assert len(queue) == len(names)
    assert len(queue._heap) <= 2 * len(names) + daemon.COMPACT_SLACK + 1
    assert queue.pop_due(2.5) == []
    assert queue.pop_due(3.0) == [n for n in names if n != names[1]]


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
