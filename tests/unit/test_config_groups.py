"""The --config file of an engine with several VIP groups (issue 9): flat (one group, as
before) or ``{"interface": ..., "groups": [...]}``; every error names the group and the key."""

from __future__ import annotations

import json
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from carpd.config import load
from carpd.config.load import ConfigError, engine_config, from_command_line
from carpd.engine import watchdog


def write(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "carpd.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return str(path)


def two_groups(**top: Any) -> dict[str, Any]:
    return {"interface": "lo", "state_dir": "/tmp/carpd-test", **top, "groups": [
        {"vhid": 1, "addr": "10.0.0.1", "srcip": "127.0.0.1", "password": "one"},
        {"vhid": 2, "addr": "10.0.0.2", "srcip": "127.0.0.1", "password": "two",
         "advskew": 100, "script_interface": "lo:2"}]}


def test_a_groups_file_gives_each_group_its_own_options_with_the_interface_keys(
        tmp_path: Path) -> None:
    engine = engine_config(["--config", write(tmp_path, two_groups(mcast="224.0.0.19"))])
    first, second = engine.groups
    assert engine.vhids == (1, 2) and engine.interface == "lo"
    assert (first.addr, second.addr) == (IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"))
    assert (first.password, second.password) == (b"one", b"two")
    assert (first.advskew, second.advskew) == (0, 100)
    assert first.mcast == second.mcast == IPv4Address("224.0.0.19")
    assert (first.scripts_interface, second.scripts_interface) == ("lo", "lo:2")
    assert first.vip_on == "lo"


def test_a_flat_file_is_one_group_as_before_and_the_command_line_overrides_it(
        tmp_path: Path) -> None:
    path = write(tmp_path, {"interface": "lo", "vhid": 7, "addr": "10.0.0.1",
                            "srcip": "127.0.0.1", "password": "x"})
    engine = engine_config(["--config", path, "-k", "9"])
    assert engine.vhids == (7,) and engine.first.advskew == 9
    assert from_command_line(["--config", path]).vhid == 7


def test_from_command_line_checks_every_group_and_returns_the_first(tmp_path: Path) -> None:
    assert from_command_line(["--config", write(tmp_path, two_groups())]).vhid == 1
    data = two_groups()
    data["groups"][1]["advbase"] = 300
    with pytest.raises(ConfigError, match=r"groups\[1\] \(vhid 2\): advbase: 300"):
        from_command_line(["--config", write(tmp_path, data)])


def test_the_same_vhid_twice_is_an_error_naming_both_groups(tmp_path: Path) -> None:
    data = two_groups()
    data["groups"][1]["vhid"] = 1
    with pytest.raises(ConfigError, match=r"groups\[0\] and groups\[1\] both have vhid 1"):
        engine_config(["--config", write(tmp_path, data)])


@pytest.mark.parametrize("key, value", [("mcast", "224.0.0.19"), ("state_dir", "/tmp/x"),
                                        ("interface", "lo"), ("nomcast", True)])
def test_an_interface_key_inside_a_group_is_an_error_naming_it(
        tmp_path: Path, key: str, value: Any) -> None:
    data = two_groups()
    data["groups"][0][key] = value
    with pytest.raises(ConfigError, match=rf"groups\[0\]: '{key}' is an interface key"):
        engine_config(["--config", write(tmp_path, data)])


def test_a_group_key_beside_the_groups_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'advskew' is a group key"):
        engine_config(["--config", write(tmp_path, two_groups(advskew=5))])


def test_a_group_option_on_the_command_line_of_a_groups_file_is_refused(
        tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"-k/--advskew: set it per group"):
        engine_config(["--config", write(tmp_path, two_groups()), "-k", "5"])
    # an interface-level option still overrides the file
    engine = engine_config(["--config", write(tmp_path, two_groups()), "-m", "224.0.0.20"])
    assert {g.mcast for g in engine.groups} == {IPv4Address("224.0.0.20")}


def test_an_empty_or_malformed_groups_list_is_an_error(tmp_path: Path) -> None:
    for groups in ([], {"vhid": 1}, [3]):
        with pytest.raises(ConfigError, match="groups"):
            engine_config(["--config", write(tmp_path, {"interface": "lo", "groups": groups})])


def test_a_groups_password_never_shows_in_an_error(tmp_path: Path) -> None:
    data = two_groups()
    data["groups"][1]["password"] = "x" * 100  # too long
    with pytest.raises(ConfigError) as raised:
        engine_config(["--config", write(tmp_path, data)])
    assert "xxxx" not in str(raised.value) and "vhid 2" in str(raised.value)


def test_a_group_without_a_password_is_an_error_naming_it(tmp_path: Path) -> None:
    data = two_groups()
    del data["groups"][1]["password"]
    with pytest.raises(ConfigError, match=r"groups\[1\] \(vhid 2\): password"):
        engine_config(["--config", write(tmp_path, data)])


def test_script_interface_may_name_an_alias_but_not_a_path() -> None:
    base = {"interface": "lo", "addr": "10.0.0.1", "password": b"x"}
    assert load.build({**base, "script_interface": "eth0:1"}).scripts_interface == "eth0:1"
    with pytest.raises(ConfigError, match="script_interface: 'eth0/1'"):
        load.build({**base, "script_interface": "eth0/1"})
    with pytest.raises(ConfigError, match="--vip-interface: 'nosuchif9'"):
        load.build({**base, "vip_interface": "nosuchif9"})


# -- the watchdog's protocol: what it releases when the engine dies ---------------------------

def test_the_watchdog_releases_what_is_held_when_the_pipe_closes_without_clean() -> None:
    said = b"hold eth0 10.0.0.1\nhold eth0 10.0.0.2\nhold eth1 10.0.0.3\ndrop eth0 10.0.0.2\n"
    assert watchdog.held_at_end(said) == [("eth0", IPv4Address("10.0.0.1")),
                                          ("eth1", IPv4Address("10.0.0.3"))]
    assert watchdog.held_at_end(said + b"clean") == []
    assert watchdog.held_at_end(b"hold eth0 not-an-address\n") == []
