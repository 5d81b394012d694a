"""bench/health.py in its shortest mode (one kill per implementation, cap 3 s): it runs, prints
its table and writes its JSON, and the figures say what the bench is for: carpd's VIP follows
the HTTP server to the peer, ucarp's stays on the node whose server is dead.  No timing is
asserted beyond "before the cap": the figures themselves are the bench's business."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from lab.netns import UCARP

pytestmark = [pytest.mark.netns, pytest.mark.ucarp]

REPO = Path(__file__).resolve().parents[2]  # bench.health runs as a module from here
CAP = 3.0  # --quick's cap


def run_bench(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces and raw sockets (CI runs as root)")
    if not shutil.which(UCARP):
        pytest.skip(f"needs Debian's ucarp at {UCARP} (.ci/apt-packages installs it)")
    out = tmp_path / "health.json"
    # a short folder for the logs: the engines' control sockets live there (sun_path 108 bytes)
    with tempfile.TemporaryDirectory(prefix="carpd-hs-") as logs:
        done = subprocess.run([sys.executable, "-m", "bench.health", "--quick", "--json",
                               str(out), "--keep", logs], cwd=REPO,
                              capture_output=True, text=True, timeout=240, check=False)
        print(done.stdout, done.stderr)
        for log in sorted(Path(logs).glob("*/*/stderr.log")):  # shown if the test fails
            print(f"==== {log.relative_to(logs)}\n{log.read_text(errors='replace')[-3000:]}")
    assert done.returncode == 0, done.stderr
    return done, json.loads(out.read_text())


def test_health_bench_shows_carpd_moving_the_vip_to_the_live_server_and_ucarp_not(
    tmp_path: Path,
) -> None:
    done, data = run_bench(tmp_path)
    assert data["benchmark"] == "health"
    assert data["goal_s"] == pytest.approx(2 * 0.2 + 0.1)
    for kind in ("carpd", "ucarp"):
        assert f"\n{kind} " in done.stdout  # its row in the table
    carpd, ucarp = data["results"]["carpd"], data["results"]["ucarp"]
    for result in (carpd, ucarp):
        assert result["error"] is None
        assert len(result["kills"]) == 1
        assert result["baseline_failed"] == 0
        assert result["sent_total"] > 50  # the client ran through the kill

    kill = carpd["kills"][0]
    assert carpd["tracking"]["check"].split()[0].startswith("/")
    assert carpd["vip_moved"] == 1
    assert not kill["capped"]
    assert math.isfinite(kill["to_first_success"])
    assert 0 < kill["to_first_success"] < CAP
    assert kill["first_success"] > kill["kill"]
    assert kill["bow_out"] is not None and kill["bow_out"] > kill["kill"]
    assert kill["failed"] < ucarp["kills"][0]["failed"]

    kill = ucarp["kills"][0]
    assert ucarp["tracking"] is None
    assert ucarp["vip_moved"] == 0
    assert kill["capped"] and kill["to_first_success"] == CAP
    assert kill["failed"] > 0
