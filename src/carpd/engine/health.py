"""Health: check scripts and tracked interfaces, watched off the protocol loop.

A node is healthy while every check script passes and every tracked interface exists and has
carrier.  The protocol loop watches one fd (:meth:`Health.fileno`) and, when it is readable,
calls :meth:`Health.read` and hands :attr:`Health.healthy` to the election core.

Check scripts (an argv, executed directly, no shell) each run on a worker thread of their own,
so a hung check never delays another, nor the adverts.  A run starts every ``interval``
seconds (time between starts; a run that is late waits for the previous one to end).  Exit 0
is a pass; anything else, a run that cannot start and a run killed (its whole process group)
after ``timeout`` seconds are failures.  The default timeout is ``max(interval, 1 s)``
(:func:`default_timeout`): a check slower than its interval is no use as a detector, and the
floor keeps a slow start (an interpreter on a loaded machine) from failing checks run several
times a second.  Scripts are hardened like the up and down scripts (:mod:`carpd.engine.scripts`):
stdin is /dev/null, their own session, killed if the engine dies (setpriv), bounded output.

A check's state follows its runs with hysteresis (:class:`FallRise`): every check starts
passing (healthy), a passing check turns failing after ``fall`` failed runs in a row and a
failing one passes again after ``rise`` passes in a row.  A node that has just started is
therefore healthy until its checks have failed ``fall`` times: a check that is slow to pass at
boot does not hold back a node that would win an election.

Tracked interfaces follow netlink link events at once (no polling): a tracked interface is
healthy while it exists and has carrier (:func:`carpd.engine.netlink.carrier_of`); one created,
renamed or deleted later is followed by name.

The last run's exit code and output (at most :data:`OUTPUT_KEPT` characters, its end) are kept
per check for ``carpctl status``.  They are logged when a check's state changes; failed runs
that change nothing are logged at most once per :data:`LOG_PERIOD` per check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from carpd.engine import netlink
from carpd.engine.logs import RateLimiter
from carpd.engine.scripts import OUTPUT_GRACE, Output, dies_with_us, let_go

log = logging.getLogger("carpd")

OUTPUT_KEPT = 512
"""Characters of a check's last output kept (its end: where a failing script says why)."""
LOG_PERIOD = 60.0
"""Seconds between two log lines about a check that keeps failing without changing state."""
MIN_DEFAULT_TIMEOUT = 1.0
LINKS_RETRY = 1.0
"""Seconds before the link watcher reopens its socket after an unexpected netlink error."""
JOIN_LINKS = 1.0
CANNOT_RUN = 127

_LINK_OUTPUT = {True: "carrier", False: "no carrier", None: "no such interface"}


def default_timeout(interval: float) -> float:
    """A check's timeout when none is configured."""
    return max(interval, MIN_DEFAULT_TIMEOUT)


class FallRise:
    """A check's state from its results, with hysteresis (pure: ``now`` is passed in).

    Starts passing; a passing check fails after ``fall`` failures in a row, a failing one
    passes again after ``rise`` passes in a row."""

    def __init__(self, fall: int, rise: int, now: float) -> None:
        if fall < 1 or rise < 1:
            raise ValueError(f"fall and rise must be at least 1, not {fall} and {rise}")
        self.fall = fall
        self.rise = rise
        self.healthy = True
        self.since = now
        """When the check entered its state (or, still in its start state, was created)."""
        self.streak = 0
        """Results in a row that disagree with the state."""

    def feed(self, passed: bool, now: float) -> bool:
        """Count one result; True if it changed the state."""
        if passed == self.healthy:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < (self.rise if passed else self.fall):
            return False
        self.healthy = passed
        self.since = now
        self.streak = 0
        return True


@dataclass
class Check:
    """One check and what is known of it (guarded by the monitor's lock)."""

    kind: str
    """"script" or "interface"."""
    name: str
    state: FallRise
    argv: tuple[str, ...] = ()
    rc: int | None = None
    """The last run's exit status; None before the first run, when killed, for interfaces."""
    output: str = ""

    def status(self, wall_offset: float) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "healthy": self.state.healthy,
                "since": round(self.state.since + wall_offset, 3), "rc": self.rc,
                "output": self.output}


