"""Releasing an engine that is gone goes through its down action, so ifupdown's record of
IFACE:ucarp is right whoever removed the VIP first (the engine's watchdog often does)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from carpd.config.load import from_command_line
from carpd.debian.ifupdown import runtime


def conf_with_down_script(tmp_path: Path, marker: Path,
                          more: tuple[str, ...] = ()) -> runtime.Paths:
    script = tmp_path / "down"
    script.write_text(f"#!/bin/sh\necho \"$# $@\" >> {marker}\n")
    script.chmod(0o755)
    passfile = tmp_path / "pass"
    passfile.write_text("secret\n")
    passfile.chmod(0o600)
    options = from_command_line(["-i", "lo", "-s", "127.0.0.1", "-v", "3", "-o", str(passfile),
                                 "-a", "10.255.0.77", "-u", "/bin/true", "-d", str(script),
                                 *more])
    paths = runtime.Paths("lo", tmp_path)
    runtime.write_private(paths.conf, runtime.conf_text(options))
    return paths


def test_release_after_a_crash_runs_the_down_action_though_the_vip_is_gone(
        tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    paths = conf_with_down_script(tmp_path, marker)  # 10.255.0.77 is not on lo
    done = runtime.release(paths, crashed=True)
    assert marker.read_text() == "2 lo 10.255.0.77\n"
    assert any("ran " in line for line in done)


def test_release_passes_an_empty_xparam_as_a_third_argument_as_ucarp_does(
        tmp_path: Path) -> None:
    # ucarp 1.5.2 -x "": its scripts get three arguments, the third empty (checked with the
    # real ucarp); the engine's own runs pass it so, and the release after a crash must too
    marker = tmp_path / "ran"
    paths = conf_with_down_script(tmp_path, marker, ("-x", ""))
    runtime.release(paths, crashed=True)
    assert marker.read_text() == "3 lo 10.255.0.77 \n"


def test_release_after_a_clean_exit_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    paths = conf_with_down_script(tmp_path, marker)
    assert runtime.release(paths, crashed=False) == []
    assert not marker.exists()


def test_removing_an_interfaces_files_takes_a_killed_engines_control_sockets(
        tmp_path: Path) -> None:
    conf = {"interface": "eth0", "groups": [{"vhid": 1, "addr": "10.0.0.1"},
                                            {"vhid": 7, "addr": "10.0.0.7"}]}
    paths = runtime.Paths("eth0", tmp_path)
    runtime.write_private(paths.conf, runtime.dumps(conf))
    for name in ("eth0.sock", "eth0.1.sock", "eth0.7.sock", "eth0.groups", "eth0.10.1.sock",
                 "eth0.10.sock", "eth0.1.demoted", "eth0.log"):
        (tmp_path / name).touch()
    paths.remove()
    # eth0.10.sock: the engine of VLAN eth0.10 (eth0 runs no vhid 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "eth0.1.demoted", "eth0.10.1.sock", "eth0.10.sock", "eth0.log"]


def test_release_loads_neither_pyroute2_nor_pydantic(tmp_path: Path) -> None:
    # on the path of ifdown and of the supervisor's restarts: the standard library's netlink
    marker = tmp_path / "ran"
    paths = conf_with_down_script(tmp_path, marker)
    code = ("import sys; from pathlib import Path; from carpd.debian.ifupdown import runtime; "
            f"runtime.release(runtime.Paths('lo', Path({str(tmp_path)!r})), crashed=True); "
            "print(sorted(m for m in sys.modules if m.startswith(('pyroute2', 'pydantic'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout == "[]\n"
    assert marker.exists() and paths.conf.exists()
