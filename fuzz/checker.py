"""Invariants of one VirtualHost, checked after every call the fuzzer makes on it.

The checker watches a host only from outside: the actions each call returns, ``state``,
``draining``, ``next_deadline()``, the counters, and ``wire.inspect`` run on the same packet with
the host's own settings.  It keeps two models of its own:

* the VIP as the I/O shell holds it (``daemon.py``): ``RunScript(UP)`` adds it, ``RunScript(DOWN)``
  removes it, the VIP starts absent, and ``vip_lost`` means someone else removed it.
  ``StartDrain`` keeps the VIP (only ARP for it stops) until the ``EndDrain`` that comes with the
  down script (or, on a takeover during the drain, with no script: the VIP stays).  So the VIP
  is held exactly when the host is MASTER or draining; a MASTER without it, or a BACKUP or INIT
  host that holds it outside a drain, is a violation.
* the replay check's view: the newest counter accepted or sent, and the last 256 accepted.  An
  authenticated advert whose counter is not newer than the newest must not be acted on (no
  action at all, or one ``Dropped(STALE)``); one of the last 256 accepted must be dropped STALE;
  a newer one must not be.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from itertools import pairwise
from typing import NamedTuple

from carpd.core import wire
from carpd.core.election import (
    RECENT_COUNTERS,
    TRANSITION_BURST,
    TRANSITIONS_PER_SECOND,
    Action,
    Dropped,
    EndDrain,
    RunScript,
    Script,
    SendAdvert,
    StartDrain,
    State,
    Transition,
    VirtualHost,
)

EPSILON = 1e-6
ALLOWED_TRANSITIONS = {
    (State.INIT, State.BACKUP), (State.BACKUP, State.MASTER), (State.MASTER, State.BACKUP),
    (State.MASTER, State.INIT), (State.BACKUP, State.INIT), (State.INIT, State.INIT),
}
"""INIT -> INIT is stop() on a host whose carrier is down: logged, harmless."""
SILENT_REJECTS = {wire.Reject.OWN, wire.Reject.NOT_CARP, wire.Reject.OTHER_VHID}


class Invariant(enum.Enum):
    NO_EXCEPTION = "no call raises"
    TRANSITIONS_ONLY = "state changes only through Transitions (old = previous, new = current)"
    TRANSITION_KIND = "only INIT->BACKUP, BACKUP<->MASTER, ->INIT"
    MASTER_HOLDS_VIP = "MASTER only with the VIP up (shell model)"
    VIP_RELEASED = "not MASTER and not draining: VIP down (shell model)"
    DRAIN_AGREES = "draining exactly between StartDrain and EndDrain"
    SCRIPTS_ON_TRANSITIONS = "up script only on becoming MASTER, down only on leaving it"
    DEADLINE_FUTURE = "next_deadline() is None or >= now; > now after handle_timer(now)"
    DEADLINE_ARMED = "MASTER advertises within an interval, BACKUP watches master-down"
    COUNTERS_GROW = "accepted, sent and every rejected counter never decrease"
    SENT_MATCHES = "sent grows by the number of SendAdvert actions"
    ADVERT_SHAPE = "adverts only from a MASTER, our vhid and timing; 255/255 only leaving MASTER"
    COUNTS_UP = "every advert sent is newer than any counter accepted or sent"
    DROP_ALONE = "a dropped frame has no other effect (no state change; timers kept unless "\
        "rate-limited)"
    REJECT_MATCHES = "a frame wire.inspect rejects is counted under that reason"
    ACCEPT_COUNTED = "every frame is counted once: accepted or one reject reason"
    NOT_NEWER_IGNORED = "an advert not newer than the newest is never acted on (but one from the "\
        "master a takeover on master-down followed, inside the counters the takeover skipped)"
    MISSED_TAKEN = "an advert inside the counters a takeover skipped, from the master followed, " \
        "never seen before, is not dropped STALE"
    RECENT_STALE = "a replay of one of the last 256 accepted counters is dropped STALE"
    NEWER_NOT_STALE = "an advert newer than the newest is never dropped STALE"
    RATE_LIMIT = "adverts cause at most 4 transitions at once, 2 a second after (a bucket)"
    WIRE_ROUND_TRIP = "an accepted advert re-encodes to the bytes received"
    STRIP_PREFIX = "strip_ethernet returns None or a prefix of the frame's payload"


@dataclass
class Violation:
    invariant: Invariant
    host: str
    call: str
    now: float
    detail: str


class Snapshot(NamedTuple):
    """What a call may change, taken before it (a tuple: taken a million times a run)."""

    state: State
    deadline: float | None
    accepted: int
    sent: int
    rejected: dict[wire.Reject, int]
    draining: bool


def snapshot(vh: VirtualHost) -> Snapshot:
    return Snapshot(vh.state, vh.next_deadline(), vh.accepted, vh.sent, dict(vh.rejected),
                    vh.draining)


@dataclass
class Skipped:
    """The counters a takeover on master-down skipped past (``low``, the newest then, to
    ``high``, the takeover advert's), and the master it followed: its adverts there count."""

    master: IPv4Address
    low: int
    high: int


@dataclass
class HostChecker:
    """One host under test, the models kept beside it, and what went wrong."""

    name: str
    vh: VirtualHost
    report: Callable[[Violation], None]
    vip_up: bool = False
    draining: bool = False
    newest: int | None = None
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_COUNTERS))
    transition_budget: float = float(TRANSITION_BURST)
    budget_at: float = 0.0
    transitions: Counter[str] = field(default_factory=Counter)
    _keepalive: bool = False
    missed: Skipped | None = None
    _expect: wire.Expect = field(init=False)

    def __post_init__(self) -> None:
        p = self.vh.params
        self._expect = wire.Expect(p.vhid, p.key, p.vip, p.source, p.group)

    # ---- calls --------------------------------------------------------------------------------

    def call(self, name: str, now: float, run: Callable[[], list[Action]]) -> list[Action]:
        """Run one operation on the host and check every invariant that applies to it."""
        before = snapshot(self.vh)
        followed, newest = self.vh.master, self.newest
        actions = self._run(name, now, run)
        if actions is not None:
            self._check_all(name, now, before, actions)
            if name == "handle_timer":
                self._model_takeover(followed.address if followed else None, newest, actions)
        return actions or []

    def _model_takeover(self, followed: IPv4Address | None, newest: int | None,
                        actions: list[Action]) -> None:
        took_over = any(isinstance(a, Transition) and a.new is State.MASTER
                        and a.reason.startswith("master down timer expired") for a in actions)
        if not took_over:
            return
        sent = [a.advert.counter for a in actions if isinstance(a, SendAdvert)]
        p = self.vh.params
        self.missed = None
        if followed is not None and newest is not None and sent and p.replay_check \
                and not p.ucarp_counter:
            self.missed = Skipped(followed, newest, sent[0])

    def receive(self, packet: bytes, now: float) -> tuple[list[Action], str]:
        """Deliver one packet; also returns what happened to it ("accepted" or a reject)."""
        verdict = self._inspect(packet, now)
        before = snapshot(self.vh)
        self._keepalive = False
        actions = self._run("receive", now, lambda: self.vh.receive(packet, now))
        if actions is None:
            return [], "exception"
        # The replay model first: an answer the host sends counts past the counter it accepted.
        if verdict is not None:
            self._check_receive(packet, verdict, before, actions, now)
        self._check_all("receive", now, before, actions)
        return actions, self._outcome(before)

    def _run(self, name: str, now: float, run: Callable[[], list[Action]]) -> list[Action] | None:
        if name == "vip_lost":
            self.vip_up = False  # someone else deleted it: that is what the call reports
        try:
            return run()
        except Exception as error:
            self._fail(Invariant.NO_EXCEPTION, name, now, f"{type(error).__name__}: {error}")
            return None

    def _outcome(self, before: Snapshot) -> str:
        grown = _grown(before.rejected, self.vh.rejected)
        if grown:
            return grown[-1].name
        if self.vh.accepted == before.accepted:
            return "not counted"
        if before.state is State.INIT:
            return "accepted in INIT (ignored)"
        return "accepted, not newer (keep-alive)" if self._keepalive else "accepted"

    def _inspect(self, packet: bytes, now: float) -> wire.Received | wire.Reject | None:
        try:
            verdict = wire.inspect(packet, self._expect)
        except Exception as error:
            self._fail(Invariant.NO_EXCEPTION, "wire.inspect", now, repr(error))
            return None
        if isinstance(verdict, wire.Received):
            self._check_round_trip(packet, verdict, now)
        return verdict

    def _fail(self, invariant: Invariant, call: str, now: float, detail: str) -> None:
        self.report(Violation(invariant, self.name, call, now, detail))

    def _check(self, ok: bool, invariant: Invariant, call: str, now: float,
               detail: Callable[[], str]) -> None:
        if not ok:
            self._fail(invariant, call, now, detail())

    # ---- after every call ---------------------------------------------------------------------

    def _check_all(self, call: str, now: float, before: Snapshot, actions: list[Action]) -> None:
        self._check_transitions(call, now, before, actions)
        self._apply_vip_model(call, now, before, actions)
        self._check_deadline(call, now)
        self._check_counters(call, now, before, actions)
        self._check_adverts(call, now, before, actions)
        self._check_drop_alone(call, now, before, actions)

    def _check_transitions(self, call: str, now: float, before: Snapshot,
                           actions: list[Action]) -> None:
        chain = [a for a in actions if isinstance(a, Transition)]
        state = self.vh.state
        linked = all(a.new is b.old for a, b in pairwise(chain))
        ok = (state is before.state if not chain
              else chain[0].old is before.state and chain[-1].new is state and linked)
        self._check(ok, Invariant.TRANSITIONS_ONLY, call, now,
                    lambda: f"{before.state.name} -> {state.name} with {chain}")
        for t in chain:
            self.transitions[f"{t.old.name} -> {t.new.name}"] += 1
            if (t.old, t.new) not in ALLOWED_TRANSITIONS:
                self._fail(Invariant.TRANSITION_KIND, call, now, repr(t))

    def _apply_vip_model(self, call: str, now: float, before: Snapshot,
                         actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, RunScript):
                self._check_script(action.script, call, now, actions)
                self.vip_up = action.script is Script.UP
            elif isinstance(action, StartDrain):
                self.draining = True
            elif isinstance(action, EndDrain):
                self.draining = False
        master = self.vh.state is State.MASTER
        self._check(not master or self.vip_up, Invariant.MASTER_HOLDS_VIP, call, now,
                    lambda: f"MASTER (was {before.state.name}) after {actions}")
        self._check(master or self.draining or not self.vip_up, Invariant.VIP_RELEASED, call,
                    now, lambda: f"{self.vh.state.name} holds the VIP after {actions}")
        self._check(self.draining == self.vh.draining, Invariant.DRAIN_AGREES, call, now,
                    lambda: f"draining={self.vh.draining}, actions said {self.draining}")

    def _check_script(self, script: Script, call: str, now: float,
                      actions: list[Action]) -> None:
        chain = [a for a in actions if isinstance(a, Transition)]
        if script is Script.UP:
            ok = call == "vip_lost" or any(t.new is State.MASTER for t in chain)
        else:
            released = any(t.old is State.MASTER for t in chain)
            ok = call == "start" or EndDrain() in actions or (
                released and StartDrain() not in actions)
        self._check(ok, Invariant.SCRIPTS_ON_TRANSITIONS, call, now,
                    lambda: f"{script.name} script with {actions}")

    def _check_deadline(self, call: str, now: float) -> None:
        deadline = self.vh.next_deadline()
        if call == "handle_timer":
            ok = deadline is None or deadline > now
        else:
            ok = deadline is None or deadline >= now
        self._check(ok, Invariant.DEADLINE_FUTURE, call, now, lambda: f"deadline {deadline}")
        p, state = self.vh.params, self.vh.state
        ok = True
        if state is State.MASTER:
            ok = deadline is not None and deadline <= now + p.advert_interval + EPSILON
        elif state is State.BACKUP:
            ok = deadline is not None and deadline <= now + p.master_down_interval + EPSILON
        self._check(ok, Invariant.DEADLINE_ARMED, call, now,
                    lambda: f"{state.name} with deadline {deadline}")

    def _check_counters(self, call: str, now: float, before: Snapshot,
                        actions: list[Action]) -> None:
        vh = self.vh
        shrunk = _shrunk(before.rejected, vh.rejected)
        ok = vh.accepted >= before.accepted and vh.sent >= before.sent and not shrunk
        self._check(ok, Invariant.COUNTERS_GROW, call, now,
                    lambda: f"accepted {before.accepted}->{vh.accepted}, sent {before.sent}->"
                            f"{vh.sent}, shrunk {shrunk}")
        adverts = sum(isinstance(a, SendAdvert) for a in actions)
        self._check(vh.sent - before.sent == adverts, Invariant.SENT_MATCHES, call, now,
                    lambda: f"sent +{vh.sent - before.sent}, {adverts} SendAdvert")

    def _check_adverts(self, call: str, now: float, before: Snapshot,
                       actions: list[Action]) -> None:
        p = self.vh.params
        was_master = before.state is State.MASTER
        for action in actions:
            if not isinstance(action, SendAdvert):
                continue
            a = action.advert
            # Receivers read 255/255 as a bow-out and take over at once: it may only come
            # from a host that is leaving MASTER, whatever its own timing.
            if (a.advbase, a.advskew) == (wire.BOW_OUT, wire.BOW_OUT):
                timing = was_master and self.vh.state is not State.MASTER
            else:
                timing = (a.advbase, a.advskew) == (p.advbase, p.advskew)
            ok = a.vhid == p.vhid and (was_master or self.vh.state is State.MASTER) and timing
            if not ok:
                self._fail(Invariant.ADVERT_SHAPE, call, now,
                           f"{a} from {before.state.name} -> {self.vh.state.name}")
            self._check_counts_up(a.counter, call, now)

    def _check_counts_up(self, counter: int, call: str, now: float) -> None:
        if self.vh.params.ucarp_counter:
            return
        newest = self.newest
        ok = newest is None or wire.counter_newer(counter, newest)
        self._check(ok, Invariant.COUNTS_UP, call, now,
                    lambda: f"sent counter {counter}, newest {newest}")
        self.newest = counter

    def _check_drop_alone(self, call: str, now: float, before: Snapshot,
                          actions: list[Action]) -> None:
        if not any(isinstance(a, Dropped) for a in actions):
            return
        # A rate-limited advert was authenticated and accepted: it may re-arm master-down.
        limited = any(
            isinstance(a, Dropped) and a.reason is wire.Reject.RATE_LIMITED for a in actions)
        ok = (call == "receive" and len(actions) == 1 and self.vh.state is before.state
              and (limited or self.vh.next_deadline() == before.deadline))
        self._check(ok, Invariant.DROP_ALONE, call, now, lambda: repr(actions))

    # ---- after receive ------------------------------------------------------------------------

    def _check_receive(self, packet: bytes, verdict: wire.Received | wire.Reject,
                       before: Snapshot, actions: list[Action], now: float) -> None:
        if isinstance(verdict, wire.Reject):
            self._check_rejected(packet, verdict, before, actions, now)
            return
        vh = self.vh
        counted = vh.accepted - before.accepted + vh.rejected[wire.Reject.STALE] - \
            before.rejected.get(wire.Reject.STALE, 0)
        self._check(counted == 1, Invariant.ACCEPT_COUNTED, "receive", now,
                    lambda: f"authenticated frame counted {counted} times")
        if before.state is State.INIT:
            self._follow_init(verdict)
            return
        self._check_freshness(verdict, before, actions, now)
        self._check_rate_limit(actions, now)

    def _check_rejected(self, packet: bytes, reason: wire.Reject, before: Snapshot,
                        actions: list[Action], now: float) -> None:
        vh = self.vh
        ok = (vh.rejected[reason] == before.rejected.get(reason, 0) + 1
              and vh.accepted == before.accepted)
        self._check(ok, Invariant.REJECT_MATCHES, "receive", now,
                    lambda: f"inspect says {reason.name}, host counted {dict(vh.rejected)}")
        source = IPv4Address(packet[12:16]) if len(packet) >= 16 else None
        expected = [] if reason in SILENT_REJECTS else [Dropped(reason, source)]
        unchanged = vh.state is before.state and vh.next_deadline() == before.deadline
        self._check(actions == expected and unchanged, Invariant.DROP_ALONE, "receive", now,
                    lambda: f"{reason.name}: {actions}, {before.state.name}->{vh.state.name}")

    def _follow_init(self, received: wire.Received) -> None:
        """In INIT an advert is acted on only during our own hand-over, which the model does not
        follow: nothing is judged there, and the model takes the host's newest counter after
        it (a newer one also ends the takeover's skipped counters, as a newer advert does)."""
        newest = self.vh.newest
        if newest != self.newest:
            self.newest = newest
            self.missed = None
            self.recent.append(received.advert.counter)

    def _check_freshness(self, received: wire.Received, before: Snapshot,
                         actions: list[Action], now: float) -> None:
        counter, vh = received.advert.counter, self.vh
        stale = [Dropped(wire.Reject.STALE, received.source)]
        checked = vh.params.replay_check and self.newest is not None
        newer = not checked or wire.counter_newer(counter, self.newest or 0)
        missed = not newer and self._in_missed(received)
        if missed:
            self._check(actions != stale, Invariant.MISSED_TAKEN, "receive", now,
                        lambda: f"counter {counter} from {received.source}, {self.missed}")
        elif not newer:
            ok = actions in ([], stale) and vh.state is before.state
            self._check(ok, Invariant.NOT_NEWER_IGNORED, "receive", now,
                        lambda: f"counter {counter} (newest {self.newest}) gave {actions}")
            if counter in self.recent:
                self._check(actions == stale, Invariant.RECENT_STALE, "receive", now,
                            lambda: f"counter {counter} accepted again: {actions}")
        else:
            self._check(actions != stale, Invariant.NEWER_NOT_STALE, "receive", now,
                        lambda: f"counter {counter} newer than {self.newest}, dropped")
        if vh.accepted > before.accepted:
            self.recent.append(counter)
            self._keepalive = not newer and not missed
            if newer:
                self.newest = counter
                self.missed = None
            elif missed and self.missed is not None:
                self.missed.low = counter

    def _in_missed(self, received: wire.Received) -> bool:
        gap, counter = self.missed, received.advert.counter
        return (gap is not None and received.source == gap.master and counter not in self.recent
                and wire.counter_newer(counter, gap.low) and wire.counter_newer(gap.high, counter))

    def _check_rate_limit(self, actions: list[Action], now: float) -> None:
        """At most TRANSITION_BURST transitions at once, refilled at TRANSITIONS_PER_SECOND: in
        any window of t seconds, at most BURST + RATE * t (checked as a leaky bucket)."""
        moved = sum(isinstance(a, Transition) for a in actions)
        if not moved:
            return
        refilled = self.transition_budget + (now - self.budget_at) * TRANSITIONS_PER_SECOND
        self.transition_budget = min(float(TRANSITION_BURST), refilled) - moved
        self.budget_at = now
        self._check(self.transition_budget >= -EPSILON, Invariant.RATE_LIMIT, "receive", now,
                    lambda: f"{moved} more transitions with {self.transition_budget + moved:.2f}"
                            " left in the window")

    def _check_round_trip(self, packet: bytes, received: wire.Received, now: float) -> None:
        ihl = (packet[0] & 0x0F) * 4
        carp = packet[ihl : ihl + wire.CARP_HEADER_LEN]
        p = self.vh.params
        again = wire.encode_carp(received.advert, p.key, p.vip)
        # The checksum may be written as 0x0000 or 0xFFFF (one's complement has two zeros).
        same = again[:6] + again[8:] == carp[:6] + carp[8:]
        self._check(same and wire.decode_carp(again) == received.advert,
                    Invariant.WIRE_ROUND_TRIP, "wire.inspect", now,
                    lambda: f"{carp.hex()} re-encoded as {again.hex()}")


def _grown(before: dict[wire.Reject, int], after: dict[wire.Reject, int]) -> list[wire.Reject]:
    """The reasons counted since ``before`` (Counter keys keep their order and are never
    removed, so the common case -- nothing counted -- is one comparison of two lists)."""
    if list(after.values()) == list(before.values()):
        return []
    return [r for r, n in after.items() if n > before.get(r, 0)]


def _shrunk(before: dict[wire.Reject, int], after: dict[wire.Reject, int]) -> list[str]:
    if list(after.values()) == list(before.values()):
        return []
    return [r.name for r, n in before.items() if after.get(r, 0) < n]
