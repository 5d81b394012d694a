"""The password stays secret: files that hold it must be root-only, and no repr(), str() or
validation error shows it."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from pydantic import ValidationError

from carpd.config import load
from carpd.debian.ifupdown import stanza
from carpd.debian.ifupdown.runtime import env_text

SECRET = "Pa55-w0rd-xyz"
BASE = ["-i", "lo", "-a", "10.0.0.1", "-s", "127.0.0.1"]


def _refusal(argv: list[str]) -> str:
    with pytest.raises(load.ConfigError) as caught:
        load.from_command_line(argv)
    return str(caught.value)


def _private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.touch(mode=0o600)
    path.write_text(text)
    path.chmod(mode)
    return path


def _nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=lambda m: f"{m:o}")
def test_a_passfile_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    passfile = _private_file(tmp_path / "pass", SECRET + "\n", mode)
    assert _refusal([*BASE, "-o", str(passfile)]) == (
        f"-o/--passfile: {str(passfile)!r}: mode {mode:o} lets group or others read it: "
        "chmod 600 it")


def test_a_passfile_others_can_change_is_refused(tmp_path: Path) -> None:
    passfile = _private_file(tmp_path / "pass", SECRET + "\n", 0o620)
    assert _refusal([*BASE, "-o", str(passfile)]) == (
        f"-o/--passfile: {str(passfile)!r}: mode 620 lets group or others change or run it: "
        "chmod 600 it")


def test_a_passfile_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    passfile = _private_file(tmp_path / "pass", SECRET + "\n")
    os.chown(passfile, _nobody(), -1)
    assert _refusal([*BASE, "-o", str(passfile)]) == (
        f"-o/--passfile: {str(passfile)!r}: is owned by uid {_nobody()}, not root: "
        "chown root it")


def test_a_root_only_passfile_is_read(tmp_path: Path) -> None:
    passfile = _private_file(tmp_path / "pass", SECRET + "\n", 0o400)
    assert load.from_command_line([*BASE, "-o", str(passfile)]).password == SECRET.encode()


def test_a_config_file_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    conf = _private_file(tmp_path / "eth0.conf",
                         f'{{"interface": "lo", "addr": "10.0.0.1", "password": "{SECRET}"}}')
    os.chown(conf, _nobody(), -1)
    assert _refusal(["--config", str(conf)]) == (
        f"--config: {str(conf)!r}: is owned by uid {_nobody()}, not root: chown root it")


def test_a_config_file_group_can_read_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    conf = _private_file(tmp_path / "eth0.conf", "not even JSON", 0o640)
    assert _refusal(["--config", str(conf)]) == (
        f"--config: {str(conf)!r}: mode 640 lets group or others read it: chmod 600 it")


def test_a_stanza_passfile_others_can_read_is_refused_under_its_option_name(
        tmp_path: Path) -> None:
    passfile = _private_file(tmp_path / "pass", SECRET + "\n", 0o644)
    with pytest.raises(stanza.StanzaError) as caught:
        stanza.engine_options({"ucarp-vid": "3", "ucarp-vip": "10.0.0.1",
                               "ucarp-passfile": str(passfile), "ucarp-upscript": "/bin/true",
                               "ucarp-downscript": "/bin/true"}, interface="lo")
    assert str(caught.value) == (f"ucarp-passfile: {str(passfile)!r}: mode 644 lets group or "
                                 "others read it: chmod 600 it")


def test_neither_the_options_nor_the_password_show_it_in_repr_or_str() -> None:
    options = load.from_command_line([*BASE, "-p", SECRET])
    shown = [repr(options), str(options), repr(options.password), str(options.password),
             f"{options.password}", repr(options.model_dump()), str(vars(options))]
    assert not [text for text in shown if SECRET in text]
    assert options.password == SECRET.encode()  # still the key itself where it is used


def _validation_error(**given: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        load.Options(**{"interface": "lo", "addr": "10.0.0.1", **given})  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize("given", [
    {"password": (SECRET * 2).encode()},                              # the field's own error
    {"password": SECRET.encode(), "advbase": 0, "advskew": 0},        # a whole-model error
    {"password": SECRET.encode(), "vhid": 0, "mcast": "10.0.0.1"},    # other fields' errors
])
def test_validation_errors_never_carry_the_password(given: dict[str, object]) -> None:
    error = _validation_error(**given)
    shown = [str(error), repr(error), error.json(), repr(error.errors())]
    assert not [text for text in shown if SECRET in text]


def test_refusals_name_the_password_option_without_its_value() -> None:
    message = _refusal([*BASE, "-p", SECRET * 2])
    assert message == "-p/--pass or -o/--passfile: <hidden>: Data should have at most 19 bytes"


@pytest.mark.parametrize("raw", [
    {"ucarp-password": f"{SECRET}\n{SECRET}"},                   # given twice
    {"ucarp-password": SECRET, "ucarp-passfile": "/etc/secret"},  # the whole stanza
])
def test_stanza_validation_errors_never_carry_the_password(raw: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as caught:
        stanza.UcarpStanza.model_validate({"ucarp-vid": "3", "ucarp-vip": "10.0.0.1", **raw})
    error = caught.value
    shown = [str(error), repr(error), error.json(), repr(error.errors())]
    assert not [text for text in shown if SECRET in text]


def test_a_line_break_never_reaches_the_environment_file() -> None:
    with pytest.raises(ValueError, match="line break"):
        env_text({"CARPD_IFUPDOWN_INTERFACES": "/tmp/x\nLD_PRELOAD=/tmp/evil.so"})
