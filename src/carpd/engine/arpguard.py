"""The nftables rules of a planned hand-over: on the old MASTER, keep the kernel from answering
ARP for the VIP while it drains; on the new MASTER, pass segments of the old one's connections on.

During a drain the old MASTER keeps the VIP so that requests already in flight are served, but
the LAN must learn the new MASTER's MAC: an nftables ``arp`` table drops ARP requests for the VIP
coming in and ARP from the VIP going out.  The table is created with ``flags owner`` through
libnftables' own netlink socket, which this process holds open: if carpd dies, even by SIGKILL,
the kernel deletes the table with the socket.  So the rule never outlives the engine.

The new MASTER's table (:class:`StrayForwarder`, rules in :mod:`carpd.engine.strays`) is owned the
same way: it tells the old MASTER's connections from its own (conntrack and its own sockets, a flow
first seen mid-stream is the old one's for its whole life), passes every segment of them on, never
back to where they came from, and goes with :meth:`StrayForwarder.release` or the process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import time
from ipaddress import IPv4Address

from carpd.engine import strays

log = logging.getLogger(__name__)


class ArpGuardError(RuntimeError):
    pass


class _Nft:
    """A libnftables context: one netlink socket for the life of this object."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as error:
            raise ArpGuardError(f"libnftables is not available: {error}") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise ArpGuardError("nft_ctx_new failed")
        lib.nft_ctx_buffer_error(self._ctx)

    def run(self, command: str) -> None:
        if self._lib.nft_run_cmd_from_buffer(self._ctx, os.fsencode(command)) != 0:
            error = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
            raise ArpGuardError(error.decode(errors="replace").strip())

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


def table_name(ifname: str, vhid: int) -> str:
    """``carpd_IFACE_VHID``, one name per interface: letters and digits stay, every other byte
    becomes ``_`` and its two hex digits (``eth0.10`` -> ``eth0_2e10``, ``eth0_10`` ->
    ``eth0_5f10``), so no two interfaces share a table."""
    safe = "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else f"_{b:02x}"
                   for b in os.fsencode(ifname))
    return f"carpd_{safe}_{vhid}"


def quoted_ifname(ifname: str) -> str:
    """``ifname`` as an nftables string that matches that interface only: a trailing ``*``
    would match every name it begins (escaped as ``\\*``); nft strings have no way to hold
    ``"``, and a ``\\`` before a ``*`` would change its meaning, so names with those are
    refused (ArpGuardError)."""
    if '"' in ifname or "\\" in ifname:
        raise ArpGuardError(f"interface {ifname!r}: its name cannot be written in an nftables "
                            'rule: allowed are names without " or \\')
    if ifname.endswith("*"):
        ifname = ifname[:-1] + "\\*"
    return f'"{ifname}"'


def ruleset(table: str, ifname: str, vip: IPv4Address) -> str:
    name = quoted_ifname(ifname)
    return (
        f"table arp {table} {{ flags owner; "
        f"chain input {{ type filter hook input priority 0; policy accept; "
        f"iifname {name} arp operation request arp daddr ip {vip} drop; }}; "
        f"chain output {{ type filter hook output priority 0; policy accept; "
        f"oifname {name} arp saddr ip {vip} drop; }}; }}"
    )


class OwnedTable:
    """One nftables table that lives no longer than this process (``flags owner``)."""

    def __init__(self, family: str, name: str) -> None:
        self._family = family
        self._name = name
        self._nft: _Nft | None = None

    @property
    def active(self) -> bool:
        return self._nft is not None

    def install(self, ruleset: str) -> None:
        """Replace the table with ``ruleset``, in one transaction if it exists (raises
        ArpGuardError, leaving the table as it was)."""
        if self._nft is not None:
            self._nft.run(f"delete table {self._family} {self._name}; {ruleset}")
            return
        nft = _Nft()
        try:
            nft.run(ruleset)
        except ArpGuardError:
            nft.close()
            raise
        self._nft = nft

    def remove(self) -> None:
        """Delete the table now (closing the owning socket would too)."""
        if self._nft is None:
            return
        try:
            self._nft.run(f"delete table {self._family} {self._name}")
        except ArpGuardError as error:
            log.warning("removing nftables table %s: %s", self._name, error)
        self._nft.close()
        self._nft = None


class ArpGuard:
    """While active, this host neither answers ARP for the VIP nor sends ARP from it."""

    def __init__(self, ifname: str, vhid: int, vip: IPv4Address) -> None:
        self._ifname = ifname
        self._name = table_name(ifname, vhid)
        self._vip = vip
        self._table = OwnedTable("arp", self._name)

    def engage(self) -> bool:
        """Install the rule; False (and a log line) if nftables cannot be used here."""
        if self._table.active:
            return True
        try:
            self._table.install(ruleset(self._name, self._ifname, self._vip))
        except ArpGuardError as error:
            log.error("cannot stop ARP for %s during the drain: %s", self._vip, error)
            return False
        return True

    def release(self) -> None:
        self._table.remove()


class StrayForwarder:
    """On a new MASTER, while the old one drains: every segment of its connections goes on to it
    (which are its connections, and how: :mod:`carpd.engine.strays`)."""

    def __init__(self, ifname: str, vhid: int, vip: IPv4Address) -> None:
        self._ifname = ifname
        self._vip = vip
        self._name = table_name(ifname, vhid).replace("carpd_", "carpd_fwd_", 1)
        self._table = OwnedTable("ip", self._name)
        self._to: IPv4Address | None = None

    @property
    def forwarding_to(self) -> IPv4Address | None:
        return self._to if self._table.active else None

    def engage(self, to: IPv4Address, peer_mac: bytes | None = None) -> bool:
        """Pass the old MASTER ``to``'s segments on to it (``peer_mac``: its MAC, if known, as
        seen in its adverts; else the kernel's neighbour entry, resolved now if need be).
        Engaged again for the same ``to``, the rules and the flows they know stay; for another
        ``to`` they are replaced in one transaction (no segment meets no rule)."""
        if self.forwarding_to == to:
            return True
        try:
            mac = peer_mac or resolve_mac(to, self._ifname)
            if mac is None:
                log.warning("%s's MAC is unknown: forwarding to it without the loop guard", to)
            rules = strays.forward_ruleset(self._name, quoted_ifname(self._ifname), self._vip,
                                           to, mac, strays.open_connections(self._vip))
            self._table.install(rules)
        except ArpGuardError as error:
            log.error("cannot pass %s's connections on to it: %s", to, error)
            return False
        self._to = to
        return True

    def release(self) -> None:
        self._table.remove()
        self._to = None


RESOLVE_TIMEOUT = 0.3
DISCARD_PORT = 9


def resolve_mac(address: IPv4Address, ifname: str,
                timeout: float = RESOLVE_TIMEOUT) -> bytes | None:
    """``address``'s MAC from the kernel's neighbour table; if it has none, one datagram to its
    discard port makes the kernel ask (ARP), and the answer is awaited ``timeout`` s at most."""
    mac = strays.neighbour_mac(address, ifname)
    if mac is not None:
        return mac
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, os.fsencode(ifname))
            probe.sendto(b"", (str(address), DISCARD_PORT))
    except OSError as error:
        log.debug("cannot make the kernel resolve %s: %s", address, error)
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.005)
        mac = strays.neighbour_mac(address, ifname)
        if mac is not None:
            return mac
    return None
