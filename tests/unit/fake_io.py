"""Fakes of the engine's I/O (:mod:`carpd.engine.engine_io`): an engine on a :class:`FakeIO`
runs its own logic (the loop, the timer queue, frames to groups, link events, control
requests, signals, reloads, stopping) without root, namespaces, sockets, threads or processes.

The clock is fake and only moves when the loop would sleep: :class:`FakeSelector` gives out
what is ready, or else advances the clock by the loop's timeout.  Everything the engine does
to the world is recorded in order in :attr:`FakeIO.events` (``(time, what, detail)``).
"""

from __future__ import annotations

import heapq
import itertools
import selectors
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from carpd.core.election import Script
from carpd.engine import control, strays
from carpd.engine.engine_io import (
    ArpRule,
    ControlSocket,
    Forwarder,
    GroupLockLike,
    HealthChecks,
    LinkEventSource,
    PacketLink,
    Scripts,
    SignalChannel,
    VipSender,
    WatchdogLike,
)
from carpd.engine.netlink import InterfaceInfo, LinkEvents
from carpd.engine.scripts import Finished

WALL = 1_800_000_000.0
"""What time.time() says when the fake monotonic clock reads 0."""
_FDS = itertools.count(1000)


class FakeClock:
    """Monotonic time, and what a test has planned to happen at given times (:meth:`at`)."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self._planned: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, when: float, happen: Callable[[], None]) -> None:
        """``happen()`` once the clock reaches ``when`` (a frame arriving, a link going)."""
        heapq.heappush(self._planned, (when, next(self._order), happen))

    def next_planned(self) -> float | None:
        return self._planned[0][0] if self._planned else None

    def happen(self) -> None:
        """Whatever was planned for now or earlier."""
        while self._planned and self._planned[0][0] <= self.now:
            heapq.heappop(self._planned)[2]()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return WALL + self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class Readable:
    """Something the loop watches: ready when it has input waiting."""

    def __init__(self) -> None:
        self._fd = next(_FDS)

    def fileno(self) -> int:
        return self._fd

    def ready(self) -> bool:
        return False


class FakeSelector(selectors.BaseSelector):
    """Gives out the watched fakes that are ready; when none is, the time passes: the clock
    advances by the timeout, or to the next thing a test planned (:meth:`FakeClock.at`),
    whichever is sooner (never for ever: the test would hang)."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._keys: dict[int, selectors.SelectorKey] = {}
        self.timeouts: list[float | None] = []

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if id(fileobj) in self._keys:
            raise KeyError(f"{fileobj!r} is already registered")
        key = selectors.SelectorKey(fileobj, next(_FDS), events, data)
        self._keys[id(fileobj)] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(id(fileobj))

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.timeouts.append(timeout)
        clock = self._clock
        clock.happen()
        ready = self._ready()
        if not ready:
            planned = clock.next_planned()
            wake = [t for t in (None if timeout is None else clock.now + timeout, planned)
                    if t is not None]
            assert wake, "the loop would wait for ever"
            clock.advance(max(0.0, min(wake) - clock.now))
            clock.happen()
            ready = self._ready()
        return ready

    def _ready(self) -> list[tuple[selectors.SelectorKey, int]]:
        return [(k, selectors.EVENT_READ) for k in list(self._keys.values())
                if isinstance(k.fileobj, Readable) and k.fileobj.ready()]

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return {k.fileobj: k for k in self._keys.values()}

    def watched(self) -> list[Any]:
        return [k.fileobj for k in self._keys.values()]


class FakeLink(Readable):
    """The packet socket: frames sent are kept; a test hands in frames to receive."""

    def __init__(self, io: FakeIO, vhids: Collection[int]) -> None:
        super().__init__()
        self._io = io
        self.sent: list[bytes] = []
        self.inbox: list[bytes] = []
        self.vhids: list[int] | None = sorted(vhids)
        self.closed = False

    def ready(self) -> bool:
        return bool(self.inbox)

    def receive(self) -> list[bytes]:
        frames, self.inbox = self.inbox, []
        return frames

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)
        self._io.note("frame", frame)

    def set_vhids(self, vhids: Collection[int] | None) -> None:
        self.vhids = None if vhids is None else sorted(vhids)
        self._io.note("filter", self.vhids)

    def close(self) -> None:
        self.closed = True
        self._io.note("close link", None)


class FakeMonitor(Readable):
    reopened = 0

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[LinkEvents] = []
        self.closed = False

    def ready(self) -> bool:
        return bool(self.pending)

    def read(self) -> LinkEvents:
        events, self.pending = self.pending, []
        carrier = None
        removed: dict[int, frozenset[IPv4Address]] = {}
        for event in events:
            carrier = event.carrier if event.carrier is not None else carrier
            for index, addresses in event.removed_from.items():
                removed[index] = removed.get(index, frozenset()) | addresses
        return LinkEvents(carrier, removed, any(e.lost_events for e in events))

    def close(self) -> None:
        self.closed = True


