"""A long download served by the MASTER itself survives a planned hand-over, and the old
MASTER lets go as soon as it has ended (issue 12: ``ucarp-drain-connections``).

Two trixie nodes (chroots in network namespaces on one bridge) run the installed carpd through
real ifup/ifdown with ``ucarp-drain-connections 60``; each runs a web server (in its own
namespace) that sends a file slowly, at an even rate.  A client in a third namespace downloads
it from the VIP, so from the MASTER.  Mid-download the MASTER is taken down for maintenance
(``ifdown eth0``): the peer takes the VIP over at once, the old MASTER keeps the connections it
had (the new one passes their segments on to it) and lets go when the last of them has closed.
So the download ends complete, its checksum right, never reset, and ``ifdown`` returns within a
few seconds of its end (not the 60 s bound, not before the end).

Without the feature (``ucarp-drain-connections 0`` and ``ucarp-drain 2``, tried by hand) the
same test fails: ``ifdown`` returns about 2 s after the hand-over, 9.7 s before the download
would have ended, and the download is broken (it stalls at 1.25 of 3 MiB and times out)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pkgtools import (
    NET,
    PASSWORD,
    VIP,
    Installed,
    Node,
    Overlay,
    Pair,
    Stage,
    ifup_both,
    interfaces_file,
    record,
    run,
)
from test_proxy_package import BACKEND_SERVER, FETCH, Background, expected_sha256, in_netns

from conftest import Lab
from lab.poll import wait_for

# The stanza's drain lines on both nodes (the feature under test).
DRAIN_LINES = ("ucarp-drain-connections 60",)
DRAIN_BOUND = 60.0  # the longest ifdown may take by the stanza
CLIENT = f"{NET}.50"
PORT = 80
SIZE = 3 * 1024 * 1024
SECONDS = 12.0  # the download's length, at an even rate
HAND_OVER_AFTER = 3.0  # into the download
SEED = 1212
STALL = 10.0  # the client gives up on a download that receives nothing for this long
LET_GO_WITHIN = 5.0  # ifdown returns at most this long after the download's end
EARLY = 1.0  # ... and not more than this before it (the server's close precedes the client's)


@dataclass
class ServingPair:
    pair: Pair
    a: Node
    b: Node
    client: str  # network namespace


def drain_node(lab: Lab, layers: Installed, base: Path, name: str, host: int,
               advskew: int, preempt: bool) -> Node:
    """A node with the VIP's stanza plus DRAIN_LINES; nothing is up yet."""
    overlay = Overlay(base / name, layers.lowers)
    node = Node(name, lab.node_netns(name), overlay, f"{NET}.{host}", layers.deb_in_root)
    stanza = interfaces_file(node.address, advskew, preempt)
    password = f"    ucarp-password {PASSWORD}\n"
    assert password in stanza
    extra = "".join(f"    {line}\n" for line in DRAIN_LINES)
    (node.root / "etc/network/interfaces").write_text(stanza.replace(password, password + extra))
    (node.root / "run/network").mkdir(parents=True, exist_ok=True)
    (node.root / "usr/sbin/policy-rc.d").unlink()
    return node


def serve(netns: str, log: Path) -> subprocess.Popen[bytes]:
    """The slow web server, listening on every address of the namespace (the VIP too)."""
    with log.open("wb") as out:
        return subprocess.Popen(in_netns(netns, sys.executable, "-c", BACKEND_SERVER, str(PORT)),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def serving(installed: Installed, tmp_path: Path) -> Iterator[ServingPair]:
    """a (advskew 0, preempt) and b (advskew 100), each serving the slow file on port 80, and a
    client namespace, all on one bridge; nothing is up yet."""
    lab = Lab()
    nodes: list[Node] = []
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for name, host, advskew, preempt in (("a", 11, 0, True), ("b", 12, 100, False)):
            nodes.append(drain_node(lab, installed, tmp_path, name, host, advskew, preempt))
        client = lab.node_netns("client")
        run(["ip", "-n", client, "addr", "add", f"{CLIENT}/24", "dev", "eth0"])
        run(["ip", "-n", client, "link", "set", "eth0", "up"])
        for node in nodes:
            servers.append(serve(node.netns, tmp_path / f"server-{node.name}.log"))
        yield ServingPair(Pair(nodes[0], nodes[1]), nodes[0], nodes[1], client)
    finally:
        for node in nodes:
            node.stop_everything()  # the engines
        for server in servers:
            server.kill()  # by its PID: the processes this started
            server.wait()
        lab.close()
        for node in nodes:
            node.overlay.unmount()


def test_a_long_download_from_the_master_survives_ifdown_which_returns_when_it_ends(
        serving: ServingPair, tmp_path: Path) -> None:
    a, b, pair = serving.a, serving.b, serving.pair
    assert ifup_both(pair) is a
    path = f"/{SIZE}/{SECONDS:g}/{SEED}"
    with (tmp_path / "fetch.log").open("wb") as err:
        fetch = subprocess.Popen(in_netns(serving.client, sys.executable, "-c", FETCH,
                                          VIP, path, str(STALL)),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    try:
        began = time.monotonic()
        time.sleep(HAND_OVER_AFTER)
        assert fetch.poll() is None, "the download ended before the hand-over"
        with Stage(f"ifdown eth0 on the MASTER mid-download ({', '.join(DRAIN_LINES)})"):
            ifdown = Background(a, "ifdown", "eth0", timeout=DRAIN_BOUND + 60)
            wait_for(b.holds, 5, what="the VIP on b")  # the peer takes over at the bow-out
            out, _ = fetch.communicate(timeout=SECONDS + 2 * STALL)
            assert ifdown.join(DRAIN_BOUND + 60), "ifdown eth0 did not return"
    finally:
        if fetch.poll() is None:
            fetch.kill()  # by its PID
            fetch.wait()
    outcome = json.loads(out)
    assert ifdown.ended is not None
    let_go = ifdown.ended - outcome["ended"]
    record("long download from the MASTER across ifdown: its length", outcome["ended"] - began)
    record("ifdown eth0 returned this long after the download's end", let_go)
    print(f"download {outcome['ended'] - began:.2f} s; ifdown returned {let_go:+.2f} s "
          "after its end")
    assert outcome["error"] is None, outcome
    assert outcome["received"] == SIZE, outcome
    assert outcome["sha256"] == expected_sha256(SEED, SIZE), outcome
    assert ifdown.result is not None and ifdown.result.returncode == 0, ifdown.result
    assert -EARLY < let_go < LET_GO_WITHIN, f"ifdown returned {let_go:+.2f} s after the end"
    assert not a.engines() and not a.holds(), "the old MASTER kept an engine or the VIP"
    assert pair.holders() == [b]
