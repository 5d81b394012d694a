"""Faults from outside that must not end the engine: an admin's `ip link set IFACE down`,
a netlink event overflow, and control clients that misbehave."""

from __future__ import annotations

import signal
import subprocess
import time

from netns import VIP, Daemon, Network, Node, run, wait_for

OVERFLOW_EVENTS = 20_000


def master(node: Node, **kwargs: object) -> Daemon:
    daemon = node.start("carpd", **kwargs)  # type: ignore[arg-type]
    wait_for(lambda: node.has(VIP), 10)
    return daemon


def test_admin_link_down_and_up_does_not_kill_the_engine(net: Network) -> None:
    node = net.add_node("10.9.1.1")
    daemon = master(node, extra=["--drain", "0"])
    for _ in range(3):
        node.exec("ip", "link", "set", "eth0", "down")
        # Frames queued on the packet socket meet ENETDOWN when read: keep some coming.
        wait_for(lambda: "carrier lost" in daemon.log(), 5)
        time.sleep(0.3)
        assert daemon.alive()
        node.exec("ip", "link", "set", "eth0", "up")
        node.exec("ip", "addr", "replace", f"{node.address}/24", "dev", "eth0")
        wait_for(lambda: node.has(VIP), 10)
        assert daemon.alive()
    assert daemon.log().count("carrier back") >= 3


def test_netlink_overflow_does_not_stop_link_events(net: Network) -> None:
    node = net.add_node("10.9.1.1")
    daemon = master(node, extra=["--drain", "0"])
    # Address events pile up while the engine is stopped and overflow its netlink socket's
    # buffer (ENOBUFS); it reopens the socket and must go on hearing link events.
    daemon.signal(signal.SIGSTOP)
    try:
        batch = "".join(f"addr add 10.77.{i // 250}.{i % 250 + 1}/32 dev eth0\n"
                        for i in range(OVERFLOW_EVENTS))
        subprocess.run(["ip", "-n", node.ns, "-batch", "-"], input=batch, text=True,
                       check=True, timeout=60)
    finally:
        daemon.signal(signal.SIGCONT)
    wait_for(lambda: "netlink events overflowed" in daemon.log(), 10)
    node.exec("ip", "addr", "flush", "dev", "eth0", "to", "10.77.0.0/16")
    time.sleep(0.5)
    run("ip", "-n", net.switch, "link", "set", node.port, "down")
    wait_for(lambda: not node.has(VIP), 3)
    assert "MASTER -> INIT: carrier lost" in daemon.log()
