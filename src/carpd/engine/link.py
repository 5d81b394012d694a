"""Raw sockets on one interface: adverts in and out, gratuitous ARP out, the group joined.

Everything goes through one AF_PACKET socket bound to the interface, so carpd picks the Ethernet
source (the NIC's MAC, or ucarp's ``00:00:5e:00:00:<vhid>``) and destination (the group's MAC, or
broadcast with ``-M``) exactly like ucarp's hand-built frames.

A classic BPF filter in the kernel drops, before they wake the engine, the frames that the receive
checks would reject without looking at the HMAC: anything but an IPv4 packet of protocol 112
with TTL 255 sent to the group's (or the broadcast) MAC, the group as IP destination, CARP version
2 and one of our vhids; and the frames we sent ourselves.  A flood of such frames then costs the
kernel a few instructions each and Python nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
from collections.abc import Collection
from ipaddress import IPv4Address

from carpd.core import wire

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
IP_ADD_MEMBERSHIP = 35
RECEIVE_BATCH = 64
"""Frames read per call of :meth:`Link.receive`: one loop turn never reads for longer, so a
flood of frames that pass the filter cannot keep the timers from firing."""
MAX_FILTER_VHIDS = 64
"""With more vhids than this the filter does not look at the vhid (the program stays short)."""

# Classic BPF (linux/filter.h): one instruction is (code, jt, jf, k).
BPF_LD_W_ABS, BPF_LD_H_ABS, BPF_LD_B_ABS = 0x20, 0x28, 0x30
BPF_LD_B_IND = 0x50
BPF_LDX_B_MSH = 0xB1
BPF_ALU_AND_K = 0x54
BPF_JMP_JEQ_K = 0x15
BPF_JMP_JSET_K = 0x45
BPF_RET_K = 0x06
SKF_AD_PKTTYPE = 0xFFFFF000 + 4
"""``ld #pkttype``: the ancillary load of the packet type (PACKET_HOST, ..., PACKET_OUTGOING)."""
ACCEPT_BYTES = 0xFFFF
Insn = tuple[int, int, int, int]

_ETH = 14  # the IPv4 header starts here; the CARP header at _ETH + 4 * IHL
_ETHERTYPE_IP = wire.ETH_P_IP.to_bytes(2, "big")


def carp_filter(group: IPv4Address | None = None,
                vhids: Collection[int] | None = None) -> list[Insn]:
    """The filter program: accept (the whole frame) only what the receive checks might accept.

    ``group`` None leaves the IP destination unchecked, ``vhids`` None the vhid.
    """
    checks: list[tuple[Insn, ...]] = [
        ((BPF_LD_W_ABS, 0, 0, SKF_AD_PKTTYPE), _unless(PACKET_OUTGOING)),
        ((BPF_LD_H_ABS, 0, 0, 12), _only(wire.ETH_P_IP)),
        ((BPF_LD_B_ABS, 0, 0, _ETH), (BPF_ALU_AND_K, 0, 0, 0xF0), _only(0x40)),
        ((BPF_LD_B_ABS, 0, 0, _ETH + 9), _only(wire.CARP_PROTO)),
        ((BPF_LD_B_ABS, 0, 0, _ETH + 8), _only(wire.CARP_TTL)),
    ]
    if group is not None:
        checks.append(((BPF_LD_W_ABS, 0, 0, _ETH + 16), _only(int(group))))
    checks.append(((BPF_LDX_B_MSH, 0, 0, _ETH), (BPF_LD_B_IND, 0, 0, _ETH),
                   (BPF_ALU_AND_K, 0, 0, 0xF0), _only(wire.CARP_VERSION << 4)))
    program = _destination_mac_check(group)
    for check in checks:
        program += check
    if vhids is not None and len(vhids) <= MAX_FILTER_VHIDS:
        program += _vhid_check(sorted(set(vhids)))
    program.append((BPF_RET_K, 0, 0, ACCEPT_BYTES))
    return _resolve_drops(program)


_DROP = -1  # a jump target resolved by _resolve_drops: the final ``ret #0``


def _only(value: int) -> Insn:
    return (BPF_JMP_JEQ_K, 0, _DROP, value)


def _unless(value: int) -> Insn:
    return (BPF_JMP_JEQ_K, _DROP, 0, value)


