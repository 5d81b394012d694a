"""The engine never loads pydantic (issue 9: memory): the command line and the --config file are
validated in a short-lived process of its own (carpd.config.validate), which hands the engine plain
settings, or the problems worded exactly as in-process validation words them."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from carpd.config import load
from carpd.config.problems import ConfigError
from carpd.engine import control
from carpd.engine.settings import Settings, settings_to_plain, validated

ENGINE_IMPORTS = r'''
import json, sys
import carpd.engine.cli, carpd.engine.daemon, carpd.engine.group
print(json.dumps(sorted(m for m in sys.modules
                        if m.split(".")[0] in ("pydantic", "pydantic_core", "annotated_types"))))
'''


def test_the_engines_modules_load_no_pydantic() -> None:
    out = subprocess.run([sys.executable, "-c", ENGINE_IMPORTS], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert json.loads(out.stdout) == []


def _config(tmp_path: Path, data: dict[str, object]) -> str:
    path = tmp_path / "carpd.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps(data))
    return str(path)


def test_the_validator_process_gives_the_engine_what_in_process_validation_gives(
        tmp_path: Path) -> None:
    argv = ["--config", _config(tmp_path, {
        "interface": "lo", "state_dir": str(tmp_path), "groups": [
            {"vhid": 3, "addr": "10.1.2.3", "password": "p1", "track_interface": "lo"},
            {"vhid": 4, "addr": "10.1.2.4", "password": "p2", "advskew": 7}]})]
    expected = load.engine_config(argv)
    got = validated(argv)
    assert all(isinstance(g, Settings) for g in got.groups)
    assert [settings_to_plain(g) for g in got.groups] == \
        [settings_to_plain(g) for g in expected.groups]
    assert (got.config_file, got.password_on_command_line) == (argv[1], False)
    assert validated(["-i", "lo", "-a", "10.1.2.3", "-p", "x"]).password_on_command_line


@pytest.mark.parametrize("argv", [
    ["-i", "lo", "-a", "10.1.2.3", "-p", "x", "-v", "300", "-k", "999"],
    ["-i", "lo", "-a", "10.1.2.3", "--bogus"],
    ["-i", "lo", "-a", "10.1.2.3"],
])
def test_the_validator_process_words_every_problem_as_in_process_validation(
        argv: list[str]) -> None:
    with pytest.raises(ConfigError) as expected:
        load.engine_config(argv)
    with pytest.raises(ConfigError) as got:
        validated(argv)
    assert str(got.value) == str(expected.value)
    assert [p.located for p in got.value.problems] == [str(expected.value)]


def test_a_request_answered_later_gets_its_reply_when_the_server_has_it(tmp_path: Path) -> None:
    """How a reload waits for its validator without holding up the loop."""
    server = control.ControlServer(tmp_path / "c.sock", lambda request: control.LATER)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(str(server.path))
            client.sendall(b'{"cmd": "reload"}\n')
            conn, _ = server.accept()
            assert conn is not None
            conn.setblocking(True)
            assert server.serve(conn) is True  # read and done with, not answered
            assert server.waiting == [conn]
            assert select.select([client], [], [], 0.1)[0] == []
            server.answer_waiting({"ok": True, "started": [2]})
            assert json.loads(client.makefile("rb").readline()) == {"ok": True, "started": [2]}
            assert server.waiting == []
    finally:
        server.close()


STOP_BUDGET_IMPORTS = r'''
import json, sys
from pathlib import Path
from carpd.debian.ifupdown import runtime
budget = runtime.stop_budget(Path(sys.argv[1]))
print(json.dumps([budget, sorted(m for m in sys.modules if m.split(".")[0] == "pydantic")]))
'''


def test_how_long_a_confs_engine_may_take_to_stop_is_known_without_pydantic(
        tmp_path: Path) -> None:
    """ifdown waits on it (the hook stopping an engine): the plain settings' budget."""
    conf = _config(tmp_path, {"interface": "eth0", "groups": [
        {"vhid": 1, "addr": "10.1.2.3", "drain": 5, "script_timeout": 10},
        {"vhid": 2, "addr": "10.1.2.4", "drain_connections": 40}]})
    out = subprocess.run([sys.executable, "-c", STOP_BUDGET_IMPORTS, conf], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert json.loads(out.stdout) == [40 + 30 + 15, []]
