"""A short slice of the core fuzzer (``make fuzz`` runs 1,000,000 frames), and proof that its
invariant checker catches hosts that break each invariant, so a clean slice means something."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address

import pytest

from carpd.core import wire
from carpd.core.election import (
    Action,
    Dropped,
    Freshness,
    Params,
    RunScript,
    Script,
    State,
    VirtualHost,
)
from fuzz.checker import HostChecker, Invariant, Violation
from fuzz.fuzz_core import (
    DEFAULT_SEED,
    GROUP,
    HOSTS,
    KEY,
    SLOWEST,
    VIP,
    Report,
    run,
    table,
)

SLICE_FRAMES = 20_000
BROKEN_FRAMES = 1_500


def test_a_slice_of_the_fuzzer_finds_no_violation() -> None:
    report = run(SLICE_FRAMES, DEFAULT_SEED)
    assert report.violation_count == 0, table(report)
    # The slice reaches every part of the core it claims to: each generator, the deep receive
    # checks, the replay check, the rate limit, both directions of the election.
    assert len(report.generators) == 8
    for outcome in ("accepted", "BAD_HMAC", "STALE", "RATE_LIMITED", "BAD_CHECKSUM", "SHORT"):
        assert report.outcomes[outcome] > 0, outcome
    assert report.transitions["BACKUP -> MASTER"] > 100
    assert report.transitions["MASTER -> BACKUP"] > 100
    assert report.calls["handle_timer"] > SLICE_FRAMES


def test_the_fuzzer_is_reproducible_from_its_seed() -> None:
    first, again = run(2_000, 7), run(2_000, 7)
    assert (first.outcomes, first.transitions) == (again.outcomes, again.transitions)
    assert run(2_000, 8).outcomes != first.outcomes


def test_hosts_at_the_slowest_timing_send_nothing_that_reads_as_a_bow_out() -> None:
    # Found by this fuzzer: at 255/255 (now refused) every advert read as a bow-out.
    report = run(4_000, DEFAULT_SEED, hosts={**HOSTS, **SLOWEST})
    assert report.violation_count == 0, table(report)


def test_the_bow_outs_timing_is_refused_as_a_setting() -> None:
    with pytest.raises(ValueError, match="bow-out"):
        Params(vhid=1, key=b"k", vip=IPv4Address("10.0.0.100"), source=IPv4Address("10.0.0.1"),
               advbase=255, advskew=255)


# ---- the checker is not vacuous: hosts broken on purpose --------------------------------------


class MovesSilently(VirtualHost):
    """Every 50th packet, a BACKUP becomes MASTER without a Transition (and without its VIP)."""

    def receive(self, packet: bytes, now: float) -> list[Action]:
        actions = super().receive(packet, now)
        if self.state is State.BACKUP and (self.accepted + sum(self.rejected.values())) % 50 == 0:
            self.state = State.MASTER
        return actions


class ForgetsTheUpScript(VirtualHost):
    def handle_timer(self, now: float) -> list[Action]:
        return [a for a in super().handle_timer(now) if a != RunScript(Script.UP)]


class KeepsTheVipOnStepDown(VirtualHost):
    def receive(self, packet: bytes, now: float) -> list[Action]:
        return [a for a in super().receive(packet, now) if a != RunScript(Script.DOWN)]


class DeadlineInThePast(VirtualHost):
    def next_deadline(self) -> float | None:
        deadline = super().next_deadline()
        return None if deadline is None else deadline - 10.0


class ForgetsWhatItAccepted(VirtualHost):
    def receive(self, packet: bytes, now: float) -> list[Action]:
        actions = super().receive(packet, now)
        if self.accepted % 100 == 99:
            self.accepted -= 50
        return actions


class NoReplayCheck(VirtualHost):
    """Claims replay_check in its Params, but acts on every authenticated advert."""

    def _freshness(self, received: wire.Received) -> Freshness:
        return Freshness.NEW


class RaisesOnBowOut(VirtualHost):
    def receive(self, packet: bytes, now: float) -> list[Action]:
        if len(packet) >= 26 and packet[22] == packet[25] == wire.BOW_OUT:
            raise ValueError("bow-out")
        return super().receive(packet, now)


class CountsDown(VirtualHost):
    """Sends its adverts with counters going down: receivers would drop them as replays."""

    def _next_counter(self) -> int:
        counter = super()._next_counter()
        self._newest = self._counter = (counter - 2) % wire.COUNTER_MODULUS
        return (counter - 2) % wire.COUNTER_MODULUS


class NoRateLimit(VirtualHost):
    def _transition_allowed(self, source: object, now: float) -> list[Action] | None:
        return None


class TakesOverOnAReplay(VirtualHost):
    def receive(self, packet: bytes, now: float) -> list[Action]:
        actions = super().receive(packet, now)
        if self.state is State.BACKUP and any(
                isinstance(a, Dropped) and a.reason is wire.Reject.STALE for a in actions):
            actions += self._take_over("a replay", now)
        return actions


class AdvertisesAsBackup(VirtualHost):
    def handle_timer(self, now: float) -> list[Action]:
        actions = super().handle_timer(now)
        if self.state is State.BACKUP:
            actions.append(self._advert(self.params.advbase, self.params.advskew))
        return actions


class RunsUpAgainOnEveryAdvert(VirtualHost):
    """As MASTER, runs the up script again for every advert it hears (no Transition)."""

    def receive(self, packet: bytes, now: float) -> list[Action]:
        actions = super().receive(packet, now)
        if self.state is State.MASTER and not actions:
            actions.append(RunScript(Script.UP))
        return actions


class MiscountsRejects(VirtualHost):
    def _drop(self, reason: wire.Reject, packet: bytes) -> list[Action]:
        return super()._drop(wire.Reject.BAD_HMAC if reason is wire.Reject.BAD_TTL else reason,
                             packet)


BROKEN: list[tuple[type[VirtualHost], Invariant]] = [
    (MovesSilently, Invariant.TRANSITIONS_ONLY),
    (ForgetsTheUpScript, Invariant.MASTER_HOLDS_VIP),
    (KeepsTheVipOnStepDown, Invariant.VIP_RELEASED),
    (DeadlineInThePast, Invariant.DEADLINE_FUTURE),
    (ForgetsWhatItAccepted, Invariant.COUNTERS_GROW),
    (NoReplayCheck, Invariant.NOT_NEWER_IGNORED),
    (RaisesOnBowOut, Invariant.NO_EXCEPTION),
    (CountsDown, Invariant.COUNTS_UP),
    (NoRateLimit, Invariant.RATE_LIMIT),
    (TakesOverOnAReplay, Invariant.DROP_ALONE),
    (AdvertisesAsBackup, Invariant.ADVERT_SHAPE),
    (RunsUpAgainOnEveryAdvert, Invariant.SCRIPTS_ON_TRANSITIONS),
    (MiscountsRejects, Invariant.REJECT_MATCHES),
]


def broken_run(host_class: type[VirtualHost]) -> Report:
    factory: Callable[[Params, Callable[[], int]], VirtualHost] = host_class
    return run(BROKEN_FRAMES, DEFAULT_SEED, factory)


@pytest.mark.parametrize(("host_class", "invariant"), BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_the_checker_catches_a_host_that_breaks_an_invariant(
        host_class: type[VirtualHost], invariant: Invariant) -> None:
    report = broken_run(host_class)
    assert report.violations[invariant] > 0, table(report)


def test_the_fuzzer_exits_non_zero_on_a_violation(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from fuzz import fuzz_core

    monkeypatch.setattr(fuzz_core, "run", lambda frames, seed: broken_run(MovesSilently))
    assert fuzz_core.main(["--frames", "10"]) == 1
    assert "TRANSITIONS_ONLY" in capsys.readouterr().out
    monkeypatch.undo()
    assert fuzz_core.main(["--frames", "500"]) == 0


def test_the_checker_takes_the_newest_counter_a_host_heard_in_its_own_hand_over() -> None:
    """Stopped while draining, a host still remembers the counters it hears (INIT).  The
    checker does not judge that, but must know the newest after it: it reported the host's
    later, right, STALE drop as a violation (6 false ones at make fuzz's seed)."""
    violations: list[Violation] = []
    params = Params(source=IPv4Address("10.99.0.1"), vhid=1, key=KEY, vip=VIP, group=GROUP,
                    drain=2.0)
    vh = VirtualHost(params, iter(range(1000, 2000)).__next__)
    checker = HostChecker("drain", vh, violations.append)
    checker.call("start", 0.0, lambda: vh.start(0.0))
    taken = vh.next_deadline() or 0.0
    checker.call("handle_timer", taken, lambda: vh.handle_timer(taken))
    assert vh.state is State.MASTER
    checker.call("stop", taken + 0.1, lambda: vh.stop(taken + 0.1))
    assert vh.state is State.INIT and vh.draining

    def advert(counter: int) -> bytes:
        return wire.encode_packet(wire.Advert(1, 1, 0, counter), KEY, VIP,
                                  IPv4Address("10.99.0.2"), 1, GROUP)

    checker.receive(advert(500_000), taken + 0.2)
    assert vh.newest == 500_000
    checker.call("start", taken + 0.3, lambda: vh.start(taken + 0.3))
    actions, outcome = checker.receive(advert(400_000), taken + 0.4)
    assert outcome == "STALE"
    assert violations == []
