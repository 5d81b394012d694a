"""The ``lab`` fixture: ifupdown nodes in network namespaces (see ifnodes.py), always removed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from ifnodes import Lab, unique_prefix


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, bind mounts and raw sockets")
    built = Lab(unique_prefix(), tmp_path)
    try:
        built.start()
        yield built
    finally:
        built.destroy()
