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

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pkgtools import (
    NET,
    Installed,
    Node,
    Pair,
    Stage,
    ifup_both,
    record,
)
from test_proxy_package import (
    BACKEND_SERVER,
    Background,
    download_under_way,
    expected_sha256,
    in_netns,
)

from conftest import chroot_node, chroot_pair, plugged
from lab.poll import wait_for

# The stanza's drain lines on both nodes (the feature under test).
DRAIN_LINES = ("ucarp-drain-connections 60",)
DRAIN_BOUND = 60.0  # the longest ifdown may take by the stanza
CLIENT = f"{NET}.50"
PORT = 80
SIZE = 3 * 1024 * 1024
SECONDS = 12.0  # the download's length, at an even rate
SEED = 1212
# the hand-over (HAND_OVER_AFTER into the download) and the client's STALL: test_proxy_package's
LET_GO_WITHIN = 5.0  # ifdown returns at most this long after the download's end
EARLY = 1.0  # ... and not more than this before it (the server's close precedes the client's)


@dataclass
class ServingPair:
    pair: Pair
    a: Node
    b: Node
    client: str  # network namespace


def serve(netns: str, log: Path) -> subprocess.Popen[bytes]:
    """The slow web server, listening on every address of the namespace (the VIP too)."""
    with log.open("wb") as out:
        return subprocess.Popen(in_netns(netns, sys.executable, "-c", BACKEND_SERVER, str(PORT)),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def serving(installed: Installed, tmp_path: Path) -> Iterator[ServingPair]:
    """a (advskew 0, preempt) and b (advskew 100), each serving the slow file on port 80, and a
    client namespace, all on one bridge; nothing is up yet."""
    servers: list[subprocess.Popen[bytes]] = []
    with chroot_pair(lambda lab, *node: chroot_node(lab, installed, tmp_path, *node,
                                                    extra=DRAIN_LINES)) as (lab, a, b):
        try:
            client = plugged(lab, "client", CLIENT)
            for node in (a, b):
                servers.append(serve(node.netns, tmp_path / f"server-{node.name}.log"))
            yield ServingPair(Pair(a, b), a, b, client)
        finally:
            for server in servers:
                server.kill()  # by its PID: the processes this started
                server.wait()


def test_a_long_download_from_the_master_survives_ifdown_which_returns_when_it_ends(
        serving: ServingPair, tmp_path: Path) -> None:
    a, b, pair = serving.a, serving.b, serving.pair
    assert ifup_both(pair) is a
    with download_under_way(serving.client, tmp_path / "fetch.log", SEED, SIZE,
                            SECONDS) as download, \
            Stage(f"ifdown eth0 on the MASTER mid-download ({', '.join(DRAIN_LINES)})"):
        ifdown = Background(a, "ifdown", "eth0", timeout=DRAIN_BOUND + 60)
        wait_for(b.holds, 5, what="the VIP on b")  # the peer takes over at the bow-out
        outcome = download.outcome()
        assert ifdown.join(DRAIN_BOUND + 60), "ifdown eth0 did not return"
    began = download.began
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
