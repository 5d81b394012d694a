"""The benchmarks' ifupdown harness (bench/common.Ifupdown) runs carpd as the package does: the
hooks find /usr/libexec/carpd/carpd-ifupdown, so `ifup eth0` starts an engine and elects a MASTER
(the fault campaign and the hand-over bench measure nothing otherwise)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench.faults import Cluster


@pytest.mark.netns
def test_the_bench_ifupdown_harness_starts_carpd_through_its_hooks(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ifup") is None:
        pytest.skip("needs root (network namespaces) and ifupdown (see .ci/apt-packages)")
    cluster = Cluster("carpd", tmp_path)
    try:
        cluster.setup()  # raises unless a becomes MASTER through ifup and the cluster is healthy
        assert cluster.holders() == ["a"]
        assert all(cluster.engine_pids(name) for name in cluster.nodes)
    finally:
        for name in list(cluster.nodes):
            cluster.ifdown(name)
        cluster.close()
