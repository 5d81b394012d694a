"""The health monitor with real check scripts and real netlink: scripts run on their own
threads with a timeout, tracked interfaces (in a network namespace made here) follow link
events at once."""

from __future__ import annotations

import logging
import os
import re
import secrets
import select
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from carpd.engine.health import OUTPUT_KEPT, Health
from lab.netns import in_netns, run, wait_for


def script(tmp_path: Path, name: str, body: str) -> list[str]:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return [str(path)]


def wait_healthy(health: Health, healthy: bool, timeout: float) -> None:
    """Read the monitor as the engine does (when its fd is readable) until it says
    ``healthy``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        health.read()
        if health.healthy == healthy:
            return
        left = deadline - time.monotonic()
        assert left > 0, f"not {'healthy' if healthy else 'unhealthy'} after {timeout} s: " \
                         f"{health.status(0.0)}"
        select.select([health], [], [], left)


@pytest.fixture
def monitors() -> Iterator[list[Health]]:
    """Monitors made by a test, closed after it even if it fails."""
    made: list[Health] = []
    yield made
    for health in made:
        health.close()


def monitor(monitors: list[Health], scripts: list[list[str]], interfaces: Sequence[str] = (),
            interval: float = 0.05, timeout: float | None = None, fall: int = 2,
            rise: int = 2) -> Health:
    health = Health(scripts, interval, timeout, fall, rise, interfaces)
    monitors.append(health)
    return health


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


# ---- check scripts ----------------------------------------------------------------------------


def test_a_check_script_turns_the_node_unhealthy_and_healthy_again(
        tmp_path: Path, monitors: list[Health]) -> None:
    flag = tmp_path / "ok"
    flag.touch()
    check = script(tmp_path, "check",
                   f'test -e {flag} || {{ echo "{flag} is gone" >&2; exit 3; }}\n')
    health = monitor(monitors, [check])
    health.start()
    time.sleep(0.3)
    assert not health.read()
    assert health.healthy
    [status] = health.status(0.0)
    assert (status["healthy"], status["rc"], status["output"]) == (True, 0, "")

    flag.unlink()
    wait_healthy(health, False, 5)
    [status] = health.status(1000.0)
    assert (status["kind"], status["name"], status["healthy"]) == ("script", check[0], False)
    assert (status["rc"], status["output"]) == (3, f"{flag} is gone")
    assert status["since"] > 1000.0
    why = health.why()
    assert why is not None
    assert why.startswith(f"check '{check[0]}' failing since ")
    assert why.endswith(f"(exit 3): {flag} is gone")

    flag.touch()
    wait_healthy(health, True, 5)
    assert health.why() is None
    assert health.status(0.0)[0]["rc"] == 0


def test_read_says_when_health_changed_and_only_then(
        tmp_path: Path, monitors: list[Health]) -> None:
    flag = tmp_path / "ok"
    health = monitor(monitors, [script(tmp_path, "check", f"test -e {flag}\n")], fall=1, rise=1)
    health.start()
    seen = []
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        select.select([health], [], [], 0.5)
        if health.read():
            seen.append(health.healthy)
    assert seen == [False]
    time.sleep(0.3)  # more failed runs: no change to report
    assert not health.read()
    assert not health.healthy


def test_fall_failed_runs_are_needed_before_the_node_is_unhealthy(
        tmp_path: Path, monitors: list[Health]) -> None:
    runs = tmp_path / "runs"
    check = script(tmp_path, "check", f"echo run >> {runs}; exit 1\n")
    health = monitor(monitors, [check], interval=0.2, fall=4)
    health.start()
    wait_healthy(health, False, 10)
    assert len(runs.read_text().split()) >= 4


def test_checks_start_every_interval(tmp_path: Path, monitors: list[Health]) -> None:
    runs = tmp_path / "runs"
    health = monitor(monitors, [script(tmp_path, "check", f"echo run >> {runs}\n")],
                     interval=0.2)
    health.start()
    time.sleep(2)
    health.close()
    assert 4 <= len(runs.read_text().split()) <= 20  # 10 expected; bounds for a busy machine


def test_a_slow_check_is_not_started_again_before_it_ends(
        tmp_path: Path, monitors: list[Health]) -> None:
    log = tmp_path / "log"
    busy = tmp_path / "busy"
    check = script(tmp_path, "slow", f"test -e {busy} && echo overlap >> {log}\n"
                                     f"touch {busy}; sleep 0.3; rm {busy}; echo run >> {log}\n")
    health = monitor(monitors, [check], interval=0.05, timeout=10)
    health.start()
    wait_for(lambda: log.exists() and len(log.read_text().split()) >= 4, 10)
    health.close()
    assert "overlap" not in log.read_text()


def test_a_hung_check_is_killed_at_its_timeout_and_counts_as_failed(
        tmp_path: Path, monitors: list[Health]) -> None:
    pids = tmp_path / "pids"
    # The check and a child of it both hang; the whole process group is killed.
    check = script(tmp_path, "hang", f"sleep 1000 & echo $! $$ > {pids}; echo hanging; wait\n")
    health = monitor(monitors, [check], interval=0.1, timeout=0.5, fall=1)
    health.start()
    wait_for(lambda: pids.exists() and pids.read_text().strip(), 5)
    hung = [int(pid) for pid in pids.read_text().split()]
    wait_healthy(health, False, 5)
    [status] = health.status(0.0)
    assert (status["rc"], status["output"]) == (None, "hanging")
    assert (health.why() or "").endswith("(timed out after 0.5 s): hanging")
    for pid in hung:
        wait_for(lambda pid=pid: not alive(pid), 5)  # type: ignore[misc]


def test_a_hung_check_does_not_delay_another_check(
        tmp_path: Path, monitors: list[Health]) -> None:
    runs = tmp_path / "runs"
    flag = tmp_path / "ok"
    flag.touch()
    hang = script(tmp_path, "hang", "exec sleep 1000\n")
    flip = script(tmp_path, "flip", f"echo run >> {runs}; test -e {flag}\n")
    health = monitor(monitors, [hang, flip], interval=0.05, timeout=60, fall=1, rise=1)
    health.start()
    wait_for(lambda: runs.exists() and len(runs.read_text().split()) >= 10, 10)
    flag.unlink()
    wait_healthy(health, False, 5)
    hung, flipped = health.status(0.0)
    assert (hung["healthy"], hung["rc"]) == (True, None)  # still in its first run
    assert (flipped["healthy"], flipped["rc"]) == (False, 1)


def test_close_returns_at_once_with_a_hung_check_and_kills_it(
        tmp_path: Path, monitors: list[Health]) -> None:
    pid_file = tmp_path / "pid"
    check = script(tmp_path, "hang", f"echo $$ > {pid_file}; exec sleep 1000\n")
    health = monitor(monitors, [check], timeout=600)
    health.start()
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 5)
    started = time.monotonic()
    health.close()
    assert time.monotonic() - started < 2
    wait_for(lambda: not alive(int(pid_file.read_text())), 5)


def test_a_check_that_cannot_run_fails(tmp_path: Path, monitors: list[Health]) -> None:
    missing = tmp_path / "missing"
    health = monitor(monitors, [[str(missing)]], fall=1)
    health.start()
    wait_healthy(health, False, 5)
    [status] = health.status(0.0)
    assert status["rc"] not in (0, None)
    assert "No such file or directory" in status["output"]


def test_only_the_end_of_a_long_output_is_kept_and_bad_bytes_are_replaced(
        tmp_path: Path, monitors: list[Health]) -> None:
    check = script(tmp_path, "check",
                   "head -c 3000 /dev/zero | tr '\\0' x; printf '\\377tail'; exit 1\n")
    health = monitor(monitors, [check], fall=1)
    health.start()
    wait_healthy(health, False, 5)
    output = health.status(0.0)[0]["output"]
    assert len(output) == OUTPUT_KEPT
    assert output.endswith("xxx\ufffdtail")


def test_a_failing_check_is_logged_when_it_changes_and_then_rarely(
        tmp_path: Path, monitors: list[Health], caplog: pytest.LogCaptureFixture) -> None:
    runs = tmp_path / "runs"
    flag = tmp_path / "ok"
    check = script(tmp_path, "check", f"echo run >> {runs}; test -e {flag} || echo down\n"
                                      f"test -e {flag}\n")
    caplog.set_level(logging.INFO, logger="carpd")
    health = monitor(monitors, [check], interval=0.02, fall=1, rise=1)
    health.start()
    wait_for(lambda: runs.exists() and len(runs.read_text().split()) >= 20, 10)
    flag.touch()
    wait_healthy(health, True, 5)
    wait_for(lambda: "passing again" in caplog.text, 5)  # logged just after the change
    health.close()
    lines = [r.getMessage() for r in caplog.records if check[0] in r.getMessage()]
    assert lines == [f"health check '{check[0]}' now failing (exit 1): down",
                     f"health check '{check[0]}' passing again"]


# ---- tracked interfaces -----------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace, deleted after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces (CI runs as root)")
    name = f"chk{os.getpid()}{secrets.token_hex(3)}"
    run("ip", "netns", "add", name)
    try:
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


def ip(ns: str, *args: str) -> None:
    run("ip", "-n", ns, *args)


def started_in(ns: str, health: Health) -> Health:
    with in_netns(ns):
        health.start()
    return health


def add_veth(ns: str, name: str, peer: str) -> None:
    ip(ns, "link", "add", name, "type", "veth", "peer", "name", peer)
    ip(ns, "link", "set", name, "up")
    ip(ns, "link", "set", peer, "up")


def link_state(health: Health, name: str) -> tuple[bool, str]:
    [status] = [s for s in health.status(0.0) if s["name"] == name]
    return status["healthy"], status["output"]


def test_a_tracked_interface_follows_carrier_deletion_and_recreation(
        netns: str, monitors: list[Health]) -> None:
    add_veth(netns, "trk0", "trk0p")
    health = started_in(netns, monitor(monitors, [], ["trk0"]))
    wait_healthy(health, True, 1)
    assert link_state(health, "trk0") == (True, "carrier")
    steps = [
        (("link", "set", "trk0p", "down"), False, "no carrier"),  # the peer: carrier lost
        (("link", "set", "trk0p", "up"), True, "carrier"),
        (("link", "set", "trk0", "down"), False, "no carrier"),
        (("link", "set", "trk0", "up"), True, "carrier"),
        (("link", "del", "trk0"), False, "no such interface"),
    ]
    for command, healthy, output in steps:
        ip(netns, *command)
        wait_healthy(health, healthy, 1)
        assert link_state(health, "trk0") == (healthy, output), command
    ip(netns, "link", "add", "trk0", "type", "veth", "peer", "name", "trk0p")  # down
    wait_for(lambda: link_state(health, "trk0") == (False, "no carrier"), 1)
    ip(netns, "link", "set", "trk0", "up")
    ip(netns, "link", "set", "trk0p", "up")
    wait_healthy(health, True, 1)
    assert health.why() is None


def test_a_tracked_interface_is_followed_by_name_across_renames(
        netns: str, monitors: list[Health]) -> None:
    add_veth(netns, "trk1", "trk1p")
    health = started_in(netns, monitor(monitors, [], ["trk1"]))
    wait_healthy(health, True, 1)
    ip(netns, "link", "set", "trk1", "down")
    ip(netns, "link", "set", "trk1", "name", "other")
    ip(netns, "link", "set", "other", "up")
    wait_healthy(health, False, 1)
    assert link_state(health, "trk1") == (False, "no such interface")
    ip(netns, "link", "add", "spare", "type", "veth", "peer", "name", "sparep")
    ip(netns, "link", "set", "spare", "name", "trk1")  # another link takes the name
    ip(netns, "link", "set", "trk1", "up")
    ip(netns, "link", "set", "sparep", "up")
    wait_healthy(health, True, 1)
    ip(netns, "link", "set", "other", "down")  # the old one no longer counts
    time.sleep(0.2)
    health.read()
    assert health.healthy


def test_a_tracked_interface_missing_at_start_is_unhealthy_at_once(
        netns: str, monitors: list[Health]) -> None:
    add_veth(netns, "trk2", "trk2p")
    health = started_in(netns, monitor(monitors, [], ["trk2", "absent0"]))
    wait_healthy(health, False, 1)
    assert [s["healthy"] for s in health.status(0.0)] == [True, False]
    assert re.fullmatch(r"interface absent0 down since \d\d:\d\d:\d\d: "
                        r"no such interface", health.why() or "")


def test_a_tracked_interface_leaving_a_bridge_stays_healthy(
        netns: str, monitors: list[Health]) -> None:
    add_veth(netns, "trk3", "trk3p")
    ip(netns, "link", "add", "br0", "type", "bridge")
    ip(netns, "link", "set", "br0", "up")
    health = started_in(netns, monitor(monitors, [], ["trk3"]))
    wait_healthy(health, True, 1)
    [before] = health.status(0.0)
    ip(netns, "link", "set", "trk3", "master", "br0")
    ip(netns, "link", "set", "trk3", "nomaster")  # a DELLINK for the bridge port, not the link
    time.sleep(0.3)
    assert not health.read()
    assert health.status(0.0) == [before]  # not even for a moment (since would have moved)
    ip(netns, "link", "set", "trk3p", "down")  # still followed
    wait_healthy(health, False, 1)


def test_link_events_lost_to_an_overflow_are_read_afresh(
        netns: str, monitors: list[Health], caplog: pytest.LogCaptureFixture) -> None:
    add_veth(netns, "trk4", "trk4p")
    health = started_in(netns, monitor(monitors, [], ["trk4"]))
    wait_healthy(health, True, 1)
    # The watcher, with a change in hand, stalls on the monitor's lock while thousands of link
    # events overflow its socket's buffer; the last of them, lost, gives the carrier back.
    with health._lock:
        ip(netns, "link", "set", "trk4p", "down")
        time.sleep(0.3)
        batch = "link set trk4p up\nlink set trk4p down\n" * 3000 + "link set trk4p up\n"
        subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch, text=True, check=True,
                       timeout=120)
    wait_for(lambda: "netlink link events overflowed" in caplog.text, 1)
    wait_healthy(health, True, 1)
    assert link_state(health, "trk4") == (True, "carrier")
    ip(netns, "link", "set", "trk4p", "down")  # events are heard again
    wait_healthy(health, False, 1)


def test_scripts_and_interfaces_together(
        tmp_path: Path, netns: str, monitors: list[Health]) -> None:
    flag = tmp_path / "ok"
    flag.touch()
    add_veth(netns, "trk5", "trk5p")
    health = started_in(netns, monitor(
        monitors, [script(tmp_path, "check", f"test -e {flag}\n")], ["trk5"], fall=1, rise=1))
    wait_healthy(health, True, 1)
    ip(netns, "link", "set", "trk5p", "down")
    wait_healthy(health, False, 1)
    flag.unlink()
    wait_for(lambda: not health.status(0.0)[0]["healthy"], 5)
    ip(netns, "link", "set", "trk5p", "up")
    wait_for(lambda: link_state(health, "trk5") == (True, "carrier"), 1)
    health.read()
    assert not health.healthy
    assert (health.why() or "").startswith("check ")
    flag.touch()
    wait_healthy(health, True, 5)
