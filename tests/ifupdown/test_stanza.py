"""A stanza's ucarp-* options -> the engine's options: Debian's meanings, every problem named."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from carpd.core import wire
from carpd.debian.ifupdown import hook, stanza
from carpd.debian.ifupdown.interfaces import parse
from carpd.debian.ifupdown.stanza import StanzaError, engine_options

SCRIPTS = {"ucarp-upscript": "/bin/true", "ucarp-downscript": "/bin/true"}
BASE = {"ucarp-vid": "3", "ucarp-vip": "10.0.0.1", "ucarp-password": "secret", **SCRIPTS}
NEEDED = ("ucarp-vid, ucarp-vip and ucarp-password (or ucarp-passfile) are all needed once any "
          "ucarp-* option is given")


def _options(extra: dict[str, str] | None = None, **where: str) -> stanza.Options:
    return engine_options({**BASE, **(extra or {})}, interface="lo", **where)


def _problems(raw: dict[str, str], **where: str) -> list[str]:
    with pytest.raises(StanzaError) as caught:
        engine_options(raw, interface="lo", **where)
    return [p.message for p in caught.value.problems]


@pytest.mark.parametrize("text", ["yes", "YES", "On", "true", "TRUE", "1", " yes "])
def test_true_booleans_in_any_case(text: str) -> None:
    assert _options({"ucarp-nomcast": text}).nomcast is True


@pytest.mark.parametrize("text", ["no", "No", "OFF", "false", "False", "0"])
def test_false_booleans_in_any_case(text: str) -> None:
    assert _options({"ucarp-master": text}).preempt is False


@pytest.mark.parametrize("text", ["maybe", "y", "n", "t", "enabled", "2", "no way", "nope"])
def test_anything_else_is_not_a_boolean(text: str) -> None:
    assert _problems({**BASE, "ucarp-master": text}) == [
        f"ucarp-master: {text!r}: not a boolean: allowed: yes/no, on/off, true/false, 1/0 "
        "(any case)"]


def test_master_means_preempt_as_in_debian() -> None:
    options = _options({"ucarp-master": "yes"})
    assert options.preempt is True


def test_debian_defaults() -> None:
    options = _options()
    assert (options.vhid, options.addr, options.password) == (3, IPv4Address("10.0.0.1"),
                                                              b"secret")
    assert (options.advbase, options.advskew, options.deadratio) == (1, 0, 3)
    assert (options.preempt, options.nomcast, options.neutral, options.debug) == (
        False, False, False, False)
    assert stanza.UcarpStanza.model_fields["upscript"].default == "/usr/share/carpd/vip-up"
    assert stanza.UcarpStanza.model_fields["downscript"].default == "/usr/share/carpd/vip-down"


def test_every_option_reaches_the_engine(tmp_path: Path) -> None:
    passfile = tmp_path / "secret"
    passfile.touch(mode=0o600)
    passfile.write_text("from-a-file\nsecond line ignored\n")
    options = engine_options({
        "ucarp-vid": "200", "ucarp-vip": "10.0.0.1", "ucarp-passfile": str(passfile),
        "ucarp-advskew": "50", "ucarp-advbase": "2", "ucarp-deadratio": "4",
        "ucarp-master": "on", "ucarp-nomcast": "1", "ucarp-xparam": "two words",
        "ucarp-facility": "LOCAL3", "ucarp-neutral": "true", "ucarp-ignoreifstate": "yes",
        "ucarp-mcast": "239.1.2.3", "ucarp-debug": "TRUE", "ucarp-srcip": "10.0.0.9",
        "ucarp-replay-check": "no", **SCRIPTS}, interface="lo")
    assert options.model_dump(include={
        "vhid", "password", "advskew", "advbase", "deadratio", "preempt", "nomcast", "xparam",
        "facility", "neutral", "ignoreifstate", "mcast", "debug", "srcip",
        "replay_check"}) == {
        "vhid": 200, "password": b"from-a-file", "advskew": 50, "advbase": 2, "deadratio": 4,
        "preempt": True, "nomcast": True, "xparam": "two words", "facility": "local3",
        "neutral": True, "ignoreifstate": True, "mcast": IPv4Address("239.1.2.3"),
        "debug": True, "srcip": IPv4Address("10.0.0.9"), "replay_check": False}


@pytest.mark.parametrize(("text", "expected"), [(None, True), ("yes", True), ("No", False),
                                                ("off", False)])
def test_replay_check_is_on_unless_the_stanza_turns_it_off(text: str | None,
                                                           expected: bool) -> None:
    extra = {"ucarp-replay-check": text} if text is not None else {}
    assert _options(extra).replay_check is expected


def test_replay_check_takes_only_a_boolean() -> None:
    assert _problems({**BASE, "ucarp-replay-check": "sometimes"}) == [
        "ucarp-replay-check: 'sometimes': not a boolean: allowed: yes/no, on/off, true/false, "
        "1/0 (any case)"]


@pytest.mark.parametrize(("method", "address", "srcip", "expected"), [
    ("static", "10.0.0.2", None, "10.0.0.2"),
    ("static", "10.0.0.2/24 10.0.0.3/24", None, "10.0.0.2"),  # ifupdown2's IF_ADDRESS
    ("static", "10.0.0.2", "10.0.0.7", "10.0.0.7"),
    ("dhcp", None, None, None),
    ("manual", None, "10.0.0.7", "10.0.0.7"),
])
def test_source_address(method: str, address: str | None, srcip: str | None,
                        expected: str | None) -> None:
    raw = {**BASE, **({"ucarp-srcip": srcip} if srcip else {})}
    options = engine_options(raw, interface="lo", method=method, address=address)
    assert options.srcip == (IPv4Address(expected) if expected else None)


def test_every_problem_is_reported_at_once_and_the_password_never() -> None:
    raw = {"ucarp-vid": "0", "ucarp-vip": "10.0.0.300", "ucarp-password": "x" * 40,
           "ucarp-advskew": "256", "ucarp-nomcast": "sometimes", "ucarp-frob": "1",
           "ucarp-mcast": "10.0.0.5", **SCRIPTS}
    problems = _problems(raw)
    assert sorted(problems) == sorted([
        "ucarp-nomcast: 'sometimes': not a boolean: allowed: yes/no, on/off, true/false, 1/0 "
        "(any case)",
        "ucarp-frob: unknown option: known are " + ", ".join(stanza.KNOWN),
        "ucarp-vid: '0': Input should be greater than or equal to 1",
        f"ucarp-password: <hidden>: Data should have at most {wire.MAX_PASSWORD_BYTES} bytes",
        "ucarp-vip: '10.0.0.300': Input is not a valid IPv4 address",
        "ucarp-advskew: '256': Input should be less than or equal to 255",
        "ucarp-mcast: '10.0.0.5': must be an IPv4 multicast address (224.0.0.0/4)",
    ])
    assert not any("x" * 20 in p for p in problems)


@pytest.mark.parametrize(("raw", "expected"), [
    ({"ucarp-vip": "10.0.0.1", "ucarp-password": "s", **SCRIPTS},
     f"ucarp-vid: missing: {NEEDED}"),
    ({"ucarp-vid": "1", "ucarp-password": "s", **SCRIPTS},
     f"ucarp-vip: missing: {NEEDED}"),
    ({"ucarp-vid": "1", "ucarp-vip": "10.0.0.1", **SCRIPTS},
     f"ucarp-password (or ucarp-passfile): missing: {NEEDED}"),
    ({**BASE, "ucarp-passfile": "/etc/secret"},
     "ucarp-password and ucarp-passfile: give one of them, not both"),
    ({**BASE, "ucarp-vid": "1\n2"}, "ucarp-vid: '1\\n2': given more than once in the stanza: "
                                    "give it once"),
    ({**BASE, "ucarp-upscript": "/nonexistent"},
     "ucarp-upscript: '/nonexistent': must be an existing executable file"),
    ({**BASE, "ucarp-downscript": "bin/down"}, "ucarp-downscript: 'bin/down': must be an "
                                               "absolute path"),
])
def test_missing_conflicting_and_repeated_options(raw: dict[str, str], expected: str) -> None:
    assert _problems(raw) == [expected]


@pytest.mark.parametrize(("raw", "expected"), [
    ({"ucarp-advskew": "10"}, "ucarp-vid, ucarp-vip and ucarp-password (or ucarp-passfile): "
                              "missing: all three are needed once any ucarp-* option is given"),
    ({"ucarp-master": "yes", "ucarp-vid": "3"},
     f"ucarp-vip and ucarp-password (or ucarp-passfile): missing: {NEEDED}"),
    ({"ucarp-passfile": "/nonexistent/secret"},
     f"ucarp-vid and ucarp-vip: missing: {NEEDED}"),
])
def test_a_stanza_without_vid_vip_or_password_names_what_is_missing(
        raw: dict[str, str], expected: str) -> None:
    problems = _problems({**raw, **SCRIPTS})
    assert problems[0] == expected
    assert len(problems) == 1 + ("ucarp-passfile" in raw)  # and the unreadable passfile


def test_what_is_missing_does_not_hide_the_other_problems() -> None:
    assert _problems({"ucarp-advskew": "300", "ucarp-master": "perhaps", **SCRIPTS}) == [
        "ucarp-vid, ucarp-vip and ucarp-password (or ucarp-passfile): missing: all three are "
        "needed once any ucarp-* option is given",
        "ucarp-master: 'perhaps': not a boolean: allowed: yes/no, on/off, true/false, 1/0 "
        "(any case)",
        "ucarp-advskew: '300': Input should be less than or equal to 255"]


def test_ifup_of_a_stanza_without_vid_vip_or_password_fails_with_the_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # what if-up.d/carpd runs; Debian's hook would start nothing and say nothing
    env = {"IFACE": "lo", "LOGICAL": "lo", "ADDRFAM": "inet", "METHOD": "static",
           "MODE": "start", "IF_ADDRESS": "127.0.0.1", "IF_UCARP_ADVSKEW": "10",
           "IF_UCARP_UPSCRIPT": "/bin/true", "IF_UCARP_DOWNSCRIPT": "/bin/true"}
    assert hook.run(env, run_dir=tmp_path) == 1
    assert capsys.readouterr().err == (
        "carpd: iface lo inet static: ucarp-vid, ucarp-vip and ucarp-password (or "
        "ucarp-passfile): missing: all three are needed once any ucarp-* option is given\n")
    assert list(tmp_path.iterdir()) == []  # nothing started


def test_an_unreadable_passfile_is_named() -> None:
    raw = {k: v for k, v in BASE.items() if k != "ucarp-password"}
    assert _problems({**raw, "ucarp-passfile": "/nonexistent/secret"}) == [
        "ucarp-passfile: '/nonexistent/secret': cannot be read: No such file or directory"]


def test_an_inet6_stanza_is_refused_until_ipv6_is_supported() -> None:
    assert _problems(BASE, family="inet6") == [
        "ucarp-* options on an inet6 stanza: carpd runs on IPv4 only (IPv6 is not supported "
        "yet): put them in the inet stanza of lo"]


def test_a_missing_interface_is_named_unless_it_may_appear_later() -> None:
    with pytest.raises(StanzaError) as caught:
        engine_options(BASE, interface="nosuch0")
    assert [p.message for p in caught.value.problems] == [
        "interface: 'nosuch0': no such network interface"]
    assert engine_options(BASE, interface="nosuch0", check_interface=False).interface == "nosuch0"


def test_default_actions_need_the_alias_stanza(tmp_path: Path) -> None:
    without = tmp_path / "without"
    without.write_text("iface lo inet static\n    address 10.0.0.2\n")
    with_alias = tmp_path / "with"
    with_alias.write_text("iface lo:ucarp inet static\n    address 10.0.0.1\n")
    options = _options().model_copy(update={"upscript": stanza.DEFAULT_UPSCRIPT})
    problem = stanza.missing_alias(options, parse(without))
    assert problem is not None and problem.message.startswith(
        "ucarp-upscript: the default action brings up and down the stanza "
        "'iface lo:ucarp inet static', which is missing")
    assert stanza.missing_alias(options, parse(with_alias)) is None
    assert stanza.missing_alias(_options(), parse(without)) is None  # own scripts


def test_drain_defaults_to_two_seconds_and_ucarp_drain_sets_it() -> None:
    assert _options().drain == 2.0
    options = _options({"ucarp-drain": "0.5", "ucarp-reannounce": "60"})
    assert (options.drain, options.reannounce) == (0.5, 60.0)


def test_a_bad_drain_names_the_option_and_the_value() -> None:
    assert _problems({**BASE, "ucarp-drain": "-1"}) == [
        "ucarp-drain: '-1': Input should be greater than or equal to 0"]
