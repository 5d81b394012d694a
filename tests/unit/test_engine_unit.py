"""The engine's own logic (carpd.engine.daemon.Engine and its groups) on fakes of its I/O
(fake_io.py): no root, no namespaces, no sockets; a fake clock that moves only when the loop
would sleep.  What the engine does in the real world is tested in tests/engine."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from fake_io import FakeHealth, FakeIO, FakeScripts, FakeVipPort, FakeWatchdog

from carpd.core import wire
from carpd.core.election import Script, State
from carpd.engine.daemon import Engine
from carpd.engine.settings import EngineSettings, Secret, Settings

KEY = b"secret"
SOURCE = IPv4Address("10.0.0.1")
PEER = IPv4Address("10.0.0.2")
PEER_MAC = bytes.fromhex("020000000002")
UP, DOWN = "/etc/carpd/up", "/etc/carpd/down"
_COUNTERS = itertools.count(10**12, 1000)
MAX_TURNS = 20_000
"""More turns than any test needs: a loop that spins (something ready that is never read)
fails instead of hanging."""


def vip(vhid: int) -> IPv4Address:
    return IPv4Address(f"10.0.0.{100 + vhid}")


def group(folder: Path, vhid: int, **options: Any) -> Settings:
    return Settings(interface="eth0", vhid=vhid, addr=vip(vhid), password=Secret(KEY),
                    upscript=Path(UP), downscript=Path(DOWN), state_dir=folder / "run",
                    persist_dir=folder / "lib", **options)


class Rig:
    """An engine of several groups on a FakeIO, started; scripts end at once unless
    ``scripts_wait``."""

    def __init__(self, folder: Path, *groups: Settings, scripts_wait: bool = False,
                 world: Callable[[FakeIO], None] | None = None) -> None:
        self.io = FakeIO()
        self.io.scripts_end_at_once = not scripts_wait
        if world is not None:
            world(self.io)  # what else the machine has (another interface, ...)
        config = EngineSettings(groups, config_file=str(folder / "carpd.conf"))
        self.engine = Engine(config, {g.vhid: SOURCE for g in groups}, io=self.io)
        self.engine.start()

    @property
    def now(self) -> float:
        return self.io.clock.now

    def state(self, vhid: int) -> State:
        return self.engine.groups[vhid].host.state

    def scripts(self, vhid: int) -> FakeScripts:
        g = self.engine.groups.get(vhid) or self.engine.retiring[vhid]
        runner = g.scripts
        assert isinstance(runner, FakeScripts)
        return runner

    def turn(self) -> None:
        self.engine.turn()

    def run_until(self, done: Callable[[], bool], within: float = 30.0) -> None:
        deadline = self.now + within
        for _ in range(MAX_TURNS):
            if done():
                return
            assert self.now <= deadline, "not within the time given"
            self.turn()
        raise AssertionError(f"{MAX_TURNS} turns without time moving: input never read?")

    def run_for(self, seconds: float) -> None:
        until = self.now + seconds
        for _ in range(MAX_TURNS):
            if self.now >= until:
                return
            self.turn()
        raise AssertionError(f"{MAX_TURNS} turns without time moving: input never read?")

    def all_masters(self) -> None:
        self.run_until(lambda: all(g.host.state is State.MASTER
                                   for g in self.engine.groups.values()))

    def advert_from_peer(self, vhid: int, advskew: int = 0) -> bytes:
        frames = wire.AdvertFrames(KEY, vip(vhid), PEER, wire.DEFAULT_GROUP,
                                   wire.multicast_mac(wire.DEFAULT_GROUP), PEER_MAC)
        return frames.frame(wire.Advert(vhid, 1, advskew, next(_COUNTERS)), 1)

    def peer_advertises(self, vhid: int, every: float, times: int, advskew: int = 0) -> None:
        """A peer MASTER's adverts for ``vhid`` arrive from now on."""
        link = self.io.link
        assert link is not None
        for k in range(times):
            self.io.clock.at(self.now + k * every,
                             lambda: link.inbox.append(self.advert_from_peer(vhid, advskew)))

    def health(self, vhid: int) -> FakeHealth:
        checks = self.engine.groups[vhid].health
        assert isinstance(checks, FakeHealth)
        return checks

    def bow_outs(self, vhid: int) -> list[float]:
        return [at for at, v, skew in self.adverts_sent() if v == vhid and skew == wire.BOW_OUT]

    def adverts_sent(self) -> list[tuple[float, int, int]]:
        """(time, vhid, advskew) of each advert the engine sent."""
        sent = []
        for at, what, frame in self.io.events:
            if what == "frame" and frame[12:14] == b"\x08\x00":
                carp = frame[14 + (frame[14] & 0x0F) * 4:]
                sent.append((at, carp[1], carp[2]))
        return sent


