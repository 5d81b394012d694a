"""No VIP outlives its engine, even one killed with SIGKILL.

At start the engine forks and execs this file with ``python3 -S -I`` (no site packages, nothing
but the standard library's os, socket and struct: a few MB instead of a second engine's
pyroute2 and pydantic), which holds the read end of a pipe.  The engine tells it, a line each,
which addresses it may hold (``hold IFACE VIP``) and which it has let go (``drop IFACE VIP``):
one watchdog serves every group of the engine, and groups added or removed by a reload.  A
clean exit writes ``clean`` and waits for the watchdog to end; any other end of the engine (a
crash, SIGKILL, the OOM killer) closes the pipe without it, and the watchdog then removes every
address still held from its interface, with an ``RTM_DELADDR`` netlink request of its own.
"""

from __future__ import annotations

import os
import sys

# The watchdog process imports nothing else until the engine is gone (typing, enum, ipaddress,
# contextlib and socket would double its ~3 MB); the engine's side imports what it uses.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from ipaddress import IPv4Address

    Held = tuple[str, IPv4Address]

CLEAN = b"clean"
EXIT_WAIT = 5.0


class Watchdog:
    def __init__(self, held: Iterable[Held] = ()) -> None:
        import subprocess

        read_fd, self._write_fd = os.pipe()
        self._process: subprocess.Popen[bytes] = subprocess.Popen(
            [sys.executable, "-S", "-I", os.path.abspath(__file__), str(read_fd)],
            pass_fds=(read_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(read_fd)
        for ifname, vip in held:
            self.hold(ifname, vip)

    def hold(self, ifname: str, vip: IPv4Address) -> None:
        """``vip`` on ``ifname`` goes if the engine dies."""
        self._say(f"hold {ifname} {vip}\n".encode())

    def drop(self, ifname: str, vip: IPv4Address) -> None:
        """A group was removed and has released ``vip`` itself."""
        self._say(f"drop {ifname} {vip}\n".encode())

    def _say(self, line: bytes) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            os.write(self._write_fd, line)

    def disarm(self) -> None:
        """The engine is exiting cleanly and has released the VIPs itself."""
        import contextlib
        import subprocess

        with contextlib.suppress(OSError):
            os.write(self._write_fd, CLEAN)
            os.close(self._write_fd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(EXIT_WAIT)


def held_at_end(said: bytes) -> list[Held]:
    """What the engine held when its pipe closed, from what it said (nothing after ``clean``)."""
    from ipaddress import IPv4Address

    held: dict[Held, None] = {}
    for line in said.split(b"\n"):
        words = line.decode(errors="replace").split()
        if words == [CLEAN.decode()]:
            held.clear()
        elif len(words) == 3 and words[0] in ("hold", "drop"):
            try:
                key = (words[1], IPv4Address(words[2]))
            except ValueError:
                continue
            if words[0] == "hold":
                held[key] = None
            else:
                held.pop(key, None)
    return list(held)


def watch(read_fd: int) -> None:
    """Wait for the engine to end; release what it held unless it said it ended cleanly."""
    said = b""
    while chunk := os.read(read_fd, 65536):
        said += chunk
    if said.endswith(CLEAN):
        return
    held = held_at_end(said)
    if not held:
        return
    import contextlib

    for ifname, vip in held:
        with contextlib.suppress(Exception):
            remove_address(ifname, vip)


NETLINK_ROUTE = 0
RTM_DELADDR = 21
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
IFA_LOCAL = 2
MAX_COPIES = 8
"""Deletions tried per address (one per copy with another prefix length; the last fails)."""


def remove_address(ifname: str, vip: IPv4Address) -> int:
    """Delete ``vip`` from ``ifname``, whatever its prefix length; how many were deleted.

    Only ``IFA_LOCAL`` is given, so the kernel matches the address alone (not the prefix)."""
    import socket

    index = socket.if_nametoindex(ifname)
    removed = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        for seq in range(1, MAX_COPIES + 1):
            sock.send(_delete_request(seq, index, vip))
            if _error_of(sock.recv(65536)) != 0:
                break
            removed += 1
    return removed


def _delete_request(seq: int, index: int, vip: IPv4Address) -> bytes:
    import socket
    import struct

    body = struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, index)
    body += struct.pack("=HH", 8, IFA_LOCAL) + vip.packed
    header = struct.pack("=IHHII", 16 + len(body), RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
    return header + body


def _error_of(reply: bytes) -> int:
    """The (negative) errno of a netlink acknowledgement, 0 for success."""
    import struct

    _length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", reply)
    if kind != NLMSG_ERROR:
        return -1
    return int(struct.unpack_from("=i", reply, 16)[0])


def main() -> None:
    import _signal  # type: ignore[import-not-found]  # the C module: signal imports enum

    for signum in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT,
                   _signal.SIGUSR1, _signal.SIGUSR2):
        _signal.signal(signum, _signal.SIG_IGN)  # meant for the engine's process group
    watch(int(sys.argv[1]))


if __name__ == "__main__":
    main()
