"""No VIP outlives its engine, even one killed with SIGKILL.

At start the engine forks and execs ``python3 -m carpd.watchdog``, which holds the read end of a
pipe.  A clean exit writes ``clean`` into it and waits for the watchdog to end; any other end of
the engine (a crash, SIGKILL, the OOM killer) closes the pipe with nothing written, and the
watchdog then removes the VIP from the interface.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from ipaddress import IPv4Address

CLEAN = b"clean"
EXIT_WAIT = 5.0


class Watchdog:
    def __init__(self, ifname: str, vip: IPv4Address) -> None:
        read_fd, self._write_fd = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "carpd.watchdog", str(read_fd), ifname, str(vip)],
            pass_fds=(read_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(read_fd)

    def disarm(self) -> None:
        """The engine is exiting cleanly and has released the VIP itself."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, CLEAN)
            os.close(self._write_fd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(EXIT_WAIT)


def watch(read_fd: int, ifname: str, vip: IPv4Address) -> None:
    """Wait for the engine to end; release the VIP unless it said it ended cleanly."""
    said = b""
    while chunk := os.read(read_fd, 64):
        said += chunk
    if said != CLEAN:
        from carpd import netlink

        with contextlib.suppress(Exception):
            netlink.remove_address(ifname, vip)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                   signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)  # meant for the engine's process group
    watch(int(sys.argv[1]), sys.argv[2], IPv4Address(sys.argv[3]))


if __name__ == "__main__":
    main()
