"""Unit tests of the pure core: carpd.core.wire against captured ucarp frames, carpd.core.election
on a fake clock and an in-memory link.  Nothing here touches the network, the clock or
/work/shared."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

# The helper modules hold assertions too (the simulated link checks every timer it fires).
pytest.register_assert_rewrite("cluster", "frames")


# carpctl's tests: engines' control sockets (ctlserver.py) in a state folder of the test's own.


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A fresh state folder with a short path (a unix socket's path has at most 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="carpctl-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Closes(Protocol):
    def close(self) -> None: ...


@pytest.fixture
def engines() -> Iterator[list[Closes]]:
    """The control sockets a test serves (append them: ctlserver's Served, or a test's own
    fake engine), closed after it."""
    started: list[Closes] = []
    try:
        yield started
    finally:
        for engine in started:
            engine.close()
