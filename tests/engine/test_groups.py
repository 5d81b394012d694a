"""One engine per interface runs all its VIP groups (issue 9, item 4 and 9): one process, one
packet socket, one control socket, one watchdog; per vhid its own election and script queue.
Peers are the real ucarp, or carpd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path

from groups import VIPS, GroupsEngine, group, start_groups

from carpd.engine import control
from lab.garp import frame_socket, garps
from lab.netns import Network, Node, wait_for


def holds(node: Node, vhid: int) -> bool:
    return node.has(VIPS[vhid])


def watch_vip(node: Node, vhid: int, stop: threading.Event) -> list[float]:
    """Times at which ``node`` was seen without the group's VIP, sampled until ``stop``."""
    missing: list[float] = []

    def sample() -> None:
        while not stop.is_set():
            if not holds(node, vhid):
                missing.append(time.monotonic())
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    return missing


def both_masters(engine: GroupsEngine, node: Node) -> None:
    wait_for(lambda: engine.state(1) == "MASTER" and engine.state(2) == "MASTER", 15)
    wait_for(lambda: holds(node, 1) and holds(node, 2), 5)


def test_one_engine_runs_two_groups_active_active_against_two_ucarp_peers(
        net: Network) -> None:
    a, b = net.add_node("10.9.1.1"), net.add_node("10.9.1.2")
    engine = start_groups(net, a, [group(1, advskew=0, preempt=True),
                                   group(2, advskew=100, preempt=True)])
    b.start("ucarp", vhid=1, vip=VIPS[1], advskew=100, preempt=True)
    b.start("ucarp", vhid=2, vip=VIPS[2], advskew=0, preempt=True)
    wait_for(lambda: engine.state(1) == "MASTER" and engine.state(2) == "BACKUP", 15)
    wait_for(lambda: holds(a, 1) and holds(b, 2), 10)
    time.sleep(3)  # stable: nobody takes the other's group
    assert holds(a, 1) and not holds(a, 2)
    assert holds(b, 2) and not holds(b, 1)
    reply = engine.request(cmd="status")
    assert [g["vhid"] for g in reply["groups"]] == [1, 2]
    assert {g["pid"] for g in reply["groups"]} == {engine.pid}  # one process for both
    assert reply["groups"][1]["master"] == str(b.address)


def test_a_hung_up_script_of_one_group_does_not_delay_another_groups_takeover(
        net: Network) -> None:
    a = net.add_node("10.9.1.1")
    started = time.monotonic()
    engine = start_groups(net, a, [group(1, hang_up=True, script_timeout=120),
                                   group(2)])
    wait_for(lambda: engine.state(1) == "MASTER", 15)
    wait_for(lambda: holds(a, 2), 3)  # group 2's up script ran beside group 1's hung one
    assert time.monotonic() - started < 10
    assert not holds(a, 1), "group 1's up script still hangs"
    ups = [e for e in engine.events(2) if e.event == "up"]
    assert ups and ups[0].args[:2] == ("eth0", str(VIPS[2]))


def test_reload_adds_a_group_without_touching_the_running_one(net: Network) -> None:
    a = net.add_node("10.9.1.1")
    engine = start_groups(net, a, [group(1)])
    wait_for(lambda: engine.state(1) == "MASTER" and holds(a, 1), 15)
    before = engine.groups()[1]
    stop = threading.Event()
    missing = watch_vip(a, 1, stop)
    engine.rewrite([group(1), group(2)])
    reply = engine.request(cmd="reload")
    assert reply["ok"] is True, reply
    assert reply["started"] == [2] and reply["unchanged"] == [1]
    wait_for(lambda: engine.state(2) == "MASTER" and holds(a, 2), 15)
    stop.set()
    assert not missing, "group 1's VIP left while group 2 was added"
    after = engine.groups()[1]
    assert after["pid"] == before["pid"] == engine.pid
    assert (after["transitions"], after["since"]) == (before["transitions"], before["since"])
    assert [e.event for e in engine.events(1)] == ["down", "up"]  # start, then MASTER: no more


def test_reload_of_an_invalid_file_changes_nothing(net: Network) -> None:
    a = net.add_node("10.9.1.1")
    engine = start_groups(net, a, [group(1), group(2)])
    both_masters(engine, a)
    engine.rewrite([group(1), group(2, advskew=5), {**group(2), "addr": "10.9.1.109"}])
    reply = engine.request(cmd="reload")
    assert reply["ok"] is False
    assert "vhid 2" in reply["error"] and "nothing changed" in reply["error"]
    time.sleep(1)
    assert sorted(engine.groups()) == [1, 2]
    assert engine.groups()[2]["transitions"] == 2  # INIT -> BACKUP -> MASTER, not restarted
    assert holds(a, 1) and holds(a, 2)


