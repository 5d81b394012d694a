"""Scripts run off the protocol loop: ucarp's contract, in order, one at a time, timed out."""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from carpd.core.election import Script
from carpd.engine.logs import RateLimiter
from carpd.engine.scripts import Finished, ScriptRunner, script_argv
from lab.poll import wait_for


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


@pytest.mark.parametrize(("xparam", "extra"), [(None, []), ("", [""]), ("x y*", ["x y*"])])
def test_a_given_xparam_is_the_third_argument_even_empty_as_ucarp_passes_it(
        xparam: str | None, extra: list[str]) -> None:
    vip = IPv4Address("10.0.0.1")
    assert script_argv(Path("/s"), "eth0:1", vip, xparam) == ["/s", "eth0:1", "10.0.0.1", *extra]
    assert script_argv(None, "eth0", vip, xparam) is None


def started(mark: Path) -> None:
    """Wait until a script has touched ``mark``: it is running."""
    wait_for(mark.exists, 5, 0.01, what=f"{mark} there")


def up_running(tmp_path: Path, up: str, down: str | None,
               timeout: float = 5) -> tuple[ScriptRunner, Path]:
    """A started runner asked for its up script, once that has begun: the scripts' bodies say
    ``{log}`` for the log they write to (returned), the up script's first line writes to it."""
    log = tmp_path / "log"
    scripts = {Script.UP: [script(tmp_path, "up", up.format(log=log))],
               Script.DOWN: None if down is None else [script(tmp_path, "down",
                                                              down.format(log=log))]}
    runner = ScriptRunner(scripts, timeout)
    runner.start()
    runner.submit(Script.UP)
    started(log)
    return runner, log


def test_scripts_run_one_at_a_time_in_the_order_asked(tmp_path: Path) -> None:
    runner, log = up_running(tmp_path, "echo up-start >> {log}; sleep 0.3; echo up-end >> {log}\n",
                             "echo down >> {log}\n")
    runner.submit(Script.DOWN)
    assert wait_finished(runner, 2) == [Finished(Script.UP, 0), Finished(Script.DOWN, 0)]
    assert log.read_text().split() == ["up-start", "up-end", "down"]


def test_a_burst_while_a_script_runs_leaves_only_the_latest_request_waiting(
        tmp_path: Path) -> None:
    runner, log = up_running(tmp_path, "echo up >> {log}; sleep 0.3\n", "echo down >> {log}\n")
    for s in (Script.DOWN, Script.UP) * 50 + (Script.DOWN,):
        runner.submit(s)
    done = wait_finished(runner, 102)
    assert log.read_text().split() == ["up", "down"]
    # every request is answered, in the order asked; only the first and the last ran
    assert [f.script for f in done] == [Script.UP, *(Script.DOWN, Script.UP) * 50, Script.DOWN]
    assert [not f.skipped for f in done] == [True, *[False] * 100, True]
    assert done[-1] == Finished(Script.DOWN, 0)


def test_a_burst_ending_on_the_state_being_reached_runs_nothing_more(tmp_path: Path) -> None:
    runner, log = up_running(tmp_path, "echo up >> {log}; sleep 0.3\n", "echo down >> {log}\n")
    runner.submit(Script.DOWN)
    runner.submit(Script.UP)
    assert wait_finished(runner, 3) == [
        Finished(Script.UP, 0), Finished(Script.DOWN, None, skipped=True),
        Finished(Script.UP, None, skipped=True)]
    time.sleep(0.2)
    assert log.read_text().split() == ["up"]
    assert runner.finished() == []


