"""The engine's seam: everything :class:`carpd.engine.daemon.Engine` and its
:class:`~carpd.engine.group.Group`-s do to the world, behind small protocols.

:class:`RealIO` (the default) is the world: the packet socket (:mod:`carpd.engine.link`),
netlink (:mod:`carpd.engine.netlink`), the drain-signal socket (:mod:`carpd.engine.drainsock`),
the control socket, the scripts' runner, the nftables rules of a hand-over, the watchdog, the
release of a VIP, the gratuitous ARP on the VIP's own interface, the health checks (tracked
interfaces, check scripts), the selector the loop waits in and the clocks.  The unit tests hand the
engine fakes of all of them (``tests/unit/fake_io.py``) and so test its own logic without
root, namespaces or sockets.  Each protocol names only what the engine and the groups call.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Protocol

from carpd.core.election import Script
from carpd.engine import arpguard, control, drainsock, health, identity, netlink, release, strays
from carpd.engine.link import Link
from carpd.engine.scripts import Finished, ScriptRunner
from carpd.engine.watchdog import Watchdog

__all__ = ["REAL", "ArpRule", "ControlSocket", "EngineIO", "Forwarder", "GroupLockLike",
           "HealthChecks", "LinkEventSource", "PacketLink", "RealIO", "Scripts", "SignalChannel",
           "VipPort", "VipSender", "WatchdogLike"]


class PacketLink(Protocol):
    """The interface's raw socket (:class:`carpd.engine.link.Link`)."""

    def fileno(self) -> int: ...
    def receive(self) -> list[bytes]: ...
    def send(self, frame: bytes) -> None: ...
    def set_vhids(self, vhids: Collection[int] | None) -> None: ...
    def close(self) -> None: ...


class LinkEventSource(Protocol):
    """Carrier and deleted addresses as they happen (:class:`carpd.engine.netlink.LinkMonitor`);
    ``reopened`` counts the reopenings after an overflow (the fd changes then)."""

    reopened: int

    def fileno(self) -> int: ...
    def read(self) -> netlink.LinkEvents: ...
    def close(self) -> None: ...


class SignalChannel(Protocol):
    """The drain-signal socket (:class:`carpd.engine.drainsock.SignalSocket`)."""

    def fileno(self) -> int: ...
    def send(self, data: bytes, to: IPv4Address, source: IPv4Address) -> None: ...
    def receive(self) -> list[tuple[bytes, IPv4Address]]: ...
    def close(self) -> None: ...


