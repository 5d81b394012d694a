"""The engine in a real network namespace: netlink carrier events, gratuitous ARP on the wire,
signals, the control socket, the drain's ARP rule, and what is left behind when it ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

from carpd.engine import control
from lab.garp import frame_socket, garps
from lab.netns import CARPD, VIP, Daemon, Network, Node, in_netns, run, wait_for


def master(node: Node, **kwargs: object) -> Daemon:
    daemon = node.start("carpd", **kwargs)  # type: ignore[arg-type]
    wait_for(lambda: node.has(VIP), 10)
    return daemon


def nft_tables(node: Node) -> str:
    return node.exec("nft", "list", "tables").stdout


def test_carrier_loss_makes_the_master_release_at_once_and_carrier_back_rejoins(
        net: Network) -> None:
    node = net.add_node("10.9.1.1")
    daemon = master(node, extra=["--drain", "0"])
    net_port_down = time.monotonic()
    run("ip", "-n", net.switch, "link", "set", node.port, "down")
    wait_for(lambda: not node.has(VIP), 2)
    assert time.monotonic() - net_port_down < 1.0
    assert "MASTER -> INIT: carrier lost" in daemon.log()
    run("ip", "-n", net.switch, "link", "set", node.port, "up")
    wait_for(lambda: node.has(VIP), 10)
    assert "INIT -> BACKUP: carrier back" in daemon.log()


def test_gratuitous_arp_announces_the_vip_and_every_alias_address(net: Network) -> None:
    node = net.add_node("10.9.1.1")
    extra_address = IPv4Address("10.9.1.101")
    up = node.network.directory / "up-two.sh"
    up.write_text("#!/bin/sh\nip addr add \"$2\"/32 dev \"$1\" label \"$1\":ucarp\n"
                  f"ip addr add {extra_address}/32 dev \"$1\" label \"$1\":ucarp\n")
    up.chmod(0o755)
    with frame_socket(node) as sock:
        node.start("carpd", extra=["-u", str(up)])
        # broadcast, its target MAC its sender's: as ucarp sends them
        seen = [(g.sender_mac, g.address) for g in garps(sock, 5.5)
                if g.broadcast and g.target_mac == g.sender_mac]
    assert (node.mac, VIP) in seen
    assert (node.mac, extra_address) in seen


def test_a_hung_up_script_does_not_stop_the_adverts(net: Network) -> None:
    node = net.add_node("10.9.1.1")
    hang = net.directory / "hang.sh"
    hang.write_text("#!/bin/sh\nsleep 60\n")
    hang.chmod(0o755)
    node.start("carpd", extra=["-u", str(hang), "--script-timeout", "120"])
    first = net.capture.wait_frame(lambda f: f.source == node.address, 10)
    time.sleep(3.2)
    adverts = net.capture.frames(source=node.address, since=first.time)
    assert len(adverts) >= 3


def test_sigusr1_logs_state_and_counters(net: Network) -> None:
    daemon = master(net.add_node("10.9.1.1"))
    daemon.signal(signal.SIGUSR1)
    wait_for(lambda: "state MASTER" in daemon.log(), 5)
    assert "sent " in daemon.log() and "rejected:" in daemon.log()


def test_sigusr2_steps_down_with_a_bow_out_and_a_peer_takes_over_at_once(net: Network) -> None:
    a, b = net.add_node("10.9.1.1"), net.add_node("10.9.1.2")
    first = master(a, extra=["--drain", "0"])
    b.start("carpd", advskew=50)
    time.sleep(1.5)
    since = time.time()
    first.signal(signal.SIGUSR2)
    bow_out = net.capture.wait_frame(lambda f: f.source == a.address and f.bow_out, 5, since)
    taken = net.capture.wait_frame(lambda f: f.source == b.address, 5, bow_out.time)
    assert taken.time - bow_out.time < 0.2
    wait_for(lambda: b.has(VIP) and not a.has(VIP), 5)


def test_terminated_master_drains_with_an_arp_rule_then_leaves_nothing(net: Network) -> None:
    a, b = net.add_node("10.9.1.1"), net.add_node("10.9.1.2")
    first = master(a)
    b.start("carpd", advskew=50)
    time.sleep(1.5)
    stopped = time.monotonic()
    first.signal(signal.SIGTERM)
    wait_for(lambda: b.has(VIP), 2)
    assert a.has(VIP), "the old master keeps the VIP while it drains"
    assert "carpd_eth0_1" in nft_tables(a)
    assert first.wait_exit(10) == 0
    assert time.monotonic() - stopped >= 2.0
    assert not a.has(VIP) and "carpd_eth0_1" not in nft_tables(a)


def test_the_arp_rule_dies_with_an_engine_killed_during_the_drain(net: Network) -> None:
    a = net.add_node("10.9.1.1")
    first = master(a, extra=["--drain", "30"])
    first.signal(signal.SIGTERM)
    wait_for(lambda: "carpd_eth0_1" in nft_tables(a), 5)
    first.kill()
    assert "carpd_eth0_1" not in nft_tables(a)


def test_exit_as_master_removes_a_vip_the_down_script_left(net: Network) -> None:
    node = net.add_node("10.9.1.1")
    noop = net.directory / "noop.sh"
    noop.write_text("#!/bin/sh\nexit 0\n")
    noop.chmod(0o755)
    daemon = master(node, extra=["-d", str(noop), "--drain", "0"])
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(10) == 0
    assert not node.has(VIP)
    assert "removed 10.9.1.100 from eth0 at exit" in daemon.log()


def test_control_socket_reports_status_and_demotion_survives_a_restart(net: Network) -> None:
    a, b = net.add_node("10.9.1.1"), net.add_node("10.9.1.2")
    first = master(a, extra=["--drain", "0"])
    b.start("carpd", advskew=50)
    status = first.status()
    assert status["state"] == "MASTER" and status["vip"] == str(VIP)
    assert first.control("demote")["demoted"] is True
    wait_for(lambda: b.has(VIP) and not a.has(VIP), 5)
    first.signal(signal.SIGTERM)
    first.wait_exit(10)
    again = a.start("carpd", extra=["--drain", "0", "--state-dir", str(first.directory / "state")],
                    preempt=True)
    wait_for(lambda: "started" in again.log(), 10)
    time.sleep(4)
    assert not a.has(VIP), "a demoted engine stays BACKUP after a restart, even with -P"
    reply = _control(first.directory / "state" / "eth0.1.sock", "promote")
    assert reply["demoted"] is False
    wait_for(lambda: a.has(VIP), 5)


def _control(path: Path, command: str) -> dict[str, object]:
    return control.request(path, {"cmd": command})


def test_a_second_engine_for_the_same_vhid_and_interface_is_refused(net: Network) -> None:
    node = net.add_node("10.9.1.1")
    first = node.start("carpd")
    wait_for(lambda: (first.directory / "state" / "eth0.1.sock").exists(), 10)
    second = subprocess.run(
        ["ip", "netns", "exec", node.ns, *CARPD, "-i", "eth0", "-a", str(VIP), "-p", "x",
         "-f", "none", "--state-dir", str(first.directory / "state")],
        capture_output=True, text=True, timeout=30)
    assert second.returncode == 2
    assert "already run by carpd pid" in second.stderr


def test_daemonized_engine_writes_a_pidfile_and_keeps_the_password_off_its_command_line(
        net: Network) -> None:
    node = net.add_node("10.9.1.1")
    passfile = net.directory / "pass"
    passfile.touch(mode=0o600)
    passfile.write_text("hunter2\n")
    pidfile = net.directory / "carpd.pid"
    subprocess.run(
        ["ip", "netns", "exec", node.ns, *CARPD, "-B", "-i", "eth0", "-a", str(VIP), "-o",
         str(passfile), "-f", "none", "--pidfile", str(pidfile), "--state-dir",
         str(net.directory / "state")], check=True, timeout=30)
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 5))
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"hunter2" not in cmdline and b"carpd" in cmdline
    finally:
        subprocess.run(["kill", "-TERM", str(pid)], check=False)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10)
    assert not pidfile.exists()


ECHO_SERVER = """
import socket, sys, threading
name = sys.argv[1].encode()
server = socket.create_server(("0.0.0.0", 7007))
def serve(conn):
    with conn, conn.makefile("rb") as lines:
        for line in lines:
            conn.sendall(name + b":" + line)
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""