@pytest.mark.parametrize("seed", range(5))
def test_after_any_burst_the_last_script_run_is_the_last_one_asked_for(
        tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    log = tmp_path / "log"
    up = script(tmp_path, "up", f"echo up >> {log}; sleep 0.02\n")
    down = script(tmp_path, "down", f"echo down >> {log}; sleep 0.02\n")
    runner = ScriptRunner({Script.UP: [up], Script.DOWN: [down]}, 5)
    runner.start()
    asked = [rng.choice(list(Script)) for _ in range(rng.randint(5, 40))]
    for s in asked:
        runner.submit(s)
        time.sleep(rng.choice([0, 0, 0.001, 0.01, 0.03]))
    done = wait_finished(runner, len(asked))
    assert [f.script for f in done] == asked
    ran = log.read_text().split()
    assert ran[-1] == asked[-1].value
    assert ran == [f.script.value for f in done if not f.skipped]


def test_submit_returns_at_once_while_a_script_hangs(tmp_path: Path) -> None:
    hang = script(tmp_path, "hang", "sleep 30\n")
    runner = ScriptRunner({Script.UP: [hang], Script.DOWN: None}, 0.5)
    runner.start()
    started = time.monotonic()
    runner.submit(Script.UP)
    runner.submit(Script.DOWN)
    assert time.monotonic() - started < 0.1


def test_a_hung_script_is_killed_at_its_timeout_and_the_next_one_runs(tmp_path: Path) -> None:
    mark = tmp_path / "started"
    hang = script(tmp_path, "hang", f"touch {mark}; sleep 30\n")
    runner = ScriptRunner({Script.UP: [hang], Script.DOWN: None}, 0.5)
    runner.start()
    runner.submit(Script.UP)
    started(mark)
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


@pytest.mark.parametrize("background", ["sleep 30 &", "setsid sleep 30 &"],
                         ids=["child", "new-session"])
def test_a_script_that_leaves_a_process_behind_does_not_hold_up_the_next(
        tmp_path: Path, background: str) -> None:
    pidfile = tmp_path / "child.pid"
    up = script(tmp_path, "up", f"echo starting\n{background}\necho $! > {pidfile}\n")
    down = script(tmp_path, "down", "echo down\n")
    runner = ScriptRunner({Script.UP: [up], Script.DOWN: [down]}, 20)
    runner.start()
    try:
        began = time.monotonic()
        runner.submit(Script.UP)
        started(pidfile)
        runner.submit(Script.DOWN)
        assert wait_finished(runner, 2, timeout=5) == [Finished(Script.UP, 0),
                                                       Finished(Script.DOWN, 0)]
        assert time.monotonic() - began < 2.0
    finally:
        if pidfile.exists():
            child = int(pidfile.read_text())
            assert Path(f"/proc/{child}").exists(), "the script's child was killed"
            os.kill(child, signal.SIGKILL)


def test_output_a_script_floods_is_bounded(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    up = script(tmp_path, "up", "head -c 10000000 /dev/zero | tr '\\0' x; echo\n")
    runner = ScriptRunner({Script.UP: [up], Script.DOWN: None}, 20)
    runner.start()
    with caplog.at_level(logging.INFO, logger="carpd.engine.scripts"):
        runner.submit(Script.UP)
        assert wait_finished(runner, 1) == [Finished(Script.UP, 0)]
    logged = sum(len(r.getMessage()) for r in caplog.records)
    assert logged < 200_000


def test_a_child_left_behind_that_writes_on_does_not_hold_up_the_script(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    up = script(tmp_path, "up", f"yes &\necho $! > {pidfile}\n")
    runner = ScriptRunner({Script.UP: [up], Script.DOWN: None}, 20)
    runner.start()
    try:
        began = time.monotonic()
        runner.submit(Script.UP)
        assert wait_finished(runner, 1, timeout=5) == [Finished(Script.UP, 0)]
        assert time.monotonic() - began < 2.0
        time.sleep(0.5)
        assert Path(f"/proc/{int(pidfile.read_text())}").exists(), "killed by SIGPIPE"
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_an_up_script_that_hangs_is_killed_once_the_node_has_stepped_down(
        tmp_path: Path) -> None:
    runner, log = up_running(tmp_path, "echo up >> {log}\nsleep 600\n", "echo down >> {log}\n",
                             timeout=600)
    asked = time.monotonic()
    runner.submit(Script.DOWN)
    assert wait_finished(runner, 2, timeout=10) == [Finished(Script.UP, None),
                                                    Finished(Script.DOWN, 0)]
    assert time.monotonic() - asked < 5.0  # the grace (0.5 s), not the script timeout
    assert log.read_text() == "up\ndown\n"


def test_an_up_script_asked_for_again_is_not_killed_as_obsolete(tmp_path: Path) -> None:
    runner, log = up_running(tmp_path, "echo up >> {log}\nsleep 3\necho up-done >> {log}\n", None,
                             timeout=600)
    runner.submit(Script.DOWN)
    runner.submit(Script.UP)  # flapped back: the running up script is right again
    done = wait_finished(runner, 3, timeout=10)
    assert Finished(Script.UP, 0) in done
    assert log.read_text() == "up\nup-done\n"


def test_a_script_dies_with_the_engine(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    engine = tmp_path / "engine.py"
    up = script(tmp_path, "up", f"echo $$ > {pidfile}\nexec sleep 600\n")
    engine.write_text(
        "import time\n"
        "from carpd.core.election import Script\n"
        "from carpd.engine.scripts import ScriptRunner\n"
        f"r = ScriptRunner({{Script.UP: [{up!r}], Script.DOWN: None}}, 600)\n"
        "r.start(); r.submit(Script.UP); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(engine)])
    try:
        started(pidfile)
        script_pid = int(pidfile.read_text())
        proc.kill()
        proc.wait()
        wait_for(lambda: not Path(f"/proc/{script_pid}").exists(), 5,
                 what="the script gone with the engine (it outlived it)")
    finally:
        proc.kill()


def test_a_script_that_closes_its_output_and_runs_on_costs_no_cpu_while_it_runs(
        tmp_path: Path) -> None:
    """A closed pipe stays readable at end-of-file: watching it would spin the runner."""
    quiet = script(tmp_path, "quiet", "exec >&- 2>&-\nsleep 2\n")
    runner = ScriptRunner({Script.UP: [quiet], Script.DOWN: None}, 10)
    runner.start()
    before = time.process_time()
    runner.submit(Script.UP)
    assert wait_finished(runner, 1) == [Finished(Script.UP, 0)]
    assert time.process_time() - before < 0.1  # a spin burns about 0.3 s of CPU over the 2 s
