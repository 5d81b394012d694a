"""A test run ended by SIGTERM (as `timeout` ends one) still removes the namespaces it made."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from lab.poll import wait_for

REPO = Path(__file__).resolve().parents[2]



def namespaces() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                              check=True).stdout.split())


def test_a_run_ended_by_sigterm_removes_its_namespaces(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tests / "test_hangs.py").write_text(
        "import time\n\ndef test_hangs_in_a_network(net) -> None:\n"
        "    net.add_node('10.9.1.1')\n    print('READY', flush=True)\n    time.sleep(120)\n")
    before = namespaces()
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tests)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        assert run.stdout is not None
        wait_for(lambda: "READY" in run.stdout.readline(), 60, what="the test in its network")
        made = namespaces() - before
        assert len(made) == 2, made  # the switch and the node
        run.send_signal(signal.SIGTERM)
        run.wait(60)
    finally:
        if run.poll() is None:
            run.kill()  # by its PID: the run this test started
            run.wait()
    assert not made & namespaces(), (made & namespaces(), run.stdout.read() if run.stdout else "")
