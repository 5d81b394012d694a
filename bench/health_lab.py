"""The test bed of bench/health.py: two nodes each running an HTTP server and a CARP engine (carpd
tracking its own server with a check script, or ucarp, which tracks nothing), a client node, and
one fault: the MASTER's HTTP server is SIGKILLed (by PID) and, later, started again.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import POLL, PORT, REPO, Bed, start_server
from lab.netns import CARPD, VIP, Daemon, Node, in_netns
from lab.poll import Timeout, wait_for

ADVBASE = 1
REPO_CHECK = REPO / "share" / "checks" / "http-url"
HOST_PYTHON = "/usr/bin/python3"  # not a pyenv shim: a check runs several times a second

_OWN_CHECK = """#!{python} -IS
# The bench's own check (used when share/checks/http-url is missing): exit 0 when
# http://127.0.0.1:PORT/ answers 200 within 1 s.
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1.0) as s:
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n")
        head = s.recv(64)
except OSError as error:
    print(error)
    sys.exit(1)
print(head.split(b"\\r\\n")[0].decode(errors="replace"))
sys.exit(0 if head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")) else 1)
"""


@dataclass(frozen=True)
class Tracking:
    """How carpd is told to watch its node's HTTP server."""

    check: str
    """The --track-script value: a command line (absolute path first)."""
    interval: float
    fall: int
    rise: int

    def argv(self) -> list[str]:
        return ["--track-script", self.check, "--track-interval", f"{self.interval:g}",
                "--track-fall", str(self.fall), "--track-rise", str(self.rise)]

    @property
    def goal(self) -> float:
        """The issue's goal for the time from a kill to the first success via the peer."""
        return self.fall * self.interval + 0.1


def check_command(directory: Path, prefer_repo: bool = True) -> str:
    """The repo's shipped http-url check if it is there, else a small one written here."""
    if prefer_repo and REPO_CHECK.exists() and os.access(REPO_CHECK, os.X_OK):
        return f"{REPO_CHECK} http://127.0.0.1:{PORT}/"
    script = directory / "check-http"
    script.write_text(_OWN_CHECK.format(python=HOST_PYTHON))
    script.chmod(0o755)
    return f"{script} {PORT}"


def carpd_tracks() -> bool:
    """Whether this tree's carpd takes --track-script (the options may not have landed yet)."""
    done = subprocess.run([*CARPD, "--help"], capture_output=True, text=True, timeout=30,
                          check=False)
    return "--track-script" in done.stdout


@dataclass
class Kill:
    index: int
    master: str
    peer: str
    kill: float
    """Wall time just before the MASTER's HTTP server was SIGKILLed."""
    vip_moved: float | None = None
    """When the peer was first seen holding the VIP (polled every 20 ms; a carpd that steps
    down may keep it a while too, to drain)."""
    bow_out: float | None = None
    """Kernel time on the bridge of the master's first bow-out advert after the kill."""
    restarted: float | None = None
    """When the killed server was started again."""
    first_success: float | None = None
    """End of the client's first successful request answered by the peer after the kill."""
    sent: int = 0
    failed: int = 0
    """Requests ending after the kill and started before the next kill that did not succeed."""
    outcomes: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def to_first_success(self, cap: float) -> float:
        """Kill -> first success via the peer, at most ``cap`` (never, or later: ``cap``)."""
        if self.first_success is None:
            return cap
        return min(self.first_success - self.kill, cap)

    def capped(self, cap: float) -> bool:
        return self.first_success is None or self.first_success - self.kill >= cap


class Cluster(Bed):
    """Nodes a and b (HTTP server + engine ``kind``) and a client node, on one bridge."""

    def __init__(self, kind: str, directory: Path, tracking: Tracking | None,
                 quiet: float) -> None:
        super().__init__(directory, prefix="carpbk")
        self.kind = kind
        self.tracking = tracking
        self.quiet = quiet
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        self.daemons: dict[str, Daemon] = {}

    def setup(self) -> None:
        self.add_nodes()
        for name in self.nodes:
            self.start_server(name)
        self.daemons["a"] = self._start_engine(self.a)
        try:
            wait_for(lambda: self.net.holders() == [self.a], 3 * ADVBASE + 5, POLL,
                     what="a the MASTER")
        except Timeout:
            raise RuntimeError(f"{self.kind} on a never became MASTER") from None
        self.daemons["b"] = self._start_engine(self.b)
        self.settle()

    def _start_engine(self, node: Node) -> Daemon:
        extra = self.tracking.argv() if self.tracking else []
        return node.start(self.kind, advbase=ADVBASE, extra=extra)

    # ---- the HTTP servers -------------------------------------------------------------------

    def start_server(self, name: str) -> None:
        node = self.nodes[name]
        self.servers[name] = start_server(self.procs, node.ns, name,
                                          self.directory / f"server-{name}.log")
        try:
            wait_for(lambda: self.listening(node), 10, POLL, what=f"the HTTP server on {name}")
        except Timeout:
            raise RuntimeError(f"the HTTP server on {name} does not accept connections") from None

    def listening(self, node: Node) -> bool:
        with in_netns(node.ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", PORT)) == 0

    def kill_server(self, name: str) -> None:
        server = self.servers[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)

    # ---- a stable pair ----------------------------------------------------------------------

    def healthy(self) -> bool:
        """Both servers up and, when carpd reports it, both engines healthy (the restarted
        node's check has passed ``rise`` times)."""
        if not all(s.poll() is None for s in self.servers.values()):
            return False
        if self.kind != "carpd" or self.tracking is None:
            return True
        for daemon in self.daemons.values():
            with contextlib.suppress(OSError, ValueError):
                if daemon.status().get("healthy") is False:
                    return False
        return True

    def settle(self, timeout: float = 20) -> Node:
        """Exactly one node holds the VIP, unchanged for ``quiet`` s, engines alive, healthy."""
        return self.settle_on(self.ready, self.quiet, timeout, self.exited)

    def ready(self) -> bool:
        return all(d.alive() for d in self.daemons.values()) and self.healthy()

    def exited(self) -> list[str]:
        return [n for n, d in self.daemons.items() if not d.alive()]

    # ---- one fault --------------------------------------------------------------------------

    def kill(self, index: int, cap: float, linger: float) -> Kill:
        """SIGKILL the current MASTER's server; wait until the peer holds the VIP (at most
        ``cap`` s) and ``linger`` s more so the client gets through; start the server again."""
        master = self.settle()
        peer = self.peer(master)
        time.sleep(random.uniform(0, ADVBASE))  # at any point of the advert and check cycles
        record = Kill(index, master.name, peer.name, time.time())
        self.kill_server(master.name)
        with contextlib.suppress(Timeout):
            wait_for(lambda: peer.has(VIP), cap, POLL, what=f"the VIP on {peer.name}")
            record.vip_moved = time.time()
            time.sleep(linger)
        left = record.kill + cap - time.time()
        if record.vip_moved is None and left > 0:
            time.sleep(left)
        record.restarted = time.time()
        self.start_server(master.name)
        bow_outs = [f for f in self.net.capture.frames(source=master.address, since=record.kill)
                    if f.bow_out]
        if bow_outs:
            record.bow_out = bow_outs[0].time
        return record
