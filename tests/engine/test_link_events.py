"""What the engine's link monitor makes of the kernel's real netlink messages."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

PROBE = r'''
import json, select, subprocess, socket
from pyroute2 import IPRSocket
from pyroute2.netlink.rtnl import RTMGRP_LINK
from carpd.engine import netlink
run = lambda *a: subprocess.run(["ip", *a], check=True)
run("link", "add", "br0", "type", "bridge")
run("link", "add", "p0", "type", "veth", "peer", "name", "p1")
run("link", "set", "p0", "master", "br0")
for name in ("br0", "p0", "p1"):
    run("link", "set", name, "up")
index = socket.if_nametoindex("p0")
sock = IPRSocket()
sock.bind(groups=RTMGRP_LINK)
run("link", "set", "p0", "nomaster")
messages = []
while select.select([sock], [], [], 0.5)[0]:
    messages += sock.get()
bridge = [m for m in messages if m.get("index") == index and m.get("family") == socket.AF_BRIDGE
          and m["header"]["type"] == netlink.RTM_DELLINK]
events = netlink.link_events(bridge, index)
print(json.dumps({"bridge_dellinks": len(bridge), "carrier": events.carrier,
                  "after_all": netlink.link_events(messages, index).carrier}))
'''


def test_a_port_leaving_its_bridge_is_not_taken_for_a_lost_carrier() -> None:
    ns = f"carpd-le-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE],
                             check=True, capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    seen = json.loads(out)
    assert seen["bridge_dellinks"] >= 1  # the kernel does send the AF_BRIDGE RTM_DELLINK
    assert seen["carrier"] is None
    assert seen["after_all"] is True
