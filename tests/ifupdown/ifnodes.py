"""Nodes running the real ifupdown with carpd's hooks, each in its own network namespace.

A lab is one namespace holding a bridge and one namespace per node, linked to it by a veth pair
(``eth0`` in the node).  Every command a node runs goes through ``ip netns exec``, which gives it a
private mount namespace; there, before the command, the node's view of the system is mounted:

- its own /run (so /run/carpd and ifupdown's locks are the node's; no /run/systemd/system, so the
  hook supervises the engine itself instead of asking the host's systemd),
- the project's if-up.d/ and if-down.d/ over /etc/network/if-up.d and if-down.d (empty folders
  over if-pre-up.d and if-post-down.d),
- carpd, carpd-ifupdown and carpctl on PATH in /usr/local/sbin,
- the project's share/ as /usr/share/carpd (an overlay over /usr/share),

and ``ifup``/``ifdown`` run with ``-i`` the node's interfaces file and ``--state-dir`` its state
folder.  Nothing of this is visible outside; the finalizer kills every process left in the lab's
namespaces (by pid) and deletes them, even when the test failed.  The bridge and the namespaces
are lab/netns.py's :class:`~lab.netns.Switch`, the poll helper lab/poll.py's ``wait_for``.
"""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.netns import Host, Switch
from lab.poll import wait_for as wait_for
from lab.tree import REPO, SRC, console_scripts, write_command

ROOT = REPO
GOLDEN = Path(__file__).parent / "golden"
PASSWORD = "s3cr3t-Pa55"
VIP = "10.77.0.1"
_counter = itertools.count()


def unique_prefix() -> str:
    return f"cifu{os.getpid() % 100000}x{next(_counter)}"


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def stanza(number: int, extra: str = "", vip: str = VIP, alias_extra: str = "") -> str:
    """An interfaces file like Debian's ucarp users write, for node ``number``; ``extra`` and
    ``alias_extra`` are more option lines for the eth0 and eth0:ucarp stanzas."""
    return textwrap.dedent(f"""\
        auto eth0
        iface eth0 inet static
            address 10.77.0.{10 + number}
            netmask 255.255.255.0
            ucarp-vid 7
            ucarp-vip {vip}
            ucarp-password {PASSWORD}
            ucarp-advskew {number * 10}
            ucarp-advbase 1
            ucarp-master no
        """) + textwrap.indent(textwrap.dedent(extra), "    ") + textwrap.dedent(f"""
        iface eth0:ucarp inet static
            address {vip}
            netmask 255.255.255.255
        """) + textwrap.indent(textwrap.dedent(alias_extra), "    ")