class FakeSignals(Readable):
    def __init__(self, io: FakeIO) -> None:
        super().__init__()
        self._io = io
        self.sent: list[tuple[bytes, IPv4Address, IPv4Address]] = []
        self.inbox: list[tuple[bytes, IPv4Address]] = []
        self.closed = False

    def ready(self) -> bool:
        return bool(self.inbox)

    def send(self, data: bytes, to: IPv4Address, source: IPv4Address) -> None:
        self.sent.append((data, to, source))
        self._io.note("drain signal", to)

    def receive(self) -> list[tuple[bytes, IPv4Address]]:
        received, self.inbox = self.inbox, []
        return received

    def close(self) -> None:
        self.closed = True


class FakeControl(Readable):
    """The control socket without a socket: :meth:`request` is a client's request."""

    def __init__(self, path: Path, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        super().__init__()
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)  # as the real one does
        self._handler = handler
        self.waiting: list[Any] = []
        self.answered_later: list[dict[str, Any]] = []
        self.closed = False

    def request(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The reply, or None if the engine answers later (:attr:`answered_later`)."""
        reply = self._handler(request)
        if reply is control.LATER:
            self.waiting.append(request)
            return None
        return reply

    def accept(self) -> tuple[Any | None, list[Any]]:
        return None, []

    def serve(self, conn: Any) -> bool:
        raise AssertionError("no client connects to the fake control socket")

    def next_deadline(self) -> float | None:
        return None

    def expire(self) -> list[Any]:
        return []

    def answer_waiting(self, reply: dict[str, Any]) -> None:
        self.waiting.clear()
        self.answered_later.append(reply)

    def close(self) -> None:
        self.closed = True


class FakeScripts(Readable):
    """A group's scripts: what was asked for (with its argv) is kept; a script ends at once
    (``FakeIO.scripts_end_at_once``, reported at the next loop turn) or when the test says so
    (:meth:`complete`)."""

    def __init__(self, io: FakeIO, argv: dict[Script, list[str] | None]) -> None:
        super().__init__()
        self._io = io
        self.argv = argv
        self.queued: list[Script] = []
        self.ran: list[list[str] | None] = []
        self._done: list[Finished] = []
        self.started = self.finishing = False

    @property
    def idle(self) -> bool:
        return not self.queued

    def ready(self) -> bool:
        return bool(self._done)

    def start(self) -> None:
        self.started = True

    def submit(self, script: Script) -> None:
        self.queued.append(script)
        self.ran.append(self.argv.get(script))
        self._io.note("script", (script, self.argv.get(script)))
        if self._io.scripts_end_at_once:
            self.complete()

    def complete(self, returncode: int = 0) -> None:
        """Every script asked for so far ends (reported at the next loop turn)."""
        self._done += [Finished(s, returncode) for s in self.queued]
        self.queued.clear()

    def finished(self) -> list[Finished]:
        done, self._done = self._done, []
        return done

    def finish(self) -> None:
        self.finishing = True

    def join(self, timeout: float) -> bool:
        return self.idle


class FakeRule:
    """The drain's ARP rule, or the forwarder's rules (nftables)."""

    def __init__(self, io: FakeIO, kind: str, vhid: int) -> None:
        self._io, self._kind, self._vhid = io, kind, vhid
        self.engaged = False
        self.to: IPv4Address | None = None

    @property
    def forwarding_to(self) -> IPv4Address | None:
        return self.to if self.engaged else None

    def engage(self, to: IPv4Address | None = None, peer_mac: bytes | None = None) -> bool:
        self.engaged, self.to = True, to
        self._io.note(f"{self._kind} engaged", self._vhid)
        return True

    def release(self) -> None:
        if self.engaged:
            self._io.note(f"{self._kind} released", self._vhid)
        self.engaged, self.to = False, None


class FakeVipPort:
    """The VIP's own interface (``vip_interface``): the frames sent there are kept."""

    def __init__(self, io: FakeIO, ifname: str) -> None:
        self._io = io
        self.ifname = ifname
        self.mac = io.interface_info(ifname).mac
        self.sent: list[bytes] = []
        self.closed = False

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)
        self._io.note("vip frame", (self.ifname, frame))

    def close(self) -> None:
        self.closed = True
        self._io.note("close vip port", self.ifname)


