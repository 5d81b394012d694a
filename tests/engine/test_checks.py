"""The ready-made track scripts in share/checks (installed in /usr/share/carpd/checks): each run
as the engine runs it, in a network namespace of the test's own, against real listeners there.
unit-active needs a booted systemd: tests/package/test_checks_booted.py."""

from __future__ import annotations

import contextlib
import http.server
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.netns import in_netns

pytestmark = pytest.mark.netns

CHECKS = Path(__file__).resolve().parents[2] / "share" / "checks"
LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class Ran:
    returncode: int
    output: str
    seconds: float


@dataclass
class Namespace:
    """A network namespace with only lo, up: listeners opened by `listen` live there."""

    name: str

    def check(self, script: str, *args: str) -> Ran:
        """Run share/checks/SCRIPT with args in the namespace, as the engine would (no shell)."""
        started = time.monotonic()
        done = subprocess.run(["ip", "netns", "exec", self.name, str(CHECKS / script), *args],
                              capture_output=True, text=True, timeout=30, check=False)
        return Ran(done.returncode, done.stdout + done.stderr, time.monotonic() - started)

    def new_socket(self) -> socket.socket:
        with in_netns(self.name):
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def listen(self, backlog: int = 8, address: str = LOCALHOST) -> socket.socket:
        sock = self.new_socket()
        sock.bind((address, 0))
        sock.listen(backlog)
        return sock

    def free_port(self) -> int:
        """A port nothing listens on."""
        sock = self.new_socket()
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        sock.close()
        return port


@pytest.fixture
def ns() -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces (CI runs as root)")
    name = f"carpchk{os.getpid()}{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield Namespace(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