@dataclass
class Node(Host):
    home: Path
    interfaces: Path = field(init=False)
    state: Path = field(init=False)
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.interfaces = self.home / "interfaces"
        self.state = self.home / "state"
        self.run_dir = self.home / "run"
        for folder in (self.state, self.run_dir, self.home / "empty", self.home / "bin",
                       self.home / "share"):
            folder.mkdir(parents=True, exist_ok=True)
        for command in console_scripts():
            # this tree's sources, whatever the venv's editable install points at
            write_command(self.home / "bin" / command, command, sys.executable, SRC)
        (self.home / "share" / "carpd").symlink_to(ROOT / "share")
        libexec = self.home / "libexec" / "carpd"  # the hooks run /usr/libexec/carpd/carpd-ifupdown
        libexec.mkdir(parents=True, exist_ok=True)
        (libexec / "carpd-ifupdown").symlink_to(self.home / "bin" / "carpd-ifupdown")

    def _setup(self) -> str:
        home = self.home
        mounts = [
            f"mount --bind {self.run_dir} /run",
            f"mount --bind {ROOT / 'if-up.d'} /etc/network/if-up.d",
            f"mount --bind {ROOT / 'if-down.d'} /etc/network/if-down.d",
            f"mount --bind {home / 'empty'} /etc/network/if-pre-up.d",
            f"mount --bind {home / 'empty'} /etc/network/if-post-down.d",
            f"mount --bind {home / 'bin'} /usr/local/sbin",
            f"mount -t overlay overlay -o lowerdir={home / 'share'}:/usr/share /usr/share",
            f"mount -t overlay overlay -o lowerdir={home / 'libexec'}:/usr/libexec /usr/libexec",
        ]
        return " && ".join(mounts)

    def sh(self, command: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the node (its namespaces, its /run, the project's hooks)."""
        script = f"{self._setup()} && {command}"
        return _run(["ip", "netns", "exec", self.netns, "sh", "-c", script], check=check)

    def ifup(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.sh(self._ifupdown("ifup", args))

    def ifdown(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.sh(self._ifupdown("ifdown", args))

    def _ifupdown(self, program: str, args: tuple[str, ...]) -> str:
        return shlex.join([program, "-i", str(self.interfaces), "--state-dir", str(self.state),
                           *args])

    def popen_ifdown(self, *args: str, started: Path) -> subprocess.Popen[str]:
        """ifdown in the background; the wall time it was started at goes into ``started``."""
        script = (f"{self._setup()} && date +%s.%N > {started} && exec "
                  f"{self._ifupdown('ifdown', args)}")
        return subprocess.Popen(["ip", "netns", "exec", self.netns, "sh", "-c", script],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def watch_for_address(self, address: str) -> AddressWatch:
        return AddressWatch(self.netns, address)

    def addresses(self, ifname: str = "eth0") -> dict[str, str]:
        """address -> label of the IPv4 addresses of ``ifname``."""
        return self.labels(ifname)

    def holds_vip(self) -> bool:
        return VIP in self.addresses()

    def processes(self) -> dict[int, str]:
        """pid -> command line of every process in the node's network namespace."""
        found = {}
        for pid in self.pids():
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            found[pid] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        return found

    def engines(self) -> list[int]:
        return [pid for pid, cmd in self.processes().items()
                if "carpd --config" in cmd or "carpd.engine.cli" in cmd]

    def supervisors(self) -> list[int]:
        return [pid for pid, cmd in self.processes().items() if " supervise " in cmd]

    def write_interfaces(self, text: str) -> None:
        self.interfaces.write_text(text)

    def log(self) -> str:
        path = self.run_dir / "carpd" / "eth0.log"
        return path.read_text() if path.exists() else "(no log)"


class AddressWatch:
    """The wall time at which the kernel of a namespace reports ``address`` added (netlink
    events through ``ip monitor``: no polling)."""

    def __init__(self, netns: str, address: str) -> None:
        self.added: float | None = None
        self._marker = f"inet {address}/"
        self._monitor = subprocess.Popen(["ip", "-n", netns, "monitor", "address"],
                                         stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        time.sleep(0.3)  # ip monitor has subscribed by then

    def _read(self) -> None:
        assert self._monitor.stdout is not None
        for line in self._monitor.stdout:
            if self._marker in line and not line.startswith("Deleted"):
                self.added = time.time()
                return

    def wait(self, timeout: float) -> float | None:
        self._reader.join(timeout)
        self._monitor.kill()
        self._monitor.wait()
        return self.added


@dataclass
class Lab:
    prefix: str
    root: Path
    switch: str = field(init=False)
    nodes: list[Node] = field(default_factory=list)
    wiring: Switch | None = None

    def __post_init__(self) -> None:
        self.switch = f"{self.prefix}sw"

    def start(self) -> None:
        self.wiring = Switch(self.switch)

    def node(self) -> Node:
        assert self.wiring is not None, "start() the lab first"
        number = len(self.nodes) + 1
        node = Node(f"n{number}", f"{self.prefix}n{number}", self.root / f"n{number}")
        self.nodes.append(node)
        self.wiring.add_node(node.netns, f"p{number}")
        return node

    def sniff_arp(self) -> subprocess.Popen[str]:
        """tcpdump of every ARP frame on the bridge, one line each (stopped by destroy)."""
        sniffer = subprocess.Popen(
            ["ip", "netns", "exec", self.switch, "tcpdump", "-i", "br0", "-n", "-l", "-U", "arp"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert sniffer.stderr is not None
        for _ in range(5):  # tcpdump says it is listening once the capture is open
            if "listening on" in sniffer.stderr.readline():
                break
        return sniffer

    def destroy(self) -> None:
        if self.wiring is not None:
            self.wiring.close()
