"""The control side of an engine for carpctl's unit tests: a real
:class:`carpd.engine.control.ControlServer` on a unix socket, served from a thread until closed.

Its fixtures (``state_dir``, ``engines``) are in conftest.py."""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carpd.engine import control

Answer = Callable[[dict[str, Any]], dict[str, Any]]


class Served:
    """A control socket at ``path`` whose every request ``answer`` answers."""

    def __init__(self, path: Path, answer: Answer) -> None:
        self.server = control.ControlServer(path, answer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.server, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    if key.fileobj is self.server:
                        self._accept(selector)
                    elif isinstance(key.fileobj, socket.socket) and self.server.serve(
                            key.fileobj):
                        selector.unregister(key.fileobj)
                        key.fileobj.close()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        conn, evicted = self.server.accept()
        for gone in evicted:
            selector.unregister(gone)
            gone.close()
        if conn is not None:
            selector.register(conn, selectors.EVENT_READ)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.close()