class FakeHealth(Readable):
    """A group's checks without threads: its tracked interfaces follow the carrier of
    :attr:`FakeIO.interfaces` (a missing one fails), its scripts pass until the test says
    otherwise (:meth:`scripts_pass`).  Readable once started and again after each change, as
    the real one's wake pipe is."""

    def __init__(self, io: FakeIO, scripts: Sequence[Sequence[str]],
                 interfaces: Sequence[str]) -> None:
        super().__init__()
        self._io = io
        self.scripts = [list(argv) for argv in scripts]
        self.interfaces = list(dict.fromkeys(interfaces))
        self._scripts_pass = True
        self._healthy = True
        self._woken = False
        self.started = self.closed = False
        self.reads = 0

    @property
    def active(self) -> bool:
        return bool(self.scripts or self.interfaces)

    @property
    def healthy(self) -> bool:
        return self._healthy

    def scripts_pass(self, passing: bool) -> None:
        """Every check script passes (or fails) from now on; the loop is woken."""
        self._scripts_pass = passing
        self.wake()

    def wake(self) -> None:
        if self.started and not self.closed:
            self._woken = True

    def ready(self) -> bool:
        return self._woken

    def start(self) -> None:
        self.started = True
        self.wake()

    def read(self) -> bool:
        self.reads += 1
        self._woken = False
        healthy = self._verdict()
        changed, self._healthy = healthy != self._healthy, healthy
        return changed

    def _verdict(self) -> bool:
        links = self._io.interfaces
        return self._scripts_pass and all(
            name in links and links[name].carrier for name in self.interfaces)

    def status(self, wall_offset: float) -> list[dict[str, Any]]:
        return [{"kind": "script", "name": " ".join(a), "healthy": self._scripts_pass}
                for a in self.scripts] + \
            [{"kind": "interface", "name": n, "healthy": self._verdict()}
             for n in self.interfaces]

    def why(self) -> str | None:
        if not self._scripts_pass:
            return "a check script fails"
        links = self._io.interfaces
        down = [n for n in self.interfaces if n not in links or not links[n].carrier]
        return f"interface {down[0]} down" if down else None

    def close(self) -> None:
        self.closed = True
        self._woken = False


@dataclass
class FakeWatchdog:
    io: FakeIO
    held: set[tuple[str, IPv4Address]] = field(default_factory=set)
    disarmed: bool = False

    def hold(self, ifname: str, vip: IPv4Address) -> None:
        self.held.add((ifname, vip))

    def drop(self, ifname: str, vip: IPv4Address) -> None:
        self.held.discard((ifname, vip))
        self.io.note("watchdog drop", vip)

    def disarm(self) -> None:
        self.disarmed = True


@dataclass
class FakeLock:
    io: FakeIO
    name: str
    held: bool = True

    def release(self) -> None:
        self.held = False
        self.io.note("unlock", self.name)


