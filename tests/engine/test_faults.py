"""Faults from outside that must not end the engine: an admin's `ip link set IFACE down`,
a netlink event overflow, and control clients that misbehave."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from carpd.engine import control
from lab.netns import VIP, Daemon, Network, Node, run, wait_for

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


def control_socket(daemon: Daemon) -> Path:
    return daemon.directory / "state" / "eth0.1.sock"


def raw_request(path: Path, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return sock.recv(65536)


@pytest.mark.parametrize(
    "payload",
    [b"[" * 1500 + b"\n", b"{\"cmd\": " * 1500 + b"\n", b"\xff\xfe garbage\n", b"x" * 100_000,
     b"[1, 2]\n", b"{\"cmd\": [\"status\"]}\n", b""],
    ids=["deep-list", "deep-object", "not-utf8", "huge", "not-an-object", "odd-cmd", "empty"],
)
def test_control_client_sending_anything_gets_at_worst_an_error(
        net: Network, payload: bytes) -> None:
    node = net.add_node("10.9.1.1")
    daemon = master(node)
    answer = raw_request(control_socket(daemon), payload)
    if answer:
        assert json.loads(answer)["ok"] is False
    assert daemon.alive()
    assert control.request(control_socket(daemon), {"cmd": "status"})["state"] == "MASTER"


def test_idle_control_clients_do_not_lock_out_carpctl(net: Network) -> None:
    node = net.add_node("10.9.1.1")
    daemon = master(node)
    idle = []
    try:
        for _ in range(40):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(control_socket(daemon)))
            idle.append(sock)
        started = time.monotonic()
        reply = control.request(control_socket(daemon), {"cmd": "status"}, timeout=3)
        assert reply["state"] == "MASTER"
        assert time.monotonic() - started < 3
        # The engine closes clients that stay idle: their sockets see end-of-file.
        idle[-1].settimeout(5)
        assert idle[-1].recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    assert daemon.alive()


def test_demote_on_a_read_only_run_is_an_error_answer(net: Network) -> None:
    node = net.add_node("10.9.1.1")
    daemon = master(node)
    state = str(daemon.directory / "state")
    in_engine_mounts = ("nsenter", "-t", str(daemon.pid), "-m")  # ip netns exec unshared them
    run(*in_engine_mounts, "mount", "--bind", state, state)
    try:
        run(*in_engine_mounts, "mount", "-o", "remount,bind,ro", state)
        reply = control.request(control_socket(daemon), {"cmd": "demote"})
        assert reply["ok"] is False and "cannot record it" in reply["error"]
    finally:
        run(*in_engine_mounts, "umount", state)
    assert daemon.alive()
    assert control.request(control_socket(daemon), {"cmd": "status"})["state"] == "MASTER"


def test_vip_deleted_by_an_admin_while_master_comes_back(net: Network) -> None:
    # How fast (the issue asks within 1 s) is measured by bench/faults.py, not asserted here.
    node = net.add_node("10.9.1.1")
    daemon = master(node)
    node.remove_address(VIP)
    wait_for(lambda: node.has(VIP), 5.0)
    assert daemon.status()["state"] == "MASTER"
    assert "was deleted from eth0 while MASTER" in daemon.log()