class Health:
    """Check scripts and tracked interfaces (see the module docstring)."""

    def __init__(self, scripts: Sequence[Sequence[str]], interval: float, timeout: float | None,
                 fall: int, rise: int, interfaces: Sequence[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._interval = interval
        self._timeout = default_timeout(interval) if timeout is None else timeout
        now = clock()
        self._scripts = [Check("script", shlex.join(argv), FallRise(fall, rise, now), tuple(argv))
                         for argv in scripts]
        self._links = {name: Check("interface", name, FallRise(1, 1, now))
                       for name in dict.fromkeys(interfaces)}
        self._lock = threading.Lock()
        """Guards the checks' state and the wake pipe's life."""
        self._closed = False
        self._procs_lock = threading.Lock()
        self._running: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()
        self._limiter = RateLimiter(clock, LOG_PERIOD)
        self._healthy = True
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._links_thread: threading.Thread | None = None
        self._links_stop: int | None = None
        """Write end of a pipe whose closing stops the link watcher."""

    @property
    def active(self) -> bool:
        """Whether anything is tracked (if not, there is nothing to start)."""
        return bool(self._scripts or self._links)

    @property
    def healthy(self) -> bool:
        """Every script passes and every tracked link has carrier, as of the last
        :meth:`read` (healthy before the first)."""
        return self._healthy

    def start(self) -> None:
        """Read the tracked links and follow their events, start a thread per script (after
        any fork: threads do not survive one).  Links are read in the calling thread's network
        namespace.  :meth:`fileno` is readable once this returns."""
        if self._links:
            self._start_links()
        for number, check in enumerate(self._scripts):
            threading.Thread(target=self._check_loop, args=(check,), name=f"check-{number}",
                             daemon=True).start()
        with self._lock:
            self._wake()

    def fileno(self) -> int:
        """Readable when something may have changed."""
        return self._wake_read

    def read(self) -> bool:
        """Consume what is waiting (never blocks); True if :attr:`healthy` changed."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass
        with self._lock:
            healthy = all(check.state.healthy for check in self._checks())
        changed, self._healthy = healthy != self._healthy, healthy
        return changed

    def status(self, wall_offset: float) -> list[dict[str, Any]]:
        """Every check, scripts first: kind, name, healthy, since (monotonic + ``wall_offset``),
        rc and output."""
        with self._lock:
            return [check.status(wall_offset) for check in self._checks()]

    def why(self) -> str | None:
        """The first failing check, in one line (the engine puts "unhealthy: " before it);
        None if none is failing."""
        with self._lock:
            failing = next((c for c in self._checks() if not c.state.healthy), None)
            if failing is None:
                return None
            since = time.strftime("%H:%M:%S", time.localtime(
                failing.state.since - self._clock() + time.time()))
            if failing.kind == "interface":
                return f"interface {failing.name} down since {since}: {failing.output}"
            return (f"check '{failing.name}' failing since {since} "
                    f"({self._outcome(failing.rc)}){_said(failing.output)}")

    def close(self) -> None:
        """Stop: kill running checks (never waiting for them) and the link watcher."""
        self._stopping.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True  # from now on, results are dropped
            os.close(self._wake_read)
            os.close(self._wake_write)
        with self._procs_lock:
            for proc in self._running.values():
                _kill_group(proc)
        if self._links_stop is not None:
            os.close(self._links_stop)
        if self._links_thread is not None:
            self._links_thread.join(JOIN_LINKS)

    def _checks(self) -> list[Check]:
        return [*self._scripts, *self._links.values()]

    def _wake(self) -> None:
        """Make :meth:`fileno` readable; call with the lock held."""
        if not self._closed:
            with contextlib.suppress(BlockingIOError):  # full: readable already
                os.write(self._wake_write, b".")

    def _outcome(self, rc: int | None) -> str:
        return f"timed out after {self._timeout:g} s" if rc is None else f"exit {rc}"

    # ---- check scripts (one worker thread each) ---------------------------------------------

    def _check_loop(self, check: Check) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            result = self._run(check.argv)
            if result is None:
                return
            self._record(check, *result)
            self._stopping.wait(started + self._interval - time.monotonic())

    def _run(self, argv: tuple[str, ...]) -> tuple[int | None, str] | None:
        """Run a check once: (exit status or None if timed out, output); None if stopping."""
        command = dies_with_us(list(argv))
        try:
            read_fd, write_fd = os.pipe()
        except OSError as error:
            return CANNOT_RUN, f"cannot run: {error.strerror}"
        try:
            proc = self._spawn(command, write_fd)
        except OSError as error:
            os.close(read_fd)
            return CANNOT_RUN, f"cannot run: {error.strerror}"
        finally:
            os.close(write_fd)
        if proc is None:
            os.close(read_fd)
            return None
        return self._collect(proc, read_fd)

    def _collect(self, proc: subprocess.Popen[bytes], read_fd: int) -> tuple[int | None, str]:
        output = Output()
        try:
            returncode = _wait(proc, read_fd, output, self._timeout)
        except OSError as error:  # say, out of file descriptors for the pidfd
            _kill_group(proc)
            proc.wait()
            return CANNOT_RUN, f"cannot watch: {error.strerror}"
        finally:
            with self._procs_lock:
                self._running.pop(proc.pid, None)
            let_go(read_fd, output.closed)
        return returncode, output.kept.decode(errors="replace").strip()[-OUTPUT_KEPT:]

    def _spawn(self, command: list[str], write_fd: int) -> subprocess.Popen[bytes] | None:
        with self._procs_lock:  # close() then sees every process it must kill
            if self._stopping.is_set():
                return None
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=write_fd,
                                    stderr=write_fd, start_new_session=True)
            self._running[proc.pid] = proc
            return proc

    def _record(self, check: Check, rc: int | None, output: str) -> None:
        now = self._clock()
        with self._lock:
            if self._closed:
                return
            check.rc, check.output = rc, output
            changed = check.state.feed(rc == 0, now)
            healthy, streak = check.state.healthy, check.state.streak
            self._wake()
        if changed and healthy:
            log.info("health check '%s' passing again", check.name)
        elif changed or rc != 0:
            self._log_failure(check, rc, output, changed, healthy, streak)

    def _log_failure(self, check: Check, rc: int | None, output: str, changed: bool,
                     healthy: bool, streak: int) -> None:
        """A failed run: always when it turned the check failing, else rate-limited."""
        held = self._limiter.allow(check.name)
        if held is None and not changed:
            return
        what = ("now failing" if changed else "still failing" if not healthy
                else f"failed ({streak} of {check.state.fall} in a row to turn failing)")
        quiet = f" [{held} more failed runs not logged]" if held else ""
        log.warning("health check '%s' %s (%s)%s%s", check.name, what, self._outcome(rc),
                    _said(output), quiet)

    # ---- tracked interfaces (one watcher thread) --------------------------------------------

    def _start_links(self) -> None:
        monitor = netlink.NamedLinkMonitor(self._links)
        self._links_changed(monitor.carriers())
        stop_read, self._links_stop = os.pipe()
        self._links_thread = threading.Thread(target=self._follow_links,
                                              args=(monitor, stop_read), name="track-links",
                                              daemon=True)
        self._links_thread.start()

    def _follow_links(self, monitor: netlink.NamedLinkMonitor, stop_read: int) -> None:
        try:
            while stop_read not in select.select([monitor, stop_read], [], [])[0]:
                if self._read_links(monitor, stop_read):
                    self._links_changed(monitor.carriers())
        finally:
            monitor.close()
            os.close(stop_read)

    @staticmethod
    def _read_links(monitor: netlink.NamedLinkMonitor, stop_read: int) -> bool:
        try:
            return monitor.read()
        except OSError as error:
            log.error("tracked interfaces: netlink: %s; reading them afresh", error)
        while not select.select([stop_read], [], [], LINKS_RETRY)[0]:
            try:
                monitor.resync()
                return True
            except OSError as error:
                log.error("tracked interfaces: netlink: %s", error)
        return False

    def _links_changed(self, carriers: Mapping[str, bool | None]) -> None:
        now = self._clock()
        changes = []
        with self._lock:
            for name, check in self._links.items():
                check.output = _LINK_OUTPUT[carriers.get(name)]
                if check.state.feed(carriers.get(name) is True, now):
                    changes.append(check)
            self._wake()
        for check in changes:
            if check.state.healthy:
                log.info("tracked interface %s: %s again", check.name, check.output)
            else:
                log.warning("tracked interface %s: %s", check.name, check.output)


def _wait(proc: subprocess.Popen[bytes], read_fd: int, output: Output,
          timeout: float) -> int | None:
    """Wait for a check's own process to end (not for its output to close: a child it left
    behind may hold that), reading its output; past ``timeout`` kill its process group and
    return None."""
    deadline = time.monotonic() + timeout
    ended = os.pidfd_open(proc.pid)  # readable once the process has ended
    try:
        while (returncode := proc.poll()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill_group(proc)
                proc.wait()
                output.read_available(read_fd, OUTPUT_GRACE)
                return None
            watched = [ended] if output.closed else [ended, read_fd]
            if read_fd in select.select(watched, [], [], left)[0]:
                output.read_available(read_fd, 0.0)
    finally:
        os.close(ended)
    output.read_available(read_fd, OUTPUT_GRACE)  # what it wrote just before it ended
    return returncode


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of white space made single spaces."""
    return " ".join(text.split())


def _said(output: str) -> str:
    return f": {one_line(output)}" if output else ""
