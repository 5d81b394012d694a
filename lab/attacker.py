"""A hostile node for tests and benchmarks: frames that must not disturb an election, sent at a
steady rate from a namespace plugged into the test bridge.

:func:`bad_frames` builds the mix (every kind is a frame a receiver must drop): adverts of
another vhid, with TTL 64, with a bad HMAC, to another destination, garbage, and replays of a
captured valid advert with a broken checksum, another destination or CARP version.

:class:`Flood` runs this module as a program inside the attacker's namespace (its own process, so
the sender keeps its rate whatever the caller does), from the repository root:

    python -m lab.attacker flood IFNAME RATE SECONDS FRAMES_FILE
        send the frames of FRAMES_FILE (each: 2-byte big-endian length, then the frame) round
        robin on IFNAME, RATE per second (in 1 ms slices) for SECONDS; at the end print one JSON
        line {"sent": N, "seconds": S, "errors": E}
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from carpd.core import wire
from carpd.engine import link
from lab.netns import REPO, Capture, CarpFrame, Network, Node, in_netns

PYTHON = str(REPO / ".venv" / "bin" / "python")
ATTACKER_SOURCE = IPv4Address("10.9.1.66")
VICTIM = IPv4Address("10.9.1.2")
KINDS = ("other-vhid", "ttl-64", "bad-hmac", "garbage", "other-destination",
         "replay-bad-checksum", "replay-other-destination", "replay-bad-version")
PASSING_FILTER = ("bad-hmac", "replay-bad-checksum")
"""Kinds only the key can tell from a real advert: they reach the engine's receive checks."""


@dataclass(frozen=True)
class Target:
    """The virtual host under attack, as seen on the wire (no key: the attacker has none)."""

    vhid: int
    vip: IPv4Address
    group: IPv4Address = wire.DEFAULT_GROUP
    victim: IPv4Address = VICTIM
    """A node's unicast address, for frames sent to another destination."""


def forged_advert(target: Target, rng: random.Random, *, vhid: int | None = None,
                  ttl: int = wire.CARP_TTL, destination: IPv4Address | None = None,
                  source: IPv4Address = ATTACKER_SOURCE) -> bytes:
    """An Ethernet frame carrying an advert signed with a wrong key."""
    advert = wire.Advert(vhid=target.vhid if vhid is None else vhid, advbase=1,
                         advskew=rng.randrange(256), counter=rng.getrandbits(64))
    key = rng.randbytes(8)
    packet = bytearray(wire.encode_packet(advert, key, target.vip, source, rng.getrandbits(16),
                                          target.group if destination is None else destination))
    if ttl != wire.CARP_TTL:
        _set_ip_field(packet, 8, ttl)
    return _to_group(target, bytes(packet))


def _set_ip_field(packet: bytearray, offset: int, value: int) -> None:
    packet[offset] = value
    packet[10:12] = b"\0\0"
    packet[10:12] = wire.internet_checksum(bytes(packet[:20])).to_bytes(2, "big")


def _to_group(target: Target, packet: bytes) -> bytes:
    mac = wire.multicast_mac(target.group)
    return wire.encode_ethernet(mac, bytes.fromhex("02000000a77a"), wire.ETH_P_IP, packet)


def replays(target: Target, sample: bytes, rng: random.Random) -> dict[str, bytes]:
    """A captured valid advert (an IPv4 packet) with one field broken in each of three ways."""
    bad_checksum = bytearray(sample)
    bad_checksum[20 + 6] ^= 1 + rng.randrange(255)  # the CARP checksum
    other_destination = bytearray(sample)
    other_destination[16:20] = target.victim.packed
    _set_ip_field(other_destination, 8, wire.CARP_TTL)
    bad_version = bytearray(sample)
    bad_version[20] = 0x31
    return {"replay-bad-checksum": _to_group(target, bytes(bad_checksum)),
            "replay-other-destination": _to_group(target, bytes(other_destination)),
            "replay-bad-version": _to_group(target, bytes(bad_version))}


def frame_of(kind: str, target: Target, rng: random.Random, sample: bytes | None) -> bytes:
    if kind == "other-vhid":
        return forged_advert(target, rng, vhid=rng.choice([v for v in range(1, 256)
                                                          if v != target.vhid]))
    if kind == "ttl-64":
        return forged_advert(target, rng, ttl=64)
    if kind == "bad-hmac":
        return forged_advert(target, rng)
    if kind == "other-destination":
        return forged_advert(target, rng, destination=target.victim)
    if kind == "garbage":
        mac = rng.choice([wire.multicast_mac(target.group), wire.BROADCAST_MAC])
        return mac + rng.randbytes(rng.randrange(8, 80))
    assert sample is not None, f"{kind} needs a captured advert"
    return replays(target, sample, rng)[kind]


def bad_frames(target: Target, count: int, *, kinds: Sequence[str] = KINDS,
               sample: bytes | None = None, seed: int = 1) -> list[bytes]:
    """``count`` frames, the ``kinds`` in turn (replay kinds are skipped without a sample)."""
    rng = random.Random(seed)
    usable = [k for k in kinds if sample is not None or not k.startswith("replay-")]
    return [frame_of(usable[i % len(usable)], target, rng, sample) for i in range(count)]


