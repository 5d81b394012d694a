"""The benchmarks measure the carpd they are run with: the commands bench/common.Ifupdown puts
on the nodes' PATH import the carpd the benchmark itself imports (``PYTHONPATH=$PWD/src`` in a
worktree), also where nothing passes PYTHONPATH on: carpd's supervisor starts the engine with a
clean environment.  Before, a worktree's hook and supervisor ran its own carpd but the engine
the venv's (/work/main's): bench/longconn measured another tree's forwarding."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

from bench.common import ROOT_PATH, Ifupdown
from lab.tree import console_scripts


def measured_source() -> Path:
    spec = importlib.util.find_spec("carpd")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(console_scripts()))
def test_the_bench_carpd_commands_import_the_benchmarks_carpd_without_pythonpath(
        tmp_path: Path, command: str) -> None:
    harness = Ifupdown("not-used", tmp_path / "node", "", {}, carpd_commands=True)
    wrapper = harness.directory / "bin" / command
    # as the supervisor runs the engine: PATH and the scripts' variables, no PYTHONPATH
    done = subprocess.run([str(wrapper), "--help"], env={"PATH": ROOT_PATH, "PYTHONVERBOSE": "1"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = set(re.findall(r"(/\S+)/carpd/__init__\.py", done.stderr))
    assert imported == {str(measured_source())}, imported
