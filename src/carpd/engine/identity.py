"""Which network namespace this process runs in: one engine per vhid *per namespace*.

ucarp runs happily as ``ip netns exec blue ucarp -i eth0 -v 1 ...`` and the same in ``red``:
each namespace has its own eth0.  ``ip netns exec`` gives the command its own network namespace
but the host's /run, so carpd's default run folder (control sockets, pidfiles, demotions) would
be shared, and the second engine would take the first for a duplicate.  In such a namespace the
default folders get a part of their own: ``/run/carpd/netns/NAME`` (NAME as in ``ip netns``).
Where /run is private to the namespace (a container, a test lab that mounts its own /run) the
folders stay as they are.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

RUN_DIR = Path("/run/carpd")
"""carpd's run folder: control sockets, pidfiles, demotions, the ifupdown hook's files (in a
namespace that shares the host's /run, :func:`namespace_folder` of it)."""
NETNS_DIR = Path("/run/netns")
"""Where ``ip netns add`` keeps its named namespaces (bind mounts of their ns/net)."""


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # not root, or no such process: take it as the host's
        return None
    return st.st_dev, st.st_ino


def own_namespace_name() -> str | None:
    """The name ``ip netns`` gave the network namespace this process runs in, when /run is
    the host's (``ip netns exec``); None in the host's namespace, in an unnamed one, or where
    /run is private (a container, a lab that mounts its own /run: its /run/netns is not the
    host's)."""
    ours = _inode("/proc/self/ns/net")
    if ours is None:
        return None
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except OSError:
        return None
    for name in names:
        if _inode(str(NETNS_DIR / name)) == ours:
            return name
    return None


def namespace_folder(base: Path) -> Path:
    """``base``, or ``base/netns/NAME`` in a namespace that shares the host's /run."""
    name = own_namespace_name()
    return base if name is None else base / "netns" / name


class GroupTaken(RuntimeError):
    """Another engine in this network namespace already runs the group."""


class GroupLock:
    """Held while this engine runs vhid ``vhid`` on ``ifname``: a second engine for the same
    group in the same network namespace is refused, whatever its state folder or socket.

    It is an abstract unix socket (``@carpd/IFACE/VHID``): abstract names are per network
    namespace, need no file, and the kernel frees them when the engine dies, even by SIGKILL.
    """

    def __init__(self, ifname: str, vhid: int) -> None:
        self.name = f"carpd/{ifname}/{vhid}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind("\0" + self.name)
        except OSError as error:
            self._sock.close()
            if error.errno == errno.EADDRINUSE:
                raise GroupTaken(f"vhid {vhid} on {ifname}") from None
            raise

    def release(self) -> None:
        self._sock.close()