def _destination_mac_check(group: IPv4Address | None) -> list[Insn]:
    """Ethernet destination: broadcast or the group's MAC; any multicast one without a group."""
    if group is None:
        return [(BPF_LD_B_ABS, 0, 0, 0), (BPF_JMP_JSET_K, 0, _DROP, 0x01)]  # the I/G bit
    mac = wire.multicast_mac(group)
    return [
        (BPF_LD_H_ABS, 0, 0, 0),
        (BPF_JMP_JEQ_K, 0, 2, 0xFFFF),
        (BPF_LD_W_ABS, 0, 0, 2),
        (BPF_JMP_JEQ_K, 3, _DROP, 0xFFFFFFFF),  # broadcast: on to the next check
        _only(int.from_bytes(mac[:2], "big")),
        (BPF_LD_W_ABS, 0, 0, 2),
        _only(int.from_bytes(mac[2:], "big")),
    ]


def _vhid_check(vhids: list[int]) -> list[Insn]:
    """``ldb [x + 15]`` (the CARP header's second byte), then one ``jeq`` per vhid: a match
    jumps to the accepting ``ret`` just after the chain, the last miss to the drop."""
    program: list[Insn] = [(BPF_LD_B_IND, 0, 0, _ETH + 1)]
    for i, vhid in enumerate(vhids):
        last = i == len(vhids) - 1
        program.append((BPF_JMP_JEQ_K, len(vhids) - 1 - i, _DROP if last else 0, vhid))
    return program


def _resolve_drops(program: list[Insn]) -> list[Insn]:
    """Point every ``_DROP`` jump at a ``ret #0`` appended at the end."""
    drop = len(program)
    resolved = []
    for index, (code, jt, jf, k) in enumerate(program):
        distance = drop - index - 1
        resolved.append((code, distance if jt == _DROP else jt, distance if jf == _DROP else jf, k))
    resolved.append((BPF_RET_K, 0, 0, 0))
    if any(max(jt, jf) > 255 for _code, jt, jf, _k in resolved):
        raise ValueError("filter program too long for 8-bit jumps")
    return resolved


def attach_filter(sock: socket.socket, program: list[Insn]) -> None:
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class Link:
    """The raw side of one interface for one virtual host.

    ``group`` is the IP destination adverts must carry (default: ``join_group``; None leaves it
    unchecked) and ``vhids`` the vhids let through (None: any); frames failing either never
    leave the kernel.
    """

    def __init__(self, ifname: str, join_group: IPv4Address | None, *,
                 group: IPv4Address | None = None, vhids: Collection[int] | None = None) -> None:
        self.ifname = ifname
        self.ifindex = socket.if_nametoindex(ifname)
        self._group = join_group if group is None else group
        # Protocol 0 until bound: no frame is queued before the filter is in place.
        self._packets = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            attach_filter(self._packets, carp_filter(self._group, vhids))
            self._packets.bind((ifname, wire.ETH_P_IP))
            self._packets.setblocking(False)
            self._membership = self._join(join_group) if join_group is not None else None
        except OSError:
            self._packets.close()
            raise

    def _join(self, group: IPv4Address) -> socket.socket:
        """An unbound UDP socket holding the group membership: the NIC then accepts the group's
        MAC and IGMP is spoken for us; being unbound, it never queues any data."""
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        mreqn = struct.pack("4s4si", group.packed, bytes(4), self.ifindex)
        holder.setsockopt(socket.IPPROTO_IP, IP_ADD_MEMBERSHIP, mreqn)
        return holder

    def set_vhids(self, vhids: Collection[int] | None) -> None:
        """Let through the frames of ``vhids`` (None: any) from now on.  The socket's filter is
        replaced at once: no frame passes unfiltered meanwhile."""
        attach_filter(self._packets, carp_filter(self._group, vhids))

    def fileno(self) -> int:
        return self._packets.fileno()

    def receive(self, limit: int = RECEIVE_BATCH) -> list[bytes]:
        """The frames waiting, at most ``limit`` of them, other than the ones we sent (the
        socket stays readable while more wait)."""
        frames: list[bytes] = []
        for _ in range(limit):
            try:
                frame, address = self._packets.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            if address[2] != PACKET_OUTGOING:
                frames.append(frame)
        return frames

    def send(self, frame: bytes) -> None:
        # carrier gone or buffer full: CARP tolerates a lost advert, the next one follows
        with contextlib.suppress(OSError):
            if frame[12:14] == _ETHERTYPE_IP:
                # the socket is bound to the interface and IPv4: one syscall (sendto with a
                # name looks the interface up by ioctl first, at every advert)
                self._packets.send(frame)
            else:
                self._packets.sendto(frame, (self.ifname, int.from_bytes(frame[12:14], "big")))

    def close(self) -> None:
        self._packets.close()
        if self._membership is not None:
            self._membership.close()


def random_ident() -> int:
    return int.from_bytes(os.urandom(2), "big")


def random_counter() -> int:
    return int.from_bytes(os.urandom(8), "big")
