"""Logging never stalls the protocol loop, whatever the syslog daemon does."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

from carpd.engine import logs


def test_a_stalled_syslog_socket_drops_lines_instead_of_blocking(tmp_path: Path) -> None:
    address = str(tmp_path / "log")
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # bound, never read
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.bind(address)
    handler = logs.syslog_handler(address, "daemon")
    logger = logging.Logger("carpd-test")
    logger.addHandler(handler)
    try:
        writer = threading.Thread(target=lambda: [logger.warning("line %d", i)
                                                  for i in range(5000)], daemon=True)
        writer.start()
        writer.join(timeout=5)
        assert not writer.is_alive(), "logging blocked on a full syslog socket"
        assert handler.dropped > 0
    finally:
        handler.close()
        stalled.close()
