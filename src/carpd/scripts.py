"""Up and down scripts, run off the protocol loop: in order, one at a time, with a timeout.

ucarp's contract: ``SCRIPT IFACE VIP [XPARAM]``, executed directly (no shell).  A worker thread
runs them so that adverts never wait for a script; the loop learns that one finished through a
pipe it watches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from carpd.election import Script

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finished:
    script: Script
    returncode: int | None
    """None when the script was killed for running past its timeout."""


class ScriptRunner:
    def __init__(self, argv: dict[Script, list[str] | None], timeout: float) -> None:
        self._argv = argv
        self._timeout = timeout
        self._jobs: queue.Queue[Script | None] = queue.Queue()
        self._done: queue.Queue[Finished] = queue.Queue()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._thread = threading.Thread(target=self._work, name="scripts", daemon=True)

    def start(self) -> None:
        """Start the worker (after any fork: threads do not survive one)."""
        self._thread.start()

    def fileno(self) -> int:
        """Readable when a script has finished."""
        return self._wake_read

    def submit(self, script: Script) -> None:
        self._jobs.put(script)

    def finished(self) -> list[Finished]:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_read, 4096)
        results = []
        while not self._done.empty():
            results.append(self._done.get_nowait())
        return results

    def drain(self, timeout: float) -> bool:
        """Stop after the queued scripts; True if they all ran within ``timeout``."""
        if not self._thread.is_alive():
            return self._jobs.empty()
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        while (script := self._jobs.get()) is not None:
            argv = self._argv.get(script)
            returncode = self._run(argv) if argv else 0
            self._done.put(Finished(script, returncode))
            os.write(self._wake_write, b".")

    def _run(self, argv: list[str]) -> int | None:
        log.info("running %s", " ".join(argv))
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            log.error("cannot run %s: %s", argv[0], error.strerror)
            return 127
        try:
            output, _ = proc.communicate(timeout=self._timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            self._log_output(argv[0], output)
            log.error("%s killed after %.0f s", argv[0], self._timeout)
            return None
        self._log_output(argv[0], output)
        if proc.returncode != 0:
            log.warning("%s exited with status %d", argv[0], proc.returncode)
        return proc.returncode

    @staticmethod
    def _log_output(name: str, output: bytes) -> None:
        for line in output.decode(errors="replace").splitlines():
            log.info("%s: %s", Path(name).name, line)
