"""``ucarp-drain-connections`` through the real ifup/ifdown and carpd's hooks (issue 12, item 1):
``ifdown`` on the MASTER hands over at once, but returns only once the download it had has
ended, and within about a second of that; the download arrives whole through the new MASTER.
The figure (download end -> ifdown's return) is printed; the bound asserted is generous."""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
import sys
import threading
import time

import pytest
from ifnodes import VIP, Lab, Node, stanza, wait_for

from lab.netns import in_netns

pytestmark = pytest.mark.netns

PORT = 7072
SIZE = 1 << 20
SECONDS = 8.0
# SIZE bytes of random.Random(1) at an even rate over SECONDS, then a half close; the
# connection is closed once the client's EOF came.
SERVER = """
import random, socket, sys, time
size, seconds = int(sys.argv[2]), float(sys.argv[3])
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
conn = server.accept()[0]
data, chunk, start = random.Random(1).randbytes(size), size // 100, time.monotonic()
for sent in range(0, size, chunk):
    time.sleep(max(0.0, start + seconds * sent / size - time.monotonic()))
    conn.sendall(data[sent:sent + chunk])
conn.shutdown(socket.SHUT_WR)
conn.settimeout(30)
conn.recv(1)
conn.close()
"""


def _client(lab: Lab) -> Node:
    node = lab.node()
    node.sh("ip addr add 10.77.0.50/24 dev eth0 && ip link set eth0 up", check=True)
    return node


class Download:
    def __init__(self, client: Node) -> None:
        with in_netns(client.netns):
            self.sock = socket.create_connection((VIP, PORT), timeout=10)
        self.received = 0
        self.sha = hashlib.sha256()
        self.error: str | None = None
        self.ended: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.sock:
                while chunk := self.sock.recv(65536):
                    self.sha.update(chunk)
                    self.received += len(chunk)
        except OSError as error:
            self.error = f"{type(error).__name__}: {error}"
        self.ended = time.monotonic()


def test_ifdown_waits_for_the_download_and_returns_right_after_it(
        lab: Lab, processes: list[subprocess.Popen[bytes]]) -> None:
    nodes = []
    for number in (1, 2):
        node = lab.node()
        node.write_interfaces(stanza(number, extra="ucarp-drain-connections 60\n"))
        result = node.ifup("eth0")
        assert result.returncode == 0, result.stderr + node.log()
        nodes.append(node)
    assert wait_for(lambda: sum(n.holds_vip() for n in nodes) == 1, 15)
    master = next(n for n in nodes if n.holds_vip())
    backup = next(n for n in nodes if n is not master)
    time.sleep(1.5)  # the backup has heard the master
    client = _client(lab)
    processes.append(subprocess.Popen(
        ["ip", "netns", "exec", master.netns, sys.executable, "-c", SERVER, str(PORT),
         str(SIZE), str(SECONDS)], start_new_session=True))
    assert wait_for(lambda: f":{PORT} " in master.sh("ss -Htln").stdout, 10)
    download = Download(client)
    assert wait_for(lambda: download.received > SIZE // 5, 10)

    ifdown = master.popen_ifdown("eth0", started=master.home / "ifdown-started")
    assert wait_for(backup.holds_vip, 5), backup.log()
    _out, err = ifdown.communicate(timeout=90)
    returned = time.monotonic()
    assert ifdown.returncode == 0, err
    download.thread.join(5)
    assert download.error is None, download.error
    assert download.ended is not None and download.received == SIZE
    assert download.sha.hexdigest() == hashlib.sha256(random.Random(1).randbytes(SIZE)).hexdigest()
    after = returned - download.ended
    print(f"FIGURE: download end -> ifdown returned {after:.2f} s")
    assert 0 < after < 3.0, f"ifdown returned {after:.2f} s after the download's end"
    assert not master.holds_vip() and master.engines() == []
    assert backup.holds_vip()
