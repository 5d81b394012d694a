"""carpd's scripts get the arguments ucarp 1.5.2 gives its own: ``IFACE VIP``, and XPARAM as a
third argument whenever ``-x`` is given, an empty one included."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from lab.netns import Network, wait_for


@pytest.mark.parametrize("xparam", [None, "", "two words"])
def test_an_up_script_gets_the_same_arguments_from_carpd_as_from_ucarp(
        net: Network, tmp_path: Path, xparam: str | None) -> None:
    seen: dict[str, Path] = {}
    for index, kind in enumerate(("ucarp", "carpd"), start=1):
        node = net.add_node(f"10.9.0.{index}")
        seen[kind] = tmp_path / f"{kind}.args"
        up = tmp_path / f"{kind}-up"
        up.write_text(f'#!/bin/sh\nprintf "%s|" "$#" "$@" > {seen[kind]}\n')
        up.chmod(0o755)
        extra = ["-u", str(up), *(["-x", xparam] if xparam is not None else [])]
        # a group each, so that both become MASTER and run their up script
        node.start(kind, vhid=index, vip=IPv4Address(f"10.9.100.{index}"), extra=extra)
    wait_for(lambda: all(path.exists() for path in seen.values()), 15)
    wanted = {None: "2|eth0|10.9.100.{}|", "": "3|eth0|10.9.100.{}||",
              "two words": "3|eth0|10.9.100.{}|two words|"}[xparam]
    assert seen["ucarp"].read_text() == wanted.format(1)
    assert seen["carpd"].read_text() == wanted.format(2)
