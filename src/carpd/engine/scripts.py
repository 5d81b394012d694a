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
import functools
import logging
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from carpd.core.election import Script

log = logging.getLogger(__name__)

MAX_OUTPUT = 16 * 1024
"""Bytes of a script's output that are logged; the rest is read and counted."""
OUTPUT_GRACE = 0.1
READS_PER_CALL = 64
OBSOLETE_GRACE = 0.5
OBSOLETE_POLL = 0.25
SETPRIV = "/usr/bin/setpriv"
"""After a script ends, how long output its last moments wrote may take to arrive."""


def script_argv(script: str | os.PathLike[str] | None, interface: str, vip: IPv4Address,
                xparam: str | None) -> list[str] | None:
    """How a script is run (None: there is none): ``SCRIPT IFACE VIP``, and ``XPARAM`` as a
    third argument whenever one was given, even empty, as ucarp 1.5.2 does (``-x ""`` passes
    an empty third argument; without ``-x`` there are two)."""
    if not script:
        return None
    return [os.fspath(script), interface, str(vip), *([] if xparam is None else [xparam])]


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
        self._obsolete_since: float | None = None
        """When a request for the other script made the running one obsolete."""
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
                self._obsolete_since = None  # the running script matches the state again
            else:
                self._pending = script
                self._obsolete_since = time.monotonic() if self._running is not None else None
                self._lock.notify()

    def finished(self) -> list[Finished]:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_read, 4096)
        with self._lock:
            results, self._done = self._done, []
        return results

    @property
    def idle(self) -> bool:
        """No script runs or waits."""
        with self._lock:
            return self._running is None and self._pending is None

    def drain(self, timeout: float) -> bool:
        """Stop after the waiting script; True if it ran within ``timeout``."""
        self.finish()
        return self.join(timeout)

    def finish(self) -> None:
        """Let the worker end once the waiting script has run (without waiting for it: several
        groups' runners finish side by side)."""
        with self._lock:
            self._stopping = True
            self._lock.notify()

    def join(self, timeout: float) -> bool:
        """Wait at most ``timeout`` for the worker to end after :meth:`finish`; True if it
        did (or never started and nothing waits)."""
        if not self._thread.is_alive():
            with self._lock:
                return self._pending is None or self._thread.ident is not None
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
            self._obsolete_since = None
            while self._pending is None and not self._stopping:
                self._lock.wait()
            self._running, self._pending = self._pending, None
            self._skipped_before_running = self._skipped_before_pending
            self._skipped_before_pending = []
            return self._running

    def _run(self, argv: list[str]) -> int | None:
        """Run one script until its own process ends (not until its output closes: a child it
        leaves behind, ``nginx &``, may hold that for ever), collecting at most
        :data:`MAX_OUTPUT` bytes of output; past the timeout its process group is killed."""
        log.info("running %s", " ".join(argv))
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(dies_with_us(argv), stdin=subprocess.DEVNULL,
                                    stdout=write_fd, stderr=write_fd, start_new_session=True)
        except OSError as error:
            log.error("cannot run %s: %s", argv[0], error.strerror)
            return 127
        finally:
            os.close(write_fd)
        output = Output()
        try:
            returncode = self._wait(proc, read_fd, output)
        finally:
            let_go(read_fd, output.closed)
        self._log_output(argv[0], output.text())
        if returncode is None:
            log.error("%s killed: it ran past its %.0f s or the state it was for had passed "
                      "for %.0f s", argv[0], self._timeout, OBSOLETE_GRACE)
        elif returncode != 0:
            log.warning("%s exited with status %d", argv[0], returncode)
        return returncode

    def _wait(self, proc: subprocess.Popen[bytes], read_fd: int,
              output: Output) -> int | None:
        deadline = time.monotonic() + self._timeout
        ended = os.pidfd_open(proc.pid)  # readable once the script's own process has ended
        try:
            while (returncode := proc.poll()) is None:
                left = min(deadline, self._obsolete_deadline()) - time.monotonic()
                if left <= 0:
                    with contextlib.suppress(OSError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    output.read_available(read_fd, OUTPUT_GRACE)
                    return None
                # woken now and then: a request for the other script may come meanwhile
                # a pipe closed by the script stays readable at end-of-file: stop watching it
                watched = [ended] if output.closed else [ended, read_fd]
                ready = select.select(watched, [], [], min(left, OBSOLETE_POLL))[0]
                if read_fd in ready:
                    output.read_available(read_fd, 0.0)
        finally:
            os.close(ended)
        output.read_available(read_fd, OUTPUT_GRACE)  # what it wrote just before it ended
        return returncode

    def _obsolete_deadline(self) -> float:
        """A script still running :data:`OBSOLETE_GRACE` after the other one was asked for
        (say, an up script that hangs while the node has stepped down) is killed: the state it
        was for has passed, and the script that matches the new one waits behind it."""
        with self._lock:
            since = self._obsolete_since
        return float("inf") if since is None else since + OBSOLETE_GRACE

    @staticmethod
    def _log_output(name: str, output: str) -> None:
        for line in output.splitlines():
            log.info("%s: %s", Path(name).name, line)


class Output:
    """A script's output: the first MAX_OUTPUT bytes kept, the rest read and counted."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.dropped = 0
        self.closed = False

    def read_available(self, fd: int, wait: float) -> None:
        """Read what the pipe has, for at most ``wait`` seconds (at least one look) and
        :data:`READS_PER_CALL` reads: a child left behind that writes on cannot keep us."""
        deadline = time.monotonic() + wait
        for _ in range(READS_PER_CALL):
            if self.closed:
                return
            left = max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return
            chunk = os.read(fd, 65536)
            if not chunk:
                self.closed = True
                return
            room = MAX_OUTPUT - len(self.kept)
            self.kept += chunk[:room]
            self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        text = self.kept.decode(errors="replace")
        if self.dropped:
            text += f"\n[{self.dropped} more bytes of output not logged]"
        return text


def dies_with_us(argv: list[str]) -> list[str]:
    """The script (not what it starts) is killed if the engine dies while it runs: a dead
    engine's up script must not add the VIP after the release has removed it.  setpriv
    (util-linux, essential) sets the parent-death signal, then execs the script itself."""
    return [SETPRIV, "--pdeathsig", "KILL", "--", *argv] if _setpriv_works() else argv


@functools.cache
def _setpriv_works() -> bool:
    """Whether setpriv can run here: in a sandbox with a narrow capability bounding set
    (systemd/strict.conf) it fails before it runs anything, so scripts run without it."""
    if not os.access(SETPRIV, os.X_OK):
        return False
    try:
        probe = subprocess.run([SETPRIV, "--pdeathsig", "KILL", "--", "/bin/true"],
                               capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if probe.returncode != 0:
        log.warning("scripts will outlive a killed engine: %s fails here: %s", SETPRIV,
                    probe.stderr.decode(errors="replace").strip())
    return probe.returncode == 0


def let_go(read_fd: int, closed: bool) -> None:
    """Close our end of a script's output, or, if a process it left behind still holds the
    other end, read and discard on a thread until that process closes it: closing now would
    kill it with SIGPIPE at its next write."""
    if closed:
        os.close(read_fd)
        return

    def discard() -> None:
        with contextlib.suppress(OSError):
            while os.read(read_fd, 65536):
                pass
        os.close(read_fd)

    threading.Thread(target=discard, name="script-output", daemon=True).start()


def _skips(scripts: list[Script]) -> list[Finished]:
    return [Finished(script, None, skipped=True) for script in scripts]