class FakeIO:
    """One interface (``eth0``, index 2) with carrier and an address, a fake clock, and a fake
    of everything an engine opens (kept here for the test to drive and inspect)."""

    def __init__(self, ifname: str = "eth0", address: str = "10.0.0.1/24") -> None:
        self.clock = FakeClock()
        self.scripts_end_at_once = True
        self.events: list[tuple[float, str, Any]] = []
        host, prefix = address.split("/")
        self.interfaces: dict[str, InterfaceInfo] = {
            ifname: InterfaceInfo(2, bytes.fromhex("020000000001"), True,
                                  ((IPv4Address(host), int(prefix), ifname),))}
        self.ifname = ifname
        self.selector_: FakeSelector | None = None
        self.link: FakeLink | None = None
        self.monitor: FakeMonitor | None = None
        self.signals: FakeSignals | None = None
        self.control: FakeControl | None = None
        self.watchdog_: FakeWatchdog | None = None
        self.scripts_made: list[FakeScripts] = []
        self.rules: list[FakeRule] = []
        self.locks: dict[str, FakeLock] = {}
        self.connections: set[strays.Flow] = set()
        self.released: list[tuple[str, IPv4Address]] = []
        self.vip_ports: list[FakeVipPort] = []
        self.healths: list[FakeHealth] = []

    def note(self, what: str, detail: Any) -> None:
        self.events.append((self.clock.now, what, detail))

    def happened(self, *kinds: str) -> list[tuple[str, Any]]:
        """The events of these kinds (all without), in order, without their times."""
        return [(what, d) for _t, what, d in self.events if not kinds or what in kinds]

    # ---- what a test does to the world --------------------------------------------------

    def add_interface(self, ifname: str, index: int, mac: str, address: str) -> None:
        """Another interface (with carrier), say the VIP's own (``vip_interface``)."""
        host, prefix = address.split("/")
        self.interfaces[ifname] = InterfaceInfo(index, bytes.fromhex(mac), True,
                                                ((IPv4Address(host), int(prefix), ifname),))

    def set_carrier(self, up: bool, ifname: str = "") -> None:
        """An interface (the engine's by default) loses (or gets back) its carrier; netlink
        says so: the engine's monitor for its own, and every health check tracking it."""
        ifname = ifname or self.ifname
        info = self.interfaces[ifname]
        self.interfaces[ifname] = replace(info, carrier=up)
        if ifname == self.ifname:
            assert self.monitor is not None
            self.monitor.pending.append(LinkEvents(up, ifindex=info.index))
        for checks in self.healths:
            if ifname in checks.interfaces:
                checks.wake()

    def add_address(self, address: IPv4Address, prefix: int = 24, ifname: str = "") -> None:
        ifname = ifname or self.ifname
        info = self.interfaces[ifname]
        self.interfaces[ifname] = replace(
            info, addresses=(*info.addresses, (address, prefix, ifname)))

    def delete_address(self, address: IPv4Address, ifname: str = "") -> None:
        """An admin's ``ip addr del``: gone, and netlink says so."""
        ifname = ifname or self.ifname
        info = self.interfaces[ifname]
        self.interfaces[ifname] = replace(
            info, addresses=tuple(a for a in info.addresses if a[0] != address))
        if self.monitor is not None:
            self.monitor.pending.append(
                LinkEvents(removed_from={info.index: frozenset({address})}, ifindex=info.index))

    # ---- carpd.engine.engine_io.EngineIO -------------------------------------------------

    def monotonic(self) -> float:
        return self.clock.monotonic()

    def time(self) -> float:
        return self.clock.time()

    def selector(self) -> selectors.BaseSelector:
        self.selector_ = FakeSelector(self.clock)
        return self.selector_

    def interface_info(self, ifname: str) -> InterfaceInfo:
        try:
            return self.interfaces[ifname]
        except KeyError:
            raise LookupError(f"no such network interface: {ifname}") from None

    def open_link(self, ifname: str, join: IPv4Address | None, group: IPv4Address,
                  vhids: Collection[int]) -> PacketLink:
        self.link = FakeLink(self, vhids)
        return self.link

    def open_monitor(self, ifindex: int) -> LinkEventSource:
        self.monitor = FakeMonitor()
        return self.monitor

    def open_signals(self, ifname: str) -> SignalChannel | None:
        self.signals = FakeSignals(self)
        return self.signals

    def open_control(self, path: Path,
                     handler: Callable[[dict[str, Any]], dict[str, Any]]) -> ControlSocket:
        self.control = FakeControl(path, handler)
        return self.control

    def watchdog(self, held: Iterable[tuple[str, IPv4Address]]) -> WatchdogLike:
        self.watchdog_ = FakeWatchdog(self, set(held))
        return self.watchdog_

    def scripts(self, argv: dict[Script, list[str] | None], timeout: float) -> Scripts:
        runner = FakeScripts(self, argv)
        self.scripts_made.append(runner)
        return runner

    def arp_rule(self, ifname: str, vhid: int, vip: IPv4Address) -> ArpRule:
        rule = FakeRule(self, "arp rule", vhid)
        self.rules.append(rule)
        return rule

    def forwarder(self, ifname: str, vhid: int, vip: IPv4Address) -> Forwarder:
        rule = FakeRule(self, "forwarder", vhid)
        self.rules.append(rule)
        return rule

    def open_connections(self, vip: IPv4Address) -> set[strays.Flow]:
        return set(self.connections)

    def release_vip(self, ifname: str, vip: IPv4Address) -> list[IPv4Address]:
        self.released.append((ifname, vip))
        self.note("release vip", vip)
        info = self.interfaces.get(ifname)
        if info is None or not info.has(vip):
            return []
        self.interfaces[ifname] = replace(
            info, addresses=tuple(a for a in info.addresses if a[0] != vip))
        return [vip]

    def lock_group(self, ifname: str, vhid: int) -> GroupLockLike:
        lock = self.locks[f"{ifname}/{vhid}"] = FakeLock(self, f"{ifname}/{vhid}")
        return lock

    def open_vip_port(self, ifname: str) -> VipSender:
        port = FakeVipPort(self, ifname)
        self.vip_ports.append(port)
        return port

    def health(self, scripts: Sequence[Sequence[str]], interval: float, timeout: float | None,
               fall: int, rise: int, interfaces: Sequence[str],
               clock: Callable[[], float]) -> HealthChecks:
        checks = FakeHealth(self, scripts, interfaces)
        self.healths.append(checks)
        return checks
