"""Which TCP segments for the VIP belong to the old MASTER, as nftables rules (pure text) and what
they start from: this host's own connections to the VIP, read from ``/proc/net/tcp``.

After a planned hand-over the old MASTER keeps the VIP and its connections; the LAN's ARP caches
now send their segments here.  A connection is *ours* if

1. we had a socket for it when forwarding began (``@ours``, filled from ``/proc/net/tcp``: also
   connections begun before conntrack ran here, e.g. this node's own ones from before an
   earlier hand-over of its own, A -> B -> A), or
2. it began here since: its opening SYN (conntrack: ``new``) puts it in ``@ours`` too, so that
   none of its segments is ever taken for the old MASTER's, not even one conntrack finds out
   of window; and ``ct state established,related`` for one older than ``@ours`` remembers.

Every other segment is the old MASTER's: a flow whose first segment here was not a SYN
(conntrack: ``new`` without SYN) is remembered in ``@theirs`` for its whole life (the set's
timeout is refreshed by each segment), so later segments go on too, whatever conntrack thinks
of them.  A FIN or RST conntrack cannot place (``invalid``: no entry, as for a connection idle
since the hand-over that now closes) goes on as well: the old MASTER's socket must see its end,
and an old MASTER without that connection ignores a RST and answers a FIN as our stack would.

Why a set and not the conntrack entry's mark: the segments passed on are dropped here, before
conntrack confirms an entry, so a mark set on it would be forgotten with the packet; delivering
them instead would make our stack answer them with a reset.

Passing on is ``dup to OLD device IFACE`` then ``drop``: the segment leaves unchanged but for the
TTL, decremented as a router does (and as a bound on any loop), towards the old MASTER's MAC.
No loops: a segment that comes from the old MASTER's MAC (``@peer``: one that it passed back to
us, being a forwarder itself after A -> B -> A, or routed to us once its drain is over, with
``ip_forward=1``) is never passed back; it is ours to answer.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

THEIRS_IDLE = "2h"
"""A flow of the old MASTER is forgotten after this long without a segment (a TCP keepalive's
default interval), one of ours this long after its SYN (conntrack still knows it then): nobody
drains that long, and a set of dead flows must not grow forever."""
SET_SIZE = 1 << 20
PROC_NET_TCP = Path("/proc/net/tcp")
_TCP_LISTEN = 0x0A


@dataclass(frozen=True)
class Flow:
    """A TCP connection to the VIP, as the set keys it: the client's side and the VIP's port."""

    client: IPv4Address
    client_port: int
    port: int

    def element(self) -> str:
        return f"{self.client} . {self.client_port} . {self.port}"


def _address(field: str) -> tuple[IPv4Address, int]:
    """``0100000A:1F90``: the address as the kernel holds it (network order) printed as a
    native integer, the port as a number."""
    address, port = field.split(":")
    return IPv4Address(int(address, 16).to_bytes(4, sys.byteorder)), int(port, 16)


_TCP_CLOSED = {0x06, 0x07, _TCP_LISTEN}
"""TIME_WAIT, CLOSE and LISTEN: not a connection that is still open."""
PROC_NET_TCP6 = Path("/proc/net/tcp6")
_V4_MAPPED = "0000000000000000" + ("FFFF0000" if sys.byteorder == "little" else "0000FFFF")
"""::ffff:0:0/96 as /proc/net/tcp6 prints it: 32-bit words, each a native integer."""


def parse_open_connections(text: str, vip: IPv4Address) -> set[Flow]:
    """The connections to ``vip`` still open (not TIME_WAIT or closed) in ``/proc/net/tcp``
    or ``/proc/net/tcp6`` text (a dual-stack socket's ``::ffff:VIP``)."""
    flows: set[Flow] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or int(fields[3], 16) in _TCP_CLOSED:
            continue
        local, remote = (_v4_field(f) for f in fields[1:3])
        if local is None or remote is None or local[0] != vip:
            continue
        flows.add(Flow(remote[0], remote[1], local[1]))
    return flows


def _v4_field(field: str) -> tuple[IPv4Address, int] | None:
    address, _, port = field.partition(":")
    if len(address) == 32:  # tcp6: only an IPv4-mapped address is ours
        if address[:24].upper() != _V4_MAPPED:
            return None
        address = address[24:]
    return _address(f"{address}:{port}")


def open_connections(vip: IPv4Address, paths: tuple[Path, ...] = (PROC_NET_TCP, PROC_NET_TCP6),
                     ) -> set[Flow]:
    """This host's TCP connections to ``vip`` open now (this network namespace)."""
    flows: set[Flow] = set()
    for path in paths:
        try:
            flows |= parse_open_connections(path.read_text(), vip)
        except OSError:
            continue
    return flows


def _elements(flows: Iterable[Flow]) -> str:
    listed = ", ".join(sorted(flow.element() for flow in flows))
    return f" elements = {{ {listed} }};" if listed else ""


def forward_ruleset(table: str, ifname: str, vip: IPv4Address, to: IPv4Address,
                    peer_mac: bytes | None, ours: Iterable[Flow]) -> str:
    """The ``table ip TABLE`` that passes the old MASTER's segments for ``vip`` arriving on
    ``ifname`` (an nftables string, already quoted) on to ``to``."""
    key = "type ipv4_addr . inet_service . inet_service;"
    flow = "ip saddr . tcp sport . tcp dport"
    peer = f" elements = {{ {mac_text(peer_mac)} }};" if peer_mac else ""
    return (
        f"table ip {table} {{ flags owner; "
        f"set ours {{ {key} flags dynamic, timeout; size {SET_SIZE};{_elements(ours)} }}; "
        f"set theirs {{ {key} flags dynamic, timeout; timeout {THEIRS_IDLE}; "
        f"size {SET_SIZE}; }}; "
        f"set peer {{ type ether_addr;{peer} }}; "
        f"chain prerouting {{ type filter hook prerouting priority -150; policy accept; "
        f"iifname {ifname} ip daddr {vip} meta l4proto tcp jump vip; }}; "
        f"chain vip {{ "
        f"ether saddr @peer return; "
        f"{flow} @ours return; "
        f"tcp flags & (syn | ack) == syn ct state new "
        f"add @ours {{ {flow} timeout {THEIRS_IDLE} }} return; "
        f"ct state established,related return; "
        f"{flow} @theirs update @theirs {{ {flow} }} goto pass; "
        f"ct state new add @theirs {{ {flow} }} goto pass; "
        f"ct state invalid add @theirs {{ {flow} }} goto pass; "
        f"tcp flags & (fin | rst) != 0 goto pass; }}; "
        f"chain pass {{ dup to {to} device {ifname}; drop; }}; }}"
    )


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def neighbour_mac(address: IPv4Address, ifname: str,
                  path: Path = Path("/proc/net/arp")) -> bytes | None:
    """The kernel's resolved MAC for ``address`` on ``ifname``, if it has one."""
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # IP address, HW type, flags (0x2: complete), HW address, mask, device
        if len(fields) >= 6 and fields[0] == str(address) and fields[5] == ifname \
                and int(fields[2], 16) & 0x2:
            return bytes.fromhex(fields[3].replace(":", ""))
    return None
