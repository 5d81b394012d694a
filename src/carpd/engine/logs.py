"""Logging: syslog with the configured facility (or none), stderr in the foreground.

Rejected packets are logged at a rate limit: the first of each reason at once, then at most one
line per reason every :data:`RATE_LIMIT_SECONDS`, saying how many were dropped in between.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
from collections.abc import Callable

RATE_LIMIT_SECONDS = 10.0


def setup(facility: str, foreground: bool, debug: bool, tag: str) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    to_syslog = facility != "none" and os.path.exists("/dev/log")
    # Under systemd stderr goes to the journal, which syslog reaches too: say it once.
    if foreground and not (to_syslog and os.environ.get("JOURNAL_STREAM")):
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter("%(asctime)s " + tag + ": %(message)s"))
        root.addHandler(stderr)
    if to_syslog:
        syslog = syslog_handler("/dev/log", facility)
        # journald takes what precedes "[PID]:" as the identifier: "carpd" (`journalctl -t
        # carpd`, as the unit's SyslogIdentifier=); the rest of the tag goes into the message.
        ident, _, group = tag.partition("[")
        where = f"{group.removesuffix(']')}: ".replace("%", "%%") if group else ""
        syslog.setFormatter(logging.Formatter(f"{ident}[{os.getpid()}]: {where}%(message)s"))
        root.addHandler(syslog)


class NonBlockingSysLogHandler(logging.handlers.SysLogHandler):
    """Syslog over a non-blocking socket: when the syslog daemon stalls and its queue is full,
    a line is dropped (and counted) instead of stalling the protocol loop."""

    dropped = 0

    def _connect_unixsocket(self, address: str) -> None:
        # SysLogHandler (re)connects here, also when a send fails: keep every socket non-blocking.
        super()._connect_unixsocket(address)  # type: ignore[misc]
        sock: socket.socket = self.socket  # type: ignore[attr-defined]
        sock.setblocking(False)

    def handleError(self, record: logging.LogRecord) -> None:
        self.dropped += 1


def syslog_handler(address: str, facility: str) -> NonBlockingSysLogHandler:
    code = logging.handlers.SysLogHandler.facility_names[facility]
    return NonBlockingSysLogHandler(address, facility=code)


class RateLimiter:
    """At most one message per key every ``period`` seconds, counting what it held back."""

    def __init__(self, clock: Callable[[], float], period: float = RATE_LIMIT_SECONDS) -> None:
        self._clock = clock
        self._period = period
        self._last: dict[object, float] = {}
        self._held: dict[object, int] = {}

    def allow(self, key: object) -> int | None:
        """None to stay quiet; else how many were held back since the last message."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._period:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
