"""One engine per vhid per network namespace, as with ucarp (issue 9, item 6):
``ip netns exec blue carpd -i eth0 -v 1 ...`` and the same in ``red`` both run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.poll import wait_for

RUN = Path("/run/carpd/netns")
PERSIST = Path("/var/lib/carpd/netns")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


@pytest.fixture
def namespaces(tmp_path: Path) -> Iterator[list[str]]:
    """Two namespaces, each with its own eth0 (a veth to a peer in the same namespace)."""
    names = [f"carpd-id-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            ns = ("ip", "-n", name)
            sh(*ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
            sh(*ns, "addr", "add", "10.77.0.2/24", "dev", "eth0")
            sh(*ns, "link", "set", "eth0", "up")
            sh(*ns, "link", "set", "peer0", "up")
            sh(*ns, "link", "set", "lo", "up")
        yield names
    finally:
        for name in names:
            sh("ip", "netns", "del", name, check=False)
            shutil.rmtree(RUN / name, ignore_errors=True)
            shutil.rmtree(PERSIST / name, ignore_errors=True)


def carpd(ns: str, passfile: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "carpd", "-i", "eth0", "-v", "1",
         "-o", str(passfile), "-a", "10.77.0.100", "-f", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def carpctl_status(ns: str) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, sys.executable, "-m", "carpd.debian.carpctl", "status",
              "--json", check=False)


def wait_status(ns: str) -> list[dict[str, object]]:
    def answered() -> subprocess.CompletedProcess[str] | None:
        result = carpctl_status(ns)
        return result if result.returncode == 0 else None

    def why() -> str:
        result = carpctl_status(ns)
        return f"{result.stdout} {result.stderr}"

    replies: list[dict[str, object]] = json.loads(
        wait_for(answered, 10, 0.1, what=f"an engine answering in {ns}", detail=why).stdout)
    return replies


def test_the_same_vhid_runs_in_two_namespaces_and_each_carpctl_sees_its_own(
        namespaces: list[str], tmp_path: Path) -> None:
    passfile = tmp_path / "pass"
    passfile.write_text("secret\n")
    passfile.chmod(0o600)
    engines = [carpd(ns, passfile) for ns in namespaces]
    try:
        pids = []
        for ns in namespaces:
            (reply,) = wait_status(ns)
            assert reply["interface"] == "eth0" and reply["vhid"] == 1
            pids.append(reply["pid"])
        assert len(set(pids)) == 2  # each namespace's carpctl reaches its own engine
        assert all(e.poll() is None for e in engines)
        # a second engine for the vhid in one namespace is still refused
        second = carpd(namespaces[0], passfile)
        out, _ = second.communicate(timeout=20)
        assert second.returncode == 2, out
        assert "already run by carpd" in out
    finally:
        for engine in engines:
            if engine.poll() is None:
                engine.send_signal(signal.SIGTERM)
        for engine in engines:
            engine.communicate(timeout=20)
