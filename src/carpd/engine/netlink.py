"""Links and addresses over netlink, through what pyroute2 0.7.7 (Debian 13) and 0.9 share.

Only the synchronous ``IPRoute`` (never inside a running asyncio loop) and an ``IPRSocket``
subscribed to link and IPv4 address events, recreated when the kernel reports ENOBUFS.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from carpd.engine._pyroute2 import forget_package, load_package_lazily

try:
    load_package_lazily()
    # the modules that define them, not the package's __init__: that one loads every pyroute2
    # module (NDB, IPDB, nftables, wireless, ...: some 10 MB an engine does not need)
    from pyroute2.iproute.linux import IPRoute
    from pyroute2.netlink.exceptions import NetlinkDumpInterrupted
    from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_LINK
    from pyroute2.netlink.rtnl.iprsocket import IPRSocket
except ImportError:  # a pyroute2 laid out otherwise: the whole package, as it documents itself
    forget_package()
    from pyroute2 import IPRoute, IPRSocket
    from pyroute2.netlink.exceptions import NetlinkDumpInterrupted
    from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_LINK

log = logging.getLogger(__name__)

IFF_UP = 0x1
IFF_RUNNING = 0x40
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_DELADDR = 21
DUMP_ATTEMPTS = 5


@dataclass(frozen=True)
class InterfaceInfo:
    index: int
    mac: bytes
    carrier: bool
    addresses: tuple[tuple[IPv4Address, int, str], ...]
    """(address, prefix length, label) of every IPv4 address, primary first."""

    def primary_address(self) -> IPv4Address | None:
        return self.addresses[0][0] if self.addresses else None

    def labelled(self, label: str) -> list[IPv4Address]:
        return [address for address, _prefix, lab in self.addresses if lab == label]

    def has(self, address: IPv4Address) -> bool:
        return any(a == address for a, _prefix, _label in self.addresses)

    def is_on_link_unicast(self, address: IPv4Address) -> bool:
        """Whether ``address`` is another host on one of our subnets: not ours, not a
        network, broadcast, multicast or reserved address."""
        if (self.has(address) or address.is_multicast or address.is_unspecified
                or address.is_loopback or address.is_reserved or address.is_link_local):
            return False
        for own, prefix, _label in self.addresses:
            network = IPv4Network(f"{own}/{prefix}", strict=False)
            if address in network and (prefix >= 31 or address not in (
                    network.network_address, network.broadcast_address)):
                return True
        return False


@contextmanager
def _ipr() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def carrier_of(flags: int) -> bool:
    return bool(flags & IFF_UP) and bool(flags & IFF_RUNNING)


def interface_info(ifname: str) -> InterfaceInfo:
    """MAC, carrier and IPv4 addresses of ``ifname`` (raises LookupError if it is gone).

    A dump that changes under us (the kernel flags it interrupted) is read again."""
    for _attempt in range(DUMP_ATTEMPTS):
        with suppress(NetlinkDumpInterrupted):
            return _interface_info(ifname)
    raise OSError(errno.EINTR, f"{ifname}: address dump interrupted {DUMP_ATTEMPTS} times")


def _interface_info(ifname: str) -> InterfaceInfo:
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise LookupError(f"no such network interface: {ifname}")
        index = found[0]
        link = ipr.get_links(index)[0]
        addresses = tuple(
            (IPv4Address(msg.get_attr("IFA_ADDRESS")), int(msg["prefixlen"]),
             str(msg.get_attr("IFA_LABEL") or ifname))
            for msg in ipr.get_addr(family=socket.AF_INET, index=index)
        )
    mac = bytes.fromhex(str(link.get_attr("IFLA_ADDRESS")).replace(":", ""))
    return InterfaceInfo(index, mac, carrier_of(int(link["flags"])), addresses)


def remove_address(ifname: str, address: IPv4Address) -> bool:
    """Delete ``address`` from ``ifname`` if it is there; True if something was removed."""
    info = interface_info(ifname)
    removed = False
    with _ipr() as ipr:
        for present, prefix, _label in info.addresses:
            if present == address:
                ipr.addr("del", index=info.index, address=str(address), prefixlen=prefix)
                removed = True
    return removed


@dataclass(frozen=True)
class LinkEvents:
    """What one read of the monitor saw for our interface (and the addresses of any)."""

    carrier: bool | None = None
    """The carrier, if a link event named it."""
    removed_from: Mapping[int, frozenset[IPv4Address]] = field(default_factory=dict)
    """IPv4 addresses deleted, by interface index: ours, and any other (a group may hold its
    VIP on another interface than the adverts', a dedicated cluster network)."""
    lost_events: bool = False
    """Events overflowed: anything may have happened (the carrier is read afresh)."""
    ifindex: int = 0

    @property
    def removed(self) -> frozenset[IPv4Address]:
        """IPv4 addresses deleted from our interface."""
        return self.removed_from.get(self.ifindex, frozenset())


def link_events(messages: Iterable[Any], ifindex: int) -> LinkEvents:
    """What netlink ``messages`` say about interface ``ifindex`` (its carrier), and which
    addresses were deleted from it or any other.  Link messages of another family are
    skipped: when a port leaves its bridge the kernel sends an AF_BRIDGE RTM_DELLINK for it
    while the link itself stays."""
    carrier = None
    removed: dict[int, set[IPv4Address]] = {}
    for msg in messages:
        kind = msg["header"]["type"]
        if kind == RTM_DELADDR and msg.get("family") == socket.AF_INET:
            address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if address:
                removed.setdefault(int(msg.get("index", 0)), set()).add(IPv4Address(address))
            continue
        if msg.get("index") != ifindex:
            continue
        if kind in (RTM_NEWLINK, RTM_DELLINK) and msg.get("family", 0) != 0:
            continue
        if kind == RTM_DELLINK:
            carrier = False
        elif kind == RTM_NEWLINK:
            carrier = carrier_of(int(msg["flags"]))
    return LinkEvents(carrier, {i: frozenset(a) for i, a in removed.items()}, ifindex=ifindex)


class LinkMonitor:
    """Carrier changes and deleted addresses of one interface, as they happen."""

    def __init__(self, ifindex: int) -> None:
        self.ifindex = ifindex
        self._sock = self._open()
        self.reopened = 0
        """How often the socket was reopened after an overflow (its fd changes then)."""

    @staticmethod
    def _open() -> Any:
        sock = IPRSocket()
        sock.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR)
        return sock

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def read(self) -> LinkEvents:
        """Drain pending events: the interface's carrier if a link event named it, and the
        addresses deleted from it.

        After ENOBUFS (events lost) the socket is recreated and the carrier read afresh."""
        try:
            messages = self._drain()
        except OSError as error:
            if error.errno != errno.ENOBUFS:
                raise
            log.warning("netlink events overflowed; re-reading the link state")
            self._sock.close()
            self._sock = self._open()
            self.reopened += 1
            return LinkEvents(self._current_carrier(), lost_events=True, ifindex=self.ifindex)
        return link_events(messages, self.ifindex)

    def _drain(self) -> list[Any]:
        messages: list[Any] = []
        while select.select([self._sock], [], [], 0)[0]:
            messages += self._sock.get()
        return messages

    def _current_carrier(self) -> bool:
        with _ipr() as ipr:
            links = ipr.get_links(self.ifindex)
        return bool(links) and carrier_of(int(links[0]["flags"]))

    def close(self) -> None:
        self._sock.close()


