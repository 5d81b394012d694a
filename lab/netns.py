"""A throw-away test network (tests, benchmarks, demo): a bridge in a "switch" namespace, N nodes.

Each node namespace has ``eth0``, a veth whose peer is a port of the bridge ``br0`` in the switch
namespace.  Multicast snooping is off on the bridge so CARP adverts (224.0.0.18) reach every node.
Every name carries the pid and a random suffix; :meth:`Network.close` kills the processes this
network started (by their process group, which is their own pid) and deletes the namespaces.

:class:`Capture` reads every frame seen on ``br0`` through an ``AF_PACKET`` socket opened inside
the switch namespace, timestamped by the kernel (``SO_TIMESTAMPNS``), so tests and the benchmark
can assert on the wire and measure with the receive time of each frame.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from carpd.core import wire
from carpd.engine import control
from lab.poll import Timeout as Timeout
from lab.poll import wait_for as wait_for

REPO = Path(__file__).resolve().parents[1]
CARPD = [str(REPO / ".venv" / "bin" / "python"), "-m", "carpd"]
UCARP = "/usr/sbin/ucarp"
VIP = IPv4Address("10.9.1.100")
PASSWORD = b"s3cret-pass"

_CLONE_NEWNET = 0x40000000
_SO_TIMESTAMPNS = 35
_ETH_P_ALL = 0x0003
_SOL_PACKET = 263
_PACKET_ADD_MEMBERSHIP = 1
_PACKET_MR_PROMISC = 1
_libc = ctypes.CDLL(None, use_errno=True)

def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the calling thread inside network namespace ``name`` (sockets opened stay there)."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as target:
        if _libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")


@contextlib.contextmanager
def veth_namespace(prefix: str) -> Iterator[str]:
    """A network namespace of its own (``prefix`` and a random tag) with a veth pair v0-v1 in
    it, both down; deleted on the way out."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


# ---- the wire ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CarpFrame:
    """One CARP advert seen on the bridge."""

    time: float
    """Kernel receive time on the bridge, Unix seconds."""
    frame: bytes
    eth_dst: bytes
    eth_src: bytes
    packet: bytes
    source: IPv4Address
    destination: IPv4Address
    ttl: int
    advert: wire.Advert

    def valid_for(self, vhid: int, password: bytes, vip: IPv4Address = VIP) -> bool:
        """Passes every receive check of a receiver with that vhid, key and VIP (not the sender)."""
        expect = wire.Expect(vhid, password, vip, IPv4Address("127.0.0.1"))
        return isinstance(wire.inspect(self.packet, expect), wire.Received)

    @property
    def bow_out(self) -> bool:
        return self.advert.advbase == wire.BOW_OUT and self.advert.advskew == wire.BOW_OUT


def decode_frame(when: float, frame: bytes) -> CarpFrame | None:
    packet = wire.strip_ethernet(frame)
    if packet is None or len(packet) < wire.IP_HEADER_LEN or packet[9] != wire.CARP_PROTO:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + wire.CARP_HEADER_LEN:
        return None
    return CarpFrame(
        time=when,
        frame=frame,
        eth_dst=frame[0:6],
        eth_src=frame[6:12],
        packet=packet,
        source=IPv4Address(packet[12:16]),
        destination=IPv4Address(packet[16:20]),
        ttl=packet[8],
        advert=wire.decode_carp(packet[ihl : ihl + wire.CARP_HEADER_LEN]),
    )


