"""Health checks' fall/rise rules on a fake clock, what a monitor says before it starts, and
how link messages move the tracked interfaces' state (no socket: the messages' fields)."""

from __future__ import annotations

import itertools

import pytest

from carpd.engine.health import FallRise, Health, default_timeout, one_line
from carpd.engine.netlink import IFF_RUNNING, IFF_UP, RTM_DELLINK, RTM_NEWLINK, LinkTable

CARRIER = IFF_UP | IFF_RUNNING
AF_BRIDGE = 7


def feed(rule: FallRise, results: str, start: float = 0.0) -> list[bool]:
    """Feed ``results`` ("P" pass, "F" fail), one a second from ``start``; the states after
    each."""
    states = []
    for offset, result in enumerate(results, start=1):
        rule.feed(result == "P", start + offset)
        states.append(rule.healthy)
    return states


def test_a_check_starts_passing_since_it_was_created() -> None:
    rule = FallRise(fall=2, rise=2, now=5.0)
    assert rule.healthy
    assert rule.since == 5.0


def test_a_passing_check_turns_failing_after_fall_failures_in_a_row() -> None:
    rule = FallRise(fall=3, rise=2, now=0.0)
    assert feed(rule, "FFF") == [True, True, False]
    assert rule.since == 3.0


def test_a_pass_between_failures_starts_the_count_again() -> None:
    rule = FallRise(fall=2, rise=2, now=0.0)
    assert feed(rule, "FPFPF") == [True] * 5
    assert rule.since == 0.0


def test_a_failing_check_passes_again_after_rise_passes_in_a_row() -> None:
    rule = FallRise(fall=1, rise=3, now=0.0)
    assert feed(rule, "F") == [False]
    assert feed(rule, "PPFPPP", start=10.0) == [False] * 5 + [True]
    assert rule.since == 16.0


def test_feed_says_true_exactly_when_the_state_changes() -> None:
    rule = FallRise(fall=2, rise=2, now=0.0)
    changes = [rule.feed(result == "P", now) for now, result in enumerate("FFFFPPPP")]
    assert changes == [False, True, False, False, False, True, False, False]


def test_fall_and_rise_of_one_follow_every_result() -> None:
    rule = FallRise(fall=1, rise=1, now=0.0)
    assert feed(rule, "FPFFP") == [False, True, False, False, True]


def test_the_state_and_since_do_not_move_while_results_agree() -> None:
    rule = FallRise(fall=2, rise=2, now=0.0)
    feed(rule, "FF")
    feed(rule, "F" * 50, start=100.0)
    assert not rule.healthy
    assert rule.since == 2.0


@pytest.mark.parametrize(("fall", "rise"), [(0, 1), (1, 0), (-1, 2)])
def test_fall_and_rise_below_one_are_refused(fall: int, rise: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FallRise(fall, rise, 0.0)


@pytest.mark.parametrize(("interval", "timeout"), [(0.1, 1.0), (1.0, 1.0), (5.0, 5.0)])
def test_the_default_timeout_is_the_interval_but_at_least_a_second(
        interval: float, timeout: float) -> None:
    assert default_timeout(interval) == timeout


def test_output_is_made_one_line() -> None:
    assert one_line("  curl: (7) failed\n\tconnection refused \n") == (
        "curl: (7) failed connection refused")


def test_a_monitor_with_nothing_to_track_is_inactive() -> None:
    health = Health([], 1.0, None, 2, 2, [])
    try:
        assert not health.active
        assert health.healthy
        assert health.status(0.0) == []
        assert health.why() is None
    finally:
        health.close()


def test_before_any_result_every_check_is_listed_as_passing_since_creation() -> None:
    clock = itertools.count(100.0).__next__
    health = Health([["/bin/true", "a b"]], 1.0, None, 2, 2, ["eth1", "eth1"], clock=clock)
    try:
        assert health.active
        assert health.healthy
        assert health.status(1000.0) == [
            {"kind": "script", "name": "/bin/true 'a b'", "healthy": True, "since": 1100.0,
             "rc": None, "output": ""},
            {"kind": "interface", "name": "eth1", "healthy": True, "since": 1100.0,
             "rc": None, "output": ""},
        ]
        assert health.why() is None
    finally:
        health.close()


def table_after(*messages: tuple[int, int, int, str, int]) -> dict[str, bool | None]:
    """The tracked eth1's and eth2's carriers after link ``messages`` (kind, family, index,
    name, flags)."""
    table = LinkTable(["eth1", "eth2"])
    for message in messages:
        table.apply(*message)
    return table.carriers()


def test_a_tracked_link_has_carrier_only_when_up_and_running() -> None:
    assert table_after((RTM_NEWLINK, 0, 5, "eth1", CARRIER), (RTM_NEWLINK, 0, 6, "eth2", IFF_UP),
                       (RTM_NEWLINK, 0, 7, "eth3", CARRIER)) == {"eth1": True, "eth2": False}


def test_a_tracked_link_that_is_deleted_or_never_seen_does_not_exist() -> None:
    assert table_after((RTM_NEWLINK, 0, 5, "eth1", CARRIER),
                       (RTM_DELLINK, 0, 5, "eth1", CARRIER)) == {"eth1": None, "eth2": None}


def test_a_link_renamed_away_leaves_its_name_and_one_renamed_to_it_takes_it() -> None:
    renamed_away = (RTM_NEWLINK, 0, 5, "eth1", CARRIER), (RTM_NEWLINK, 0, 5, "old", CARRIER)
    assert table_after(*renamed_away) == {"eth1": None, "eth2": None}
    assert table_after(*renamed_away, (RTM_NEWLINK, 0, 9, "eth1", CARRIER),
                       (RTM_NEWLINK, 0, 5, "old", 0)) == {"eth1": True, "eth2": None}


def test_a_deleted_link_no_longer_owns_a_name_another_link_took() -> None:
    assert table_after((RTM_NEWLINK, 0, 5, "eth1", CARRIER), (RTM_NEWLINK, 0, 5, "x", 0),
                       (RTM_NEWLINK, 0, 9, "eth1", CARRIER),
                       (RTM_DELLINK, 0, 5, "x", 0)) == {"eth1": True, "eth2": None}


def test_a_bridge_port_leaving_its_bridge_is_still_there() -> None:
    assert table_after((RTM_NEWLINK, 0, 5, "eth1", CARRIER),
                       (RTM_DELLINK, AF_BRIDGE, 5, "eth1", CARRIER),
                       (RTM_NEWLINK, AF_BRIDGE, 5, "eth1", 0)) == {"eth1": True, "eth2": None}