@pytest.fixture(autouse=True)
def _no_service_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    yield


# ---- frames to groups ------------------------------------------------------------------------

def test_a_frame_reaches_only_the_group_of_its_vhid(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1), group(tmp_path, 2), group(tmp_path, 3))
    down_before = {v: g.next_deadline() for v, g in rig.engine.groups.items()}
    rig.io.clock.advance(1.0)
    assert rig.io.link is not None
    rig.io.link.inbox.append(rig.advert_from_peer(2))
    rig.turn()
    accepted = {v: g.host.accepted for v, g in rig.engine.groups.items()}
    assert accepted == {1: 0, 2: 1, 3: 0}
    deadlines = {v: g.next_deadline() for v, g in rig.engine.groups.items()}
    assert deadlines[1] == down_before[1] and deadlines[3] == down_before[3]
    assert deadlines[2] == pytest.approx(rig.now + rig.engine.groups[2].host.params
                                         .master_down_interval)


def test_a_frame_for_a_vhid_no_group_runs_is_dropped_by_every_group(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1), group(tmp_path, 2))
    assert rig.io.link is not None
    rig.io.link.inbox.append(rig.advert_from_peer(9))
    rig.turn()
    for g in rig.engine.groups.values():
        assert g.host.accepted == 0 and sum(g.host.rejected.values()) == 0


def test_a_lone_group_counts_a_frame_of_another_vhid_as_rejected(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1))
    assert rig.io.link is not None
    rig.io.link.inbox.append(rig.advert_from_peer(9))
    rig.turn()
    assert dict(rig.engine.groups[1].host.rejected) == {wire.Reject.OTHER_VHID: 1}


def test_a_backup_hearing_its_master_never_takes_over(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1, advskew=100), group(tmp_path, 2, advskew=100))
    rig.peer_advertises(1, every=1.0, times=10)
    rig.run_for(10.0)
    assert rig.state(1) is State.BACKUP
    assert rig.engine.groups[1].host.accepted == 10
    assert rig.state(2) is State.MASTER


# ---- timers ------------------------------------------------------------------------------------

def test_the_groups_take_over_in_the_order_of_their_master_down_timers_never_early(
        tmp_path: Path) -> None:
    skews = {3: 0, 1: 60, 2: 120}
    rig = Rig(tmp_path, *(group(tmp_path, v, advskew=s) for v, s in skews.items()))
    started = rig.now
    rig.all_masters()
    first: dict[int, float] = {}
    for at, vhid, _skew in rig.adverts_sent():
        first.setdefault(vhid, at)
    assert sorted(first, key=first.__getitem__) == [3, 1, 2]
    for vhid, g in rig.engine.groups.items():
        assert first[vhid] == started + g.host.params.master_down_interval


def test_masters_advertise_every_interval_from_the_timer_queue(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1), group(tmp_path, 2, advskew=128))
    rig.all_masters()
    since = rig.now
    rig.run_for(10.0)
    for vhid in (1, 2):
        times = [at for at, v, _s in rig.adverts_sent() if v == vhid and at > since]
        interval = rig.engine.groups[vhid].host.params.advert_interval
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) >= int(10.0 / interval) - 1
        assert all(gap == pytest.approx(interval, abs=0.003) for gap in gaps)


# ---- the link ----------------------------------------------------------------------------------

def test_carrier_loss_and_return_reach_every_group(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1), group(tmp_path, 2, advskew=200),
              group(tmp_path, 3))
    rig.run_until(lambda: rig.state(1) is State.MASTER)
    rig.io.set_carrier(False)
    rig.turn()
    assert [rig.state(v) for v in (1, 2, 3)] == [State.INIT] * 3
    rig.io.set_carrier(True)
    rig.turn()
    assert [rig.state(v) for v in (1, 2, 3)] == [State.BACKUP] * 3


