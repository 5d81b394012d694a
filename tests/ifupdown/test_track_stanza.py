"""The ucarp-track-* stanza options: what each becomes, how a bad one is reported (by ifup and by
carpctl check, at its line), and that they reach the engine through the hook's IFACE.conf."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from ifnodes import Lab, stanza

from carpd.config.load import from_command_line
from carpd.debian import carpctl
from carpd.debian.ifupdown import hook, runtime
from carpd.debian.ifupdown.stanza import KNOWN, StanzaError, engine_options

BASE = {"ucarp-vid": "3", "ucarp-vip": "10.0.0.1", "ucarp-password": "secret",
        "ucarp-upscript": "/bin/true", "ucarp-downscript": "/bin/true"}


def _problems(extra: dict[str, str]) -> list[str]:
    with pytest.raises(StanzaError) as caught:
        engine_options({**BASE, **extra}, interface="lo")
    return [p.message for p in caught.value.problems]


# A stanza with every option it needs (lines 1-7 of the file); a test adds its track options.
STANZA = """\
iface eth0 inet static
    address 10.0.0.2/24
    ucarp-vid 3
    ucarp-vip 10.0.0.1
    ucarp-password secret
    ucarp-upscript /bin/true
    ucarp-downscript /bin/true
"""


def _interfaces(folder: Path, track: str) -> Path:
    """An interfaces file (mode 0600) of STANZA with the ``track`` lines (from line 8) added."""
    path = folder / "interfaces"
    path.write_text(STANZA + textwrap.indent(textwrap.dedent(track), "    "))
    path.chmod(0o600)
    return path


def _check(folder: Path, track: str) -> list[str]:
    problems, _count = carpctl.check(_interfaces(folder, track))
    return problems


def test_every_track_option_is_a_known_stanza_option() -> None:
    for option in ("ucarp-track-script", "ucarp-track-interval", "ucarp-track-timeout",
                   "ucarp-track-fall", "ucarp-track-rise", "ucarp-track-interface"):
        assert option in KNOWN


def test_every_track_option_reaches_the_engine() -> None:
    options = engine_options({
        **BASE, "ucarp-track-script": "/bin/true 'two words'", "ucarp-track-interval": "0.5",
        "ucarp-track-timeout": "0.25", "ucarp-track-fall": "3", "ucarp-track-rise": "4",
        "ucarp-track-interface": "eth1 eth2"}, interface="lo")
    assert options.track_script == (("/bin/true", "two words"),)
    assert (options.track_interval, options.track_timeout) == (0.5, 0.25)
    assert (options.track_fall, options.track_rise) == (3, 4)
    assert options.track_interface == ("eth1", "eth2")


def test_without_track_options_nothing_is_tracked() -> None:
    options = engine_options(BASE, interface="lo")
    assert (options.track_script, options.track_interface) == ((), ())
    assert (options.track_interval, options.track_timeout, options.track_fall,
            options.track_rise) == (1.0, None, 2, 2)


def test_a_track_script_given_twice_is_two_commands() -> None:
    # ifupdown joins the values of an option given twice with a newline
    options = engine_options({**BASE, "ucarp-track-script": "/bin/true a\n/bin/false 'b c'"},
                             interface="lo")
    assert options.track_script == (("/bin/true", "a"), ("/bin/false", "b c"))


def test_track_interfaces_given_twice_add_up() -> None:
    options = engine_options({**BASE, "ucarp-track-interface": "eth1 eth2\nbond0"},
                             interface="lo")
    assert options.track_interface == ("eth1", "eth2", "bond0")


@pytest.mark.parametrize("option", ["ucarp-track-interval", "ucarp-track-timeout",
                                    "ucarp-track-fall", "ucarp-track-rise"])
def test_a_single_valued_track_option_given_twice_is_refused(option: str) -> None:
    assert _problems({option: "2\n3"}) == [
        f"{option}: '2\\n3': given more than once in the stanza: give it once"]


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("ucarp-track-script", "check-nginx",
     "'check-nginx': the command must start with an absolute path to an executable file"),
    ("ucarp-track-script", "/bin/true\n/nonexistent/check 80",
     "'/nonexistent/check 80': /nonexistent/check must be an existing executable file"),
    ("ucarp-track-interval", "0", "'0': Input should be greater than 0"),
    ("ucarp-track-timeout", "soon", "'soon': Input should be a valid number, unable to parse "
                                    "string as a number"),
    ("ucarp-track-fall", "300", "'300': Input should be less than or equal to 255"),
    ("ucarp-track-rise", "0", "'0': Input should be greater than or equal to 1"),
    ("ucarp-track-interface", "eth1 eth0:ucarp",
     "'eth0:ucarp': not an interface name: allowed: 1 to 15 characters, without '/', ':' or "
     "whitespace"),
])
def test_a_bad_track_value_names_the_stanza_option(option: str, value: str,
                                                  expected: str) -> None:
    assert _problems({option: value}) == [f"{option}: {expected}"]


def _conf_round_trip(tmp_path: Path, options: runtime.Options) -> runtime.Options:
    path = tmp_path / "lo.conf"
    runtime.write_private(path, runtime.conf_text(options))
    return from_command_line(["--config", str(path)])


def test_the_engine_reads_back_the_track_options_the_hook_writes(tmp_path: Path) -> None:
    options = engine_options({
        **BASE, "ucarp-track-script": "/bin/true 'a b' c\n/bin/false",
        "ucarp-track-interval": "0.2", "ucarp-track-timeout": "3", "ucarp-track-fall": "5",
        "ucarp-track-rise": "6", "ucarp-track-interface": "eth1\neth2 eth3"}, interface="lo")
    conf = json.loads(runtime.conf_text(options))
    assert conf["track_script"] == [["/bin/true", "a b", "c"], ["/bin/false"]]
    assert conf["track_interface"] == ["eth1", "eth2", "eth3"]
    assert _conf_round_trip(tmp_path, options) == options


def test_the_conf_of_a_stanza_without_track_options_has_none(tmp_path: Path) -> None:
    options = engine_options(BASE, interface="lo")
    assert not [key for key in json.loads(runtime.conf_text(options))
                if key.startswith("track_") or key == "persist_dir"]
    assert _conf_round_trip(tmp_path, options) == options


def test_if_ucarp_track_variables_become_the_track_options() -> None:
    raw = hook.stanza_options({"IF_UCARP_TRACK_SCRIPT": "/bin/true", "IF_UCARP_TRACK_FALL": "3",
                               "IF_UCARP_TRACK_INTERFACE": "eth1"})
    assert raw == {"ucarp-track-script": "/bin/true", "ucarp-track-fall": "3",
                   "ucarp-track-interface": "eth1"}
    options = engine_options({**BASE, **raw}, interface="lo")
    assert (options.track_script, options.track_fall, options.track_interface) == (
        (("/bin/true",),), 3, ("eth1",))


def test_check_reports_a_bad_track_script_at_its_own_line(tmp_path: Path) -> None:
    problems = _check(tmp_path, """\
            ucarp-track-script /bin/true
            ucarp-track-script /nonexistent/check-nginx
            ucarp-track-script /bin/true 80
            ucarp-track-fall 0
        """)
    where = tmp_path / "interfaces"
    assert problems == [
        f"{where}:9: iface eth0 inet static: ucarp-track-script: '/nonexistent/check-nginx': "
        "/nonexistent/check-nginx must be an existing executable file",
        f"{where}:11: iface eth0 inet static: ucarp-track-fall: '0': Input should be greater "
        "than or equal to 1"]


def test_check_reports_a_bad_tracked_interface_at_its_line(tmp_path: Path) -> None:
    problems = _check(tmp_path, """\
            ucarp-track-interface eth1 a/b
            ucarp-track-interface eth2
            ucarp-track-interval 0.5
        """)
    assert problems == [
        f"{tmp_path / 'interfaces'}:8: iface eth0 inet static: ucarp-track-interface: 'a/b': "
        "not an interface name: allowed: 1 to 15 characters, without '/', ':' or whitespace"]


def test_check_accepts_good_track_options(tmp_path: Path) -> None:
    assert _check(tmp_path, """\
            ucarp-track-script /bin/true
            ucarp-track-script /bin/true 80
            ucarp-track-interface eth1 eth2
            ucarp-track-interval 0.5
            ucarp-track-timeout 2
            ucarp-track-fall 3
            ucarp-track-rise 3
        """) == []


IFUPDOWN2_STATUS = """\
Package: ifupdown2
Status: install ok installed
Architecture: all
Version: 3.0.0-1.2
"""

REPEATED = """\
        ucarp-track-script /bin/true
        ucarp-track-interface eth1
        ucarp-track-script /bin/true 80
        ucarp-track-interface eth2
        ucarp-track-script /bin/true 443
    """


def test_check_under_ifupdown2_refuses_what_it_would_drop_of_repeated_track_options(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # ifupdown2 hands a hook the first value of an option given several times, and only that
    status = tmp_path / "status"
    status.write_text(IFUPDOWN2_STATUS)
    path = _interfaces(tmp_path, REPEATED)
    assert carpctl.main(["--dpkg-status", str(status), "check", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}:10: iface eth0 inet static: ucarp-track-script: given 3 times, but ifupdown2 "
        "passes only the first to carpd: give one (a script of your own may run several "
        "checks)",
        f"{path}:11: iface eth0 inet static: ucarp-track-interface: given 2 times, but "
        "ifupdown2 passes only the first to carpd: name them all on one line"]


def test_check_under_ifupdown_accepts_repeated_track_options(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _interfaces(tmp_path, REPEATED)
    assert carpctl.main(["--dpkg-status", "/nonexistent", "check", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: OK (1 ucarp stanza(s))\n"


@pytest.mark.netns
def test_real_ifup_hands_repeated_track_scripts_to_the_engine_as_separate_commands(
        lab: Lab) -> None:
    node = lab.node()
    node.write_interfaces(stanza(1, extra="""\
        ucarp-track-script /bin/true first 'two words'
        ucarp-track-script /bin/true second
        ucarp-track-interface eth0 lo
        ucarp-track-interface eth9
        ucarp-track-fall 3
        """))
    result = node.ifup("eth0")
    assert result.returncode == 0, result.stderr + node.log()
    conf = json.loads((node.run_dir / "carpd" / "eth0.conf").read_text())
    assert conf["track_script"] == [["/bin/true", "first", "two words"],
                                    ["/bin/true", "second"]]
    assert conf["track_interface"] == ["eth0", "lo", "eth9"]
    assert conf["track_fall"] == 3


@pytest.mark.netns
def test_real_ifup_of_a_missing_track_script_fails_before_anything_starts(lab: Lab) -> None:
    node = lab.node()
    node.write_interfaces(stanza(1, extra="ucarp-track-script /nonexistent/check-nginx\n"))
    result = node.ifup("eth0")
    assert result.returncode != 0
    assert ("ucarp-track-script: '/nonexistent/check-nginx': /nonexistent/check-nginx must be "
            "an existing executable file") in result.stderr
    assert node.engines() == []
    assert not (node.run_dir / "carpd" / "eth0.conf").exists()
