"""``--drain-connections`` next to Debian's ucarp: a ucarp new MASTER passes nothing back, so
carpd waits for its connections no longer than ``--drain`` (holding the VIP on two nodes for
nothing would only hurt), never sends it a drain signal, and the election is as ever."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from lab.netns import VIP, Network, in_netns, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.ucarp]

PORT = 7071
# Holds every connection open until the client closes it.
HOLDER = """
import socket, sys, threading
server = socket.create_server(("0.0.0.0", int(sys.argv[1])), backlog=16)
def hold(conn):
    with conn:
        while conn.recv(4096):
            pass
while True:
    threading.Thread(target=hold, args=(server.accept()[0],), daemon=True).start()
"""


def signals_on_the_bridge(net: Network, stop: threading.Event, seen: list[int]) -> None:
    """Count UDP datagrams to the drain signal's port crossing the bridge until ``stop``."""
    with in_netns(net.switch):
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    with sniffer:
        sniffer.bind(("br0", 0x0800))
        sniffer.settimeout(0.1)
        while not stop.is_set():
            try:
                frame = sniffer.recv(2048)
            except TimeoutError:
                continue
            header = (frame[14] & 0x0F) * 4
            if len(frame) >= 14 + header + 4 and frame[23] == socket.IPPROTO_UDP and \
                    struct.unpack_from("!H", frame, 14 + header + 2)[0] == 5112:
                seen.append(1)


def test_a_ucarp_new_master_gets_no_signal_and_carpd_drains_for_drain_only(
        net: Network, processes: list[subprocess.Popen[bytes]]) -> None:
    a, b, client = (net.add_node(address) for address in ("10.9.1.1", "10.9.1.2", "10.9.1.50"))
    processes.append(subprocess.Popen(
        ["ip", "netns", "exec", a.ns, sys.executable, "-c", HOLDER, str(PORT)],
        start_new_session=True))
    wait_for(lambda: f":{PORT} " in a.exec("ss", "-Htln").stdout, 10)
    carpd = a.start("carpd", extra=["--drain-connections", "60"])
    wait_for(lambda: net.holders() == [a], 10)
    ucarp = b.start("ucarp", advskew=50)
    wait_for(ucarp.events, 5)
    time.sleep(1.5)
    assert net.holders() == [a]
    with in_netns(client.ns):
        held = socket.create_connection((str(VIP), PORT), timeout=5)
    stop, seen = threading.Event(), []
    sniffer = threading.Thread(target=signals_on_the_bridge, args=(net, stop, seen))
    sniffer.start()
    try:
        start = time.monotonic()
        carpd.signal(signal.SIGTERM)  # bows out; ucarp takes over
        carpd.wait_exit(20)
        took = time.monotonic() - start
        wait_for(lambda: net.holders() == [b], 10)
    finally:
        stop.set()
        sniffer.join()
        held.close()
    print(f"FIGURE: carpd with --drain-connections 60 and a connection open, ucarp peer: "
          f"SIGTERM -> exit {took:.2f} s")
    assert took < 6.0, f"carpd held the VIP {took:.1f} s for a peer that passes nothing back"
    assert not seen, f"{len(seen)} drain signals sent towards a ucarp node"
    assert ucarp.is_master()


def test_carpd_with_drain_connections_takes_over_from_a_ucarp_master_and_back(
        net: Network) -> None:
    """The election is ucarp's as ever: carpd takes over when ucarp dies, and a ucarp node
    with -P preempts it back."""
    a, b = net.add_node("10.9.1.1"), net.add_node("10.9.1.2")
    ucarp = a.start("ucarp", preempt=True)
    wait_for(lambda: net.holders() == [a], 10)
    carpd = b.start("carpd", advskew=50, extra=["--drain-connections", "60"])
    wait_for(carpd.events, 5)
    time.sleep(1.5)
    assert net.holders() == [a]
    ucarp.kill()
    a.remove_address(VIP)
    wait_for(lambda: net.holders() == [b], 10)
    again = a.start("ucarp", preempt=True)
    wait_for(lambda: net.holders() == [a], 15)
    assert again.is_master() and not carpd.is_master()
