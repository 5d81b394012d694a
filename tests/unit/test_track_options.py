"""The health options on carpd's command line and in its --config file: what is accepted, what
each becomes, and how a bad value is refused before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carpd.config import load

BASE = ["-i", "lo", "-a", "10.0.0.1", "-s", "127.0.0.1", "-p", "x"]


def parse(*extra: str) -> load.Options:
    return load.from_command_line([*BASE, *extra])


def refusal(*extra: str) -> str:
    with pytest.raises(load.ConfigError) as caught:
        parse(*extra)
    return str(caught.value)


def executable(folder: Path, name: str = "check", mode: int = 0o755) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def test_defaults_track_nothing() -> None:
    options = parse()
    assert (options.track_script, options.track_interface) == ((), ())
    assert (options.track_interval, options.track_timeout) == (1.0, None)
    assert (options.track_fall, options.track_rise) == (2, 2)
    assert options.persist_dir == Path("/var/lib/carpd")


def test_every_track_option_reaches_its_field(tmp_path: Path) -> None:
    check = executable(tmp_path)
    options = parse("--track-script", str(check), "--track-interval", "0.25",
                    "--track-timeout", "0.5", "--track-fall", "3", "--track-rise", "5",
                    "--track-interface", "eth1", "--persist-dir", str(tmp_path))
    assert options.track_script == ((str(check),),)
    assert (options.track_interval, options.track_timeout) == (0.25, 0.5)
    assert (options.track_fall, options.track_rise) == (3, 5)
    assert options.track_interface == ("eth1",)
    assert options.persist_dir == tmp_path


def test_track_script_is_split_into_words_as_the_shell_would_and_may_be_repeated(
        tmp_path: Path) -> None:
    check = executable(tmp_path)
    options = parse("--track-script", f"{check} http://127.0.0.1/ 'two words'",
                    "--track-script", "/bin/true")
    assert options.track_script == ((str(check), "http://127.0.0.1/", "two words"),
                                    ("/bin/true",))


def test_track_interface_may_be_repeated_and_may_name_several_at_once() -> None:
    options = parse("--track-interface", "eth1 eth2", "--track-interface", "bond0")
    assert options.track_interface == ("eth1", "eth2", "bond0")


def test_a_tracked_interface_that_does_not_exist_is_accepted() -> None:
    # it is "no carrier" while it is missing: it may come later (a USB NIC, a VLAN)
    assert parse("--track-interface", "nosuchif0").track_interface == ("nosuchif0",)


@pytest.mark.parametrize(
    ("flag", "value", "allowed"),
    [
        ("--track-interval", "0", "greater than 0"),
        ("--track-interval", "3601", "less than or equal to 3600"),
        ("--track-interval", "often", "valid number"),
        ("--track-timeout", "-1", "greater than 0"),
        ("--track-timeout", "4000", "less than or equal to 3600"),
        ("--track-fall", "0", "greater than or equal to 1"),
        ("--track-fall", "256", "less than or equal to 255"),
        ("--track-rise", "1.5", "valid integer"),
        ("--track-interface", "eth0:1", "1 to 15 characters, without '/', ':' or whitespace"),
        ("--track-interface", "a/b", "1 to 15 characters, without '/', ':' or whitespace"),
        ("--track-interface", "abcdefghijklmnop", "1 to 15 characters"),
        ("--track-script", "check-nginx", "absolute path to an executable file"),
        ("--track-script", "/nonexistent/check 80", "must be an existing executable file"),
        ("--track-script", "/usr/bin", "must be an existing executable file"),  # a folder
        ("--track-script", "/bin/true 'unclosed", "cannot be split into words"),
        ("--track-script", "", "no command given"),
    ],
)
def test_bad_value_names_option_value_and_what_is_allowed(flag: str, value: str,
                                                          allowed: str) -> None:
    message = refusal(flag, value)
    assert message.startswith(f"{flag}: {value!r}: "), message
    assert allowed in message


def test_a_track_script_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    check = executable(tmp_path, mode=0o644)
    assert refusal("--track-script", str(check)) == (
        f"--track-script: {str(check)!r}: {check} must be an existing executable file")


def test_of_several_track_scripts_the_bad_one_is_named(tmp_path: Path) -> None:
    good = executable(tmp_path)
    message = refusal("--track-script", str(good), "--track-script", "/nonexistent/x -v")
    assert message == ("--track-script: '/nonexistent/x -v': /nonexistent/x must be an "
                       "existing executable file")


def test_of_several_tracked_interfaces_the_bad_one_is_named() -> None:
    message = refusal("--track-interface", "eth1 eth:2")
    assert message.startswith("--track-interface: 'eth:2': not an interface name")


def test_carpd_refuses_a_missing_track_script_before_starting() -> None:
    src = Path(load.__file__).parents[2]
    result = subprocess.run([sys.executable, "-m", "carpd", *BASE, "--track-script",
                             "/nonexistent/check-nginx"], capture_output=True, text=True,
                            timeout=30, env={**os.environ, "PYTHONPATH": str(src)})
    assert result.returncode == 2
    assert result.stderr == ("carpd: --track-script: '/nonexistent/check-nginx': "
                             "/nonexistent/check-nginx must be an existing executable file\n")


def _config_file(folder: Path, data: dict[str, object]) -> Path:
    path = folder / "options.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


def test_config_file_gives_track_scripts_as_lists_of_words(tmp_path: Path) -> None:
    check = executable(tmp_path)
    conf = _config_file(tmp_path, {
        "interface": "lo", "addr": "10.0.0.1", "password": "x",
        "track_script": [[str(check), "80", "a b"], ["/bin/true"]],
        "track_interface": ["eth1", "eth2"], "track_interval": 0.5, "track_fall": 4,
        "persist_dir": str(tmp_path)})
    options = load.from_command_line(["--config", str(conf)])
    assert options.track_script == ((str(check), "80", "a b"), ("/bin/true",))
    assert options.track_interface == ("eth1", "eth2")
    assert (options.track_interval, options.track_fall, options.persist_dir) == (
        0.5, 4, tmp_path)


def test_track_scripts_on_the_command_line_replace_those_of_the_config_file(
        tmp_path: Path) -> None:
    conf = _config_file(tmp_path, {"interface": "lo", "addr": "10.0.0.1", "password": "x",
                                   "track_script": [["/bin/false"]]})
    options = load.from_command_line(["--config", str(conf), "--track-script", "/bin/true"])
    assert options.track_script == (("/bin/true",),)


def test_config_file_track_script_of_another_shape_says_what_is_allowed(
        tmp_path: Path) -> None:
    conf = _config_file(tmp_path, {"interface": "lo", "addr": "10.0.0.1", "password": "x",
                                   "track_script": 7})
    with pytest.raises(load.ConfigError) as caught:
        load.from_command_line(["--config", str(conf)])
    assert str(caught.value) == ("--track-script: 7: allowed: a list of commands, each a "
                                 "command line (a string) or its words (a list of strings)")


def test_options_dumped_as_json_read_back_the_same(tmp_path: Path) -> None:
    check = executable(tmp_path)
    options = parse("--track-script", f"{check} 'a b'", "--track-interface", "eth1 eth2",
                    "--track-timeout", "2.5", "--track-rise", "7", "--persist-dir",
                    str(tmp_path))
    data = options.model_dump(mode="json", exclude={"password"})
    assert data["track_script"] == [[str(check), "a b"]]
    conf = _config_file(tmp_path, {**data, "password": "x"})
    assert load.from_command_line(["--config", str(conf)]) == options


def test_help_names_every_track_option() -> None:
    words = load.parser().format_help().split()
    for flag in ("--track-script", "--track-interval", "--track-timeout", "--track-fall",
                 "--track-rise", "--track-interface", "--persist-dir"):
        assert flag in words


def test_every_new_field_has_its_flag_for_error_messages() -> None:
    for name in ("track_script", "track_interval", "track_timeout", "track_fall",
                 "track_rise", "track_interface", "persist_dir"):
        assert load.FLAGS[name] == "--" + name.replace("_", "-")