def test_reload_removing_a_group_bows_it_out_and_releases_only_its_vip(net: Network) -> None:
    a, b = net.add_node("10.9.1.1"), net.add_node("10.9.1.2")
    engine = start_groups(net, a, [group(1), group(2, drain=1.0)])
    both_masters(engine, a)
    peer = b.start("ucarp", vhid=2, vip=VIPS[2], advskew=100)
    time.sleep(1.5)
    since = time.time()
    engine.rewrite([group(1)])
    reply = engine.request(cmd="reload")
    assert reply["ok"] is True and reply["stopped"] == [2] and reply["stopping"] == [2]
    bow_out = net.capture.wait_frame(
        lambda f: f.source == a.address and f.advert.vhid == 2 and f.bow_out, 5, since)
    wait_for(lambda: holds(b, 2), 3)  # the bow-out hands group 2 over at once
    assert bow_out is not None
    wait_for(lambda: not holds(a, 2), 5)  # after the drain and the down script
    wait_for(lambda: "stopping" in (r := engine.request(cmd="status")) and not r["stopping"], 5)
    assert sorted(engine.groups()) == [1]
    assert engine.events(2)[-1].event == "down"
    assert holds(a, 1) and engine.state(1) == "MASTER"
    assert peer.alive()
    # group 1 keeps advertising after group 2 left
    later = time.time()
    net.capture.wait_frame(lambda f: f.source == a.address and f.advert.vhid == 1, 3, later)


def test_sigkill_of_the_engine_lets_the_watchdog_release_every_groups_vip(
        net: Network) -> None:
    a = net.add_node("10.9.1.1")
    engine = start_groups(net, a, [group(1), group(2)])
    both_masters(engine, a)
    engine.rewrite([group(1), group(2), group(3)])  # and one added by a reload
    assert engine.request(cmd="reload")["ok"] is True
    wait_for(lambda: holds(a, 3), 15)
    os.kill(engine.pid, signal.SIGKILL)  # the engine only: its watchdog lives on
    wait_for(lambda: not any(holds(a, v) for v in (1, 2, 3)), 5)


def test_sigusr2_steps_every_group_down_and_the_peer_takes_them_all(net: Network) -> None:
    a, b = net.add_node("10.9.1.1"), net.add_node("10.9.1.2")
    first = start_groups(net, a, [group(1), group(2)])
    both_masters(first, a)
    second = start_groups(net, b, [group(1, advskew=50), group(2, advskew=50)])
    wait_for(lambda: second.masters() == {1: str(a.address), 2: str(a.address)}, 10)
    first.daemon.signal(signal.SIGUSR2)
    wait_for(lambda: holds(b, 1) and holds(b, 2), 3)
    wait_for(lambda: not holds(a, 1) and not holds(a, 2), 5)
    statuses = first.groups()
    assert all(statuses[v]["demoted"] for v in (1, 2))


