"""The pure parts of the hooks: names, environment, the files left in /run/carpd."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from carpd.debian.ifupdown import hook, runtime
from carpd.debian.ifupdown.stanza import engine_options

SCRIPTS = {"ucarp-upscript": "/bin/true", "ucarp-downscript": "/bin/true"}


@pytest.mark.parametrize("interface", ["eth0", "br-lan", "eth0.10", "enp0s31f6", "wg_0", ".x",
                                       "a b", "v\u00e9th"])
def test_unit_name_is_escaped_like_systemd_escape(interface: str) -> None:
    escape = shutil.which("systemd-escape")
    if escape is None:
        pytest.skip("systemd-escape is not installed (package systemd)")
    expected = subprocess.run([escape, "--template", "carpd@.service", interface],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert hook.unit_name(interface) == expected


def test_stanza_options_come_from_if_ucarp_variables() -> None:
    env = {"IFACE": "eth0", "IF_ADDRESS": "10.0.0.2", "IF_UCARP_VID": "3",
           "IF_UCARP_IGNOREIFSTATE": "yes", "IF_UCARP_PASSWORD": "s"}
    assert hook.stanza_options(env) == {"ucarp-vid": "3", "ucarp-ignoreifstate": "yes",
                                        "ucarp-password": "s"}


@pytest.mark.parametrize(("argv", "expected"), [
    (["ifup", "eth0"], {}),
    (["ifup", "-i", "/tmp/if", "--state-dir", "/tmp/st", "eth0"],
     {"CARPD_IFUPDOWN_INTERFACES": "/tmp/if", "CARPD_IFUPDOWN_STATE_DIR": "/tmp/st"}),
    (["/sbin/ifdown", "--interfaces=rel/if", "--state-dir=st", "-a"],
     {"CARPD_IFUPDOWN_INTERFACES": "/cwd/rel/if", "CARPD_IFUPDOWN_STATE_DIR": "/cwd/st"}),
    (["ifup", "-v", "-i/tmp/if", "eth0"], {"CARPD_IFUPDOWN_INTERFACES": "/tmp/if"}),
    (["ifup", "--", "-i"], {}),
])
def test_the_interfaces_file_and_state_dir_of_ifup_pass_to_the_scripts(
        argv: list[str], expected: dict[str, str]) -> None:
    assert hook.ifupdown_files(argv, "/cwd") == expected


def test_the_invoking_ifup_is_found_among_the_ancestors(tmp_path: Path) -> None:
    # like ifup -> sh -c -> run-parts -> hook: a program named ifup whose grandchild asks
    fake = tmp_path / "ifup"
    ask = (f"{sys.executable} -c 'from carpd.debian.ifupdown import hook; "
           "print(hook.invoking_ifupdown())'")
    fake.write_text(f"#!/bin/sh\nsh -c \"{ask}; true\"\n")
    fake.chmod(0o755)
    result = subprocess.run([str(fake), "-i", "/x/interfaces", "eth0"], capture_output=True,
                            text=True, check=True, cwd=tmp_path)
    assert result.stdout.endswith(f"['/bin/sh', '{fake}', '-i', '/x/interfaces', 'eth0'])\n")


def test_env_file_round_trips_odd_values(tmp_path: Path) -> None:
    env = {"CARPD_IFUPDOWN_INTERFACES": '/etc/net work/"quoted"\\back',
           "CARPD_IFUPDOWN_STATE_DIR": "/run/network"}
    path = tmp_path / "eth0.env"
    runtime.write_private(path, runtime.env_text(env), mode=0o644)
    assert runtime.read_env(path) == env


def test_conf_is_written_root_only_with_the_password_and_what_differs(tmp_path: Path) -> None:
    options = engine_options({"ucarp-vid": "3", "ucarp-vip": "10.0.0.1",
                              "ucarp-password": "pa ss\u00e9", "ucarp-master": "yes",
                              **SCRIPTS}, interface="lo", address="10.0.0.2")
    path = tmp_path / "run" / "lo.conf"
    runtime.write_private(path, runtime.conf_text(options))
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert json.loads(path.read_text()) == {
        "interface": "lo", "vhid": 3, "addr": "10.0.0.1", "password": "pa ss\u00e9",
        "preempt": True, "srcip": "10.0.0.2", "upscript": "/bin/true",
        "downscript": "/bin/true"}


def test_the_engine_reads_the_conf_the_hook_writes(tmp_path: Path) -> None:
    from carpd.config.load import from_command_line

    options = engine_options({"ucarp-vid": "3", "ucarp-vip": "10.0.0.1",
                              "ucarp-password": "secret", "ucarp-advskew": "20", **SCRIPTS},
                             interface="lo")
    path = tmp_path / "lo.conf"
    runtime.write_private(path, runtime.conf_text(options))
    assert from_command_line(["--config", str(path)]) == options


def test_release_reads_what_it_needs_from_the_conf(tmp_path: Path) -> None:
    options = engine_options({"ucarp-vid": "3", "ucarp-vip": "10.0.0.1",
                              "ucarp-password": "secret", "ucarp-xparam": "two words",
                              **SCRIPTS}, interface="lo")
    paths = runtime.Paths("lo", tmp_path)
    runtime.write_private(paths.conf, runtime.conf_text(options))
    engine = runtime.ConfGroup.from_conf(paths.conf)
    assert engine == runtime.ConfGroup("lo", IPv4Address("10.0.0.1"), "/bin/true", "two words",
                                       30.0)
    assert engine.script_argv() == ["/bin/true", "lo", "10.0.0.1", "two words"]


def test_hook_does_nothing_for_a_stanza_without_ucarp_options(tmp_path: Path) -> None:
    env = {"IFACE": "lo", "MODE": "start", "ADDRFAM": "inet", "METHOD": "loopback"}
    assert hook.run(env, tmp_path) == 0
    assert list(tmp_path.iterdir()) == []


def test_hook_refuses_a_bad_stanza_before_writing_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"IFACE": "lo", "LOGICAL": "lo", "MODE": "start", "ADDRFAM": "inet",
           "METHOD": "static", "IF_ADDRESS": "127.0.0.1", "IF_UCARP_VID": "3",
           "IF_UCARP_VIP": "127.0.0.9", "IF_UCARP_PASSWORD": "secret",
           "IF_UCARP_MASTER": "False-ish", "IF_UCARP_UPSCRIPT": "/bin/true",
           "IF_UCARP_DOWNSCRIPT": "/bin/true"}
    assert hook.run(env, tmp_path) == 1
    assert capsys.readouterr().err == (
        "carpd: iface lo inet static: ucarp-master: 'False-ish': not a boolean: allowed: "
        "yes/no, on/off, true/false, 1/0 (any case)\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("argv", "flag"), [
    (["ifup", "-i", "/tmp/a\nPATH=/tmp/evil", "eth0"], "-i/--interfaces"),
    (["ifup", "--interfaces=/tmp/a\rb", "eth0"], "-i/--interfaces"),
    (["ifup", "--state-dir", "/tmp/st\nX=1", "eth0"], "--state-dir"),
])
def test_a_line_break_in_what_ifup_was_given_is_refused(argv: list[str], flag: str) -> None:
    with pytest.raises(hook.HookError) as caught:
        hook.ifupdown_files(argv, "/")
    assert str(caught.value).startswith(f"ifup {flag}: ")
    assert str(caught.value).endswith("allowed is a path without line breaks")


def test_the_hook_leaves_no_password_in_its_own_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IF_UCARP_PASSWORD", "secret")
    env = {"IFACE": "lo", "MODE": "start", "ADDRFAM": "inet", "METHOD": "static",
           "IF_UCARP_PASSWORD": "secret"}  # ucarp-vid and ucarp-vip missing: refused
    assert hook.run(env, tmp_path) == 1
    assert "IF_UCARP_PASSWORD" not in os.environ