def test_an_admin_deleting_the_vip_of_a_master_makes_it_run_its_up_script_again(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1), group(tmp_path, 2))
    rig.all_masters()
    for vhid in (1, 2):
        rig.io.add_address(vip(vhid))  # what the up scripts did
    ups = {v: rig.scripts(v).ran.count([UP, "eth0", str(vip(v))]) for v in (1, 2)}
    assert ups == {1: 1, 2: 1}
    rig.io.delete_address(vip(2))
    rig.turn()
    assert rig.scripts(2).ran.count([UP, "eth0", str(vip(2))]) == 2
    assert rig.scripts(1).ran.count([UP, "eth0", str(vip(1))]) == 1
    assert rig.state(2) is State.MASTER


def test_deleting_another_address_leaves_the_masters_alone(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1))
    rig.all_masters()
    rig.io.add_address(vip(1))
    rig.io.add_address(IPv4Address("10.0.0.50"))
    rig.io.delete_address(IPv4Address("10.0.0.50"))
    rig.turn()
    assert rig.scripts(1).ran.count([UP, "eth0", str(vip(1))]) == 1


# ---- control requests ------------------------------------------------------------------------

def request(rig: Rig, **fields: Any) -> dict[str, Any]:
    assert rig.io.control is not None
    reply = rig.io.control.request(fields)
    assert reply is not None
    return reply


def test_status_answers_for_every_group_or_for_the_one_named(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1), group(tmp_path, 2, advskew=200))
    rig.run_until(lambda: rig.state(1) is State.MASTER)
    every = request(rig, cmd="status")
    assert every["ok"] and [g["vhid"] for g in every["groups"]] == [1, 2]
    assert [g["state"] for g in every["groups"]] == ["MASTER", "BACKUP"]
    one = request(rig, cmd="status", vhid=2)
    assert one["vhid"] == 2 and one["state"] == "BACKUP" and len(one["groups"]) == 1
    assert one["since"] == pytest.approx(rig.io.time(), abs=30)


def test_demote_and_promote_one_group_by_vhid(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1), group(tmp_path, 2))
    rig.all_masters()
    reply = request(rig, cmd="demote", vhid=1)
    assert reply["ok"] and reply["vhid"] == 1
    assert (rig.state(1), rig.state(2)) == (State.BACKUP, State.MASTER)
    assert (tmp_path / "run" / "eth0.1.demoted").exists()
    rig.run_for(10.0)
    assert rig.state(1) is State.BACKUP  # demoted: never takes over
    assert request(rig, cmd="promote", vhid=1)["ok"]
    assert not (tmp_path / "run" / "eth0.1.demoted").exists()
    rig.run_until(lambda: rig.state(1) is State.MASTER)


def test_demote_without_vhid_demotes_every_group(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1), group(tmp_path, 2))
    rig.all_masters()
    bow_outs_before = len([a for a in rig.adverts_sent() if a[2] == wire.BOW_OUT])
    reply = request(rig, cmd="demote", persistent=True)
    assert reply["ok"] and [g["demoted"] for g in reply["groups"]] == [True, True]
    assert (rig.state(1), rig.state(2)) == (State.BACKUP, State.BACKUP)
    assert len([a for a in rig.adverts_sent() if a[2] == wire.BOW_OUT]) == bow_outs_before + 2
    assert (tmp_path / "lib" / "demoted" / "eth0.2").exists()
    assert request(rig, cmd="promote")["ok"]
    rig.all_masters()


def test_a_request_for_an_unknown_vhid_or_command_is_an_error(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1), group(tmp_path, 2))
    for fields in ({"cmd": "demote", "vhid": 7}, {"cmd": "status", "vhid": "1"}):
        reply = request(rig, **fields)
        assert not reply["ok"] and "no group with vhid" in reply["error"]
        assert "1, 2" in reply["error"]
    reply = request(rig, cmd="explode")
    assert not reply["ok"] and "unknown command" in reply["error"]
    assert (rig.state(1), rig.state(2)) == (State.BACKUP, State.BACKUP)


# ---- signals -----------------------------------------------------------------------------------