class ControlSocket(Protocol):
    """The control socket (:class:`carpd.engine.control.ControlServer`)."""

    waiting: list[Any]

    def fileno(self) -> int: ...
    def accept(self) -> tuple[Any | None, list[Any]]: ...
    def serve(self, conn: Any) -> bool: ...
    def next_deadline(self) -> float | None: ...
    def expire(self) -> list[Any]: ...
    def answer_waiting(self, reply: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class Scripts(Protocol):
    """A group's up and down scripts (:class:`carpd.engine.scripts.ScriptRunner`)."""

    @property
    def idle(self) -> bool: ...
    def fileno(self) -> int: ...
    def start(self) -> None: ...
    def submit(self, script: Script) -> None: ...
    def finished(self) -> list[Finished]: ...
    def finish(self) -> None: ...
    def join(self, timeout: float) -> bool: ...


class ArpRule(Protocol):
    """The drain's ARP rule (:class:`carpd.engine.arpguard.ArpGuard`)."""

    def engage(self) -> bool: ...
    def release(self) -> None: ...


class Forwarder(Protocol):
    """The new MASTER's forwarding rules (:class:`carpd.engine.arpguard.StrayForwarder`)."""

    @property
    def forwarding_to(self) -> IPv4Address | None: ...
    def engage(self, to: IPv4Address, peer_mac: bytes | None = None) -> bool: ...
    def release(self) -> None: ...


class WatchdogLike(Protocol):
    """:class:`carpd.engine.watchdog.Watchdog`."""

    def hold(self, ifname: str, vip: IPv4Address) -> None: ...
    def drop(self, ifname: str, vip: IPv4Address) -> None: ...
    def disarm(self) -> None: ...


class GroupLockLike(Protocol):
    """:class:`carpd.engine.identity.GroupLock`: this engine runs the group."""

    def release(self) -> None: ...


class VipSender(Protocol):
    """The VIP's own interface when the adverts go out on another (``vip_interface``):
    gratuitous ARP goes out there (:class:`VipPort`)."""

    ifname: str
    mac: bytes

    def send(self, frame: bytes) -> None: ...
    def close(self) -> None: ...


class HealthChecks(Protocol):
    """A group's check scripts and tracked interfaces (:class:`carpd.engine.health.Health`):
    :meth:`fileno` is readable when the verdict may have changed, :meth:`read` takes it in."""

    @property
    def active(self) -> bool: ...
    @property
    def healthy(self) -> bool: ...
    def start(self) -> None: ...
    def fileno(self) -> int: ...
    def read(self) -> bool: ...
    def status(self, wall_offset: float) -> list[dict[str, Any]]: ...
    def why(self) -> str | None: ...
    def close(self) -> None: ...


class EngineIO(Protocol):
    """The world an engine runs in."""

    def monotonic(self) -> float: ...
    def time(self) -> float: ...
    def selector(self) -> selectors.BaseSelector: ...
    def interface_info(self, ifname: str) -> netlink.InterfaceInfo: ...
    def open_link(self, ifname: str, join: IPv4Address | None, group: IPv4Address,
                  vhids: Collection[int]) -> PacketLink: ...
    def open_monitor(self, ifindex: int) -> LinkEventSource: ...
    def open_signals(self, ifname: str) -> SignalChannel | None: ...
    def open_control(self, path: Path,
                     handler: Callable[[dict[str, Any]], dict[str, Any]]) -> ControlSocket: ...
    def watchdog(self, held: Iterable[tuple[str, IPv4Address]]) -> WatchdogLike: ...
    def scripts(self, argv: dict[Script, list[str] | None], timeout: float) -> Scripts: ...
    def arp_rule(self, ifname: str, vhid: int, vip: IPv4Address) -> ArpRule: ...
    def forwarder(self, ifname: str, vhid: int, vip: IPv4Address) -> Forwarder: ...
    def open_connections(self, vip: IPv4Address) -> set[strays.Flow]: ...
    def release_vip(self, ifname: str, vip: IPv4Address) -> list[IPv4Address]: ...
    def lock_group(self, ifname: str, vhid: int) -> GroupLockLike: ...
    def open_vip_port(self, ifname: str) -> VipSender: ...
    def health(self, scripts: Sequence[Sequence[str]], interval: float, timeout: float | None,
               fall: int, rise: int, interfaces: Sequence[str],
               clock: Callable[[], float]) -> HealthChecks: ...


class RealIO:
    """The real world: each method is the call the engine made before it had a seam."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def selector(self) -> selectors.BaseSelector:
        return selectors.DefaultSelector()

    def interface_info(self, ifname: str) -> netlink.InterfaceInfo:
        return netlink.interface_info(ifname)

    def open_link(self, ifname: str, join: IPv4Address | None, group: IPv4Address,
                  vhids: Collection[int]) -> PacketLink:
        return Link(ifname, join, group=group, vhids=vhids)

    def open_monitor(self, ifindex: int) -> LinkEventSource:
        return netlink.LinkMonitor(ifindex)

    def open_signals(self, ifname: str) -> SignalChannel | None:
        return drainsock.SignalSocket.open(ifname)

    def open_control(self, path: Path,
                     handler: Callable[[dict[str, Any]], dict[str, Any]]) -> ControlSocket:
        return control.ControlServer(path, handler)

    def watchdog(self, held: Iterable[tuple[str, IPv4Address]]) -> WatchdogLike:
        return Watchdog(held)

    def scripts(self, argv: dict[Script, list[str] | None], timeout: float) -> Scripts:
        return ScriptRunner(argv, timeout)

    def arp_rule(self, ifname: str, vhid: int, vip: IPv4Address) -> ArpRule:
        return arpguard.ArpGuard(ifname, vhid, vip)

    def forwarder(self, ifname: str, vhid: int, vip: IPv4Address) -> Forwarder:
        return arpguard.StrayForwarder(ifname, vhid, vip)

    def open_connections(self, vip: IPv4Address) -> set[strays.Flow]:
        return strays.open_connections(vip)

    def release_vip(self, ifname: str, vip: IPv4Address) -> list[IPv4Address]:
        return release.release(ifname, vip)

    def lock_group(self, ifname: str, vhid: int) -> GroupLockLike:
        return identity.GroupLock(ifname, vhid)

    def open_vip_port(self, ifname: str) -> VipSender:
        return VipPort(ifname)

    def health(self, scripts: Sequence[Sequence[str]], interval: float, timeout: float | None,
               fall: int, rise: int, interfaces: Sequence[str],
               clock: Callable[[], float]) -> HealthChecks:
        return health.Health(scripts, interval, timeout, fall, rise, interfaces, clock)


class VipPort:
    """Gratuitous ARP on the VIP's own interface, when the adverts go out on another
    (a dedicated cluster network, ``vip_interface``): a raw socket that only sends."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.mac = netlink.interface_info(ifname).mac
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # receives nothing

    def send(self, frame: bytes) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendto(frame, (self.ifname, int.from_bytes(frame[12:14], "big")))

    def close(self) -> None:
        self._sock.close()


REAL = RealIO()
