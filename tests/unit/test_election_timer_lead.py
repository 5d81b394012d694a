"""``VirtualHost.handle_timer(now, lead)`` on a fake clock: the shell hands the core how early
its timers may run (a MASTER's, by a few milliseconds) instead of a ``now`` in the future."""

from __future__ import annotations

from collections.abc import Sequence

from cluster import params

from carpd.core.election import SendAdvert, State, Timer, VirtualHost

LEAD = 0.002


def master() -> tuple[VirtualHost, float]:
    """A MASTER alone on its link, and when its next advert is due."""
    host = VirtualHost(params("10.0.0.1"), lambda: 7)
    host.start(0.0)
    down = host.next_deadline()
    assert down is not None
    host.handle_timer(down)
    assert host.state is State.MASTER
    due = host.next_deadline()
    assert due is not None
    return host, due


def adverts(actions: Sequence[object]) -> int:
    return sum(isinstance(a, SendAdvert) for a in actions)


def test_a_master_sends_its_advert_up_to_lead_early_and_keeps_its_schedule() -> None:
    host, due = master()
    interval = host.params.advert_interval
    assert adverts(host.handle_timer(due - LEAD / 2, LEAD)) == 1
    assert host.next_deadline() == due + interval  # counted from the deadline, not from now


def test_a_master_sends_nothing_earlier_than_lead_nor_early_without_one() -> None:
    host, due = master()
    assert host.handle_timer(due - 2 * LEAD, LEAD) == []
    assert host.handle_timer(due - LEAD / 2) == []
    assert host.next_deadline() == due


def test_a_late_master_keeps_its_schedule_too() -> None:
    host, due = master()
    assert adverts(host.handle_timer(due + 0.010, LEAD)) == 1
    assert host.next_deadline() == due + host.params.advert_interval


def test_a_backup_never_takes_over_early_whatever_the_lead() -> None:
    host = VirtualHost(params("10.0.0.1"), lambda: 7)
    host.start(0.0)
    down = host._timers[Timer.MASTER_DOWN]
    assert host.handle_timer(down - LEAD / 2, LEAD) == []
    assert host.state is State.BACKUP
    host.handle_timer(down, LEAD)
    assert host.state is State.MASTER  # type: ignore[comparison-overlap]
    assert host.since == down