def valid_frame(target: Target, key: bytes, source: IPv4Address, advskew: int = 0,
                counter: int = 1) -> bytes:
    """A frame that passes every receive check of ``target``'s nodes (for tests)."""
    advert = wire.Advert(vhid=target.vhid, advbase=1, advskew=advskew, counter=counter)
    packet = wire.encode_packet(advert, key, target.vip, source, 1, target.group)
    return _to_group(target, packet)


# ---- watching the nodes, not the flood -------------------------------------------------------


class SentBy(Capture):
    """The CARP frames ``node`` sends, read on its bridge port with the kernel's timestamps.

    A filter in the kernel keeps only IPv4 protocol 112 frames arriving from the node: the
    bridge-wide capture of :class:`netns.Network` would decode every frame of a flood in
    Python, fall behind and swell."""

    def __init__(self, network: Network, node: Node) -> None:
        super().__init__(network.switch, node.port)
        program = [
            (link.BPF_LD_W_ABS, 0, 0, link.SKF_AD_PKTTYPE),
            (link.BPF_JMP_JEQ_K, 5, 0, link.PACKET_OUTGOING),  # forwarded to the node: not its own
            (link.BPF_LD_H_ABS, 0, 0, 12),
            (link.BPF_JMP_JEQ_K, 0, 3, wire.ETH_P_IP),
            (link.BPF_LD_B_ABS, 0, 0, 23),
            (link.BPF_JMP_JEQ_K, 0, 1, wire.CARP_PROTO),
            (link.BPF_RET_K, 0, 0, 0xFFFF),
            (link.BPF_RET_K, 0, 0, 0),
        ]
        link.attach_filter(self._sock, program)  # Capture itself skips what came before


def gaps(frames: Sequence[CarpFrame]) -> list[float]:
    """Seconds between consecutive frames."""
    return [b.time - a.time for a, b in itertools.pairwise(frames)]


# ---- sending ----------------------------------------------------------------------------------


def open_sender(ns: str, ifname: str = "eth0") -> socket.socket:
    """A raw socket on ``ifname`` of namespace ``ns`` that receives nothing."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((ifname, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    return sock


def send_all(sock: socket.socket, frames: Iterable[bytes]) -> int:
    sent = 0
    for data in frames:
        try:
            sock.send(data)
            sent += 1
        except OSError:  # ENOBUFS: the queue is full; a flood does not wait
            pass
    return sent


def write_frames(path: Path, frames: Sequence[bytes]) -> None:
    path.write_bytes(b"".join(len(f).to_bytes(2, "big") + f for f in frames))


def read_frames(path: Path) -> list[bytes]:
    data = path.read_bytes()
    frames, offset = [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 2], "big")
        frames.append(data[offset + 2 : offset + 2 + length])
        offset += 2 + length
    return frames


def flood(ifname: str, rate: float, seconds: float, frames: Sequence[bytes]) -> dict[str, float]:
    """Send ``frames`` round robin at ``rate`` per second: each millisecond's share at once."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((ifname, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    send = sock.send
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    began = time.monotonic()
    sent = errors = 0
    index, count = 0, len(frames)
    while not stopping and (elapsed := time.monotonic() - began) < seconds:
        due = int(elapsed * rate) + 1 - sent - errors
        for _ in range(min(due, 1000)):
            try:
                send(frames[index])
                sent += 1
            except OSError:
                errors += 1
            index = (index + 1) % count
        if due <= 0:
            time.sleep(0.0005)
    return {"sent": sent, "seconds": time.monotonic() - began, "errors": errors}


class Flood:
    """``rate`` frames per second from namespace ``ns`` for at most ``seconds``, in its own
    process (ended by PID in :meth:`stop`)."""

    def __init__(self, ns: str, frames: Sequence[bytes], rate: float, seconds: float,
                 directory: Path, ifname: str = "eth0") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._frames_file = directory / "flood.frames"
        write_frames(self._frames_file, frames)
        self._out = directory / "flood.out"
        with open(self._out, "wb") as out:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", ns, PYTHON, "-m", "lab.attacker", "flood", ifname,
                 str(rate), str(seconds), str(self._frames_file)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=REPO)

    def stop(self) -> dict[str, float]:
        """End the flood (if still running) and return what it sent."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        lines = self._out.read_text(errors="replace").strip().splitlines()
        try:
            result: dict[str, float] = json.loads(lines[-1])
        except (IndexError, ValueError) as error:
            raise RuntimeError(f"the flood failed: {' '.join(lines)[-500:]}") from error
        return result

    def wait(self, timeout: float) -> dict[str, float]:
        self.process.wait(timeout=timeout)
        return self.stop()


def main(argv: list[str]) -> int:
    if argv[:1] == ["flood"] and len(argv) == 5:
        ifname, rate, seconds, path = argv[1:]
        result = flood(ifname, float(rate), float(seconds), read_frames(Path(path)))
        print(json.dumps(result), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
