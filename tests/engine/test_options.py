"""ucarp's command line onto the Options model: what is accepted, and how a bad value is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from carpd.config import load

BASE = ["-i", "lo", "-a", "10.0.0.1", "-s", "127.0.0.1"]


def parse(*extra: str) -> load.Options:
    return load.from_command_line([*BASE, *extra])


def refusal(*argv: str) -> str:
    with pytest.raises(load.ConfigError) as caught:
        load.from_command_line(list(argv))
    return str(caught.value)


def test_the_usual_ucarp_start_line_parses_unchanged(tmp_path: Path) -> None:
    up = tmp_path / "vip-up"
    up.write_text("#!/bin/sh\n")
    up.chmod(0o755)
    engine = load.engine_config(
        ["-i", "lo", "-s", "10.0.0.2", "-B", "-z", "-v", "1", "-p", "secret", "-a", "10.0.0.1",
         "-u", str(up), "-d", str(up)])
    options = engine.first
    assert (options.vhid, options.password, str(options.addr)) == (1, b"secret", "10.0.0.1")
    assert options.daemonize and options.shutdown and engine.password_on_command_line


def test_defaults_match_ucarp() -> None:
    options = parse("-p", "x")
    assert (options.vhid, options.advbase, options.advskew, options.deadratio) == (1, 1, 0, 3)
    assert str(options.mcast) == "224.0.0.18"
    assert not options.preempt and not options.nomcast and options.facility == "daemon"


def test_every_boolean_flag_is_accepted() -> None:
    options = parse("-p", "x", "-P", "-n", "-D", "-z", "-S", "-M")
    assert options.preempt and options.neutral and options.debug and options.ignoreifstate
    assert options.nomcast


def test_mcast_option_is_accepted_unlike_ucarp() -> None:
    assert str(parse("-p", "x", "-m", "239.1.2.3").mcast) == "239.1.2.3"


@pytest.mark.parametrize(
    ("flag", "value", "allowed"),
    [
        ("-v", "0", "greater than or equal to 1"),
        ("-v", "256", "less than or equal to 255"),
        ("-v", "seven", "valid integer"),
        ("-b", "300", "less than or equal to 255"),
        ("-k", "-1", "greater than or equal to 0"),
        ("-r", "0", "greater than or equal to 1"),
        ("-a", "10.0.0.300", "valid IPv4 address"),
        ("-s", "fe80::1", "valid IPv4 address"),
        ("-m", "10.0.0.1", "multicast"),
        ("-f", "bogus", "allowed: auth"),
        ("-u", "/nonexistent/vip-up", "existing executable file"),
    ],
)
def test_bad_value_names_option_value_and_what_is_allowed(flag: str, value: str,
                                                          allowed: str) -> None:
    argv = [a for a in BASE if a != "-s" and a != "127.0.0.1"] if flag == "-s" else BASE
    message = refusal(*argv, "-p", "x", flag, value)
    assert flag in message and repr(value) in message and allowed in message


def test_values_above_255_are_refused_not_wrapped() -> None:
    assert "-k/--advskew: '356'" in refusal(*BASE, "-p", "x", "-k", "356")


def test_advbase_and_advskew_both_zero_is_refused() -> None:
    assert "advbase and advskew cannot both be 0" in refusal(*BASE, "-p", "x", "-b", "0", "-k", "0")


def test_sub_second_interval_with_advbase_zero_is_allowed() -> None:
    assert parse("-p", "x", "-b", "0", "-k", "64").advbase == 0


def test_password_longer_than_19_bytes_is_refused_without_showing_it() -> None:
    message = refusal(*BASE, "-p", "p" * 20)
    assert "at most 19 bytes" in message and "p" * 20 not in message and "<hidden>" in message


def test_missing_password_is_refused() -> None:
    assert "a password is required" in refusal(*BASE)


def test_unknown_interface_is_refused() -> None:
    assert "-i/--interface: 'nosuch0': no such network interface" in refusal(
        "-i", "nosuch0", "-a", "10.0.0.1", "-p", "x")


def test_passfile_first_line_is_the_password(tmp_path: Path) -> None:
    passfile = tmp_path / "pass"
    passfile.touch(mode=0o600)
    passfile.write_bytes(b"s3cret\nignored\n")
    engine = load.engine_config([*BASE, "-o", str(passfile)])
    assert engine.first.password == b"s3cret" and not engine.password_on_command_line


def test_pass_and_passfile_together_are_refused(tmp_path: Path) -> None:
    passfile = tmp_path / "pass"
    passfile.write_bytes(b"x\n")
    assert "not both" in refusal(*BASE, "-p", "x", "-o", str(passfile))


def test_password_never_shows_in_the_options_repr() -> None:
    assert "topsecret" not in repr(parse("-p", "topsecret"))


def test_config_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "eth0.conf"
    conf.write_text('{"interface": "lo", "addr": "10.0.0.1", "password": "x"}')
    conf.chmod(0o644)
    assert refusal("--config", str(conf)) == (
        f"--config: {str(conf)!r}: mode 644 lets group or others read it: chmod 600 it")


def test_replay_check_is_on_by_default_and_the_flag_turns_it_off() -> None:
    assert parse("-p", "x").replay_check is True
    assert parse("-p", "x", "--no-replay-check").replay_check is False


def test_no_replay_check_flag_is_in_the_help() -> None:
    assert "accept adverts whose counter is not newer (replay protection off)" in " ".join(
        load.parser().format_help().split())


def test_config_file_supplies_options_and_command_line_overrides(tmp_path: Path) -> None:
    conf = tmp_path / "eth0.conf"
    conf.touch(mode=0o600)
    conf.write_text('{"interface": "lo", "addr": "10.0.0.1", "srcip": "127.0.0.1", '
                    '"password": "fromfile", "advskew": 7}')
    engine = load.engine_config(["--config", str(conf), "-k", "9"])
    assert engine.first.password == b"fromfile" and engine.first.advskew == 9
    assert not engine.password_on_command_line


def test_carpd_exits_nonzero_with_the_message_before_starting() -> None:
    proc = subprocess.run([sys.executable, "-m", "carpd", *BASE, "-p", "x", "-v", "300"],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(Path(load.__file__).parents[2])})
    assert proc.returncode == 2
    assert "carpd: -v/--vhid: '300': Input should be less than or equal to 255" in proc.stderr


def test_the_bow_outs_timing_is_refused() -> None:
    message = refusal(*BASE, "-p", "x", "-b", "255", "-k", "255")
    assert "bow-out" in message
