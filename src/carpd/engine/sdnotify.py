"""systemd's notification protocol (sd_notify(3)), without libsystemd: one datagram to the
socket named by ``$NOTIFY_SOCKET``.  Outside a notify-aware unit it does nothing."""

from __future__ import annotations

import os
import socket


def notify(*fields: str) -> bool:
    """Send ``KEY=value`` fields; True if a service manager was told."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or not fields:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto("\n".join(fields).encode(), address)
    except OSError:
        return False
    return True
