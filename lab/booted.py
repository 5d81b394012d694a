"""A Debian 13 booted with systemd as PID 1 (systemd-nspawn) in a network namespace of the lab.

The root is an overlay over a :mod:`lab.rootfs` tree, made by the caller; the container shares
the namespace's network (``--network-namespace-path``), keeps CAP_NET_ADMIN and CAP_NET_RAW, is
not registered with the host's machined, and writes its console to a file.  Commands run inside
through ``nsenter`` into every namespace of its init.  SIGTERM to systemd-nspawn powers it off.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.poll import wait_for
from lab.rootfs import CLEAN_PATH

START = 30.0
"""Seconds systemd-nspawn may take to start the container's init."""


def nspawn(root: Path, netns: str, console: Path, *, append: bool = False
           ) -> subprocess.Popen[bytes]:
    """Boot ``root`` in network namespace ``netns`` (``/tmp`` of the root kept: no tmpfs)."""
    with console.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
             "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
             f"--network-namespace-path=/run/netns/{netns}", "-D", str(root)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={"PATH": CLEAN_PATH, "SYSTEMD_NSPAWN_TMPFS_TMP": "0"})


def power_off(process: subprocess.Popen[bytes]) -> None:
    """Stop a booted container: SIGTERM to its systemd-nspawn powers it off; killed after a
    minute."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _parent(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Booted:
    """A booted container: its network namespace, root, console file and systemd-nspawn."""

    netns: str
    root: Path
    console: Path
    nspawn: subprocess.Popen[bytes]

    @classmethod
    def boot(cls, netns: str, root: Path, console: Path) -> Booted:
        return cls(netns, root, console, nspawn(root, netns, console))

    def console_tail(self) -> str:
        return self.console.read_text(errors="replace")[-3000:]

    def leader(self) -> int:
        """The container's init (pid 1 inside) as the host sees it, once it has started."""
        def child() -> int | None:
            return next((int(pid) for pid in os.listdir("/proc")
                         if pid.isdigit() and _parent(pid) == self.nspawn.pid), None)

        return wait_for(child, START, 0.1, what="the container's init started",
                        detail=self.console_tail)

    def enter(self, *argv: str) -> list[str]:
        """``argv`` as a command line that runs it inside (all its namespaces, its root)."""
        return ["nsenter", "-t", str(self.leader()), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
                "--", *argv]

    def inside(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the shell ``command`` inside; never raises for its exit status."""
        return subprocess.run(self.enter("/bin/sh", "-c", command), capture_output=True,
                              text=True, check=False, timeout=timeout, env={"PATH": CLEAN_PATH})

    def unit_state(self, unit: str) -> str:
        return self.inside(f"systemctl is-active {unit}").stdout.strip()

    def main_pid(self, unit: str) -> int:
        return int(self.inside(f"systemctl show -p MainPID --value {unit}").stdout.strip() or 0)

    def wait(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """Poll ``condition`` until it holds; else fail naming ``what``, with the console."""
        wait_for(condition, timeout, 0.2, what=what, detail=self.console_tail)

    def reboot(self) -> None:
        """Power off (as :meth:`power_off`) and boot the same root again, in the same network
        namespace: /run starts empty, the rest of the root stays."""
        self.nspawn.terminate()
        assert self.nspawn.wait(timeout=90) == 0, self.console_tail()
        self.nspawn = nspawn(self.root, self.netns, self.console, append=True)
        self.leader()

    def power_off(self) -> None:
        power_off(self.nspawn)
