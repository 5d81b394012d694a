"""The CARP election of one virtual host, with no I/O.

A :class:`VirtualHost` is fed packets, link events, operator requests and ``now`` (seconds on a
monotonic clock) and answers with a list of actions for the I/O shell to carry out.  It never
reads a clock, opens a socket or sleeps; :meth:`VirtualHost.next_deadline` tells the shell when
to call :meth:`VirtualHost.handle_timer` next.  Names follow OpenBSD's ``ip_carp.c``.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from carpd import wire

TICKS_PER_SECOND = 256
REANNOUNCE_AFTER_DRAIN_SLACK = 0.2
FORWARD_AFTER_DRAIN_SLACK = 1.0
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
    """Released by plan: keep the VIP, but stop answering ARP for it, until :class:`EndDrain`."""


@dataclass(frozen=True)
class EndDrain:
    """The drain is over (a down script, if any, comes with it): the ARP rule may go once the
    VIP has gone."""


@dataclass(frozen=True)
class ForwardStrays:
    """We took over from a master that bowed out and now drains: pass segments of its
    connections that reach us on to it, until :class:`StopForwarding`."""

    to: IPv4Address


@dataclass(frozen=True)
class StopForwarding:
    pass


Action = (SendAdvert | SendGratuitousArp | RunScript | Transition | Dropped | StartDrain
          | EndDrain | ForwardStrays | StopForwarding)


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
    reannounce: float = 0.0
    """While MASTER, gratuitous ARP every this many seconds (0: only on the usual occasions)."""
    replay_check: bool = True
    """Accept an advert only if its counter is newer than the newest accepted or sent."""
    ucarp_counter: bool = False
    """Draw counters as ucarp does (fresh random until a peer is heard, then the peer's + 1):
    only for replaying ucarp's captured sessions frame for frame."""

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


class Freshness(enum.Enum):
    """How an authenticated advert's counter relates to what this host has seen."""

    NEW = "newer than any accepted or sent: acted on"
    KEEPALIVE = "a lone ucarp MASTER's random counter: only shows that the master lives"
    STALE = "not newer: a replay, dropped"


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
    _farewell: int | None = None
    """The counter of the advert we sent as we stepped down to a preferred master."""
    _answered_at: float | None = None
    _vip_losses: list[float] = field(default_factory=list)
    _recent: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_COUNTERS))
    _transitions: TokenBucket = field(
        default_factory=lambda: TokenBucket(TRANSITION_BURST, TRANSITIONS_PER_SECOND))
    _master_down_at: float | None = None
    _advert_at: float | None = None
    _garp_at_advert: int | None = None
    _drain_until: float | None = None
    _garp_at: float | None = None
    _forward_until: float | None = None
    _expect: wire.Expect = field(init=False)

    def __post_init__(self) -> None:
        p = self.params
        self._expect = wire.Expect(p.vhid, p.key, p.vip, p.source, p.group)

    # ---- inputs ---------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Every node starts as BACKUP, preempt or not (INIT until carrier if the link is down)."""
        self._running = True
        actions: list[Action] = []
        if self.link_up:
            actions += self._set_state(State.BACKUP, "started", now)
        if not self.params.neutral:
            actions.append(RunScript(Script.DOWN))
        return actions

    def receive(self, packet: bytes, now: float, sender_drains: bool = False) -> list[Action]:
        """An IPv4 packet from the interface.  ``sender_drains``: it came from a carpd node (its
        own MAC, not ucarp's ``00:00:5e:00:00:VHID``), which drains when preempted and passes
        a drained master's connections back: a hand-over between two such nodes is planned."""
        result = wire.inspect(packet, self._expect)
        if isinstance(result, wire.Reject):
            return self._drop(result, packet)
        if self.state is State.INIT:
            self.accepted += 1
            return []
        freshness = self._freshness(result)
        if freshness is Freshness.STALE:
            self._skip_counter()
            return self._drop(wire.Reject.STALE, packet)
        self.accepted += 1
        self._remember(result.advert.counter, freshness)
        if freshness is Freshness.KEEPALIVE:
            self._arm_master_down(now)
            return []
        if self.state is State.BACKUP:
            return self._backup_hears(result, now, sender_drains)
        return self._master_hears(result, now, sender_drains)

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self._drain_until is not None and now >= self._drain_until:
            actions += self.end_drain(now)
        if self._garp_at is not None and now >= self._garp_at:
            actions += self._reannounce(now)
        if self._forward_until is not None and now >= self._forward_until:
            actions += self._stop_forwarding()
        if self._master_down_at is not None and now >= self._master_down_at:
            actions += self._master_down(now)
        if self._advert_at is not None and now >= self._advert_at:
            actions += self._send_ad(now)
        return actions

    def next_deadline(self) -> float | None:
        timers = (self._master_down_at, self._advert_at, self._drain_until, self._garp_at,
                  self._forward_until)
        deadlines = [t for t in timers if t is not None]
        return min(deadlines, default=None)

    def link_changed(self, up: bool, now: float) -> list[Action]:
        """Carrier lost: stop at once (down script if MASTER).  Carrier back: rejoin as BACKUP."""
        if up == self.link_up:
            return []
        self.link_up = up
        if not self._running:  # before start() or after stop(): only remember the carrier
            return []
        if not up:
            return self._set_state(State.INIT, "carrier lost", now) + self.end_drain(now)
        return self._set_state(State.BACKUP, "carrier back", now)

    def demote(self, now: float, until: float = float("inf")) -> list[Action]:
        """Step down with a bow-out advert so a peer takes over at once; stay BACKUP until
        ``until`` (for ever by default: until :meth:`promote`).  A demotion already running for
        longer is kept: SIGUSR2 must not cut short an operator's demotion."""
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
            return self.demote(now, until=now + self.step_down_hold)
        return [RunScript(Script.UP)]

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
            self._arm_master_down(now)
        return []

    def set_health(self, healthy: bool, now: float) -> list[Action]:
        """The node's checks changed their verdict.  An unhealthy MASTER bows out (a healthy
        peer takes over at once, preempt or not) and drains; an unhealthy node then never
        takes the VIP from a live master, and takes it only as a last resort: when its
        master-down timer (one advert interval longer than a healthy node's) expires."""
        if healthy == self.healthy:
            return []
        self.healthy = healthy
        if self._master_down_at is not None:  # a healthy peer's timer must run out first
            shift = self.params.advert_interval
            self._master_down_at += -shift if healthy else shift
        if healthy or self.state is not State.MASTER:
            return []
        bow_out: list[Action] = [self._advert(wire.BOW_OUT, wire.BOW_OUT)]
        actions = bow_out + self._set_state(State.BACKUP, "unhealthy: bowing out", now,
                                            planned=True)
        self._hold_as_last_resort(now)
        return actions

    def _hold_as_last_resort(self, now: float) -> None:
        """After an unhealthy bow-out nobody may take over (a lone node, or every peer
        unhealthy: those wait one interval).  Take the VIP back after two intervals, and keep
        it meanwhile (the drain lasts until then), so that it is never on no node."""
        self._master_down_at = now + LAST_RESORT_RETAKE_INTERVALS * self.params.advert_interval
        if self._drain_until is not None:
            self._drain_until = max(self._drain_until,
                                    self._master_down_at + LAST_RESORT_DRAIN_SLACK)

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
        if self.state is State.MASTER:
            bow_out: list[Action] = [self._advert(wire.BOW_OUT, wire.BOW_OUT)]
            reason = "shutting down: bowed out"
            return bow_out + self._set_state(State.INIT, reason, now, planned=True)
        if self.state is State.INIT:  # carrier down: nothing held, nothing to say
            return []
        return self._set_state(State.INIT, "shutting down", now)

    # ---- the election ---------------------------------------------------------------------

    # ---- the replay check ------------------------------------------------------------------

    def _freshness(self, received: wire.Received) -> Freshness:
        """ucarp's counters count up in a healthy cluster (each node adopts the last it heard,
        plus one), so anything not newer is a replay -- except from a lone ucarp MASTER, which
        draws a fresh random counter for every advert until it hears a peer: a never-seen
        counter far behind, from the master we hear, with its timing, only keeps it alive."""
        counter = received.advert.counter
        if not self.params.replay_check or self._newest is None:
            return Freshness.NEW
        if wire.counter_newer(counter, self._newest):
            return Freshness.NEW
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
        if self.params.ucarp_counter:
            self._counter = counter

    def _skip_counter(self) -> None:
        """Two MASTERs that took over at the same instant send the same counters in step, and
        each drops the other's as not newer: a random skip ahead breaks the tie, so the one
        ahead is heard.  (A replay that provokes a skip costs nothing: no advert, no timer.)"""
        if self.state is State.MASTER and not self.params.ucarp_counter:
            self._counter_skip = 1 + self.random_counter() % 256

    def _transition_allowed(self, source: IPv4Address, now: float) -> list[Action] | None:
        """Adverts may move this host only a few times a second: a flood of them cannot flap
        the VIP or queue scripts without end.  None when allowed, else the drop to report."""
        if self._transitions.take(now):
            return None
        self.rejected[wire.Reject.RATE_LIMITED] += 1
        return [Dropped(wire.Reject.RATE_LIMITED, source)]

    # ---- the election ---------------------------------------------------------------------

    def _backup_hears(self, received: wire.Received, now: float,
                      sender_drains: bool) -> list[Action]:
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
            actions += self._forward_strays(received.source, now)
        return actions

    def _unhealthy_backup_hears(self, bowing_out: bool, now: float) -> list[Action]:
        """Never take the VIP from a live master; when it bows out, give a healthy peer one
        advert interval to take over first (its advert re-arms our timer)."""
        if bowing_out:
            self._master_down_at = now + self.params.advert_interval
            return []
        return self._keep_backup(now)

    def _is_master_bowing_out(self, received: wire.Received) -> bool:
        """A bow-out is exactly advbase 255, advskew 255, from the master we have been hearing:
        only then may we take over at once, and pass its connections back to it."""
        return (_is_bow_out(received.advert) and self.master is not None
                and self.master.address == received.source)

    def _keep_backup(self, now: float) -> list[Action]:
        self._arm_master_down(now)
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
        self._master_down_at = None
        if self._demoted(now):
            self._arm_master_down(now)
            return []
        self.demoted_until = None
        self.demoted_since = None
        reason = "master down timer expired"
        if not self.healthy:
            reason += " (unhealthy: holding the VIP as a last resort)"
        return self._take_over(reason, now)

    def _take_over(self, reason: str, now: float) -> list[Action]:
        actions = self.end_drain(now, release=False) + self._set_state(State.MASTER, reason, now)
        return [*actions, SendGratuitousArp(), *self._send_ad(now)]

    def _send_ad(self, now: float) -> list[Action]:
        actions: list[Action] = [self._advert(self.params.advbase, self._advskew())]
        self._advert_at = now + self.params.advert_interval
        if self._garp_at_advert is not None and self.sent >= self._garp_at_advert:
            self._garp_at_advert = None
            actions.append(SendGratuitousArp())
        return actions

    def _advert(self, advbase: int, advskew: int) -> SendAdvert:
        self.sent += 1
        return SendAdvert(wire.Advert(self.params.vhid, advbase, advskew, self._next_counter()))

    def _next_counter(self) -> int:
        """Count up by one from a random start, and past the newest counter heard, so a cluster
        that changes masters keeps counting up (receivers drop what is not newer)."""
        if self.params.ucarp_counter:
            return self._next_ucarp_counter()
        if self._counter is None:
            counter = self.random_counter() % wire.COUNTER_MODULUS
        else:
            counter = (self._counter + 1 + self._counter_skip) % wire.COUNTER_MODULUS
        self._counter_skip = 0
        if self._newest is not None and not wire.counter_newer(counter, self._newest):
            counter = (self._newest + 1) % wire.COUNTER_MODULUS
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
    def draining(self) -> bool:
        return self._drain_until is not None

    def end_drain(self, now: float, release: bool = True) -> list[Action]:
        """Finish a drain now (its timer, a second stop signal, carrier loss, or a takeover, which
        keeps the VIP: ``release=False``)."""
        if self._drain_until is None:
            return []
        self._drain_until = None
        down: list[Action] = [RunScript(Script.DOWN)] if release else []
        return [*down, EndDrain()]

    def _forward_strays(self, to: IPv4Address, now: float) -> list[Action]:
        """A master bows out, then drains for (we assume) as long as we would."""
        if self.params.drain <= 0:
            return []
        self._forward_until = now + self.params.drain + FORWARD_AFTER_DRAIN_SLACK
        return [ForwardStrays(to)]

    def _stop_forwarding(self) -> list[Action]:
        if self._forward_until is None:
            return []
        self._forward_until = None
        return [StopForwarding()]

    def _reannounce(self, now: float) -> list[Action]:
        self._garp_at = now + self.params.reannounce if self.params.reannounce > 0 else None
        return [SendGratuitousArp()]

    def _set_state(
        self, new: State, reason: str, now: float, planned: bool = False
    ) -> list[Action]:
        """The one place that changes state, arms its timers and runs the scripts.  Leaving
        MASTER by plan (bow-out on stop or demotion) drains first, if configured."""
        old = self.state
        self.state = new
        self.since = now
        self.transitions += 1
        if new is not State.BACKUP:
            self.master = None  # only a BACKUP has a master to report
        self._advert_at = None
        self._master_down_at = None
        if new is State.BACKUP:
            self._arm_master_down(now)
        if new is State.MASTER:
            self._garp_at_advert = self.sent + 3
        actions: list[Action] = [Transition(old, new, reason)]
        if new is not State.MASTER:
            actions += self._stop_forwarding()
        self._garp_at = None
        if new is State.MASTER:
            actions.append(RunScript(Script.UP))
            self._schedule_reannounce(now)
        elif old is State.MASTER and planned and self.params.drain > 0:
            self._drain_until = now + self.params.drain
            actions.append(StartDrain())
        elif old is State.MASTER:
            actions.append(RunScript(Script.DOWN))
        return actions

    def _schedule_reannounce(self, now: float) -> None:
        """Announce again once a draining peer has let go of the VIP, then periodically."""
        if self.params.drain > 0:
            self._garp_at = now + self.params.drain + REANNOUNCE_AFTER_DRAIN_SLACK
        elif self.params.reannounce > 0:
            self._garp_at = now + self.params.reannounce

    def _arm_master_down(self, now: float) -> None:
        extra = 0.0 if self.healthy else self.params.advert_interval
        self._master_down_at = now + self.params.master_down_interval + extra

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