def _echo_server(node: Node) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", node.ns, sys.executable, "-c", ECHO_SERVER,
                             node.name], start_new_session=True)


def _client_mac_for_vip(client: Node) -> str:
    out = client.exec("ip", "-j", "neigh", "show", str(VIP)).stdout
    entries = json.loads(out)
    return str(entries[0].get("lladdr", "")) if entries else ""


def test_a_connection_to_the_draining_master_survives_the_clients_arp_moving(
        net: Network) -> None:
    a, b, client = (net.add_node(address) for address in ("10.9.1.1", "10.9.1.2", "10.9.1.50"))
    servers = [_echo_server(a), _echo_server(b)]
    try:
        first = master(a, extra=["--drain", "6"])
        b.start("carpd", advskew=50, extra=["--drain", "6"])
        time.sleep(1.5)
        with in_netns(client.ns):
            conn = socket.create_connection((str(VIP), 7007), timeout=5)
        with conn, conn.makefile("rb") as replies:
            conn.sendall(b"before\n")
            assert replies.readline() == b"a:before\n"
            first.signal(signal.SIGTERM)
            b_mac = ":".join(f"{x:02x}" for x in b.mac)
            wait_for(lambda: _client_mac_for_vip(client) == b_mac, 5)
            conn.sendall(b"after\n")
            assert replies.readline() == b"a:after\n", "served by the draining master"
        with in_netns(client.ns):
            fresh = socket.create_connection((str(VIP), 7007), timeout=5)
        with fresh, fresh.makefile("rb") as replies:
            fresh.sendall(b"new\n")
            assert replies.readline() == b"b:new\n", "new connections reach the new master"
    finally:
        for server in servers:
            server.kill()
            server.wait()


def test_an_engine_killed_with_sigkill_leaves_no_vip_behind(net: Network) -> None:
    node = net.add_node("10.9.1.1")
    daemon = master(node)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.process.wait(5)
    wait_for(lambda: not node.has(VIP), 3)

