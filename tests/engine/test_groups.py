"""One engine per interface runs all its VIP groups (issue 9, item 4 and 9): one process, one
packet socket, one control socket, one watchdog; per vhid its own election and script queue.
Peers are the real ucarp, or carpd."""

from __future__ import annotations

import os
import signal
import threading
import time

from groups import VIPS, GroupsEngine, group, start_groups
from netns import Network, Node, wait_for


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