class Answers(http.server.BaseHTTPRequestHandler):
    """/ok: 200; /moved: 302 to /broken (a client that followed it would fail); /broken: 500."""

    def do_GET(self) -> None:
        status = {"/ok": 200, "/moved": 302, "/broken": 500}.get(self.path, 404)
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/broken")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web(ns: Namespace) -> Iterator[str]:
    """An HTTP server in the namespace; its base URL."""
    with in_netns(ns.name):
        server = http.server.HTTPServer((LOCALHOST, 0), Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOCALHOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def serving(listener: socket.socket, answer: Callable[[socket.socket], None]) -> threading.Thread:
    """Accept one connection on listener and hand it to answer, in a thread."""

    def run() -> None:
        connection, _ = listener.accept()
        with connection:
            answer(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# ---- tcp-port ---------------------------------------------------------------------------------


def test_tcp_port_passes_when_the_port_accepts(ns: Namespace) -> None:
    with ns.listen() as listener:
        ran = ns.check("tcp-port", str(listener.getsockname()[1]))
    assert ran.returncode == 0, ran.output


def test_tcp_port_fails_saying_why_when_nothing_listens(ns: Namespace) -> None:
    port = ns.free_port()
    ran = ns.check("tcp-port", str(port))
    assert ran.returncode == 1
    assert ran.output == f"127.0.0.1 port {port}: Connection refused\n"


def test_tcp_port_asks_the_host_given_and_127_0_0_1_by_default(ns: Namespace) -> None:
    with ns.listen(address="127.0.0.2") as listener:
        port = str(listener.getsockname()[1])
        assert ns.check("tcp-port", port, "127.0.0.2").returncode == 0
        assert ns.check("tcp-port", port).returncode == 1


def test_tcp_port_fails_within_a_second_when_the_connection_is_never_accepted(
        ns: Namespace) -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs unanswered.
    with ns.listen(backlog=0) as listener, contextlib.ExitStack() as fillers:
        port = listener.getsockname()[1]
        while True:
            filler = fillers.enter_context(ns.new_socket())
            filler.settimeout(0.3)
            try:
                filler.connect((LOCALHOST, port))
            except TimeoutError:
                break
        ran = ns.check("tcp-port", str(port))
    assert ran.returncode == 1, ran.output
    assert ran.output == f"127.0.0.1 port {port}: no answer within 1 s\n"
    assert 0.9 < ran.seconds < 1.9, ran.seconds


@pytest.mark.parametrize("args", [(), ("",), ("http",), ("0",), ("65536",), ("-1",), ("80", ""),
                                  ("80", "-h"), ("80", "127.0.0.1", "x"), ("٨٠",)])
def test_tcp_port_refuses_bad_arguments_with_its_usage(ns: Namespace,
                                                       args: tuple[str, ...]) -> None:
    ran = ns.check("tcp-port", *args)
    assert ran.returncode == 2
    assert ran.output.startswith("usage: tcp-port PORT [HOST]")


# ---- http-url ---------------------------------------------------------------------------------


def test_http_url_passes_on_200_and_prints_the_status_line(ns: Namespace, web: str) -> None:
    ran = ns.check("http-url", f"{web}/ok")
    assert (ran.returncode, ran.output) == (0, "HTTP/1.0 200 OK\n")


def test_http_url_passes_on_a_redirect_without_following_it(ns: Namespace, web: str) -> None:
    ran = ns.check("http-url", f"{web}/moved")
    assert (ran.returncode, ran.output) == (0, "HTTP/1.0 302 Found\n")


@pytest.mark.parametrize(("path", "line"), [("/broken", "HTTP/1.0 500 Internal Server Error"),
                                            ("/missing", "HTTP/1.0 404 Not Found")])
def test_http_url_fails_on_an_error_status(ns: Namespace, web: str, path: str,
                                           line: str) -> None:
    ran = ns.check("http-url", f"{web}{path}")
    assert (ran.returncode, ran.output) == (1, f"{line}\n")


def test_http_url_sends_the_path_query_and_host(ns: Namespace) -> None:
    request: list[bytes] = []

    def answer(connection: socket.socket) -> None:
        request.append(connection.recv(4096))
        connection.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    with ns.listen() as listener:
        port = listener.getsockname()[1]
        thread = serving(listener, answer)
        ran = ns.check("http-url", f"http://{LOCALHOST}:{port}/health?deep=1#part")
        thread.join(5)
    assert (ran.returncode, ran.output) == (0, "HTTP/1.1 204 No Content\n")
    lines = request[0].decode().split("\r\n")
    assert lines[0] == "GET /health?deep=1 HTTP/1.1"
    assert f"Host: {LOCALHOST}:{port}" in lines


def test_http_url_fails_within_two_seconds_when_the_server_never_answers(
        ns: Namespace) -> None:
    with ns.listen() as listener:  # the kernel accepts; nobody reads or answers
        url = f"http://{LOCALHOST}:{listener.getsockname()[1]}/"
        ran = ns.check("http-url", url)
    assert (ran.returncode, ran.output) == (1, f"{url}: no answer in 2 s\n")
    assert 1.9 < ran.seconds < 2.9, ran.seconds


def test_http_url_gives_a_server_that_answers_a_byte_at_a_time_two_seconds_in_all(
        ns: Namespace) -> None:
    stop = threading.Event()

    def drip(connection: socket.socket) -> None:
        connection.recv(4096)
        while not stop.wait(0.2):
            try:
                connection.sendall(b"H")
            except OSError:
                return

    with ns.listen() as listener:
        url = f"http://{LOCALHOST}:{listener.getsockname()[1]}/"
        thread = serving(listener, drip)
        ran = ns.check("http-url", url)
        stop.set()
        thread.join(5)
    assert (ran.returncode, ran.output) == (1, f"{url}: no answer in 2 s\n")
    assert 1.9 < ran.seconds < 2.9, ran.seconds


def test_http_url_fails_when_nothing_listens_or_the_answer_is_not_http(ns: Namespace) -> None:
    url = f"http://{LOCALHOST}:{ns.free_port()}/"
    ran = ns.check("http-url", url)
    assert (ran.returncode, ran.output) == (1, f"{url}: Connection refused\n")
    with ns.listen() as listener:
        url = f"http://{LOCALHOST}:{listener.getsockname()[1]}/"
        thread = serving(listener, lambda c: c.sendall(b"SSH-2.0-OpenSSH_9.2\r\n"))
        ran = ns.check("http-url", url)
        thread.join(5)
    assert ran.returncode == 1
    assert ran.output == f"{url}: not an HTTP answer: 'SSH-2.0-OpenSSH_9.2'\n"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a cert")
def test_http_url_speaks_https_without_verifying_the_certificate(ns: Namespace,
                                                                  tmp_path: Path) -> None:
    import ssl

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=elsewhere.example", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def answer(connection: socket.socket) -> None:
        with context.wrap_socket(connection, server_side=True) as tls:
            tls.recv(4096)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    with ns.listen() as listener:
        thread = serving(listener, answer)
        ran = ns.check("http-url", f"https://{LOCALHOST}:{listener.getsockname()[1]}/")
        thread.join(5)
    assert (ran.returncode, ran.output) == (0, "HTTP/1.1 200 OK\n")


@pytest.mark.parametrize("args", [(), ("",), ("127.0.0.1",), ("ftp://127.0.0.1/",), ("http://",),
                                  ("http://127.0.0.1:99999/",), ("http://[::1/",),
                                  ("http://a b/",), ("-h",),
                                  ("http://127.0.0.1/", "http://127.0.0.1/")])
def test_http_url_refuses_bad_arguments_with_its_usage(ns: Namespace,
                                                       args: tuple[str, ...]) -> None:
    ran = ns.check("http-url", *args)
    assert ran.returncode == 2
    assert ran.output.startswith("usage: http-url URL")


# ---- unit-active (its arguments; the unit's state needs systemd: tests/package) ------------


@pytest.mark.parametrize("args", [(), ("",), ("-h",), ("--all",), ("a.service", "b.service")])
def test_unit_active_refuses_bad_arguments_with_its_usage(ns: Namespace,
                                                          args: tuple[str, ...]) -> None:
    ran = ns.check("unit-active", *args)
    assert ran.returncode == 2
    assert ran.output.startswith("usage: unit-active UNIT")


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here")
def test_unit_active_fails_saying_why_where_systemd_does_not_run(ns: Namespace) -> None:
    ran = ns.check("unit-active", "nginx.service")
    assert ran.returncode == 1
    assert ran.output.startswith("nginx.service is "), ran.output


def test_the_checks_are_short_executable_and_start_with_their_interpreter() -> None:
    interpreters = {"unit-active": "#!/bin/sh", "tcp-port": "#!/usr/bin/python3 -IS",
                    "http-url": "#!/usr/bin/python3 -IS"}
    assert sorted(p.name for p in CHECKS.iterdir()) == sorted(interpreters)
    for name, shebang in interpreters.items():
        path = CHECKS / name
        lines = path.read_text().splitlines()
        assert lines[0] == shebang
        assert len(lines) < 60, name
        assert path.stat().st_mode & 0o777 == 0o755, name
