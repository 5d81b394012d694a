"""Scripts run off the protocol loop: ucarp's contract, in order, one at a time, timed out."""

from __future__ import annotations

import logging
import select
import time
from pathlib import Path

import pytest

from carpd.election import Script
from carpd.logs import RateLimiter
from carpd.scripts import Finished, ScriptRunner


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def wait_finished(runner: ScriptRunner, count: int, timeout: float = 10) -> list[Finished]:
    done: list[Finished] = []
    deadline = time.monotonic() + timeout
    while len(done) < count and time.monotonic() < deadline:
        select.select([runner], [], [], 0.1)
        done += runner.finished()
    return done


def test_scripts_get_iface_vip_and_xparam_as_arguments_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "args"
    up = script(tmp_path, "up", f'printf "%s|" "$@" > {out}\n')
    runner = ScriptRunner({Script.UP: [up, "eth0", "10.0.0.1", "x y*"], Script.DOWN: None}, 5)
    runner.start()
    runner.submit(Script.UP)
    assert wait_finished(runner, 1) == [Finished(Script.UP, 0)]
    assert out.read_text() == "eth0|10.0.0.1|x y*|"


def test_scripts_run_in_order_one_at_a_time(tmp_path: Path) -> None:
    log = tmp_path / "log"
    up = script(tmp_path, "up", f"echo up-start >> {log}; sleep 0.3; echo up-end >> {log}\n")
    down = script(tmp_path, "down", f"echo down >> {log}\n")
    runner = ScriptRunner({Script.UP: [up], Script.DOWN: [down]}, 5)
    runner.start()
    for s in (Script.DOWN, Script.UP, Script.DOWN):
        runner.submit(s)
    submitted_at = time.monotonic()
    assert [f.script for f in wait_finished(runner, 3)] == [Script.DOWN, Script.UP, Script.DOWN]
    assert log.read_text().split() == ["down", "up-start", "up-end", "down"]
    assert time.monotonic() - submitted_at >= 0.3


def test_submit_returns_at_once_while_a_script_hangs(tmp_path: Path) -> None:
    hang = script(tmp_path, "hang", "sleep 30\n")
    runner = ScriptRunner({Script.UP: [hang], Script.DOWN: None}, 0.5)
    runner.start()
    started = time.monotonic()
    runner.submit(Script.UP)
    runner.submit(Script.DOWN)
    assert time.monotonic() - started < 0.1


def test_a_hung_script_is_killed_at_its_timeout_and_the_next_one_runs(tmp_path: Path) -> None:
    hang = script(tmp_path, "hang", "sleep 30\n")
    runner = ScriptRunner({Script.UP: [hang], Script.DOWN: None}, 0.5)
    runner.start()
    runner.submit(Script.UP)
    runner.submit(Script.DOWN)
    done = wait_finished(runner, 2, timeout=5)
    assert done == [Finished(Script.UP, None), Finished(Script.DOWN, 0)]


def test_script_output_goes_to_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    up = script(tmp_path, "vip-up", "echo hello from up; echo oops >&2; exit 3\n")
    runner = ScriptRunner({Script.UP: [up], Script.DOWN: None}, 5)
    with caplog.at_level(logging.INFO):
        runner.start()
        runner.submit(Script.UP)
        assert wait_finished(runner, 1) == [Finished(Script.UP, 3)]
    text = caplog.text
    assert "vip-up: hello from up" in text and "vip-up: oops" in text and "status 3" in text


def test_drain_waits_for_queued_scripts(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    down = script(tmp_path, "down", f"sleep 0.2; touch {mark}\n")
    runner = ScriptRunner({Script.UP: None, Script.DOWN: [down]}, 5)
    runner.start()
    runner.submit(Script.DOWN)
    assert runner.drain(5) and mark.exists()


def test_rate_limiter_lets_one_message_per_period_and_counts_the_rest() -> None:
    now = [0.0]
    limiter = RateLimiter(lambda: now[0], period=10)
    assert limiter.allow("bad hmac") == 0
    assert limiter.allow("bad hmac") is None
    assert limiter.allow("bad ttl") == 0
    now[0] = 9.9
    assert limiter.allow("bad hmac") is None
    now[0] = 10.0
    assert limiter.allow("bad hmac") == 2
