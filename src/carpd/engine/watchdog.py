"""No VIP outlives its engine, even one killed with SIGKILL.

At start the engine forks and execs this file with ``python3 -S -I`` (no site packages, nothing
but the standard library's os, socket and struct: a few MB instead of a second engine's
pyroute2 and pydantic), which holds the read end of a pipe.  The engine tells it, a line each,
which addresses it may hold (``hold IFACE VIP``) and which it has let go (``drop IFACE VIP``):
one watchdog serves every group of the engine, and groups added or removed by a reload.  A
clean exit writes ``clean`` and waits for the watchdog to end; any other end of the engine (a
crash, SIGKILL, the OOM killer) closes the pipe without it, and the watchdog then removes every
address still held from its interface through :func:`carpd.engine.release.release` (the standard
library's netlink, as a stopping group and the ifupdown hook release theirs).
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

    from carpd.engine.release import release

    for ifname, vip in held:
        with contextlib.suppress(Exception):
            release(ifname, vip)


def main() -> None:
    # Run as a file with -S -I, the folder carpd is in is not on the path: put it there for
    # carpd.engine.release (and nothing else from that folder is imported).
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import _signal  # type: ignore[import-not-found]  # the C module: signal imports enum

    for signum in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT,
                   _signal.SIGUSR1, _signal.SIGUSR2):
        _signal.signal(signum, _signal.SIG_IGN)  # meant for the engine's process group
    watch(int(sys.argv[1]))


if __name__ == "__main__":
    main()