def test_sigusr2_makes_every_master_step_down_for_a_while(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1), group(tmp_path, 2))
    rig.all_masters()
    rig.engine.deliver_signal(signal.SIGUSR2)
    rig.turn()
    assert (rig.state(1), rig.state(2)) == (State.BACKUP, State.BACKUP)
    hold = rig.engine.groups[1].host.step_down_hold
    stepped = rig.now
    rig.all_masters()
    assert rig.now >= stepped + hold  # a step-down ends by itself (a demotion would not)


def test_an_exit_signal_ends_the_loop(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1))
    rig.engine.deliver_signal(signal.SIGTERM)
    rig.engine._loop()  # returns: the signal was handled at the end of the turn
    assert rig.state(1) is State.BACKUP


# ---- reload ------------------------------------------------------------------------------------

def test_a_reload_starts_and_stops_groups_and_leaves_the_others_running(
        tmp_path: Path) -> None:
    g1, g2 = group(tmp_path, 1), group(tmp_path, 2)
    rig = Rig(tmp_path, g1, g2)
    rig.all_masters()
    kept = rig.engine.groups[1]
    kept_scripts = list(rig.scripts(1).ran)
    adverts_1 = len([a for a in rig.adverts_sent() if a[1] == 1])
    new = EngineSettings((g1, group(tmp_path, 3)), rig.engine.config.config_file)
    reply = rig.engine.reload_settings(new)
    assert reply["ok"]
    assert (reply["started"], reply["stopped"], reply["restarted"], reply["unchanged"]) == \
        ([3], [2], [], [1])
    rig.run_until(lambda: not rig.engine.retiring and rig.state(3) is State.MASTER)
    assert rig.engine.groups[1] is kept and rig.state(1) is State.MASTER
    assert rig.scripts(1).ran == kept_scripts  # no down, no up: untouched
    # its adverts went on at their interval all along
    times = [at for at, v, _s in rig.adverts_sent() if v == 1]
    assert len(times) > adverts_1
    assert max(b - a for a, b in itertools.pairwise(times)) <= 1.0 + 0.003
    assert sorted(rig.engine.groups) == [1, 3]
    assert rig.io.link is not None and rig.io.link.vhids == [1, 3]
    assert ("eth0", vip(2)) in rig.io.released
    assert rig.io.locks["eth0/3"].held


def test_a_reload_restarts_a_changed_group_only(tmp_path: Path) -> None:
    g1, g2 = group(tmp_path, 1), group(tmp_path, 2)
    rig = Rig(tmp_path, g1, g2)
    rig.all_masters()
    old2 = rig.engine.groups[2]
    reply = rig.engine.reload_settings(
        EngineSettings((g1, group(tmp_path, 2, advskew=10)), rig.engine.config.config_file))
    assert (reply["restarted"], reply["unchanged"]) == ([2], [1])
    rig.run_until(lambda: 2 in rig.engine.groups and rig.engine.groups[2] is not old2
                  and rig.state(2) is State.MASTER)
    assert rig.engine.groups[2].options.advskew == 10
    assert rig.state(1) is State.MASTER


def test_a_reload_changing_the_interface_changes_nothing(tmp_path: Path) -> None:
    g1 = group(tmp_path, 1)
    rig = Rig(tmp_path, g1)
    other = Settings(**{**g1.__dict__, "nomcast": True})
    reply = rig.engine.reload_settings(EngineSettings((other,), rig.engine.config.config_file))
    assert not reply["ok"] and "nomcast" in reply["error"]
    assert rig.engine.config.first is g1


# ---- stopping ----------------------------------------------------------------------------------

