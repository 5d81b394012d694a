"""The CARP election of one virtual host, with no I/O.

A :class:`VirtualHost` is fed packets, link events, operator requests and ``now`` (seconds on a
monotonic clock) and answers with a list of actions for the I/O shell to carry out.  It never
reads a clock, opens a socket or sleeps; :meth:`VirtualHost.next_deadline` tells the shell when
to call :meth:`VirtualHost.handle_timer` next.  Names follow OpenBSD's ``ip_carp.c``.
"""

from __future__ import annotations

import enum
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from carpd.core import drainsignal, wire

TICKS_PER_SECOND = 256
REANNOUNCE_AFTER_DRAIN_SLACK = 0.2
RECENT_COUNTERS = 256
"""How many accepted counters are remembered to spot an exact replay."""
RANDOM_COUNTER_DISTANCE = 1 << 32
"""A counter this far behind the newest cannot come from a counting sequence (2**32 adverts is
136 years at one a second): it is a lone ucarp MASTER's fresh random counter."""
VIP_LOSSES_BEFORE_HANDOVER = 3
VIP_LOSS_WINDOW = 10.0
"""The VIP deleted under a MASTER this often within this many seconds: hand over instead."""
STEP_DOWN_HOLD = 3.0
"""After a step-down (SIGUSR2, a VIP that keeps going), stay BACKUP at least this long."""
MAX_COUNTER_SKIP = 256
"""A MASTER that drops a not-newer advert skips its counter ahead by 1 to this many."""
ANSWER_SPACING = 0.5
"""A MASTER answers other masters' adverts at once, at most once per this part of its interval."""
TRANSITION_BURST = 4
TRANSITIONS_PER_SECOND = 2.0
"""Adverts may cause at most TRANSITION_BURST transitions at once, refilled at this rate."""
LAST_RESORT_RETAKE_INTERVALS = 2
"""An unhealthy MASTER that bowed out takes the VIP back after this many advert intervals if
nobody has taken it (an unhealthy peer waits one)."""
LAST_RESORT_DRAIN_SLACK = 0.1
LAST_RESORT_ADVSKEW = 255
"""An unhealthy MASTER advertises this advskew (its advbase unchanged): it holds the VIP only as
a last resort, and a healthy node that hears it takes over (preempt or not)."""


class State(enum.Enum):
    """Where a virtual host stands in the election."""

    INIT = "INIT"
    """Not started, or the link is down: sends nothing, holds nothing."""
    BACKUP = "BACKUP"
    """Listens; takes over when the master-down timer expires or the master bows out."""
    MASTER = "MASTER"
    """Holds the VIP and advertises every interval."""


class Script(enum.Enum):
    UP = "up"
    DOWN = "down"


class Timer(enum.Enum):
    """The timers of a virtual host, in the order :meth:`VirtualHost.handle_timer` runs them."""

    DRAIN = "drain"
    """A planned release is over: the VIP goes (down script)."""
    REANNOUNCE = "reannounce"
    """Gratuitous ARP again while MASTER."""
    SIGNAL = "signal"
    """The old MASTER's next "still draining" signal (and connection count)."""
    FORWARD = "forward"
    """Stop passing a drained master's connections back to it: it fell silent."""
    MASTER_DOWN = "master down"
    """A BACKUP has not heard the master for long enough: take over."""
    ADVERT = "advert"
    """A MASTER's next advertisement."""


@dataclass(frozen=True)
class SendAdvert:
    advert: wire.Advert


@dataclass(frozen=True)
class SendGratuitousArp:
    """Announce the VIP (and the addresses the up action added) from our MAC."""


@dataclass(frozen=True)
class RunScript:
    script: Script


@dataclass(frozen=True)
class Transition:
    old: State
    new: State
    reason: str


@dataclass(frozen=True)
class Dropped:
    """A packet failed a receive check; the shell logs it at a rate limit."""

    reason: wire.Reject
    source: IPv4Address | None


@dataclass(frozen=True)
class StartDrain:
    """Released by plan: keep the VIP, but stop answering ARP for it, until :class:`EndDrain`.
    ``count``: note the TCP connections to the VIP now; the drain waits for them to close
    (:class:`CountConnections`, :meth:`VirtualHost.connections_left`)."""

    count: bool = False


@dataclass(frozen=True)
class CountConnections:
    """Tell :meth:`VirtualHost.connections_left` how many of the connections noted at
    :class:`StartDrain` are still open."""


@dataclass(frozen=True)
class SendDrainSignal:
    """Send ``data`` (a :mod:`carpd.core.drainsignal` datagram) to ``to``'s port
    :data:`carpd.core.drainsignal.PORT`, from our own address."""

    data: bytes
    to: IPv4Address


@dataclass(frozen=True)
class EndDrain:
    """Lift the drain's ARP rule now.  The drain is over and the VIP has gone: at once when no
    down script runs for it, else (with ``Params.await_scripts``) when the core has been told
    that the down script finished."""


@dataclass(frozen=True)
class ForwardStrays:
    """We took over from a master that bowed out and now drains: pass segments of its
    connections that reach us on to it, until :class:`StopForwarding` (its "drained" signal,
    or its silence: :mod:`carpd.core.drainsignal`)."""

    to: IPv4Address
    mac: bytes | None = None
    """The source MAC of the advert that handed over (the old MASTER's NIC)."""
    handover: int = 0
    """That advert's counter: the old MASTER's signals name it."""


@dataclass(frozen=True)
class StopForwarding:
    pass


Action = (SendAdvert | SendGratuitousArp | RunScript | Transition | Dropped | StartDrain
          | EndDrain | ForwardStrays | StopForwarding | CountConnections | SendDrainSignal)


