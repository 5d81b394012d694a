"""What keeps an engine small: pyroute2 without its package __init__, a stdlib-only watchdog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

WATCHDOG = Path(__file__).resolve().parents[2] / "src" / "carpd" / "watchdog.py"

IMPORTS = r'''
import json, sys
from carpd import netlink
before = sorted(m for m in sys.modules if m.startswith(("pyroute2.ndb", "pyroute2.ipdb",
                                                        "pyroute2.nftables", "pyroute2.remote")))
info = netlink.interface_info("lo")
from pyroute2 import NDB, IPRoute  # another user of pyroute2 in the same process
print(json.dumps({"heavy_before": before, "lo": info.index, "ndb": NDB.__name__,
                  "same_iproute": IPRoute is netlink.IPRoute}))
'''


def test_the_engine_loads_pyroute2_without_the_parts_it_does_not_use() -> None:
    out = subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    seen = json.loads(out.stdout)
    assert seen["heavy_before"] == []
    assert seen["lo"] == 1
    assert seen["ndb"] == "NDB"  # the whole library is still there for whoever asks
    assert seen["same_iproute"] is True


REMOVE = r'''
import sys
sys.path.insert(0, sys.argv[1])
import watchdog
from ipaddress import IPv4Address
print(watchdog.remove_address("v0", IPv4Address("10.9.9.9")),
      watchdog.remove_address("v0", IPv4Address("10.9.9.9")), sorted(sys.modules))
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_the_watchdog_removes_a_vip_whatever_its_prefix_with_the_standard_library_only() -> None:
    ns = f"carpd-wd-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ip = ["ip", "-n", ns]
        subprocess.run([*ip, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                       check=True)
        subprocess.run([*ip, "addr", "add", "10.9.9.1/24", "dev", "v0"], check=True)
        subprocess.run([*ip, "addr", "add", "10.9.9.9/28", "dev", "v0", "label", "v0:1"],
                       check=True)
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-S", "-I", "-c",
                              REMOVE, str(WATCHDOG.parent)],
                             check=True, capture_output=True, text=True).stdout
        left = subprocess.run([*ip, "-4", "-o", "addr", "show", "dev", "v0"], check=True,
                              capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    first, second, modules = out.split(" ", 2)
    assert (first, second) == ("1", "0")
    assert "10.9.9.9/28" not in left and "10.9.9.1/24" in left
    assert "pyroute2" not in modules and "carpd" not in modules
