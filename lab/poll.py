"""The one poll helper of the lab, the tests, the benchmarks and the demo.

One behaviour on timeout: :func:`wait_for` raises :class:`Timeout`, whose message names what was
awaited (``what``, else the predicate) and, if given, what ``detail()`` says then.  A caller for
whom a timeout is an outcome, not an error, catches :class:`Timeout` (a ``TimeoutError``); to
pytest it is a failed assertion, so ``assert wait_for(...)`` reads as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Timeout(TimeoutError, AssertionError):
    """A condition did not come true in time."""


def describe(predicate: Callable[[], object]) -> str:
    """A name for what a predicate waits for: its ``__qualname__`` (lambdas by their line)."""
    name = getattr(predicate, "__qualname__", repr(predicate))
    code = getattr(predicate, "__code__", None)
    if "<lambda>" in name and code is not None:
        return f"the lambda of {code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno}"
    return name


def wait_for(predicate: Callable[[], T | None], timeout: float, interval: float = 0.05,
             *, what: str | None = None, detail: Callable[[], object] | None = None) -> T:
    """Poll ``predicate`` every ``interval`` s until it returns something truthy and return that;
    after ``timeout`` s (the predicate is asked once more at the end) raise :class:`Timeout`
    naming ``what`` (default: the predicate), with ``detail()`` appended if given."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            message = (f"after {timeout} s, still not {what}" if what else
                       f"after {timeout} s, still false: {describe(predicate)}")
            if detail is not None:
                message += f":\n{detail()}"
            raise Timeout(message)
        time.sleep(interval)