def test_stopping_a_master_bows_out_drains_runs_its_down_script_then_releases(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1, drain=2.0), group(tmp_path, 2, advskew=200))
    rig.run_until(lambda: rig.state(1) is State.MASTER)
    watchdog = rig.io.watchdog([("eth0", vip(1)), ("eth0", vip(2))])
    rig.engine.watchdog = watchdog
    rig.io.add_address(vip(1))
    rig.io.events.clear()
    stopping = rig.now
    assert rig.engine.shut_down() == 0
    kinds = ("frame", "arp rule engaged", "arp rule released", "script", "release vip",
             "watchdog drop", "unlock", "close link")
    seen = [(round(t - stopping, 3), what, d) for t, what, d in rig.io.events if what in kinds]
    bow_out = [i for i, (_t, what, d) in enumerate(seen) if what == "frame"
               and d[14 + 20 + 2] == wire.BOW_OUT]
    assert len(bow_out) == 1
    steps_1 = [(t, what) for t, what, d in seen if d in (1, vip(1))]
    assert steps_1[0] == (0.0, "arp rule engaged")
    assert sorted(steps_1[1:]) == [(2.0, "arp rule released"), (2.0, "release vip"),
                                   (2.0, "watchdog drop")]
    assert steps_1.index((2.0, "release vip")) < steps_1.index((2.0, "watchdog drop"))
    scripts = [(t, d) for t, what, d in seen if what == "script"]
    assert scripts == [(2.0, (Script.DOWN, [DOWN, "eth0", str(vip(1))]))]  # after the drain
    assert seen[bow_out[0]][0] == 0.0 and bow_out[0] < seen.index(
        (0.0, "arp rule engaged", 1))
    assert seen[-1][1] == "close link"
    assert isinstance(watchdog, FakeWatchdog) and not watchdog.held
    assert not rig.engine.retiring


def test_a_second_exit_signal_cuts_the_drain_short(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1, drain=30.0))
    rig.run_until(lambda: rig.state(1) is State.MASTER)
    stopping = rig.now
    rig.engine.deliver_signal(signal.SIGTERM)
    rig.engine.shut_down()  # the signal waiting is handled in the first turn of the drain
    released = [t for t, what, _d in rig.io.events if what == "release vip"]
    assert released and released[0] - stopping < 5.0


def test_stopping_waits_for_a_hung_down_script_no_longer_than_its_timeout(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1, drain=0.0, script_timeout=4.0), scripts_wait=True)
    rig.run_for(0.1)
    stopping = rig.now
    rig.engine.shut_down()
    assert rig.now - stopping == pytest.approx(4.0 + 5.0)  # SCRIPT_DRAIN_SLACK
    assert [what for _t, what, _d in rig.io.events if what == "release vip"] == ["release vip"]


# ---- the VIP on another interface than the adverts (vip_interface) ---------------------------

SERVICE = "svc0"
SERVICE_MAC = bytes.fromhex("020000000099")
SERVICE_VIP = IPv4Address("192.168.1.100")


def service_lan(io: FakeIO) -> None:
    io.add_interface(SERVICE, 3, SERVICE_MAC.hex(), "192.168.1.1/24")


def on_service_lan(folder: Path, vhid: int, **options: Any) -> Settings:
    """A group advertising on eth0 (the cluster LAN) whose VIP is on svc0 (the service LAN)."""
    return Settings(interface="eth0", vhid=vhid, addr=SERVICE_VIP, password=Secret(KEY),
                    vip_interface=SERVICE, upscript=Path(UP), downscript=Path(DOWN),
                    state_dir=folder / "run", persist_dir=folder / "lib", **options)


def arp_senders(frames: list[bytes]) -> list[tuple[bytes, IPv4Address]]:
    """(source MAC, sender IP) of each gratuitous ARP among ``frames``."""
    return [(f[6:12], IPv4Address(f[28:32])) for f in frames if f[12:14] == b"\x08\x06"]


def test_gratuitous_arp_goes_out_on_the_vip_interface_and_the_adverts_on_the_engine_s(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, on_service_lan(tmp_path, 1), group(tmp_path, 2), world=service_lan)
    rig.all_masters()
    rig.run_for(1.0)  # the up scripts have ended: ARP was held back until then
    [port] = rig.io.vip_ports
    assert isinstance(port, FakeVipPort) and port.ifname == SERVICE
    assert port.sent and set(arp_senders(port.sent)) == {(SERVICE_MAC, SERVICE_VIP)}
    assert len(arp_senders(port.sent)) == len(port.sent)  # nothing but ARP on the VIP's LAN
    assert rig.io.link is not None
    eth0_mac = rig.io.interfaces["eth0"].mac
    assert set(arp_senders(rig.io.link.sent)) == {(eth0_mac, vip(2))}  # vhid 2's VIP is on eth0
    assert {v for _t, v, _s in rig.adverts_sent()} == {1, 2}  # every advert on the engine's


