"""Shared fixtures: a throw-away test network (lab/netns.py), always torn down."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.netns import UCARP, Network


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """A run ended by SIGTERM (``timeout``, a CI job's cancel) stops as on Ctrl-C: pytest then
    tears the fixtures down, so the namespaces and daemons the tests made are removed."""
    signal.signal(signal.SIGTERM, _interrupted)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The processes a test starts (append them): killed by their PIDs after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    """A bridge in its own namespace; ``net.add_node(address)`` plugs a node namespace in."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces and raw sockets (CI runs as root)")
    if not shutil.which(UCARP):
        pytest.skip(f"needs Debian's ucarp at {UCARP} (.ci/apt-packages installs it)")
    network = Network(tmp_path)
    try:
        yield network
    finally:
        network.close()
        # Shown by pytest only when the test failed: what every daemon said and did.
        for daemon in network.daemons:
            print(f"==== {daemon} pid {daemon.pid} exit {daemon.process.returncode}")
            print("argv:", " ".join(daemon.argv))
            print("events:", *(f"{e.time:.3f} {e.event}" for e in daemon.events()))
            print(daemon.log())