@dataclass(frozen=True)
class Params:
    """The settings of one virtual host (already validated by :mod:`carpd.config`)."""

    vhid: int
    key: bytes
    vip: IPv4Address
    source: IPv4Address
    advbase: int = 1
    advskew: int = 0
    deadratio: int = 3
    preempt: bool = False
    neutral: bool = False
    group: IPv4Address = wire.DEFAULT_GROUP
    drain: float = 0.0
    """After a planned release, keep the VIP this long (without answering ARP for it)."""
    drain_connections: float = 0.0
    """And then on until the TCP connections to the VIP open at the hand-over have closed,
    at most this long from the hand-over (0: ``drain`` alone)."""
    reannounce: float = 0.0
    """While MASTER, gratuitous ARP every this many seconds (0: only on the usual occasions)."""
    replay_check: bool = True
    """Accept an advert only if its counter is newer than the newest accepted or sent."""
    ucarp_counter: bool = False
    """Draw counters as ucarp does (fresh random until a peer is heard, then the peer's + 1):
    only for replaying ucarp's captured sessions frame for frame."""
    await_scripts: bool = False
    """The shell reports the end of every script it was asked to run
    (:meth:`VirtualHost.script_finished`): gratuitous ARP then waits for the up script (it
    adds the VIP), and the drain's ARP rule for the down script (it removes it).  Without it
    scripts count as done at once (a model of the election alone, ucarp's replays)."""

    def __post_init__(self) -> None:
        # carpd.config checks these for people; here they keep the timers finite and non-zero.
        if not (1 <= self.vhid <= 255 and 0 <= self.advbase <= 255 and 0 <= self.advskew <= 255):
            raise ValueError("vhid must be 1..255, advbase and advskew 0..255")
        if self.interval_ticks == 0:
            raise ValueError("advbase and advskew cannot both be 0")
        if self.advbase == wire.BOW_OUT and self.advskew == wire.BOW_OUT:
            raise ValueError("advbase 255 with advskew 255 is a bow-out")
        if self.deadratio < 1:
            raise ValueError("deadratio must be at least 1")

    @property
    def interval_ticks(self) -> int:
        return self.advbase * TICKS_PER_SECOND + self.advskew

    @property
    def advert_interval(self) -> float:
        return self.interval_ticks / TICKS_PER_SECOND

    @property
    def master_down_ticks(self) -> int:
        return self.advbase * self.deadratio * TICKS_PER_SECOND + self.advskew

    @property
    def master_down_interval(self) -> float:
        return self.master_down_ticks / TICKS_PER_SECOND


def tie_break_key(address: IPv4Address) -> int:
    """ucarp compares addresses as host-order integers: on little-endian CPUs the last octet counts
    most.  Lower wins.  Comparing numerically would disagree with ucarp and make masters flap."""
    return int.from_bytes(address.packed, "little")


@dataclass
class Peer:
    """The master we hear, for status reports."""

    address: IPv4Address
    advbase: int
    advskew: int
    since: float


@dataclass
class MissedGap:
    """We took over from ``master`` after hearing nothing from it for master-down, and our
    counter jumped from ``low`` (the newest we had) to ``high``.  That master may live on (a
    lossy link) and count in between: its adverts there are as genuine to us as they were
    before the jump.  Each is taken once, only forward, only from its address; the gap closes
    when we accept any newer counter, or the next takeover replaces it."""

    master: IPv4Address
    low: int
    high: int

    def holds(self, received: wire.Received) -> bool:
        counter = received.advert.counter
        return (received.source == self.master and wire.counter_newer(counter, self.low)
                and wire.counter_newer(self.high, counter))


class Freshness(enum.Enum):
    """How an authenticated advert's counter relates to what this host has seen."""

    NEW = "newer than any accepted or sent: acted on"
    KEEPALIVE = "a lone ucarp MASTER's random counter: only shows that the master lives"
    STALE = "not newer: a replay, dropped"
    MISSED = ("from the master we took over from, between its newest we had and our takeover's "
              "jump: it lived on and counted while we missed it, acted on")


@dataclass
class TokenBucket:
    """At most ``burst`` events at once, refilled at ``rate`` per second."""

    burst: float
    rate: float
    tokens: float = 0.0
    at: float | None = None

    def take(self, now: float) -> bool:
        if self.at is None:
            self.tokens = self.burst
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class Handover:
    """The old MASTER's side of a planned hand-over: from its bow-out (or farewell) until its
    drain is over, and the "still draining" signals to the new MASTER."""

    floor: float
    """Not over before this (``drain``: requests in flight)."""
    until: float
    """Over at this time at the latest (``max(drain, drain_connections)``)."""
    counting: bool
    """Waiting for the connections open at the hand-over to close."""
    connections: int | None = None
    to: IPv4Address | None = None
    """The new MASTER, once heard (a carpd node: only those pass connections back)."""
    finished: bool = False


