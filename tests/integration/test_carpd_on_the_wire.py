"""What a carpd master puts on the wire, byte for byte, as seen on the bridge; and its secrets."""

from __future__ import annotations

import signal
import time
from itertools import pairwise
from pathlib import Path

import pytest

from carpd.core import wire
from lab.netns import PASSWORD, Network, wait_for

pytestmark = [pytest.mark.netns]

GROUP_MAC = bytes.fromhex("01005e000012")


def test_carpd_adverts_are_what_ucarp_sends_from_the_nic_mac(net: Network) -> None:
    a = net.add_node("10.9.1.2")
    carpd = a.start("carpd", advbase=1, advskew=64)
    wait_for(carpd.is_master, timeout=6)
    time.sleep(4)

    frames = net.capture.frames(source=a.address)
    assert len(frames) >= 3
    for f in frames:
        assert f.eth_dst == GROUP_MAC
        assert f.eth_src == a.mac, "carpd must send from the NIC's own MAC by default"
        assert f.frame[12:14] == b"\x08\x00"
        ip = f.packet
        assert len(ip) == 56 and ip[0] == 0x45
        assert ip[1] == 0x10, "TOS is IPTOS_LOWDELAY, as ucarp"
        assert ip[6] & 0x40, "DF set, as ucarp"
        assert f.ttl == 255
        assert ip[9] == 112
        assert str(f.destination) == "224.0.0.18"
        assert wire.internet_checksum(ip[:20]) == 0, "bad IP header checksum"
        assert wire.internet_checksum(ip[20:56]) == 0, "bad CARP checksum"
        assert f.advert.version == 2 and f.advert.type == 1 and f.advert.authlen == 7
        assert (f.advert.vhid, f.advert.advbase, f.advert.advskew) == (1, 1, 64)
        assert f.valid_for(1, PASSWORD), "HMAC does not verify with the password"
        assert not f.valid_for(1, PASSWORD + b"x")
    # One advert every advbase + advskew/256 = 1.25 s, on time.
    steady = [later.time - earlier.time for earlier, later in pairwise(frames[1:])]
    assert steady and all(1.2 < gap < 1.5 for gap in steady), steady


def test_carpd_nomcast_broadcasts_and_ucarp_mac_spoofs_and_ucarp_accepts(net: Network) -> None:
    a, b = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
    carpd = a.start("carpd", extra=["-M", "--ucarp-mac"])
    wait_for(carpd.is_master, timeout=6)
    ucarp = b.start("ucarp", advskew=100, extra=["-M"])
    wait_for(ucarp.events, timeout=5)
    time.sleep(4.5)  # past ucarp's master-down interval (3.39 s): it must be hearing carpd

    frames = net.capture.frames(source=a.address)
    assert len(frames) >= 5
    for f in frames:
        assert f.eth_dst == b"\xff" * 6
        assert f.eth_src == wire.ucarp_source_mac(1)
        assert str(f.destination) == "224.0.0.18", "the IP destination stays the group"
        assert f.valid_for(1, PASSWORD)
    assert net.holders() == [a]
    assert not ucarp.is_master()
    assert net.capture.frames(source=b.address) == []


def test_carpd_in_broadcast_mode_follows_a_broadcasting_ucarp_master(net: Network) -> None:
    a, b = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
    ucarp = a.start("ucarp", extra=["-M"])
    wait_for(ucarp.is_master, timeout=6)
    carpd = b.start("carpd", advskew=100, extra=["-M"])
    wait_for(carpd.events, timeout=5)
    time.sleep(4.5)  # past carpd's master-down interval (3.39 s): it must be hearing ucarp

    assert {f.eth_dst for f in net.capture.frames(source=a.address)} == {b"\xff" * 6}
    assert net.holders() == [a]
    assert not carpd.is_master()
    assert net.capture.frames(source=b.address) == []
    status = carpd.status()
    assert (status["state"], status["master"]) == ("BACKUP", str(a.address))


def test_passfile_keeps_the_password_out_of_argv_environment_and_logs(net: Network) -> None:
    a = net.add_node("10.9.1.2")
    carpd = a.start("carpd", extra=["-D"])
    wait_for(carpd.is_master, timeout=6)
    proc = Path(f"/proc/{carpd.pid}")
    cmdline = (proc / "cmdline").read_bytes()
    assert b"carpd" in cmdline, "the pid is not carpd's"
    assert PASSWORD not in cmdline
    assert PASSWORD not in (proc / "environ").read_bytes()

    carpd.signal(signal.SIGTERM)
    assert carpd.wait_exit(timeout=5) == 0
    assert PASSWORD.decode() not in carpd.log()
    assert not a.has(carpd.vip)
