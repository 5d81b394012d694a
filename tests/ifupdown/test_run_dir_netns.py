"""``carpd-ifupdown ... --run-dir DIR`` keeps all of an interface's files in DIR: its conf, log
and supervisor, and the control socket of its engine, which the hook, ``carpctl --state-dir DIR``
and the clean-up after a killed engine all look for beside the conf."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from carpd.debian.ifupdown import runtime
from carpd.engine import control
from lab.netns import veth_namespace
from lab.poll import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")

CONF = {"interface": "v0", "vhid": 5, "addr": "10.78.0.50", "srcip": "10.78.0.2",
        "password": "secret", "upscript": "/bin/true", "downscript": "/bin/true"}
# its own /run, so that the engine's default run folder is no one else's
PRIVATE_RUN = 'mount -t tmpfs carpd-test /run && exec "$@"'


@pytest.fixture
def namespace() -> Iterator[str]:
    with veth_namespace("carpd-rd") as name:
        ip = ["ip", "-n", name]
        subprocess.run([*ip, "addr", "add", "10.78.0.2/24", "dev", "v0"], check=True)
        for link in ("lo", "v0", "v1"):
            subprocess.run([*ip, "link", "set", link, "up"], check=True)
        yield name


def _answer(sock: Path) -> dict[str, object] | None:
    """The engine's status reply, or None while nothing answers on ``sock``."""
    try:
        return control.request(sock, {"cmd": "status"}, timeout=1.0)
    except (OSError, ValueError):
        return None


def test_the_engine_a_supervisor_starts_listens_in_its_run_dir(namespace: str,
                                                                 tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    paths = runtime.Paths("v0", run_dir)
    runtime.write_private(paths.conf, runtime.dumps(CONF))
    env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": os.pathsep.join(sys.path)}
    log = paths.log.open("wb")
    supervisor = subprocess.Popen(
        ["ip", "netns", "exec", namespace, "unshare", "-m", "sh", "-c", PRIVATE_RUN, "sh",
         sys.executable, "-m", "carpd.debian.ifupdown.main", "supervise", "v0", "--run-dir",
         str(run_dir)], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        sock = runtime.engine_socket(CONF, run_dir)
        assert sock == run_dir / "v0.sock"
        reply = wait_for(lambda: _answer(sock), 15.0, 0.1, what=f"an engine answering on {sock}",
                         detail=paths.log.read_text)
        assert reply.get("vhid") == 5, paths.log.read_text()
        assert paths.control_sockets() == [sock]  # what removing the files takes
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(40)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()
        log.close()
