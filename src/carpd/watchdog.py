"""No VIP outlives its engine, even one killed with SIGKILL.

At start the engine forks a small watchdog that holds the read end of a pipe.  A clean exit
writes ``clean`` into it; any other end of the engine (a crash, SIGKILL, the OOM killer) closes it
with nothing written, and the watchdog then removes the VIP from the interface.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from ipaddress import IPv4Address

from carpd import netlink

log = logging.getLogger("carpd")

CLEAN = b"clean"


class Watchdog:
    def __init__(self, ifname: str, vip: IPv4Address) -> None:
        read_fd, self._write_fd = os.pipe()
        if os.fork() == 0:  # pragma: no cover - the child never returns
            os.close(self._write_fd)
            _watch(read_fd, ifname, vip)
        os.close(read_fd)

    def disarm(self) -> None:
        """The engine is exiting cleanly: it has released the VIP itself."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, CLEAN)
            os.close(self._write_fd)


def _watch(read_fd: int, ifname: str, vip: IPv4Address) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                   signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)  # signals for the engine's process group
    _close_all_but(read_fd)
    said = b""
    while chunk := os.read(read_fd, 64):
        said += chunk
    if said != CLEAN:
        with contextlib.suppress(Exception):
            if netlink.remove_address(ifname, vip):
                log.error("the engine died: removed %s from %s", vip, ifname)
    os._exit(0)


def _close_all_but(keep: int) -> None:
    """Let go of the engine's sockets (control, raw, group membership) and files."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)
