"""One engine per interface, kept running when systemd is not PID 1.

The hook starts ``carpd-ifupdown supervise IFACE`` in its own session.  The supervisor holds the
lock of ``/run/carpd/IFACE.supervisor`` (mode 0600, holding its pid) open for its whole life (so a
second one refuses to run, and carpd's maintainer scripts know it as root's own), runs
``carpd --config /run/carpd/IFACE.conf`` in the foreground and:

- when the engine dies without being asked to, releases its VIP (the down script if the VIP or the
  ``IFACE:ucarp`` alias is still there, then netlink) and starts it again, waiting 1 s, then 2 s,
  ... up to 30 s between attempts while it keeps dying within 30 s; an engine that refuses its
  options (exit status 2) is not started again;
- on SIGTERM, SIGINT or SIGHUP passes SIGTERM on (the engine bows out, runs its down script and
  removes the VIP), waits for it, releases whatever is left and exits;
- if the supervisor itself is killed, the kernel sends the engine SIGTERM (PR_SET_PDEATHSIG), so
  the engine never outlives it unsupervised.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from types import FrameType

from carpd.debian.ifupdown import runtime
from carpd.debian.ifupdown.runtime import Paths

log = logging.getLogger("carpd.debian.ifupdown.supervisor")

EXIT_USAGE = 2
"""carpd's exit status when it refuses its options: starting it again cannot help."""
FIRST_DELAY = 1.0
MAX_DELAY = 30.0
STABLE_AFTER = 30.0
PR_SET_PDEATHSIG = 1


def engine_command(paths: Paths, path_env: str) -> list[str]:
    carpd = shutil.which("carpd", path=path_env)
    program = [carpd] if carpd else [sys.executable, "-m", "carpd"]
    state_dir = runtime.engine_state_dir(paths.run_dir)
    return [*program, "--config", str(paths.conf),
            *(["--state-dir", str(state_dir)] if state_dir else [])]


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, paths: Paths, env: Mapping[str, str]) -> None:
        self.paths = paths
        self.env = dict(env)
        self.engine: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self._wake_read, self._wake_write = os.pipe()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        os.write(self._wake_write, b".")
        if self.engine is not None and self.engine.returncode is None:
            self.engine.send_signal(signal.SIGTERM)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        delay = FIRST_DELAY
        command = engine_command(self.paths, self.env.get("PATH", os.defpath))
        while not self.stopping:
            started = time.monotonic()
            returncode = self._run_engine(command)
            crashed = not (self.stopping and returncode == 0)
            for line in runtime.release(self.paths, crashed, self.env):
                log.info("%s", line)
            if self.stopping:
                break
            if returncode == EXIT_USAGE:
                log.error("the engine refused its options (exit status 2): not restarting it")
                return 1
            if time.monotonic() - started >= STABLE_AFTER:
                delay = FIRST_DELAY
            log.warning("the engine exited (%s): starting it again in %g s",
                        _describe(returncode), delay)
            self._sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
        log.info("stopped")
        return 0

    def _run_engine(self, command: list[str]) -> int:
        log.info("starting %s", " ".join(command))
        self.engine = subprocess.Popen(command, env=self.env, stdin=subprocess.DEVNULL,
                                       preexec_fn=_die_with_parent)
        if self.stopping:  # a signal came before self.engine was set
            self.engine.send_signal(signal.SIGTERM)
        return self.engine.wait()

    def _sleep(self, seconds: float) -> None:
        """Wait, but no longer than until a stop signal."""
        select.select([self._wake_read], [], [], seconds)


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


def supervise(paths: Paths) -> int:
    """Run as the supervisor of ``paths.interface`` (stdout/stderr are its log)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s carpd-supervisor[{paths.interface}]: %(message)s")
    paths.run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    # Root-only (0600): no other user can open it, so none can hold its lock.  Its owner and
    # mode, its lock and it being held open are how carpd's maintainer scripts know us.
    fd = os.open(paths.supervisor, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.error("another supervisor runs for %s", paths.interface)
        return 1
    os.fchmod(fd, 0o600)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    env = runtime.read_env(paths.env)
    env["PATH"] = os.environ.get("PATH", os.defpath)
    try:
        return Supervisor(paths, env).run()
    finally:
        os.close(fd)
