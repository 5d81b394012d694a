"""A long download through a real L7 proxy survives a planned hand-over (issue 12, item 4).

Two trixie nodes (chroots in network namespaces on one bridge) run the installed carpd through
real ifup/ifdown and Debian's own nginx as a reverse proxy to a backend in a third namespace;
a client in a fourth downloads a file from the VIP through nginx, slowly (the backend sends it
at an even rate).  Mid-download the MASTER is taken down for maintenance (``ifdown eth0``,
with ``ucarp-drain`` longer than what is left of the download): the peer takes the VIP over
at once, the old MASTER keeps its connections while it drains and the new one passes their
segments on to it, so the download ends complete, its checksum right, never reset.

Without the drain (``ucarp-drain 0``, tried by hand) the same download is broken: the old
MASTER lets the VIP go at once and the client's segments reach a node without the
connection."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pkgtools import (
    NET,
    VIP,
    Installed,
    Node,
    Pair,
    Result,
    Stage,
    ifup_both,
    record,
)
from test_health_package import nginx_master, with_nginx

from conftest import Lab, chroot_node, chroot_pair, plugged
from lab.poll import wait_for

__all__ = ["with_nginx"]  # the fixture, shared with the nginx pair's test

DRAIN = 30.0  # ucarp-drain on both nodes: longer than what is left of the download
BACKEND = f"{NET}.60"
BACKEND_PORT = 8000
CLIENT = f"{NET}.50"
SIZE = 3 * 1024 * 1024
SECONDS = 12.0  # the download's length, at an even rate
HAND_OVER_AFTER = 3.0  # into the download
SEED = 12
STALL = 10.0  # the client gives up on a download that receives nothing for this long

PROXY_SITE = f"""\
# carpd's package test: this node's nginx passes every request on to the backend
server {{
    listen 80 default_server;
    location / {{
        proxy_pass http://{BACKEND}:{BACKEND_PORT};
        proxy_buffering off;
        proxy_read_timeout 60s;
    }}
}}
"""

# The backend: GET /SIZE/SECONDS/SEED answers SIZE bytes of random.Random(SEED), sent at an
# even rate over SECONDS (Content-Length set, so the client knows when it has it all).
BACKEND_SERVER = """\
import random, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        size, seconds, seed = self.path.strip("/").split("/")
        size, seconds = int(size), float(seconds)
        data = random.Random(int(seed)).randbytes(size)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = max(1, size // int(seconds * 20))
        start = time.monotonic()
        for sent in range(0, size, chunk):
            time.sleep(max(0.0, start + seconds * sent / size - time.monotonic()))
            self.wfile.write(data[sent:sent + chunk])
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"""

# The client: one download from the VIP; prints a JSON line when it ends (however it ends).
FETCH = """\
import hashlib, http.client, json, sys, time
host, path, stall = sys.argv[1], sys.argv[2], float(sys.argv[3])
sha, received, error, server = hashlib.sha256(), 0, None, ""
try:
    c = http.client.HTTPConnection(host, 80, timeout=stall)
    c.request("GET", path)
    reply = c.getresponse()
    server = reply.getheader("Server", "")
    if reply.status != 200:
        error = f"HTTP {reply.status}"
    while chunk := reply.read(65536):
        sha.update(chunk)
        received += len(chunk)
except Exception as exc:
    error = type(exc).__name__ + ": " + str(exc)
print(json.dumps({"sha256": sha.hexdigest(), "received": received, "error": error,
                  "server": server, "ended": time.monotonic()}), flush=True)
"""


@dataclass
class ProxyPair:
    pair: Pair
    a: Node
    b: Node
    client: str  # network namespaces
    backend: str


def proxy_node(lab: Lab, layers: Installed, base: Path, name: str, host: int,
               advskew: int, preempt: bool) -> Node:
    """A node with the VIP's stanza (plus ``ucarp-drain``) and nginx proxying to the
    backend."""
    node = chroot_node(lab, layers, base, name, host, advskew, preempt,
                       extra=(f"ucarp-drain {DRAIN:g}",))
    sites = node.root / "etc/nginx/sites-enabled"
    for site in sites.iterdir():
        site.unlink()
    (sites / "proxy").write_text(PROXY_SITE)
    return node


def start_proxy(node: Node) -> None:
    node.run("nginx")  # Debian's configuration with our site: it forks, writes /run/nginx.pid
    wait_for(lambda: nginx_master(node) is not None, 10, what=f"nginx running on {node.name}")


def in_netns(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


@pytest.fixture
def proxies(with_nginx: Installed, tmp_path: Path) -> Iterator[ProxyPair]:
    """a (advskew 0, preempt) and b (advskew 100), each with nginx proxying to a backend
    namespace, and a client namespace, all on one bridge; nothing is up yet."""
    backend_proc: subprocess.Popen[bytes] | None = None
    with chroot_pair(lambda lab, *node: proxy_node(lab, with_nginx, tmp_path, *node)) as (
            lab, a, b):  # stopped on the way out: the engines and nginx
        try:
            client, backend = plugged(lab, "client", CLIENT), plugged(lab, "backend", BACKEND)
            with (tmp_path / "backend.log").open("wb") as log:
                backend_proc = subprocess.Popen(
                    in_netns(backend, sys.executable, "-c", BACKEND_SERVER, str(BACKEND_PORT)),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            for node in (a, b):
                start_proxy(node)
            yield ProxyPair(Pair(a, b), a, b, client, backend)
        finally:
            if backend_proc is not None:
                backend_proc.kill()  # by its PID: the one process this started there
                backend_proc.wait()


class Background:
    """A node's command in a thread (an ``ifdown`` that returns once the drain is over)."""

    def __init__(self, node: Node, *argv: str, timeout: float = DRAIN + 60) -> None:
        self.result: Result | None = None
        self.ended: float | None = None
        self._timeout = timeout
        self._thread = threading.Thread(target=self._run, args=(node, argv), daemon=True)
        self._thread.start()

    def _run(self, node: Node, argv: tuple[str, ...]) -> None:
        self.result = node.run(*argv, check=False, timeout=self._timeout)
        self.ended = time.monotonic()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


def expected_sha256(seed: int = SEED, size: int = SIZE) -> str:
    return hashlib.sha256(random.Random(seed).randbytes(size)).hexdigest()


@dataclass
class Download:
    process: subprocess.Popen[bytes]
    began: float  # time.monotonic()
    seconds: float

    def outcome(self) -> dict[str, Any]:
        """FETCH's JSON line, once the download has ended (however it ends)."""
        out, _ = self.process.communicate(timeout=self.seconds + 2 * STALL)
        outcome: dict[str, Any] = json.loads(out)
        return outcome


@contextlib.contextmanager
def download_under_way(client: str, log: Path, seed: int = SEED, size: int = SIZE,
                       seconds: float = SECONDS) -> Iterator[Download]:
    """FETCH downloading /size/seconds/seed from the VIP in network namespace ``client``, for
    HAND_OVER_AFTER seconds already; killed (by its PID) on the way out if still running."""
    with log.open("wb") as err:
        fetch = subprocess.Popen(in_netns(client, sys.executable, "-c", FETCH, VIP,
                                          f"/{size}/{seconds:g}/{seed}", str(STALL)),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    try:
        began = time.monotonic()
        time.sleep(HAND_OVER_AFTER)
        assert fetch.poll() is None, "the download ended before the hand-over"
        yield Download(fetch, began, seconds)
    finally:
        if fetch.poll() is None:
            fetch.kill()
            fetch.wait()


def test_a_long_download_through_nginx_survives_a_planned_hand_over_unbroken(
        proxies: ProxyPair, tmp_path: Path) -> None:
    a, b, pair = proxies.a, proxies.b, proxies.pair
    assert ifup_both(pair) is a
    with download_under_way(proxies.client, tmp_path / "fetch.log") as download, \
            Stage(f"ifdown eth0 on the MASTER mid-download (ucarp-drain {DRAIN:g})"):
        ifdown = Background(a, "ifdown", "eth0")
        # the peer takes over at the bow-out while the old MASTER keeps the VIP, draining
        wait_for(b.holds, 5, what="the VIP on b")
        drained = a.holds()
        outcome = download.outcome()
    record("long download through nginx across a hand-over: its length",
           outcome["ended"] - download.began)
    assert outcome["error"] is None, outcome
    assert outcome["received"] == SIZE, outcome
    assert outcome["sha256"] == expected_sha256(), outcome
    assert outcome["server"].startswith("nginx"), outcome  # it went through the proxy
    assert drained, "the old MASTER let the VIP go without draining"
    assert ifdown.join(DRAIN + 60), "ifdown eth0 did not return"
    assert ifdown.result is not None and ifdown.result.returncode == 0, ifdown.result
    assert not a.engines() and not a.holds(), "the old MASTER kept an engine or the VIP"
    assert pair.holders() == [b]
