"""What keeps an engine small: pyroute2 without its package __init__, a stdlib-only watchdog."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from groups import group, start_groups

from carpd.engine import control
from lab.netns import Network, veth_namespace, wait_for

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "carpd"

IMPORTS = r'''
import json, sys
from carpd.engine import netlink
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


RELEASE = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
from ipaddress import IPv4Address
from carpd.engine import release
vip = IPv4Address("10.9.9.9")
print(json.dumps({
    "removed": [release.remove_address("v0", vip), release.remove_address("v0", vip)],
    "alias": [str(a) for a in release.release("v0", IPv4Address("10.9.9.8"), "v0:ucarp")],
    "gone": [str(a) for a in release.release("gone0", vip, "gone0:ucarp")],
    "modules": sorted(sys.modules)}))
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_the_release_takes_the_vip_whatever_its_prefix_and_the_alias_with_the_stdlib_only() -> None:
    """What the watchdog runs (``python3 -S -I``, no site packages) when the engine is gone."""
    with veth_namespace("carpd-wd") as ns:
        ip = ["ip", "-n", ns]
        for address, label in (("10.9.9.1/24", "v0"), ("10.9.9.9/28", "v0:1"),
                               ("10.9.9.20/32", "v0:ucarp"), ("10.9.9.21/32", "v0:ucarp"),
                               ("10.9.9.30/32", "v0:other")):
            subprocess.run([*ip, "addr", "add", address, "dev", "v0", "label", label],
                           check=True)
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-S", "-I", "-c",
                              RELEASE, str(PACKAGE.parent)],
                             check=True, capture_output=True, text=True).stdout
        left = subprocess.run([*ip, "-4", "-o", "addr", "show", "dev", "v0"], check=True,
                              capture_output=True, text=True).stdout
    seen = json.loads(out)
    assert seen["removed"] == [1, 0]
    assert (seen["alias"], seen["gone"]) == (["10.9.9.20", "10.9.9.21"], [])
    assert "10.9.9.9/28" not in left and "10.9.9.1/24" in left and "10.9.9.30/32" in left
    assert "10.9.9.20/" not in left and "10.9.9.21/" not in left
    ours = {m for m in seen["modules"] if m.split(".")[0] in ("carpd", "pyroute2", "pydantic")}
    assert ours == {"carpd", "carpd.engine", "carpd.engine.release"}  # packages: docstrings


def mapped_files(pid: int) -> set[str]:
    """The files a process has mapped: its interpreter, every shared library it loaded."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


def test_the_running_engine_never_loads_pydantic_not_at_start_nor_at_a_reload(
        net: Network) -> None:
    """Validation (pydantic) runs in a short-lived process of its own: the engine that stays
    (issue 9: at most 30 MB for one group) gets plain, validated settings."""
    a = net.add_node("10.9.1.1")
    engine = start_groups(net, a, [group(1)])
    wait_for(lambda: engine.state(1) == "MASTER", 15)
    at_start = mapped_files(engine.pid)
    engine.rewrite([group(1), group(2)])
    assert engine.request(cmd="reload")["ok"] is True
    engine.rewrite([group(1), group(2, advskew=300)])
    refused = engine.request(cmd="reload")
    assert refused["ok"] is False
    assert "advskew" in refused["error"] and "less than or equal to 255" in refused["error"]
    after_reloads = mapped_files(engine.pid)
    assert any(".so" in name for name in at_start)  # the maps do list the libraries loaded
    assert [n for n in at_start | after_reloads if "pydantic" in n] == []
    assert sorted(engine.groups()) == [1, 2]


def test_the_engine_answers_while_a_reload_is_being_validated(net: Network) -> None:
    """Validation in its own process takes a fresh interpreter's start (some 0.3 s): the loop
    goes on meanwhile (adverts, control requests); the reload is answered when it is done."""
    a = net.add_node("10.9.1.1")
    engine = start_groups(net, a, [group(1)])
    wait_for(lambda: engine.state(1) == "MASTER", 15)
    engine.rewrite([group(1), group(2)])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as reloading:
        reloading.settimeout(10)
        reloading.connect(str(control.socket_path(engine.state_dir, "eth0")))
        reloading.sendall(b'{"cmd": "reload"}\n')
        time.sleep(0.05)  # the engine has the reload in hand
        engine.request(cmd="status")
        reload_answered_first, _, _ = select.select([reloading], [], [], 0)
        reply = json.loads(reloading.makefile("rb").readline())
    assert reply["ok"] is True and reply["started"] == [2], reply
    assert not reload_answered_first, "the status waited for the reload"