def test_stopping_releases_the_vip_from_the_vip_interface_and_closes_its_port(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, on_service_lan(tmp_path, 1), world=service_lan)
    rig.all_masters()
    rig.io.add_address(SERVICE_VIP, ifname=SERVICE)  # what the up script did
    rig.io.released.clear()
    assert rig.engine.shut_down() == 0
    assert rig.io.released == [(SERVICE, SERVICE_VIP)]
    assert not rig.io.interfaces[SERVICE].has(SERVICE_VIP)
    assert rig.io.vip_ports[0].closed
    assert rig.io.happened("close vip port") == [("close vip port", SERVICE)]


def test_a_master_bows_out_when_the_vip_interface_loses_carrier_and_the_engine_s_still_counts(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, on_service_lan(tmp_path, 1, track_interface=("eth7",)),
              world=lambda io: (service_lan(io), io.add_interface("eth7", 4, "020000000007",
                                                                   "172.16.0.1/24")))
    assert rig.health(1).interfaces == ["eth7", SERVICE]  # the VIP's own tracked too
    rig.all_masters()
    rig.io.set_carrier(False, SERVICE)
    lost = rig.now
    rig.turn()
    assert rig.state(1) is State.BACKUP and not rig.engine.groups[1].host.healthy
    assert rig.bow_outs(1) == [lost]
    assert "svc0" in (request(rig, cmd="status")["why"] or "")
    rig.io.set_carrier(True, SERVICE)
    rig.turn()
    assert rig.engine.groups[1].host.healthy
    rig.io.set_carrier(False)  # the adverts' own interface: the engine's netlink monitor
    rig.turn()
    assert rig.state(1) is State.INIT


# ---- health: tracked interfaces and check scripts ----------------------------------------------

CHECK = ("/usr/local/bin/check", "--quick")


def test_each_group_s_checks_are_made_from_its_own_options_and_closed_at_its_stop(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1, track_script=(CHECK,), track_interface=("eth0",)),
              group(tmp_path, 2))
    assert (rig.health(1).scripts, rig.health(1).interfaces) == ([list(CHECK)], ["eth0"])
    assert not rig.health(2).active and not rig.health(2).started
    rig.turn()
    assert rig.health(1).started and rig.health(1).reads == 1  # the loop watches it
    checks = rig.health(1)
    rig.engine.shut_down()
    assert checks.closed


def test_an_unhealthy_verdict_reaches_only_its_own_group(tmp_path: Path) -> None:
    rig = Rig(tmp_path, *(group(tmp_path, v, track_script=(CHECK,)) for v in (1, 2, 3)))
    rig.all_masters()
    rig.health(2).scripts_pass(False)
    failed = rig.now
    rig.turn()
    assert [rig.state(v) for v in (1, 2, 3)] == [State.MASTER, State.BACKUP, State.MASTER]
    assert [rig.engine.groups[v].host.healthy for v in (1, 2, 3)] == [True, False, True]
    assert (rig.bow_outs(1), rig.bow_outs(2), rig.bow_outs(3)) == ([], [failed], [])
    status = request(rig, cmd="status")
    assert [g["healthy"] for g in status["groups"]] == [True, False, True]
    assert "check script fails" in status["groups"][1]["why"]


def test_a_failing_check_is_acted_on_the_moment_it_wakes_the_loop(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1, track_script=(CHECK,)))
    rig.all_masters()
    rig.run_for(0.2)
    fails_at = rig.now + 0.37  # between two adverts: no timer would wake the loop then
    assert rig.engine.groups[1].next_deadline() != pytest.approx(fails_at)
    rig.io.clock.at(fails_at, lambda: rig.health(1).scripts_pass(False))
    rig.run_until(lambda: rig.state(1) is State.BACKUP, within=5.0)
    assert rig.bow_outs(1) == [fails_at]
    assert rig.now == fails_at


def test_an_unhealthy_backup_does_not_preempt_and_preempts_once_healthy(tmp_path: Path) -> None:
    rig = Rig(tmp_path, group(tmp_path, 1, preempt=True, track_script=(CHECK,)))
    rig.health(1).scripts_pass(False)
    rig.turn()
    assert not rig.engine.groups[1].host.healthy
    rig.peer_advertises(1, every=1.0, times=30, advskew=100)  # a worse master than us
    rig.run_for(10.0)
    assert rig.state(1) is State.BACKUP
    rig.health(1).scripts_pass(True)
    rig.run_until(lambda: rig.state(1) is State.MASTER, within=3.0)