class Capture:
    """Every frame on ``br0`` of the switch namespace, with the kernel's receive timestamps."""

    def __init__(self, switch_ns: str, interface: str = "br0") -> None:
        with in_netns(switch_ns):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
            index = socket.if_nametoindex(interface)
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind((interface, 0))
        mreq = struct.pack("iHH8s", index, _PACKET_MR_PROMISC, 0, b"")
        self._sock.setsockopt(_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, mreq)
        self._frames: list[CarpFrame] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="capture", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.1)
            if not ready:
                continue
            data, ancillary, _flags, address = self._sock.recvmsg(65535, 64)
            if address[2] == socket.PACKET_OUTGOING:
                continue
            when = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    when = seconds + nanoseconds / 1e9
            decoded = decode_frame(when, data)
            if decoded is not None:
                with self._lock:
                    self._frames.append(decoded)

    def frames(
        self, source: IPv4Address | None = None, vhid: int | None = None, since: float = 0.0
    ) -> list[CarpFrame]:
        """CARP frames seen so far, oldest first, optionally only from ``source``/``vhid``."""
        with self._lock:
            frames = list(self._frames)
        return [
            f for f in frames
            if f.time >= since
            and (source is None or f.source == source)
            and (vhid is None or f.advert.vhid == vhid)
        ]

    def wait_frame(
        self, predicate: Callable[[CarpFrame], bool], timeout: float, since: float = 0.0
    ) -> CarpFrame:
        def found() -> CarpFrame | None:
            return next((f for f in self.frames(since=since) if predicate(f)), None)

        frame = wait_for(found, timeout, interval=0.02)
        assert frame is not None
        return frame

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


# ---- daemons ----------------------------------------------------------------------------------

_SCRIPT = """#!/bin/sh
# {kind} on {node}: log the event with a timestamp, then {action} the VIP
echo "$(date +%s.%N) {event} $*" >> {log}
ip addr {action} "$2"/32 dev "$1" label "$1":ucarp 2>/dev/null
exit 0
"""


@dataclass(frozen=True)
class Event:
    time: float
    event: str  # "up" or "down"
    args: tuple[str, ...]


@dataclass
class Daemon:
    """A carpd or ucarp process running in one node namespace."""

    kind: str
    node: Node
    vhid: int
    vip: IPv4Address
    process: subprocess.Popen[bytes]
    directory: Path
    argv: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def events_path(self) -> Path:
        return self.directory / "events.log"

    @property
    def stderr_path(self) -> Path:
        return self.directory / "stderr.log"

    def events(self) -> list[Event]:
        if not self.events_path.exists():
            return []
        events = []
        for line in self.events_path.read_text().splitlines():
            when, event, *args = line.split()
            events.append(Event(float(when), event, tuple(args)))
        return events

    def ups(self) -> list[Event]:
        return [e for e in self.events() if e.event == "up"]

    def is_master(self) -> bool:
        """The last script it ran was the up script."""
        events = self.events()
        return bool(events) and events[-1].event == "up"

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the daemon and the scripts it may be running (its process group)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def wait_exit(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def control(self, command: str) -> dict[str, object]:
        """carpd only: one request on its control socket."""
        return control.request(self.directory / "state" / f"eth0.{self.vhid}.sock",
                               {"cmd": command})

    def status(self) -> dict[str, object]:
        return self.control("status")

    def status_if_up(self) -> dict[str, object] | None:
        """carpd only: its status, or None while its control socket is not up yet; fails if the
        daemon has died."""
        assert self.alive(), f"{self} exited {self.process.returncode}:\n{self.log()}"
        try:
            return self.status()
        except OSError:
            return None

    def __str__(self) -> str:
        return f"{self.kind}@{self.node.name}"


@dataclass
class Host:
    """A node of any lab as the host sees it: its name and its network namespace (the carpd
    nodes here, tests/ifupdown's ifupdown nodes and tests/package's chroots build on it)."""

    name: str
    netns: str

    def pids(self) -> list[int]:
        """Every process in its network namespace."""
        return netns_pids(self.netns)

    def labels(self, ifname: str = "eth0") -> dict[str, str]:
        """address -> label of the IPv4 addresses of ``ifname``."""
        return labels(self.netns, ifname)

    def holds(self, address: str) -> bool:
        return address in self.labels()


@dataclass
class Node(Host):
    """A node of a :class:`Network`: eth0 with ``address`` on its bridge, carpd/ucarp daemons."""

    network: Network
    address: IPv4Address
    mac: bytes
    port: str
    """Its bridge port in the switch namespace."""
    daemons: list[Daemon] = field(default_factory=list)

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.ns, *cmd, check=check)

    @property
    def ns(self) -> str:
        return self.netns

    def addresses(self) -> set[IPv4Address]:
        return {IPv4Address(address) for address in self.labels()}

    def has(self, vip: IPv4Address) -> bool:
        return vip in self.addresses()

    def remove_address(self, vip: IPv4Address) -> None:
        """What a crashed daemon leaves behind: the test clears it, as a watchdog would."""
        run("ip", "-n", self.ns, "addr", "del", f"{vip}/32", "dev", "eth0", check=False)

    def start(
        self,
        kind: str,
        *,
        vip: IPv4Address = VIP,
        vhid: int = 1,
        password: bytes = PASSWORD,
        advbase: int = 1,
        advskew: int = 0,
        preempt: bool = False,
        extra: Sequence[str] = (),
    ) -> Daemon:
        """Start ``kind`` ("carpd" or "ucarp") here with up/down scripts that add/remove the VIP."""
        directory = self.network.directory / f"{self.name}-{kind}-{vhid}-{len(self.daemons)}"
        directory.mkdir()
        passfile = directory / "password"
        passfile.touch(mode=0o600)
        passfile.write_bytes(password + b"\n")
        events = directory / "events.log"
        scripts = {}
        for event, action in (("up", "add"), ("down", "del")):
            script = directory / f"{event}.sh"
            script.write_text(
                _SCRIPT.format(kind=kind, node=self.name, event=event, action=action, log=events)
            )
            script.chmod(0o755)
            scripts[event] = str(script)
        argv = [
            "-i", "eth0", "-s", str(self.address), "-v", str(vhid), "-o", str(passfile),
            "-a", str(vip), "-b", str(advbase), "-k", str(advskew),
            "-u", scripts["up"], "-d", scripts["down"], "-z",
        ]
        if preempt:
            argv.append("-P")
        if kind == "carpd":
            command = [*CARPD, *argv, "-f", "none", "--state-dir", str(directory / "state")]
        elif kind == "ucarp":
            command = [UCARP, *argv]
        else:
            raise ValueError(kind)
        command += list(extra)
        with open(directory / "stderr.log", "wb") as stderr:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *command],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        daemon = Daemon(kind, self, vhid, vip, process, directory, command)
        self.daemons.append(daemon)
        self.network.daemons.append(daemon)
        return daemon

    def __str__(self) -> str:
        return f"{self.name}({self.address})"


