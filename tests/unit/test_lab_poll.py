"""lab.poll.wait_for, the one poll helper of the lab, the tests and the benchmarks: it returns
what the predicate returned, and on timeout raises one Timeout (a TimeoutError to callers for
whom a timeout is an outcome, a failed assertion to pytest) that says what was awaited.
Intervals and timeouts of a few milliseconds: nothing here waits longer."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from lab.poll import Timeout, wait_for

TICK = 0.001


def becomes(value: object, after_calls: int) -> Callable[[], object]:
    """A predicate false for its first ``after_calls`` calls, then ``value``."""
    calls = 0

    def predicate() -> object:
        nonlocal calls
        calls += 1
        return value if calls > after_calls else None

    return predicate


def test_wait_for_returns_the_predicates_first_truthy_value_itself() -> None:
    value = {"state": "MASTER"}
    assert wait_for(becomes(value, 3), 1.0, TICK) is value


def test_wait_for_asks_once_more_at_the_deadline_before_giving_up() -> None:
    start = time.monotonic()
    # true only once the 5 ms have passed; the next poll (10 ms on) comes after the deadline
    assert wait_for(lambda: time.monotonic() - start >= 0.005, 0.005, 0.01) is True


def test_a_timeout_names_what_was_awaited_and_what_detail_says() -> None:
    with pytest.raises(Timeout) as raised:
        wait_for(lambda: False, 0.005, TICK, what="the VIP on b", detail=lambda: "holders: a")
    assert str(raised.value) == "after 0.005 s, still not the VIP on b:\nholders: a"


def test_a_timeout_without_what_names_the_predicate() -> None:
    def vip_on_b() -> bool:
        return False

    with pytest.raises(Timeout, match=r"still false: .*vip_on_b$"):
        wait_for(vip_on_b, 0.005, TICK)
    with pytest.raises(Timeout, match=r"still false: the lambda of test_lab_poll\.py:\d+$"):
        wait_for(lambda: 0, 0.005, TICK)


def test_a_timeout_is_both_a_timeout_error_and_a_failed_assertion() -> None:
    with pytest.raises(TimeoutError):
        wait_for(lambda: None, 0.002, TICK, what="anything")
    with pytest.raises(AssertionError):
        wait_for(lambda: None, 0.002, TICK, what="anything")
    assert issubclass(Timeout, TimeoutError) and issubclass(Timeout, AssertionError)


def test_detail_is_asked_only_on_timeout() -> None:
    asked: list[bool] = []
    wait_for(becomes(True, 1), 1.0, TICK, what="x", detail=lambda: asked.append(True))
    assert asked == []
