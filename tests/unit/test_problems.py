"""Problems as data: validation hands back the file, line, stanza, option, value and reason of
each problem apart; whoever shows them formats and sorts them.  The model checks what a person
gave, this machine (interfaces, executables) is checked after it, and how the options arrived is
not an option."""

from __future__ import annotations

from pathlib import Path

import pytest

from carpd.config import load
from carpd.config.problems import HIDDEN, Problem
from carpd.debian import carpctl
from carpd.debian.ifupdown import interfaces
from carpd.debian.ifupdown import stanza as ucarp

SCRIPTS = {"ucarp-upscript": "/bin/true", "ucarp-downscript": "/bin/true"}
BASE = {"ucarp-vid": "3", "ucarp-vip": "10.0.0.1", "ucarp-password": "secret", **SCRIPTS}
ARGV = ["-i", "lo", "-a", "10.0.0.1"]


def _stanza_problems(raw: dict[str, str], **where: object) -> list[Problem]:
    with pytest.raises(ucarp.StanzaError) as caught:
        ucarp.engine_options(raw, interface="lo", **where)  # type: ignore[arg-type]
    return caught.value.problems


def _refusal(*argv: str) -> load.ConfigError:
    with pytest.raises(load.ConfigError) as caught:
        load.engine_config(list(argv))
    return caught.value


def test_a_stanza_problem_holds_option_value_and_reason_apart() -> None:
    [problem] = _stanza_problems({**BASE, "ucarp-advskew": "300"})
    assert (problem.option, problem.value, problem.field) == ("ucarp-advskew", "'300'", "advskew")
    assert problem.reason == "Input should be less than or equal to 255"
    assert problem.message == "ucarp-advskew: '300': Input should be less than or equal to 255"


def test_a_problem_of_the_stanza_model_names_its_option_without_a_field() -> None:
    [problem] = _stanza_problems({**BASE, "ucarp-master": "maybe"})
    assert (problem.option, problem.value) == ("ucarp-master", "'maybe'")
    assert problem.reason.startswith("not a boolean: allowed: yes/no")


def test_both_passwords_is_a_problem_at_ucarp_password_naming_both(tmp_path: Path) -> None:
    [problem] = _stanza_problems({**BASE, "ucarp-passfile": str(tmp_path / "pw")})
    assert (problem.option, problem.label, problem.value) == (
        "ucarp-password", "ucarp-password and ucarp-passfile", None)
    assert problem.message == "ucarp-password and ucarp-passfile: give one of them, not both"


def test_the_password_is_never_the_value_of_a_problem() -> None:
    [problem] = _stanza_problems({**BASE, "ucarp-password": "x" * 40})
    assert problem.value == HIDDEN
    [problem] = _refusal(*ARGV, "-p", "y" * 40).problems
    assert (problem.option, problem.value) == ("-p/--pass or -o/--passfile", HIDDEN)


def test_a_problem_with_a_place_reads_file_line_stanza_message() -> None:
    problem = Problem("not a boolean", "ucarp-debug", "'maybe'").at("interfaces", 7,
                                                                    "iface eth0 inet static")
    assert problem.located == "interfaces:7: iface eth0 inet static: ucarp-debug: 'maybe': " \
                              "not a boolean"
    assert Problem("no such network interface").located == "no such network interface"


def test_check_sorts_by_the_problems_place_whatever_the_file_name_says(tmp_path: Path) -> None:
    # a file name that reads like a place ("...:1: ...") must not decide the order
    path = tmp_path / "if:1: x"
    path.write_text("iface eth0 inet static\n    ucarp-vid 300\n    ucarp-vip 10.0.0.1\n"
                    "    ucarp-password s\n    ucarp-upscript /bin/true\n"
                    "    ucarp-downscript /bin/true\nbogus-keyword-outside\n")
    parsed = interfaces.parse(path)
    problems, count = carpctl.check_problems(parsed)
    assert count == 1
    assert [(p.file, p.line) for p in problems] == [(str(path), 2), (str(path), 7)]
    assert carpctl.check_parsed(parsed)[0] == [p.located for p in problems]


def test_the_interfaces_parser_gives_its_problems_a_place(tmp_path: Path) -> None:
    path = tmp_path / "interfaces"
    path.write_text("\n\nucarp-vid 3\n")
    parsed = interfaces.parse(path)
    [problem] = parsed.problems
    assert (problem.file, problem.line, problem.stanza) == (str(path), 3, None)
    assert parsed.errors == [problem.located]


# -- the model, then this machine ---------------------------------------------------------------

def test_this_machine_is_checked_beside_the_model_so_every_problem_shows_at_once() -> None:
    error = _refusal("-i", "nosuch0", "-a", "10.0.0.1", "-p", "x", "-b", "0", "-k", "0")
    assert [p.message for p in error.problems] == [
        "-i/--interface: 'nosuch0': no such network interface",
        "options: advbase and advskew cannot both be 0"]


def test_each_track_script_is_checked_on_its_own_shape_and_then_on_this_machine() -> None:
    error = _refusal(*ARGV, "-p", "x", "--track-script", "/nonexistent/check",
                     "--track-script", "relative x")
    assert [(p.index, p.message) for p in error.problems] == [
        (0, "--track-script: '/nonexistent/check': /nonexistent/check must be an existing "
            "executable file"),
        (1, "--track-script: 'relative x': the command must start with an absolute path to an "
            "executable file")]


def test_an_interface_not_there_yet_is_taken_as_given_not_checked_against_another() -> None:
    options = ucarp.engine_options({**BASE, "ucarp-vip-interface": "nosuchvip0"},
                                   interface="nosuch0", check_interface=False)
    assert (options.interface, options.vip_interface) == ("nosuch0", "nosuchvip0")
    problems = _stanza_problems({**BASE, "ucarp-vip-interface": "nosuchvip0"})
    assert [p.message for p in problems] == [
        "ucarp-vip-interface: 'nosuchvip0': no such network interface"]


def test_the_model_alone_accepts_a_script_this_machine_lacks() -> None:
    options = load.Options(interface="nosuch0", addr="10.0.0.1",  # type: ignore[arg-type]
                             password=b"x", upscript=Path("/nonexistent/up"))
    assert options.upscript == Path("/nonexistent/up")
    assert [p.message for p in load.validate(options.model_dump())[1]] == [
        "-i/--interface: 'nosuch0': no such network interface",
        "-u/--upscript: '/nonexistent/up': must be an existing executable file"]


# -- how the options arrived ----------------------------------------------------------------------

def test_a_password_on_the_command_line_is_how_the_options_arrived_not_an_option(
        tmp_path: Path) -> None:
    assert "password_on_command_line" not in load.Options.model_fields
    assert load.engine_config([*ARGV, "-p", "x"]).password_on_command_line
    passfile = tmp_path / "pw"
    passfile.touch(mode=0o600)
    passfile.write_text("x\n")
    assert not load.engine_config([*ARGV, "-o", str(passfile)]).password_on_command_line


def test_a_readable_password_is_a_warning_at_its_line_whatever_the_file_is_called(
        tmp_path: Path) -> None:
    path = tmp_path / "interfaces: old"  # ": " in the name must not split the place
    path.write_text("iface eth0 inet static\n    ucarp-password s\n")
    path.chmod(0o644)
    assert carpctl.password_warnings(path) == [
        f"{path}:2: iface eth0 inet static: warning: ucarp-password: {path} is readable by "
        "every user (mode 644), so is the password: chmod o-r it, or move the password to a "
        "root-only file named by ucarp-passfile"]