AF_UNSPEC = 0
READS_PER_CALL = 64


class LinkTable:
    """The links that carry the tracked names, as link messages describe them (pure).

    A bridge port's own notifications (family AF_BRIDGE: a DELLINK when it leaves the bridge,
    the link itself staying) are not about the link and are ignored."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        self.links: dict[str, tuple[int, bool]] = {}
        """name -> (index, carrier) of the tracked names that exist."""

    def carriers(self) -> dict[str, bool | None]:
        """Each tracked name's carrier; None when no interface has that name."""
        return {name: self.links[name][1] if name in self.links else None
                for name in self.names}

    def apply(self, kind: int, family: int, index: int, name: str | None, flags: int) -> None:
        """One RTM_NEWLINK or RTM_DELLINK message."""
        if family != AF_UNSPEC:
            return
        for tracked, (known, _carrier) in list(self.links.items()):
            if known == index and (kind == RTM_DELLINK or name != tracked):
                del self.links[tracked]  # gone, or renamed away
        if kind == RTM_NEWLINK and name in self.names:
            self.links[name] = (index, carrier_of(flags))


class NamedLinkMonitor:
    """Whether each of several interfaces, named, exists and has carrier, followed as links
    come and go, are renamed, moved to another namespace or lose carrier (:class:`LinkTable`).

    The state is a dump taken once the event socket is bound (an event from before the dump,
    read after it, only repeats a state the dump already had), then kept up to date from link
    events.  After ENOBUFS (events lost) the socket is reopened and the state dumped afresh.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        self.reopened = 0
        """How often the socket was reopened (after an overflow or :meth:`resync`)."""
        self._sock = _link_socket()
        self._table = LinkTable(self.names)
        try:
            self._table = self._dump()
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def carriers(self) -> dict[str, bool | None]:
        """Each tracked name's carrier; None when no interface has that name."""
        return self._table.carriers()

    def read(self) -> bool:
        """Apply the events waiting; True if :meth:`carriers` may have changed."""
        before = dict(self._table.links)
        try:
            messages = self._drain()
        except OSError as error:
            if error.errno != errno.ENOBUFS:
                raise
            log.warning("netlink link events overflowed; re-reading the tracked interfaces")
            self.resync()
        else:
            for msg in messages:
                _apply(self._table, msg)
        return self._table.links != before

    def resync(self) -> None:
        """Reopen the event socket and dump the links afresh."""
        sock = _link_socket()
        self._sock.close()
        self._sock = sock
        self.reopened += 1
        self._table = self._dump()

    def close(self) -> None:
        self._sock.close()

    def _drain(self) -> list[Any]:
        """What is waiting, in at most :data:`READS_PER_CALL` reads (the socket stays readable
        if more is)."""
        messages: list[Any] = []
        for _ in range(READS_PER_CALL):
            if not select.select([self._sock], [], [], 0)[0]:
                break
            messages += self._sock.get()
        return messages

    def _dump(self) -> LinkTable:
        for _attempt in range(DUMP_ATTEMPTS):
            with suppress(NetlinkDumpInterrupted), _ipr() as ipr:
                table = LinkTable(self.names)
                for msg in ipr.get_links():
                    _apply(table, msg)
                return table
        raise OSError(errno.EINTR, f"link dump interrupted {DUMP_ATTEMPTS} times")


def _apply(table: LinkTable, msg: Any) -> None:
    name = msg.get_attr("IFLA_IFNAME")
    table.apply(int(msg["header"]["type"]), int(msg.get("family", AF_UNSPEC)),
                int(msg["index"]), None if name is None else str(name), int(msg["flags"]))


def _link_socket() -> Any:
    sock = IPRSocket()
    sock.bind(groups=RTMGRP_LINK)
    return sock