# ---- namespaces and the bridge ----------------------------------------------------------------


def netns_pids(ns: str) -> list[int]:
    """Every process whose network namespace is ``ns`` (daemonized ones included)."""
    return [int(p) for p in run("ip", "netns", "pids", ns, check=False).stdout.split()]


def kill_all(ns: str) -> None:
    """SIGKILL, by pid, every process left in ``ns`` (one of a test's own), until none is."""
    for _ in range(50):
        pids = netns_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def labels(ns: str, ifname: str = "eth0") -> dict[str, str]:
    """address -> label of the IPv4 addresses of ``ifname`` in ``ns`` (none if it is gone)."""
    out = run("ip", "-n", ns, "-j", "-4", "addr", "show", "dev", ifname, check=False).stdout
    return {a["local"]: a.get("label", ifname)
            for link in (json.loads(out) if out.strip() else []) for a in link.get("addr_info", [])}


class Switch:
    """The lab's one namespace-bridge builder: ``br0`` (multicast snooping off, so CARP adverts
    reach every port) in a namespace of its own, and node namespaces each plugged into it by a
    veth pair (``eth0`` in the node).  The callers choose every name (unique ones: they carry a
    pid or a random tag).  :meth:`close` kills what is left in the namespaces, by pid (they are
    the test's own), and deletes them; it runs even when building failed halfway."""

    def __init__(self, name: str, *, ipv6: bool = True) -> None:
        self.name = name
        self.ipv6 = ipv6
        self.namespaces: list[str] = []
        try:
            self.add_namespace(name)
            self.add_bridge("br0")
        except BaseException:
            self.close()
            raise

    def add_namespace(self, ns: str) -> str:
        run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        if not self.ipv6:  # no router solicitations or MLD reports among the frames
            for knob in ("all", "default"):
                run("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                    f"net.ipv6.conf.{knob}.disable_ipv6=1")
        return ns

    def add_bridge(self, bridge: str) -> None:
        run("ip", "-n", self.name, "link", "add", bridge, "type", "bridge", "mcast_snooping", "0")
        run("ip", "-n", self.name, "link", "set", bridge, "up")

    def plug(self, ns: str, port: str, ifname: str = "eth0", bridge: str = "br0") -> None:
        """``ifname`` in ``ns``, a veth whose peer ``port`` is a port of ``bridge``."""
        run("ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port,
            "netns", self.name)
        run("ip", "-n", self.name, "link", "set", port, "master", bridge, "up")

    def add_node(self, ns: str, port: str) -> str:
        """A new namespace ``ns`` whose eth0 is on ``br0`` (by ``port``)."""
        self.add_namespace(ns)
        self.plug(ns, port)
        return ns

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            kill_all(ns)
            run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


class Network:
    """A bridge in a switch namespace and the nodes plugged into it."""

    def __init__(self, directory: Path, prefix: str = "carpt") -> None:
        self.directory = directory
        self.tag = f"{prefix}{os.getpid()}{secrets.token_hex(2)}"
        self.nodes: list[Node] = []
        self.daemons: list[Daemon] = []
        self._capture: Capture | None = None
        self._lan_captures: list[Capture] = []
        self.wiring = Switch(f"{self.tag}-sw", ipv6=False)
        self.switch = self.wiring.name
        try:
            self._capture = Capture(self.switch)
        except BaseException:
            self.close()
            raise

    @property
    def capture(self) -> Capture:
        assert self._capture is not None
        return self._capture

    def add_node(self, address: str, name: str | None = None) -> Node:
        name = name or chr(ord("a") + len(self.nodes))
        port = f"p{len(self.nodes)}{self.tag[-4:]}"
        ns = self.wiring.add_node(f"{self.tag}-{name}", port)
        run("ip", "-n", ns, "addr", "add", f"{address}/16", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        link = json.loads(run("ip", "-n", ns, "-j", "link", "show", "dev", "eth0").stdout)[0]
        mac = bytes.fromhex(link["address"].replace(":", ""))
        node = Node(name, ns, self, IPv4Address(address), mac, port)
        self.nodes.append(node)
        return node

    def add_lan(self, bridge: str) -> Capture:
        """Another bridge in the switch namespace, a LAN apart from ``br0``'s (a cluster
        network), and a capture of it."""
        self.wiring.add_bridge(bridge)
        capture = Capture(self.switch, bridge)
        self._lan_captures.append(capture)
        return capture

    def plug(self, node: Node, bridge: str, ifname: str, address: str) -> str:
        """Give ``node`` another interface, ``ifname`` with ``address``/16, on ``bridge`` (see
        :meth:`add_lan`); returns its port on the bridge."""
        port = f"{node.port}{ifname}"[:15]
        self.wiring.plug(node.ns, port, ifname, bridge)
        run("ip", "-n", node.ns, "addr", "add", f"{address}/16", "dev", ifname)
        run("ip", "-n", node.ns, "link", "set", ifname, "up")
        return port

    def partition(self, *nodes: Node) -> None:
        """Isolated bridge ports forward to no other isolated port: the nodes cannot hear each
        other (their links stay up, so carrier is not what they react to)."""
        for node in nodes:
            run("bridge", "-n", self.switch, "link", "set", "dev", node.port, "isolated", "on")

    def heal(self) -> None:
        for node in self.nodes:
            run("bridge", "-n", self.switch, "link", "set", "dev", node.port, "isolated", "off")

    def holders(self, vip: IPv4Address = VIP) -> list[Node]:
        """The nodes that have ``vip`` on eth0."""
        return [n for n in self.nodes if n.has(vip)]

    def close(self) -> None:
        """Kill every daemon this network started, then what is left in its namespaces, and
        delete them."""
        for daemon in self.daemons:
            daemon.kill()
        if self._capture is not None:
            self._capture.close()
        for capture in self._lan_captures:
            capture.close()
        self.wiring.close()


@contextlib.contextmanager
def network(prefix: str = "carpt", folder: str = "carpd-lab-") -> Iterator[Network]:
    """A :class:`Network` in a temporary folder of its own, closed and removed on the way out
    (the benchmarks' and the demo's; the tests' is conftest's ``net`` fixture)."""
    with tempfile.TemporaryDirectory(prefix=folder) as directory:
        net = Network(Path(directory), prefix=prefix)
        try:
            yield net
        finally:
            net.close()
