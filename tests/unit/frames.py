"""The frames captured from Debian's ucarp 1.5.2 (tests/data/vectors), as one table of cases.

Each CARP frame becomes a :class:`CarpCase` (the decoded fields next to the captured bytes), each
gratuitous ARP an :class:`ArpCase`.  The wire tests drive encoder and decoder from the same table.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from carpd.core import wire

VECTORS = Path(__file__).resolve().parent.parent / "data" / "vectors"
# Any address none of the captured nodes used: the receiver's own address in an Expect.
RECEIVER = IPv4Address("10.99.0.254")


@dataclass(frozen=True)
class CarpCase:
    """One captured advertisement: what it says and the exact bytes ucarp put on the wire."""

    name: str
    password: bytes
    vip: IPv4Address
    group: IPv4Address
    source: IPv4Address
    ident: int
    advert: wire.Advert
    frame: bytes
    ip_packet: bytes
    carp: bytes
    hmac_input: bytes

    @property
    def vhid(self) -> int:
        return self.advert.vhid

    def expect(self, **changes: Any) -> wire.Expect:
        """What a receiver configured like the capture's nodes accepts."""
        fields: dict[str, Any] = {
            "vhid": self.vhid, "key": self.password, "vip": self.vip,
            "source": RECEIVER, "group": self.group,
        }
        fields.update(changes)
        return wire.Expect(**fields)


@dataclass(frozen=True)
class ArpCase:
    name: str
    mac: bytes
    address: IPv4Address
    frame: bytes


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _vector_files() -> list[Path]:
    files = sorted(VECTORS.glob("*.json"))
    assert len(files) == 3, f"expected the three captured vectors in {VECTORS}, found {files}"
    return files


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _carp_case(vector: dict[str, Any], packet: dict[str, Any]) -> CarpCase:
    d = packet["decoded"]
    params = vector["parameters"]
    advert = wire.Advert(
        vhid=d["carp_vhid"], advbase=d["carp_advbase"], advskew=d["carp_advskew"],
        counter=packet["counter_int"], digest=bytes.fromhex(d["carp_md"]),
        version=d["carp_version"], type=d["carp_type"], authlen=d["carp_authlen"],
        pad=d["carp_pad1"],
    )
    return CarpCase(
        name=f"{vector['name']}#{packet['index']}",
        password=params["password"].encode(),
        vip=IPv4Address(params["vip"]),
        group=IPv4Address(vector["multicast_group"]),
        source=IPv4Address(d["ip_src"]),
        ident=d["ip_id"],
        advert=advert,
        frame=bytes.fromhex(packet["frame_hex"]),
        ip_packet=bytes.fromhex(packet["ip_header_hex"] + packet["carp_hex"]),
        carp=bytes.fromhex(packet["carp_hex"]),
        hmac_input=bytes.fromhex(packet["hmac_input_hex"]),
    )


def carp_cases() -> list[CarpCase]:
    cases = []
    for path in _vector_files():
        vector = _load(path)
        cases += [_carp_case(vector, p) for p in vector["packets"] if p["kind"] == "carp"]
    return cases


def arp_cases() -> list[ArpCase]:
    cases = []
    for path in _vector_files():
        vector = _load(path)
        for p in vector["packets"]:
            if p["kind"] == "arp":
                d = p["decoded"]
                cases.append(ArpCase(f"{vector['name']}#{p['index']}", _mac(d["arp_sha"]),
                                     IPv4Address(d["arp_spa"]), bytes.fromhex(p["frame_hex"])))
    return cases


def pcap_frames() -> dict[str, list[bytes]]:
    """Every frame of every captured pcap file (classic libpcap format), by vector name."""
    frames: dict[str, list[bytes]] = {}
    for path in sorted(VECTORS.glob("*.pcap")):
        data = path.read_bytes()
        magic = data[:4]
        order = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
                 b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}[magic]
        offset, records = 24, []
        while offset < len(data):
            _sec, _frac, caplen, _len = struct.unpack_from(order + "IIII", data, offset)
            records.append(data[offset + 16 : offset + 16 + caplen])
            offset += 16 + caplen
        frames[path.stem] = records
    return frames


def vector_frames() -> dict[str, list[bytes]]:
    """Every frame of every JSON vector, in capture order, by vector name."""
    return {
        path.stem: [bytes.fromhex(p["frame_hex"]) for p in _load(path)["packets"]]
        for path in _vector_files()
    }


def with_carp_checksum(packet: bytes, ihl: int = wire.IP_HEADER_LEN) -> bytes:
    """``packet`` with its CARP checksum recomputed (after editing a CARP field on purpose)."""
    carp = bytearray(packet[ihl : ihl + wire.CARP_HEADER_LEN])
    carp[6:8] = b"\0\0"
    carp[6:8] = wire.internet_checksum(bytes(carp)).to_bytes(2, "big")
    return packet[:ihl] + bytes(carp) + packet[ihl + wire.CARP_HEADER_LEN :]


def with_ip_checksum(packet: bytes) -> bytes:
    """``packet`` with its IPv4 header checksum recomputed (after editing a header field)."""
    ihl = (packet[0] & 0x0F) * 4
    header = bytearray(packet[:ihl])
    header[10:12] = b"\0\0"
    header[10:12] = wire.internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + packet[ihl:]


def with_byte(packet: bytes, offset: int, value: int) -> bytes:
    return packet[:offset] + bytes([value]) + packet[offset + 1 :]


FUZZ_SEED = 20261125


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(5)
        if choice == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 1:
            del data[rng.randrange(len(data) + 1) :]
        elif choice == 2:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif choice == 3 and data:
            data[0] = rng.choice([0x45, 0x46, 0x4F, 0x40, 0x55, rng.randrange(256)])
        elif choice == 4 and len(data) > 2:
            start = rng.randrange(len(data) - 1)
            data[start : start + 2] = rng.randbytes(2)
    return bytes(data)


def fuzz_inputs(rng: random.Random, cases: list[CarpCase], count: int) -> list[bytes]:
    """Random bytes, and captured frames and packets mangled (half of them with their checksums
    fixed up, to get past the checksum check to the deeper ones)."""
    inputs = []
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            inputs.append(rng.randbytes(rng.randint(0, 120)))
        else:
            base = rng.choice(cases)
            data = mutate(rng, base.frame if kind == 1 else base.ip_packet)
            if kind == 2 and rng.random() < 0.5 and len(data) >= 56 and data[0] == 0x45:
                data = with_ip_checksum(with_carp_checksum(data))  # get past the checksums
            inputs.append(data)
    return inputs
