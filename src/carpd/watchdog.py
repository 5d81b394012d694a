"""No VIP outlives its engine, even one killed with SIGKILL.

At start the engine forks and execs ``python3 -m carpd.watchdog``, which holds the read end of a
pipe.  The engine tells it, a line each, which addresses it may hold (``hold IFACE VIP``) and
which it has let go (``drop IFACE VIP``): one watchdog serves every group of the engine, and
groups added or removed by a reload.  A clean exit writes ``clean`` and waits for the watchdog
to end; any other end of the engine (a crash, SIGKILL, the OOM killer) closes the pipe without
it, and the watchdog then removes every address still held from its interface.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from ipaddress import IPv4Address

CLEAN = b"clean"
EXIT_WAIT = 5.0

Held = tuple[str, IPv4Address]


class Watchdog:
    def __init__(self, held: Iterable[Held] = ()) -> None:
        read_fd, self._write_fd = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "carpd.watchdog", str(read_fd)],
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
        with contextlib.suppress(OSError):
            os.write(self._write_fd, line)

    def disarm(self) -> None:
        """The engine is exiting cleanly and has released the VIPs itself."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, CLEAN)
            os.close(self._write_fd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(EXIT_WAIT)


def held_at_end(said: bytes) -> list[Held]:
    """What the engine held when its pipe closed, from what it said (nothing after ``clean``)."""
    held: dict[Held, None] = {}
    for line in said.split(b"\n"):
        words = line.decode(errors="replace").split()
        if words == [CLEAN.decode()]:
            held.clear()
        elif len(words) == 3 and words[0] in ("hold", "drop"):
            with contextlib.suppress(ValueError):
                key = (words[1], IPv4Address(words[2]))
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
    from carpd import netlink

    for ifname, vip in held:
        with contextlib.suppress(Exception):
            netlink.remove_address(ifname, vip)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                   signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)  # meant for the engine's process group
    watch(int(sys.argv[1]))


if __name__ == "__main__":
    main()
