"""The control socket: ``carpctl`` asks for status, demotion and promotion over it.

A unix stream socket ``{state_dir}/{iface}.{vhid}.sock`` (mode 0600): the client sends one JSON
line such as ``{"cmd": "status"}`` and gets one JSON line back.  Served from the protocol loop
without ever blocking it: connections are non-blocking and bounded in size and number.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_REQUEST = 4096
MAX_CLIENTS = 16

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def socket_path(state_dir: Path, ifname: str, vhid: int) -> Path:
    return state_dir / f"{ifname}.{vhid}.sock"


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._clients: dict[int, tuple[socket.socket, bytes]] = {}
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._listener.bind(str(path))
        finally:
            os.umask(old_umask)
        self._listener.listen(MAX_CLIENTS)
        self._listener.setblocking(False)

    def fileno(self) -> int:
        return self._listener.fileno()

    def accept(self) -> socket.socket | None:
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return None
        if len(self._clients) >= MAX_CLIENTS:
            conn.close()
            return None
        conn.setblocking(False)
        self._clients[conn.fileno()] = (conn, b"")
        return conn

    def readable(self, conn: socket.socket) -> bool:
        """Read from a client; True when it is done (answered or gone) and was closed."""
        fd = conn.fileno()
        _, buffered = self._clients[fd]
        try:
            chunk = conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return False
        except OSError:
            chunk = b""
        buffered += chunk
        if chunk and b"\n" not in buffered and len(buffered) < MAX_REQUEST:
            self._clients[fd] = (conn, buffered)
            return False
        if chunk:
            self._answer(conn, buffered.split(b"\n", 1)[0])
        del self._clients[fd]
        conn.close()
        return True

    def _answer(self, conn: socket.socket, line: bytes) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
            reply = self._handler(request)
        except ValueError as error:
            reply = {"ok": False, "error": f"bad request: {error}"}
        with contextlib.suppress(OSError):
            conn.send(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        for conn, _ in self._clients.values():
            conn.close()
        self._clients.clear()
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


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
