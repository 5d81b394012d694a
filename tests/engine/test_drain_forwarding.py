"""A planned hand-over in the middle of a long download (issue 12, item 2): the old MASTER keeps
the VIP and serves the connections it has, the new MASTER passes every segment of them on to it
and answers new connections itself.

Real parts: two carpd engines (``--drain 30``) in node namespaces on a bridge, a client
namespace, a rate-limited download server on each node.  The client checks the bytes
(SHA-256), that nothing reset the connection, and the server checks that the client's closing
FIN reached it (a segment the new MASTER's conntrack cannot place: it must still go on).
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from lab.netns import VIP, Daemon, Network, Node, in_netns, wait_for

pytestmark = [pytest.mark.netns]

PORT = 7070
SIZE = 1 << 20
SECONDS = 12.0
DRAIN = "30"

# One connection: "GET SIZE SECONDS SEED\n" in; the node's name and a newline, then SIZE bytes
# of random.Random(SEED) at an even rate over SECONDS; then a half close, and the client's EOF
# is awaited.  One line per connection to the log: "SEED clean|reset|timeout".
SERVER = """
import random, socket, sys, threading, time
name, log = sys.argv[1].encode(), sys.argv[2]
server = socket.create_server(("0.0.0.0", int(sys.argv[3])), backlog=64)
def serve(conn):
    seed = "?"
    try:
        with conn, conn.makefile("rb") as lines:
            _, size, seconds, seed = lines.readline().split()
            size, seconds = int(size), float(seconds)
            data = random.Random(int(seed)).randbytes(size)
            conn.sendall(name + b"\\n")
            chunk, start = max(1, size // max(1, int(seconds * 20))), time.monotonic()
            for sent in range(0, size, chunk):
                time.sleep(max(0.0, start + seconds * sent / size - time.monotonic()))
                conn.sendall(data[sent:sent + chunk])
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(20)
            outcome = "clean" if conn.recv(1) == b"" else "data"
    except ConnectionResetError:
        outcome = "reset"
    except (TimeoutError, socket.timeout):
        outcome = "timeout"
    with open(log, "a") as out:
        out.write(f"{seed.decode() if isinstance(seed, bytes) else seed} {outcome}\\n")
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""


def expected(size: int, seed: int) -> str:
    return hashlib.sha256(random.Random(seed).randbytes(size)).hexdigest()


@dataclass
class Download:
    """One download from the VIP in a thread of the test, through the client's namespace."""

    client: Node
    seed: int
    size: int = SIZE
    seconds: float = SECONDS
    server: str = ""
    received: int = 0
    digest: str = ""
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Download:
        with in_netns(self.client.ns):
            sock = socket.create_connection((str(VIP), PORT), timeout=5)
        threading.Thread(target=self._run, args=(sock,), daemon=True).start()
        return self

    def _run(self, sock: socket.socket) -> None:
        sha = hashlib.sha256()
        try:
            with sock:
                sock.settimeout(10)
                sock.sendall(f"GET {self.size} {self.seconds} {self.seed}\n".encode())
                head = b""
                while not head.endswith(b"\n"):
                    head += sock.recv(1) or b"\n"
                self.server = head.decode().strip()
                while chunk := sock.recv(65536):
                    sha.update(chunk)
                    self.received += len(chunk)
            self.digest = sha.hexdigest()
        except OSError as error:
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self.done.set()

    def check(self, timeout: float) -> None:
        assert self.done.wait(timeout), f"download {self.seed}: not over after {timeout} s " \
                                        f"({self.received} bytes)"
        assert self.error is None, f"download {self.seed} broke after {self.received} " \
                                   f"bytes: {self.error}"
        assert self.received == self.size
        assert self.digest == expected(self.size, self.seed), "the bytes differ"


@dataclass
class Servers:
    processes: list[subprocess.Popen[bytes]]
    logs: dict[str, Path]

    def outcomes(self, node: Node) -> dict[str, str]:
        """seed -> how the server's connection ended ("clean": the client's FIN reached it)."""
        path = self.logs[node.name]
        lines = path.read_text().split("\n") if path.exists() else []
        return dict(line.split() for line in lines if line.strip())


@pytest.fixture
def servers(net: Network) -> Iterator[Servers]:
    """No servers yet: ``start(node)`` puts one on a node; all are killed at the end."""
    started = Servers([], {})
    yield started
    for process in started.processes:
        process.kill()
        process.wait()


def serve(servers: Servers, node: Node) -> None:
    log = node.network.directory / f"server-{node.name}.log"
    servers.logs[node.name] = log
    servers.processes.append(subprocess.Popen(
        ["ip", "netns", "exec", node.ns, sys.executable, "-c", SERVER, node.name, str(log),
         str(PORT)],
        start_new_session=True))
    wait_for(lambda: f":{PORT} " in node.exec("ss", "-Htln").stdout, 10)


def ended_cleanly(servers: Servers, node: Node, seed: int) -> None:
    """The server on ``node`` saw download ``seed``'s client close (its FIN arrived)."""
    try:
        outcome = wait_for(lambda: servers.outcomes(node).get(str(seed)), 5)
    except TimeoutError:
        outcome = "nothing 5 s after the end: the client's FIN did not reach it"
    assert outcome == "clean", f"download {seed} on {node.name}: {outcome}"


def pair(net: Network, servers: Servers) -> tuple[Node, Node, Node, Daemon, Daemon]:
    a, b, client = (net.add_node(address) for address in ("10.9.1.1", "10.9.1.2", "10.9.1.50"))
    for node in (a, b):
        serve(servers, node)
    first = a.start("carpd", extra=["--drain", DRAIN])
    wait_for(lambda: a.has(VIP), 10)
    second = b.start("carpd", advskew=50, extra=["--drain", DRAIN])
    wait_for(lambda: _state(second) == "BACKUP" and _accepted(second), 10)
    return a, b, client, first, second


def _state(daemon: Daemon) -> str:
    try:
        return str(daemon.status()["state"])
    except OSError:
        return ""


def _accepted(daemon: Daemon) -> bool:
    try:
        return int(str(daemon.status()["accepted"])) > 0
    except OSError:
        return False


def client_points_at(client: Node, node: Node) -> bool:
    """The client's ARP cache sends the VIP's traffic to ``node``."""
    entries = json.loads(client.exec("ip", "-j", "neigh", "show", str(VIP)).stdout)
    mac = ":".join(f"{x:02x}" for x in node.mac)
    return bool(entries) and entries[0].get("lladdr") == mac


def fetch_name(client: Node) -> str:
    """A fresh short connection to the VIP: the name of the node that answers it."""
    probe = Download(client, seed=7, size=1000, seconds=0.0).start()
    probe.check(10)
    return probe.server


def test_a_download_survives_a_planned_hand_over_and_new_connections_go_to_the_new_master(
        net: Network, servers: Servers) -> None:
    a, b, client, first, _ = pair(net, servers)
    download = Download(client, seed=1).start()
    wait_for(lambda: download.received > SIZE // 5, 10)
    first.signal(signal.SIGTERM)  # planned: bow out, keep the VIP without ARP, drain
    wait_for(lambda: b.has(VIP), 5)

    download.check(SECONDS + 15)
    assert download.server == "a"
    assert fetch_name(client) == "b", "a connection opened after the hand-over goes to b"
    ended_cleanly(servers, a, 1)
    assert first.alive() and a.has(VIP), "a still drains (30 s)"


def downloads_kept_there_and_back(client: Node, servers: Servers, a: Node, b: Node,
                                  over: Callable[[], None], back: Callable[[], None]) -> None:
    """A -> B -> A: a download from a (begun before ``over`` hands the VIP to b) and one from
    b (begun before ``back`` hands it back to a, while a's drain still runs) both end whole,
    each from the server it began on, and a new connection goes to a."""
    old = Download(client, seed=1, seconds=20.0).start()
    wait_for(lambda: old.received > SIZE // 10, 10)
    over()
    middle = Download(client, seed=2).start()
    wait_for(lambda: middle.received > SIZE // 5, 10)
    back()

    old.check(25)
    middle.check(SECONDS + 15)
    assert (old.server, middle.server) == ("a", "b")
    assert fetch_name(client) == "a"
    ended_cleanly(servers, a, 1)
    ended_cleanly(servers, b, 2)


def test_the_engines_keep_downloads_across_a_hand_over_and_back(
        net: Network, servers: Servers) -> None:
    """A -> B -> A with the real engines (demote/promote on the control socket)."""
    a, b, client, first, second = pair(net, servers)

    def over() -> None:
        first.control("demote")  # a bows out and drains
        wait_for(lambda: _state(second) == "MASTER", 5)
        first.control("promote")
        wait_for(lambda: client_points_at(client, b), 5)  # b's gratuitous ARP came

    def back() -> None:
        second.control("demote")  # b bows out and drains; a takes over while its drain runs
        wait_for(lambda: _state(first) == "MASTER", 5)
        wait_for(lambda: client_points_at(client, a), 5)

    downloads_kept_there_and_back(client, servers, a, b, over, back)


# ---- A -> B -> A, the rules driven directly -------------------------------------------------

# What an engine does with the rules, on command from stdin, one "ok"/"no" line back each:
# "guard" / "unguard" (ArpGuard), "forward ADDRESS" / "unforward" (StrayForwarder).
HOLDER = """
import sys
from ipaddress import IPv4Address
from carpd.engine.arpguard import ArpGuard, StrayForwarder
vip = IPv4Address(sys.argv[1])
guard, forwarder = ArpGuard("eth0", 1, vip), StrayForwarder("eth0", 1, vip)
for line in sys.stdin:
    verb, *args = line.split()
    if verb == "guard":
        done = guard.engage()
    elif verb == "unguard":
        done = guard.release() is None
    elif verb == "forward":
        done = forwarder.engage(IPv4Address(args[0]))
    else:
        done = forwarder.release() is None
    print("ok" if done else "no", flush=True)
"""
SRC = Path(__file__).resolve().parents[2] / "src"


class Rules:
    """A process in ``node``'s namespace holding its ARP guard and stray forwarder."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", node.ns, sys.executable, "-c", HOLDER, str(VIP)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
            env={"PYTHONPATH": str(SRC), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def __call__(self, command: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "ok", f"{self.node.name}: {command}"

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=10)


@pytest.fixture
def rules() -> Iterator[list[Rules]]:
    held: list[Rules] = []
    yield held
    for one in held:
        one.close()


def point_client_at(client: Node, node: Node) -> None:
    """What the new MASTER's gratuitous ARP does to the client's cache."""
    mac = ":".join(f"{x:02x}" for x in node.mac)
    client.exec("ip", "neigh", "replace", str(VIP), "lladdr", mac, "dev", "eth0", "nud",
                "reachable")


def take_over(new: Rules, old: Rules, client: Node) -> None:
    """A planned hand-over from ``old`` to ``new``: old drains (keeps the VIP, no ARP), new
    holds the VIP, passes old's connections on, and the client's cache moves to it."""
    old("guard")
    new("unguard")
    new.node.exec("ip", "addr", "replace", f"{VIP}/32", "dev", "eth0")
    new(f"forward {old.node.address}")
    point_client_at(client, new.node)


def test_downloads_survive_a_hand_over_and_back_while_the_first_drain_runs(
        net: Network, servers: Servers, rules: list[Rules]) -> None:
    """A -> B -> A: a's download stays a's, b's download (begun after the first hand-over) is
    passed on to b by a once b hands back, and new connections go to a."""
    a, b, client = (net.add_node(address) for address in ("10.9.1.1", "10.9.1.2", "10.9.1.50"))
    for node in (a, b):
        serve(servers, node)
    on_a, on_b = Rules(a), Rules(b)
    rules += [on_a, on_b]
    a.exec("ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
    point_client_at(client, a)
    downloads_kept_there_and_back(
        client, servers, a, b,
        over=lambda: take_over(on_b, on_a, client),  # a drains
        back=lambda: take_over(on_a, on_b, client))  # b drains, a's first still running


# ---- no loops, nothing left behind ---------------------------------------------------------

ETH_P_IP = 0x0800
STRAY_PORT = 40404


def stray_ack(source: IPv4Address) -> bytes:
    """A TCP ACK from ``source``:STRAY_PORT to the VIP that belongs to no connection anywhere."""
    header = struct.pack("!HHIIBBHHH", STRAY_PORT, PORT, 1000, 2000, 5 << 4, 0x10, 1024, 0, 0)
    pseudo = source.packed + VIP.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
    return header[:16] + struct.pack("!H", internet_checksum(pseudo + header)) + header[18:]


def internet_checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frames_of_the_stray(net: Network, send: Callable[[], None], seconds: float = 1.5) -> int:
    """How many frames on the bridge carry the stray ACK's flow (either way) after ``send``."""
    with in_netns(net.switch):
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    with sniffer:
        sniffer.bind(("br0", ETH_P_IP))
        sniffer.settimeout(0.1)
        send()
        seen, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                frame, address = sniffer.recvfrom(2048)
            except TimeoutError:
                continue
            if address[2] != socket.PACKET_OUTGOING and len(frame) >= 38 and \
                    frame[23] == socket.IPPROTO_TCP and STRAY_PORT in \
                    struct.unpack_from("!HH", frame, 34):
                seen += 1
        return seen


def test_two_nodes_forwarding_to_each_other_never_pass_a_segment_back_and_forth(
        net: Network, rules: list[Rules]) -> None:
    """A -> B -> A: both forward to the other; a segment neither has a connection for goes to
    the old MASTER once and is answered there, not passed back (64 times, until its TTL ran
    out).  The same holds for an old MASTER with ip_forward=1 whose drain is over."""
    a, b, client = (net.add_node(address) for address in ("10.9.1.1", "10.9.1.2", "10.9.1.50"))
    on_a, on_b = Rules(a), Rules(b)
    rules += [on_a, on_b]
    for node in (a, b):
        node.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
    b.exec("ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
    on_b(f"forward {a.address}")  # a drained (its VIP is gone), b passes its strays on
    a.exec("ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
    on_a(f"forward {b.address}")  # ... and now a holds the VIP again, b drains
    point_client_at(client, a)

    def send() -> None:
        with in_netns(client.ns), socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                socket.IPPROTO_TCP) as raw:
            raw.sendto(stray_ack(client.address), (str(VIP), 0))

    seen = frames_of_the_stray(net, send)
    assert 2 <= seen <= 4, f"{seen} frames of one stray segment: it went round in a loop"

    b.exec("ip", "addr", "del", f"{VIP}/32", "dev", "eth0")  # b's drain is over: it routes
    seen = frames_of_the_stray(net, send)
    assert 2 <= seen <= 5, f"{seen} frames of one stray segment: it went round in a loop"


def test_rules_are_replaced_for_another_old_master_and_leave_nothing_when_released_or_killed(
        net: Network, rules: list[Rules]) -> None:
    a = net.add_node("10.9.1.1")
    held = Rules(a)
    rules.append(held)
    held("guard")
    held("forward 10.9.1.2")
    held("forward 10.9.1.3")  # another old MASTER: the rules are replaced, not added
    rules_now = a.exec("nft", "list", "ruleset").stdout
    assert "dup to 10.9.1.3" in rules_now and "10.9.1.2" not in rules_now
    held("unforward")
    held("unguard")
    assert a.exec("nft", "list", "ruleset").stdout.strip() == ""
    held("guard")
    held("forward 10.9.1.2")
    held.process.kill()
    held.process.wait(timeout=5)
    wait_for(lambda: a.exec("nft", "list", "ruleset").stdout.strip() == "", 5)