def carpctl(node: Node, state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return node.exec(sys.executable, "-m", "carpd.debian.carpctl", "--state-dir", str(state_dir),
                     *args, check=False)


def test_two_engines_started_by_hand_on_one_interface_with_different_vhids_both_run(
        net: Network) -> None:
    a = net.add_node("10.9.1.1")
    shared = net.directory / "shared-state"
    one = a.start("carpd", vhid=1, vip=VIPS[1], extra=["--state-dir", str(shared)])
    two = a.start("carpd", vhid=2, vip=VIPS[2], extra=["--state-dir", str(shared)])
    wait_for(lambda: holds(a, 1) and holds(a, 2), 15)
    assert one.alive() and two.alive()
    status = carpctl(a, shared, "status", "eth0", "--json")
    assert status.returncode == 0, status.stderr
    assert sorted((r["vhid"], r["pid"]) for r in json.loads(status.stdout)) == [
        (1, one.pid), (2, two.pid)]
    demoted = carpctl(a, shared, "demote", "eth0", "2")
    assert demoted.returncode == 0 and "eth0 vhid 2: demoted" in demoted.stdout
    replies = {v: control.request(shared / f"eth0.{v}.sock", {"cmd": "status"}) for v in (1, 2)}
    assert (replies[1]["demoted"], replies[2]["demoted"]) == (False, True)
    # an engine of the interface whose groups take vhid 2 again is refused, naming the holder
    engine = start_groups(net, a, [group(2), group(3)], state_dir=shared)
    assert engine.daemon.wait_exit(20) == 2
    assert f"vhid 2 on eth0: already run by carpd pid {two.pid}" in engine.log()
    elsewhere = start_groups(net, a, [group(3), group(2)])  # its own state folder: still one
    assert elsewhere.daemon.wait_exit(20) == 2
    assert "vhid 2 on eth0: already run by carpd" in elsewhere.log()
    assert holds(a, 1) and one.alive() and two.alive()


def test_carpctl_status_demote_and_promote_reach_one_group_through_the_interface_socket(
        net: Network) -> None:
    a = net.add_node("10.9.1.1")
    engine = start_groups(net, a, [group(1), group(2)])
    both_masters(engine, a)
    status = carpctl(a, engine.state_dir, "status", "eth0", "2", "--json")
    assert status.returncode == 0, status.stderr
    (only,) = json.loads(status.stdout)
    assert (only["vhid"], only["state"], only["pid"]) == (2, "MASTER", engine.pid)
    assert len(json.loads(carpctl(a, engine.state_dir, "status", "--json").stdout)) == 2
    demoted = carpctl(a, engine.state_dir, "demote", "eth0", "1")
    assert demoted.returncode == 0, demoted.stderr
    assert demoted.stdout.strip() == "eth0 vhid 1: demoted, now BACKUP"
    groups = engine.groups()
    assert (groups[1]["demoted"], groups[2]["demoted"]) == (True, False)
    wait_for(lambda: not holds(a, 1), 5)
    assert holds(a, 2)
    promoted = carpctl(a, engine.state_dir, "promote", "eth0")  # every group
    assert promoted.returncode == 0, promoted.stderr
    assert sorted(promoted.stdout.splitlines()) == ["eth0 vhid 1: promoted, now BACKUP",
                                                    "eth0 vhid 2: promoted, now MASTER"]
    wait_for(lambda: holds(a, 1), 10)
    metrics = carpctl(a, engine.state_dir, "metrics", "eth0").stdout
    assert 'carpd_up{interface="eth0",vhid="1",vip="10.9.1.101"} 1' in metrics
    assert 'carpd_up{interface="eth0",vhid="2",vip="10.9.1.102"} 1' in metrics
    unknown = engine.request(cmd="demote", vhid=9)
    assert unknown["ok"] is False and "no group with vhid 9 on eth0" in unknown["error"]


def garps_seen(node: Node, ifname: str, seconds: float) -> list[tuple[bytes, IPv4Address]]:
    """(sender MAC, address) of each gratuitous ARP request ``node`` sends on ``ifname``."""
    with frame_socket(node, ifname) as sock:
        return [(g.sender_mac, g.address) for g in garps(sock, seconds)]


def test_a_group_may_hold_its_vip_on_another_interface_than_its_adverts(net: Network) -> None:
    a = net.add_node("10.9.1.1")
    a.exec("ip", "link", "add", "vip0", "type", "veth", "peer", "name", "vip0p")
    a.exec("ip", "link", "set", "vip0p", "up")
    a.exec("ip", "link", "set", "vip0", "up")
    mac = bytes.fromhex(json.loads(a.exec("ip", "-j", "link", "show", "vip0").stdout)[0][
        "address"].replace(":", ""))
    engine = start_groups(net, a, [group(1, vip_interface="vip0", script_dev="vip0")])
    seen = garps_seen(a, "vip0", 6.0)
    assert engine.state(1) == "MASTER"
    assert (mac, VIPS[1]) in seen, "gratuitous ARP goes out on the VIP's interface"
    on_vip0 = a.exec("ip", "-j", "-4", "addr", "show", "dev", "vip0").stdout
    assert str(VIPS[1]) in on_vip0 and not holds(a, 1)
    since = time.time()
    net.capture.wait_frame(lambda f: f.source == a.address and f.advert.vhid == 1, 3, since)
    assert engine.groups()[1]["vip_interface"] == "vip0"
    os.kill(engine.pid, signal.SIGKILL)  # the watchdog releases it where it lives
    wait_for(lambda: str(VIPS[1]) not in a.exec("ip", "-4", "addr", "show", "dev", "vip0").stdout,
             5)
