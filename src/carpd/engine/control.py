"""The control socket: ``carpctl`` asks for status, demotion and promotion over it.

A unix stream socket (mode 0600, see :func:`socket_path`): the client sends one JSON line such
as ``{"cmd": "status"}`` (``"vhid": N`` addresses one group) and gets one JSON line back.
Served from the protocol loop without ever blocking it: connections are non-blocking and
bounded in size, nesting, number and time (a client idle for :data:`IDLE_TIMEOUT` is closed;
when all slots are taken the oldest client makes room), and whatever a client sends, the
answer is at worst an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_REQUEST = 4096
MAX_CLIENTS = 16
MAX_NESTING = 16
BACKLOG = 64
ACCEPTS_PER_TURN = 64
IDLE_TIMEOUT = 2.0

Handler = Callable[[dict[str, Any]], dict[str, Any]]

LATER: dict[str, Any] = {"ok": False, "error": "answered later"}
"""What a handler returns (this very object) for a request it answers later, with
:meth:`ControlServer.answer_waiting` (a reload, while its file is validated)."""


def socket_path(state_dir: Path, ifname: str, vhid: int | None = None) -> Path:
    """The engine's socket: ``IFACE.sock`` for an engine of the interface (one run with
    ``--config``, which may hold several groups and be reloaded); ``IFACE.VHID.sock`` for an
    engine of one group given on the command line alone (ucarp's way: several of them may run
    on one interface, one per vhid)."""
    return state_dir / (f"{ifname}.sock" if vhid is None else f"{ifname}.{vhid}.sock")


@dataclass
class _Client:
    conn: socket.socket
    since: float
    buffered: bytes = b""


class ControlServer:
    def __init__(self, path: Path, handler: Handler,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._handler = handler
        self._clock = clock
        self._clients: dict[int, _Client] = {}
        self.waiting: list[socket.socket] = []
        """Clients whose request is answered later: no longer read, not yet answered."""
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._listener.bind(str(path))
        finally:
            os.umask(old_umask)
        self._listener.listen(BACKLOG)
        self._listener.setblocking(False)

    def fileno(self) -> int:
        return self._listener.fileno()

    def accept(self) -> tuple[socket.socket | None, list[socket.socket]]:
        """A new client, and the clients pushed out to make room for it (the caller stops
        watching and closes those)."""
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return None, []
        evicted = []
        if len(self._clients) >= MAX_CLIENTS:
            oldest = min(self._clients.values(), key=lambda c: c.since)
            evicted.append(self._forget(oldest.conn))
        conn.setblocking(False)
        self._clients[conn.fileno()] = _Client(conn, self._clock())
        return conn, evicted

    def next_deadline(self) -> float | None:
        """When the longest-waiting client times out."""
        return min((c.since + IDLE_TIMEOUT for c in self._clients.values()), default=None)

    def expire(self) -> list[socket.socket]:
        """Clients idle for longer than :data:`IDLE_TIMEOUT`, forgotten (the caller stops
        watching and closes them)."""
        now = self._clock()
        return [self._forget(c.conn) for c in list(self._clients.values())
                if now >= c.since + IDLE_TIMEOUT]

    def _forget(self, conn: socket.socket) -> socket.socket:
        del self._clients[conn.fileno()]
        return conn

    def serve(self, conn: socket.socket) -> bool:
        """Read from a client and answer it once a line is in; True when it is done (answered
        or gone): the caller stops watching it and closes it."""
        client = self._clients[conn.fileno()]
        try:
            chunk = conn.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            chunk = b""
        client.buffered += chunk
        if chunk and b"\n" not in client.buffered and len(client.buffered) < MAX_REQUEST:
            return False
        if chunk:
            self._answer(conn, client.buffered.split(b"\n", 1)[0])
        self._forget(conn)
        return True

    def _answer(self, conn: socket.socket, line: bytes) -> None:
        reply = self._reply(line)
        if reply is LATER:
            self.waiting.append(conn)
            return
        with contextlib.suppress(OSError):
            conn.send(json.dumps(reply).encode() + b"\n")

    def answer_waiting(self, reply: dict[str, Any]) -> None:
        """Answer (and close) every client :data:`LATER` kept waiting."""
        waiting, self.waiting = self.waiting, []
        for conn in waiting:
            with contextlib.suppress(OSError):
                conn.send(json.dumps(reply).encode() + b"\n")
            conn.close()

    def _reply(self, line: bytes) -> dict[str, Any]:
        try:
            request = parse_request(line)
        except ValueError as error:
            return {"ok": False, "error": f"bad request: {error}"}
        try:
            return self._handler(request)
        except Exception as error:  # a client must never end the engine
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}

    def close(self) -> None:
        for client in self._clients.values():
            client.conn.close()
        self._clients.clear()
        for conn in self.waiting:
            conn.close()
        self.waiting.clear()
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line as a JSON object, nested at most :data:`MAX_NESTING` deep."""
    depth = deepest = 0
    for byte in line:  # brackets inside strings count too: a request needs no such strings
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    if deepest > MAX_NESTING:
        raise ValueError(f"nested {deepest} deep: at most {MAX_NESTING} allowed")
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, RecursionError) as error:
        raise ValueError(str(error)) from None
    if not isinstance(request, dict):
        raise ValueError("not a JSON object")
    return request


def request(path: Path, cmd: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Client side: send one request, return the reply (raises OSError if no engine answers)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(cmd).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise ValueError("engine sent a reply that is not an object")
    return reply
