"""Up and down scripts, run off the protocol loop: in order, one at a time, with a timeout.

ucarp's contract: ``SCRIPT IFACE VIP [XPARAM]``, executed directly (no shell).  A worker thread
runs them so that adverts never wait for a script; the loop learns that one finished through a
pipe it watches.

The queue is bounded: while a script runs, at most one run waits, the latest one asked for.
A flapping election asking for up, down, up, ... therefore costs at most two more runs, and the
last script run always matches the latest state.  Every request still gets one
:class:`Finished`, in order: a run made unnecessary by a later request is reported as skipped
when the run standing in for it ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
    """None when the script was killed for running past its timeout, or skipped."""
    skipped: bool = False
    """A later request made this run unnecessary: it never started."""


class ScriptRunner:
    def __init__(self, argv: dict[Script, list[str] | None], timeout: float) -> None:
        self._argv = argv
        self._timeout = timeout
        self._lock = threading.Condition()
        self._running: Script | None = None
        self._pending: Script | None = None
        # Requests a later one made unnecessary, kept to be reported in order: those that came
        # before the waiting run (reported when it ends, just before it), before the running
        # one and after the running one.
        self._skipped_before_pending: list[Script] = []
        self._skipped_before_running: list[Script] = []
        self._skipped_after_running: list[Script] = []
        self._stopping = False
        self._done: list[Finished] = []
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
        """Ask for ``script`` to run after the current one; it replaces any run still waiting,
        and is dropped if that same script is running now (the state it leads to is the one
        being reached)."""
        with self._lock:
            if self._pending is not None:
                self._skipped_before_pending.append(self._pending)
                self._pending = None
            if script is self._running:
                self._skipped_after_running += [*self._skipped_before_pending, script]
                self._skipped_before_pending.clear()
            else:
                self._pending = script
                self._lock.notify()

    def finished(self) -> list[Finished]:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_read, 4096)
        with self._lock:
            results, self._done = self._done, []
        return results

    def drain(self, timeout: float) -> bool:
        """Stop after the waiting script; True if it ran within ``timeout``."""
        with self._lock:
            if not self._thread.is_alive():
                return self._pending is None
            self._stopping = True
            self._lock.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        while (script := self._next()) is not None:
            argv = self._argv.get(script)
            returncode = self._run(argv) if argv else 0
            with self._lock:
                self._running = None
                self._done += [*_skips(self._skipped_before_running), Finished(script, returncode),
                               *_skips(self._skipped_after_running)]
                self._skipped_before_running.clear()
                self._skipped_after_running.clear()
            os.write(self._wake_write, b".")

    def _next(self) -> Script | None:
        with self._lock:
            while self._pending is None and not self._stopping:
                self._lock.wait()
            self._running, self._pending = self._pending, None
            self._skipped_before_running = self._skipped_before_pending
            self._skipped_before_pending = []
            return self._running

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


def _skips(scripts: list[Script]) -> list[Finished]:
    return [Finished(script, None, skipped=True) for script in scripts]