@dataclass
class VirtualHost:
    """One vhid on one interface."""

    params: Params
    random_counter: Callable[[], int]
    state: State = State.INIT
    since: float = 0.0
    link_up: bool = True
    demoted_until: float | None = None
    """While set, never take over: ``inf`` until promoted, a time for a temporary step-down."""
    demoted_since: float | None = None
    healthy: bool = True
    """The node's own checks pass (see :meth:`set_health`)."""
    master: Peer | None = None
    accepted: int = 0
    rejected: Counter[wire.Reject] = field(default_factory=Counter)
    sent: int = 0
    transitions: int = 0
    """State changes since start (INIT -> BACKUP included)."""
    _running: bool = False
    _counter: int | None = None
    """The counter of our last advert (ucarp style: the last accepted one)."""
    _newest: int | None = None
    """The newest counter accepted or sent, for the replay check."""
    _counter_skip: int = 0
    _missed: MissedGap | None = None
    """The counters a master we stopped hearing may have sent meanwhile (see _missed_counters)."""
    _farewell: int | None = None
    """The counter of the advert we sent as we stepped down to a preferred master."""
    _answered_at: float | None = None
    _vip_losses: list[float] = field(default_factory=list)
    _recent: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_COUNTERS))
    _transitions: TokenBucket = field(
        default_factory=lambda: TokenBucket(TRANSITION_BURST, TRANSITIONS_PER_SECOND))
    _timers: dict[Timer, float] = field(default_factory=dict)
    """Armed timers (only :meth:`_arm` changes them)."""
    _garp_at_advert: int | None = None
    _up_pending: int = 0
    """Up scripts asked for and not reported finished (with ``await_scripts``)."""
    _lift_after_down: bool = False
    """The drain's ARP rule goes when the down script asked for with it has finished."""
    signal_rejected: Counter[drainsignal.Reject] = field(default_factory=Counter)
    """Drain signals not taken, by reason."""
    _handover: Handover | None = None
    _last_sent: int = 0
    """The counter of our last advert (the hand-over a drain signal names)."""
    _expect: wire.Expect = field(init=False)
    _watch: drainsignal.Watch = field(init=False)
    _beacon: drainsignal.Beacon = field(init=False)

    def __post_init__(self) -> None:
        p = self.params
        self._expect = wire.Expect(p.vhid, p.key, p.vip, p.source, p.group)
        key = drainsignal.derive_key(p.key)
        self._watch = drainsignal.Watch(p.vhid, p.vip, key)
        self._beacon = drainsignal.Beacon(p.vhid, p.vip, p.source, key)

    # ---- inputs ---------------------------------------------------------------------------

    def start(self, now: float, carrier: bool | None = None,
              demoted: bool = False) -> list[Action]:
        """Every node starts as BACKUP, preempt or not (INIT until carrier if ``carrier`` is
        False); ``demoted``: a demotion recorded before (it lasts until :meth:`promote`)."""
        if carrier is not None:
            self.link_up = carrier
        if demoted:
            self._demote(now)  # not running yet: only recorded
        self._running = True
        actions: list[Action] = []
        if self.link_up:
            actions += self._set_state(State.BACKUP, "started", now)
        if not self.params.neutral:
            actions.append(RunScript(Script.DOWN))
        return self._emit(actions)

    def receive(self, packet: bytes, now: float, sender_drains: bool = False,
                sender_mac: bytes | None = None) -> list[Action]:
        """An IPv4 packet from the interface.  ``sender_drains``: it came from a carpd node (its
        own MAC, not ucarp's ``00:00:5e:00:00:VHID``), which drains when preempted and passes
        a drained master's connections back: a hand-over between two such nodes is planned.
        ``sender_mac``: the frame's source MAC (where the old MASTER's segments go)."""
        result = wire.inspect(packet, self._expect)
        if isinstance(result, wire.Reject):
            return self._drop(result, packet)
        if self.state is State.INIT:
            self.accepted += 1
            if self._handover is None or self._freshness(result) is not Freshness.NEW:
                return []
            self._remember(result.advert.counter, Freshness.NEW)
            return self._emit(self._heard_during_handover(result, sender_drains, now))
        freshness = self._freshness(result)
        if freshness is Freshness.STALE:
            self._skip_counter()
            return self._drop(wire.Reject.STALE, packet)
        self.accepted += 1
        self._remember(result.advert.counter, freshness)
        if freshness is Freshness.KEEPALIVE:
            self._setrun(now)
            return []
        if self.state is State.BACKUP:
            actions = self._backup_hears(result, now, sender_drains, sender_mac)
        else:
            actions = self._master_hears(result, now, sender_drains)
        # after the election: the advert that preempted us names whom our signals go to
        return self._emit(actions + self._heard_during_handover(result, sender_drains, now))

    def drain_signal(self, data: bytes, source: IPv4Address, now: float) -> list[Action]:
        """A datagram on :data:`carpd.core.drainsignal.PORT` from ``source``: while we pass an old
        MASTER's connections on, its "still draining" keeps us at it, its "drained" ends it
        (and, as MASTER, we announce the VIP again: the old MASTER has let go of it)."""
        if not self._watch.forwarding:  # before the digest: a flood costs little
            self.signal_rejected[drainsignal.Reject.NOT_FORWARDING] += 1
            return []
        taken = self._watch.receive(data, source, now)
        if isinstance(taken, drainsignal.Reject):
            self.signal_rejected[taken] += 1
            return []
        if self._watch.forwarding:
            self._arm(Timer.FORWARD, self._watch.next_deadline())
            return []
        self._arm(Timer.FORWARD, None)
        actions: list[Action] = [StopForwarding()]
        if self.state is State.MASTER:
            actions.append(SendGratuitousArp())
        return self._emit(actions)

    def connections_left(self, count: int, now: float) -> list[Action]:
        """The shell's answer to :class:`CountConnections`: ``count`` of the TCP connections to
        the VIP open at the hand-over are open still.  At none the drain ends (not before
        ``drain``)."""
        h = self._handover
        if h is None or not h.counting:
            return []
        h.connections = count
        if count > 0:
            return []
        h.counting = False
        self._shorten_handover(max(now, h.floor))
        return self.handle_timer(now)

    def handle_timer(self, now: float, lead: float = 0.0) -> list[Action]:
        """Run the timers due at ``now``.  A MASTER also runs those due up to ``lead`` later,
        each as at its deadline (the shell's loop wakes late by a millisecond or two, and an
        advert early is harmless where a late one is not; the next interval is counted from
        the deadline, so the schedule never moves).  A master-down timer never runs early."""
        actions: list[Action] = []
        for timer in Timer:  # each looked at after the ones before it ran
            at = self._timers.get(timer)
            if at is None:
                continue
            early = lead if self.state is State.MASTER and timer is not Timer.MASTER_DOWN \
                else 0.0
            if now + early >= at:
                actions += self._expired(timer, max(now, at))
        return self._emit(actions)

    def _expired(self, timer: Timer, now: float) -> list[Action]:
        if timer is Timer.DRAIN:
            return self._end_drain(now)
        if timer is Timer.REANNOUNCE:
            return self._reannounce(now)
        if timer is Timer.SIGNAL:
            return self._signal(now)
        if timer is Timer.FORWARD:
            return self._silence(now)
        if timer is Timer.MASTER_DOWN:
            return self._master_down(now)
        return self._send_ad(now)

    def next_deadline(self) -> float | None:
        return min(self._timers.values(), default=None)

    def script_finished(self, script: Script, now: float) -> list[Action]:
        """The shell ran a script it was asked for (or skipped it for a later one): with
        ``await_scripts``, the announcement that waited for the up script goes out now (the
        up action may have added more addresses), and the drain's ARP rule goes once the down
        script has removed the VIP."""
        actions: list[Action] = []
        if script is Script.DOWN and self._lift_after_down:
            self._lift_after_down = False
            actions.append(EndDrain())
        if script is Script.UP:
            self._up_pending = max(0, self._up_pending - 1)
            if self.state is State.MASTER:
                actions.append(SendGratuitousArp())
        return actions

    def _emit(self, actions: list[Action]) -> list[Action]:
        """What the shell is to do now, of ``actions``: with ``await_scripts``, gratuitous ARP
        waits while an up script runs, and lifting the ARP rule waits for the down script
        asked for with it (see :meth:`script_finished`)."""
        if not self.params.await_scripts:
            return actions
        down = any(isinstance(a, RunScript) and a.script is Script.DOWN for a in actions)
        now_actions: list[Action] = []
        for action in actions:
            if isinstance(action, RunScript) and action.script is Script.UP:
                self._up_pending += 1
            elif isinstance(action, SendGratuitousArp) and self._up_pending:
                continue
            elif isinstance(action, EndDrain) and down:
                self._lift_after_down = True
                continue
            now_actions.append(action)
        return now_actions

    def link_changed(self, up: bool, now: float) -> list[Action]:
        """Carrier lost: stop at once (down script if MASTER).  Carrier back: rejoin as BACKUP."""
        if up == self.link_up:
            return []
        self.link_up = up
        if not self._running:  # before start() or after stop(): only remember the carrier
            return []
        if not up:
            return self._emit(self._set_state(State.INIT, "carrier lost", now)
                              + self._end_drain(now))
        return self._emit(self._set_state(State.BACKUP, "carrier back", now))

    def demote(self, now: float, until: float = float("inf")) -> list[Action]:
        """Step down with a bow-out advert so a peer takes over at once; stay BACKUP until
        ``until`` (for ever by default: until :meth:`promote`).  A demotion already running for
        longer is kept: SIGUSR2 must not cut short an operator's demotion."""
        return self._emit(self._demote(now, until))

    def step_down(self, now: float) -> list[Action]:
        """SIGUSR2: hand over as a demotion does, and stay BACKUP for :attr:`step_down_hold`
        only (an operator's demotion running already is kept)."""
        return self._emit(self._demote(now, now + self.step_down_hold))

    def _demote(self, now: float, until: float = float("inf")) -> list[Action]:
        if not self._demoted(now):
            self.demoted_since = now
        if not self._demoted(now) or until > (self.demoted_until or 0.0):
            self.demoted_until = until
        actions: list[Action] = []
        if self.state is State.MASTER:
            actions.append(self._advert(wire.BOW_OUT, wire.BOW_OUT))
            actions += self._set_state(State.BACKUP, "demoted: bowing out", now, planned=True)
        return actions

    def vip_lost(self, now: float) -> list[Action]:
        """Someone else deleted the VIP while we are MASTER (an admin, another network tool):
        run the up action again (the shell announces once it has finished); when it keeps
        going, step down so a peer that can keep it takes over."""
        if self.state is not State.MASTER:
            return []
        self._vip_losses = [t for t in self._vip_losses if now - t < VIP_LOSS_WINDOW]
        self._vip_losses.append(now)
        if len(self._vip_losses) >= VIP_LOSSES_BEFORE_HANDOVER:
            self._vip_losses.clear()
            return self._emit(self._demote(now, until=now + self.step_down_hold))
        return self._emit([RunScript(Script.UP)])

    @property
    def step_down_hold(self) -> float:
        """After a step-down, stay BACKUP at least this long (ucarp is deaf for 3 s)."""
        return max(STEP_DOWN_HOLD, self.params.master_down_interval)

    def promote(self, now: float) -> list[Action]:
        """End a demotion: the election runs normally again."""
        was_demoted = self._demoted(now)
        self.demoted_until = None
        self.demoted_since = None
        if was_demoted and self.state is State.BACKUP:
            self._setrun(now)
        return []

    def set_health(self, healthy: bool, now: float) -> list[Action]:
        """The node's checks changed their verdict.  An unhealthy MASTER bows out (a healthy
        peer takes over at once, preempt or not) and drains; an unhealthy node then never
        takes the VIP from a live master, and takes it only as a last resort: when its
        master-down timer (one advert interval longer than a healthy node's) expires."""
        if healthy == self.healthy:
            return []
        self.healthy = healthy
        master_down = self._timers.get(Timer.MASTER_DOWN)
        if master_down is not None:  # a healthy peer's timer must run out first
            shift = self.params.advert_interval
            self._arm(Timer.MASTER_DOWN, master_down + (-shift if healthy else shift))
        if healthy or self.state is not State.MASTER:
            return []
        bow_out: list[Action] = [self._advert(wire.BOW_OUT, wire.BOW_OUT)]
        actions = bow_out + self._set_state(State.BACKUP, "unhealthy: bowing out", now,
                                            planned=True)
        self._hold_as_last_resort(now)
        return self._emit(actions)

    def _hold_as_last_resort(self, now: float) -> None:
        """After an unhealthy bow-out nobody may take over (a lone node, or every peer
        unhealthy: those wait one interval).  Take the VIP back after two intervals, and keep
        it meanwhile (the drain lasts until then), so that it is never on no node."""
        retake = now + LAST_RESORT_RETAKE_INTERVALS * self.params.advert_interval
        self._arm(Timer.MASTER_DOWN, retake)
        drain = self._timers.get(Timer.DRAIN)
        if drain is not None:
            self._arm(Timer.DRAIN, max(drain, retake + LAST_RESORT_DRAIN_SLACK))
            h = self._handover
            if h is not None:
                h.floor = max(h.floor, retake + LAST_RESORT_DRAIN_SLACK)
                h.until = max(h.until, h.floor)

    def status(self, now: float) -> dict[str, Any]:
        """What the core knows, as of ``now`` (times on the core's monotonic clock): a
        demotion or step-down that has run out is reported as over."""
        demoted = self._demoted(now)
        until = self.demoted_until if demoted else None
        return {
            "state": self.state.value, "since": self.since, "demoted": demoted,
            "demoted_since": self.demoted_since if demoted else None,
            "demoted_until": None if until is None or until == float("inf") else until,
            "healthy": self.healthy, "last_resort": self.last_resort,
            "master": None if self.master is None else str(self.master.address),
            "master_since": None if self.master is None else self.master.since,
            "sent": self.sent, "accepted": self.accepted, "transitions": self.transitions,
            "rejected": {reason.name.lower(): n for reason, n in self.rejected.items()},
            "drain": self._drain_status(now), "forwarding": self._forwarding_status(),
        }

    def _drain_status(self, now: float) -> dict[str, Any] | None:
        """Our side of a hand-over: connections still open of those at the hand-over (None:
        not counted), seconds left at most, the new MASTER told."""
        h = self._handover
        if h is None or h.finished:
            return None
        return {"connections": h.connections, "left": round(max(0.0, h.until - now), 3),
                "to": None if h.to is None else str(h.to)}

    def _forwarding_status(self) -> dict[str, Any] | None:
        """The old MASTER whose connections we pass on, and what its last signal said."""
        peer = self._watch.peer
        if not self._watch.forwarding or peer is None:
            return None
        last = self._watch.last
        return {"to": str(peer), "connections": None if last is None else last.connections,
                "left": None if last is None else last.left_ms / 1000}

    def demotion_in_force(self, now: float) -> bool:
        """A demotion (operator's or a temporary step-down) keeps this host BACKUP now."""
        return self._demoted(now)

    @property
    def last_resort(self) -> bool:
        """MASTER although unhealthy: no healthier node has taken the VIP."""
        return self.state is State.MASTER and not self.healthy

    def stop(self, now: float) -> list[Action]:
        """Shutting down: bow out if MASTER so a peer takes over at once, then release."""
        self._running = False
        if not self.draining:  # a hand-over of ours whose VIP we took back: over now
            self._finish_handover(now)
        if self.state is State.MASTER:
            bow_out: list[Action] = [self._advert(wire.BOW_OUT, wire.BOW_OUT)]
            reason = "shutting down: bowed out"
            return self._emit(bow_out + self._set_state(State.INIT, reason, now, planned=True))
        return self._emit(self._set_state(State.INIT, "shutting down", now))

    # ---- the election ---------------------------------------------------------------------

    # ---- the replay check ------------------------------------------------------------------

    def _freshness(self, received: wire.Received) -> Freshness:
        """ucarp's counters count up in a healthy cluster (each node adopts the last it heard,
        plus one), so anything not newer is a replay -- except from a lone ucarp MASTER, which
        draws a fresh random counter for every advert until it hears a peer: a never-seen
        counter far behind, from the master we hear, with its timing, only keeps it alive --
        and except the counters our last takeover skipped, from the master we took over from
        (:class:`MissedGap`): it may have lived on and counted while we missed it."""
        counter = received.advert.counter
        if not self.params.replay_check or self._newest is None:
            return Freshness.NEW
        if wire.counter_newer(counter, self._newest):
            return Freshness.NEW
        if self._missed is not None and self._missed.holds(received) \
                and counter not in self._recent:
            return Freshness.MISSED
        if counter not in self._recent and self._random_counter_of_master(received):
            return Freshness.KEEPALIVE
        if counter == self._farewell and counter not in self._recent \
                and self._timing_of_master(received):
            # Our farewell took the preferred master's next counter; if it was lost on the way,
            # that master's next advert carries the same one: it keeps us waiting, no more
            # (found on a lossy link by bench/lossy.py).
            return Freshness.KEEPALIVE
        return Freshness.STALE

    def _random_counter_of_master(self, received: wire.Received) -> bool:
        assert self._newest is not None
        return (self._timing_of_master(received) and wire.counter_behind(
            received.advert.counter, self._newest) > RANDOM_COUNTER_DISTANCE)

    def _timing_of_master(self, received: wire.Received) -> bool:
        """A BACKUP hears, from the master it follows, that master's usual advert."""
        advert, master = received.advert, self.master
        return (self.state is State.BACKUP and master is not None
                and master.address == received.source
                and (master.advbase, master.advskew) == (advert.advbase, advert.advskew)
                and not _is_bow_out(advert))

    def _remember(self, counter: int, freshness: Freshness) -> None:
        self._recent.append(counter)
        if freshness is Freshness.NEW:
            self._newest = counter
            self._farewell = None
            self._missed = None
        elif freshness is Freshness.MISSED and self._missed is not None:
            self._missed.low = counter
        if self.params.ucarp_counter:
            self._counter = counter

    def _skip_counter(self) -> None:
        """Two MASTERs that took over at the same instant send the same counters in step, and
        each drops the other's as not newer: a random skip ahead breaks the tie, so the one
        ahead is heard.  (A replay that provokes a skip costs nothing: no advert, no timer.)"""
        if self.state is State.MASTER and not self.params.ucarp_counter:
            self._counter_skip = 1 + self.random_counter() % MAX_COUNTER_SKIP

    def _transition_allowed(self, source: IPv4Address, now: float) -> list[Action] | None:
        """Adverts may move this host only a few times a second: a flood of them cannot flap
        the VIP or queue scripts without end.  None when allowed, else the drop to report."""
        if self._transitions.take(now):
            return None
        self.rejected[wire.Reject.RATE_LIMITED] += 1
        return [Dropped(wire.Reject.RATE_LIMITED, source)]

    # ---- the election ---------------------------------------------------------------------

    def _backup_hears(self, received: wire.Received, now: float,
                      sender_drains: bool, sender_mac: bytes | None = None) -> list[Action]:
        bowing_out = self._is_master_bowing_out(received)
        self._note_master(received, now)
        theirs = received.advert.interval_ticks
        if self._demoted(now):
            return self._keep_backup(now)
        if not self.healthy:
            return self._unhealthy_backup_hears(bowing_out, now)
        ours = self.params.interval_ticks
        if self.params.preempt and ours < theirs:
            reason = f"preempting slower master {received.source}"
        elif bowing_out:
            reason = f"master {received.source} is bowing out"
        elif _is_last_resort(received.advert) and ours < theirs:
            reason = f"master {received.source} holds the VIP only as a last resort (unhealthy)"
        else:
            return self._keep_backup(now)
        limited = self._transition_allowed(received.source, now)
        if limited is not None:
            return limited + self._keep_backup(now)
        # The master we take over from drains (it bowed out, or a carpd master we preempt):
        # pass its connections back to it.
        actions = self._take_over(reason, now)
        if bowing_out or sender_drains:
            actions += self._forward_strays(received.source, received.advert.counter,
                                            sender_mac, now)
        return actions

    def _unhealthy_backup_hears(self, bowing_out: bool, now: float) -> list[Action]:
        """Never take the VIP from a live master; when it bows out, give a healthy peer one
        advert interval to take over first (its advert re-arms our timer)."""
        if bowing_out:
            self._arm(Timer.MASTER_DOWN, now + self.params.advert_interval)
            return []
        return self._keep_backup(now)

    def _is_master_bowing_out(self, received: wire.Received) -> bool:
        """A bow-out is exactly advbase 255, advskew 255, from the master we have been hearing:
        only then may we take over at once, and pass its connections back to it."""
        return (_is_bow_out(received.advert) and self.master is not None
                and self.master.address == received.source)

    def _keep_backup(self, now: float) -> list[Action]:
        self._setrun(now)
        return []

    def _master_hears(self, received: wire.Received, now: float,
                      sender_drains: bool) -> list[Action]:
        theirs = received.advert.interval_ticks
        ours = self._interval_ticks()
        if theirs < ours or (theirs == ours and self._loses_tie_to(received.source)):
            limited = self._transition_allowed(received.source, now)
            if limited is not None:
                return limited
            self._note_master(received, now)
            # One more advert as we step down, as ucarp does: the preferred master hears that
            # there was another master and announces the VIP again (after a partition, our
            # gratuitous ARP may have moved the LAN's caches to us).
            farewell = self._advert(self.params.advbase, self._advskew())
            self._farewell = farewell.advert.counter
            actions: list[Action] = [farewell]
            reason = f"preferred master {received.source} advertised"
            # Preempted by a preferred carpd master (one back from maintenance, or healthy
            # again) is a planned hand-over: drain, while it passes our connections back to us.
            # Preempted by ucarp (which forwards nothing), or two equal masters meeting after a
            # partition: release at once.
            planned = sender_drains and theirs < ours
            return actions + self._set_state(State.BACKUP, reason, now, planned=planned)
        # Answer at once: our counter is now past theirs, so the other MASTER hears us (it drops
        # what is not newer) and steps down within one link delay, not one interval later.
        if not self.params.replay_check:  # as ucarp: announce, and again two adverts later
            self._garp_at_advert = self.sent + 2
            return [SendGratuitousArp()]
        self._garp_at_advert = self.sent + 3
        return [*self._answer(now), SendGratuitousArp()]

    def _answer(self, now: float) -> list[Action]:
        """As MASTER, advertise now to a less preferred master we heard, so that it hears us
        (our counter now past its own) within a link delay instead of at our next advert.  At
        most twice an interval."""
        if self.state is not State.MASTER or not self.params.replay_check:
            return []
        if self._answered_at is not None and now - self._answered_at < ANSWER_SPACING * \
                self.params.advert_interval:
            return []
        self._answered_at = now
        return [self._advert(self.params.advbase, self._advskew())]

    def _loses_tie_to(self, other: IPv4Address) -> bool:
        return tie_break_key(other) < tie_break_key(self.params.source)

    def _master_down(self, now: float) -> list[Action]:
        self._arm(Timer.MASTER_DOWN, None)
        if self._demoted(now):
            self._setrun(now)
            return []
        self.demoted_until = None
        self.demoted_since = None
        reason = "master down timer expired"
        if not self.healthy:
            reason += " (unhealthy: holding the VIP as a last resort)"
        followed, newest = self.master, self._newest
        self._counter_skip = self._missed_counters()
        actions = self._take_over(reason, now)
        self._missed = None
        if followed is not None and newest is not None:
            self._missed = MissedGap(followed.address, newest, self._last_sent)
        return actions

    def _missed_counters(self) -> int:
        """A master we stopped hearing may live on and count on (a lossy link): our takeover
        advert must carry a counter past every one it can have sent since, or it drops ours as
        a replay and neither hears the other until its next advert.  Since the last advert we
        heard, at most master-down (plus one interval while unhealthy) went by; in that time it
        sent at most one advert per interval and two answers, each at most a skip ahead."""
        if self.master is None or self._newest is None:
            return 0
        theirs = max(1, self.master.advbase * TICKS_PER_SECOND + self.master.advskew)
        waited = self.params.master_down_interval + self.params.advert_interval
        adverts = math.ceil(waited * TICKS_PER_SECOND / theirs) + 1
        return adverts * (1 + math.ceil(1 / ANSWER_SPACING)) * (1 + MAX_COUNTER_SKIP)

    def _take_over(self, reason: str, now: float) -> list[Action]:
        actions = self._end_drain(now, release=False) + self._set_state(State.MASTER, reason, now)
        return [*actions, SendGratuitousArp(), *self._send_ad(now)]

    def _send_ad(self, now: float) -> list[Action]:
        actions: list[Action] = [self._advert(self.params.advbase, self._advskew())]
        due = self._timers.get(Timer.ADVERT)
        # Counted from when it was due, not from when the loop got to it: a loop busy with
        # many groups must not make every interval longer (a late turn is not caught up).
        late = now - due if due is not None and 0 <= now - due < self.params.advert_interval \
            else 0.0
        self._setrun(now - late)
        if self._garp_at_advert is not None and self.sent >= self._garp_at_advert:
            self._garp_at_advert = None
            actions.append(SendGratuitousArp())
        return actions

    def _advert(self, advbase: int, advskew: int) -> SendAdvert:
        self.sent += 1
        self._last_sent = self._next_counter()
        return SendAdvert(wire.Advert(self.params.vhid, advbase, advskew, self._last_sent))

    def _next_counter(self) -> int:
        """Count up by one from a random start, and past the newest counter heard, so a cluster
        that changes masters keeps counting up (receivers drop what is not newer)."""
        if self.params.ucarp_counter:
            return self._next_ucarp_counter()
        ahead = 1 + self._counter_skip
        self._counter_skip = 0
        if self._counter is None:
            counter = self.random_counter() % wire.COUNTER_MODULUS
        else:
            counter = (self._counter + ahead) % wire.COUNTER_MODULUS
        if self._newest is not None and not wire.counter_newer(counter, self._newest):
            counter = (self._newest + ahead) % wire.COUNTER_MODULUS
        self._counter = counter
        self._newest = counter
        return counter

    def _next_ucarp_counter(self) -> int:
        """ucarp's counter: random until a peer's advert was accepted, then theirs + 1, + 2, ..."""
        if self._counter is None:
            return self.random_counter() % wire.COUNTER_MODULUS
        self._counter = (self._counter + 1) % wire.COUNTER_MODULUS
        return self._counter

    # ---- state and timers -----------------------------------------------------------------

    @property
    def newest(self) -> int | None:
        """The newest counter accepted or sent: the replay check drops what is not newer."""
        return self._newest

    @property
    def draining(self) -> bool:
        return Timer.DRAIN in self._timers

    def end_drain(self, now: float) -> list[Action]:
        """Finish a drain now (a second stop signal)."""
        return self._emit(self._end_drain(now))

    def _end_drain(self, now: float, release: bool = True) -> list[Action]:
        """Finish a drain (its timer, a second stop signal, carrier loss, or a takeover, which
        keeps the VIP: ``release=False``).  A takeover does not end the hand-over: the peer we
        handed over to goes on passing our connections back while they last (its own drain
        may send them to us still), until our signal says "drained"."""
        if Timer.DRAIN not in self._timers:
            return []
        self._arm(Timer.DRAIN, None)
        h = self._handover
        if release:
            self._finish_handover(now)
        elif h is not None and h.to is None and not h.counting:
            self._finish_handover(now)  # nobody to tell, nothing to wait for
        down: list[Action] = [RunScript(Script.DOWN)] if release else []
        return [*down, EndDrain()]

    # ---- the hand-over's signal (carpd.core.drainsignal) ---------------------------------------

    @property
    def signalling(self) -> bool:
        """The old MASTER's side of a hand-over still runs (drain, "drained" repeats)."""
        return self._handover is not None

    def _begin_handover(self, now: float) -> list[Action]:
        """Leaving MASTER by plan: drain for ``drain`` s, or on until the connections open now
        have closed (at most ``drain_connections`` s); the bow-out or farewell just sent is
        the hand-over our signals name."""
        p = self.params
        counting = p.drain_connections > 0
        until = now + max(p.drain, p.drain_connections)
        self._handover = Handover(now + p.drain, until, counting)
        self._beacon.start(self._last_sent, now)
        self._arm(Timer.DRAIN, until)
        self._arm(Timer.SIGNAL, now if counting else None)
        return [StartDrain(count=counting)]

    def _heard_during_handover(self, received: wire.Received, sender_drains: bool,
                               now: float) -> list[Action]:
        """An advert while our hand-over runs: a carpd node's names the new MASTER our signals
        go to (at once); a ucarp node's means nobody passes our connections back, so waiting
        for them is pointless: the drain is ``drain`` long."""
        h = self._handover
        if h is None or h.finished or _is_bow_out(received.advert):
            return []
        if sender_drains:
            if h.to != received.source:
                h.to = received.source
                self._arm(Timer.SIGNAL, now)
            return []
        if h.counting:
            h.counting = False
            self._shorten_handover(max(now, h.floor))
        return []

    def _shorten_handover(self, until: float) -> None:
        h = self._handover
        assert h is not None
        h.until = min(h.until, until)
        drain = self._timers.get(Timer.DRAIN)
        if drain is not None:
            self._arm(Timer.DRAIN, min(drain, h.until))
        if h.to is not None or h.counting:
            self._arm(Timer.SIGNAL, min(self._timers.get(Timer.SIGNAL, h.until), h.until))

    def _finish_handover(self, now: float) -> None:
        """Say "drained" (a few times); with nobody to say it to, it is over now."""
        h = self._handover
        if h is None or h.finished:
            return
        h.finished, h.counting = True, False
        if h.to is None:
            self._handover = None
            self._arm(Timer.SIGNAL, None)
            return
        self._beacon.finish(now)
        self._arm(Timer.SIGNAL, now)

    def _signal(self, now: float) -> list[Action]:
        h = self._handover
        if h is None:
            self._arm(Timer.SIGNAL, None)
            return []
        actions: list[Action] = [CountConnections()] if h.counting else []
        if not h.finished and not self.draining and now >= h.until:
            self._finish_handover(now)  # we took the VIP back; its time is up
        left = max(0.0, h.until - now)
        data = self._beacon.due(now, h.connections or 0, left)
        if data is not None and h.to is not None:
            actions.append(SendDrainSignal(data, h.to))
        self._arm(Timer.SIGNAL, self._next_signal(h, now))
        return actions

    def _next_signal(self, h: Handover, now: float) -> float | None:
        """When :meth:`_signal` runs next: the beacon's next datagram, and the end of a
        hand-over whose VIP we took back; nothing while there is nobody to tell and nothing
        to count."""
        deadline = self._beacon.next_deadline()
        if deadline is None:  # "drained" said as often as it is
            self._handover = None
            return None
        if h.finished:
            return deadline
        if h.to is None and not h.counting:
            return None
        return min(deadline, h.until) if h.until > now else deadline

    def _forward_strays(self, to: IPv4Address, handover: int, mac: bytes | None,
                        now: float) -> list[Action]:
        """A master bows out (or we preempt a carpd one): pass its connections back to it for
        as long as its signals say it drains (:data:`carpd.core.drainsignal.SILENCE` s without)."""
        self._watch.start(to, handover, now)
        self._arm(Timer.FORWARD, self._watch.next_deadline())
        return [ForwardStrays(to, mac, handover)]

    def _silence(self, now: float) -> list[Action]:
        """The old MASTER fell silent (it died, or its link): stop passing connections on."""
        if self._watch.handle_timer(now):
            self._arm(Timer.FORWARD, None)
            return [StopForwarding()]
        self._arm(Timer.FORWARD, self._watch.next_deadline())
        return []

    def _reannounce(self, now: float) -> list[Action]:
        self._arm(Timer.REANNOUNCE,
                  now + self.params.reannounce if self.params.reannounce > 0 else None)
        return [SendGratuitousArp()]

    def _set_state(
        self, new: State, reason: str, now: float, planned: bool = False
    ) -> list[Action]:
        """The one place that changes state (and arms its timers, :meth:`_setrun`) and runs the
        scripts.  Leaving MASTER by plan (bow-out on stop or demotion) drains first, if
        configured.  INIT to INIT is no transition: nothing changes."""
        old = self.state
        if old is new is State.INIT:
            return []
        self.state = new
        self.since = now
        self.transitions += 1
        if new is not State.BACKUP:
            self.master = None  # only a BACKUP has a master to report
        self._setrun(now)
        if new is State.MASTER:
            self._garp_at_advert = self.sent + 3
        # Forwarding an older hand-over's connections goes on whatever our state: it ends
        # with that old MASTER's drain (its signal), not with ours.
        actions: list[Action] = [Transition(old, new, reason)]
        self._arm(Timer.REANNOUNCE, None)
        p = self.params
        if new is State.MASTER:
            actions.append(RunScript(Script.UP))
            self._schedule_reannounce(now)
        elif old is State.MASTER and planned and (p.drain > 0 or p.drain_connections > 0):
            actions += self._begin_handover(now)
        elif old is State.MASTER:
            actions.append(RunScript(Script.DOWN))
        return actions

    def _schedule_reannounce(self, now: float) -> None:
        """Announce again once a draining peer has let go of the VIP, then periodically."""
        if self.params.drain > 0:
            self._arm(Timer.REANNOUNCE, now + self.params.drain + REANNOUNCE_AFTER_DRAIN_SLACK)
        elif self.params.reannounce > 0:
            self._arm(Timer.REANNOUNCE, now + self.params.reannounce)

    def _setrun(self, now: float) -> None:
        """Arm the timers the state runs on (OpenBSD's ``carp_setrun``): a MASTER advertises
        every interval; a BACKUP waits for the master-down interval (one advert interval
        longer while unhealthy, so a healthy peer takes over first); INIT waits for neither."""
        advert = master_down = None
        if self.state is State.MASTER:
            advert = now + self.params.advert_interval
        elif self.state is State.BACKUP:
            extra = 0.0 if self.healthy else self.params.advert_interval
            master_down = now + self.params.master_down_interval + extra
        self._arm(Timer.ADVERT, advert)
        self._arm(Timer.MASTER_DOWN, master_down)

    def _arm(self, timer: Timer, at: float | None) -> None:
        """The one place that arms (``at``) or stops (None) a timer."""
        if at is None:
            self._timers.pop(timer, None)
        else:
            self._timers[timer] = at

    def _advskew(self) -> int:
        return self.params.advskew if self.healthy else LAST_RESORT_ADVSKEW

    def _interval_ticks(self) -> int:
        """Our advert interval as peers see it (an unhealthy node's advskew is 255)."""
        return self.params.advbase * TICKS_PER_SECOND + self._advskew()

    def _demoted(self, now: float) -> bool:
        return self.demoted_until is not None and now < self.demoted_until

    def _note_master(self, received: wire.Received, now: float) -> None:
        advert = received.advert
        if self.master is None or self.master.address != received.source:
            self.master = Peer(received.source, advert.advbase, advert.advskew, now)
        else:
            self.master.advbase, self.master.advskew = advert.advbase, advert.advskew

    def _drop(self, reason: wire.Reject, packet: bytes) -> list[Action]:
        self.rejected[reason] += 1
        if reason in (wire.Reject.OWN, wire.Reject.NOT_CARP, wire.Reject.OTHER_VHID):
            return []
        source = IPv4Address(packet[12:16]) if len(packet) >= 16 else None
        return [Dropped(reason, source)]


def _is_bow_out(advert: wire.Advert) -> bool:
    return advert.advbase == wire.BOW_OUT and advert.advskew == wire.BOW_OUT


def _is_last_resort(advert: wire.Advert) -> bool:
    return advert.advskew == LAST_RESORT_ADVSKEW and advert.advbase != wire.BOW_OUT
