"""Several VIP groups on one interface: Debian's alias form, carpd's repeated stanzas, clashes
named with both stanzas' places, the conf that lists every group, releasing each by its label.

Pure: parsing, checks and files only (the namespaces tests run them with ifup/ifdown)."""

from __future__ import annotations

import json
import textwrap
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from carpd.debian import carpctl
from carpd.debian.ifupdown import groups, hook, interfaces, regen, runtime
from carpd.debian.ifupdown import stanza as ucarp
from carpd.debian.ifupdown.runtime import Group, Owner, Paths

OWN_SCRIPTS = "    ucarp-upscript /bin/true\n    ucarp-downscript /bin/true\n"


def _group_raw(vid: int, vip: str, **extra: str) -> dict[str, str]:
    raw = {"ucarp-vid": str(vid), "ucarp-vip": vip, "ucarp-password": f"secret{vid}",
           "ucarp-upscript": "/bin/true", "ucarp-downscript": "/bin/true"}
    return {**raw, **{f"ucarp-{k.replace('_', '-')}": v for k, v in extra.items()}}


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "interfaces"
    path.write_text(textwrap.dedent(text))
    path.chmod(0o600)
    return path


def _check(path: Path) -> tuple[list[str], int]:
    return carpctl.check_parsed(interfaces.parse(path))


def _alias_stanza(name: str, vid: int, address: str, extra: str = "") -> str:
    return (f"iface {name} inet static\n    address {address}/24\n    ucarp-vid {vid}\n"
            f"    ucarp-vip 10.0.0.{100 + vid}\n    ucarp-password secret{vid}\n"
            + OWN_SCRIPTS + extra + "\n")


def _problems(tmp_path: Path, *stanzas: str) -> tuple[Path, list[str]]:
    """The interfaces file of ``stanzas`` and what `carpctl check` says of it."""
    path = _file(tmp_path, "".join(stanzas))
    return path, _check(path)[0]


def _vhid_again(where: str, iface: str, vid: int, first: str, first_iface: str) -> str:
    return (f"{where}: iface {iface}: ucarp-vid: '{vid}': vhid {vid} on eth0 again, first at "
            f"{first} (iface {first_iface}): each group of an interface needs a vhid of its own")


# -- Debian's alias form ---------------------------------------------------------------------

def test_alias_stanza_runs_its_group_on_the_interface_with_its_own_address_as_source() -> None:
    group = ucarp.group(_group_raw(1, "10.0.0.101"), name="lo:1", address="10.0.0.12/24")
    assert group.options.interface == "lo"
    assert group.options.srcip == IPv4Address("10.0.0.12")
    assert group.script_interface == "lo:1"
    assert group.stanza == "lo:1"
    assert runtime.label(group.script_interface) == "lo:1:ucarp"


def test_alias_stanza_with_the_default_actions_needs_its_own_ucarp_stanza(
        tmp_path: Path) -> None:
    path = _file(tmp_path, """\
        iface eth0:1 inet static
            address 10.0.0.12/24
            ucarp-vid 1
            ucarp-vip 10.0.0.101
            ucarp-password secret1
        iface eth0:ucarp inet static
            address 10.0.0.1/32
        """)
    parsed = interfaces.parse(path)
    group = ucarp.group({"ucarp-vid": "1", "ucarp-vip": "10.0.0.101",
                         "ucarp-password": "secret1", **dict.fromkeys(
                             ("ucarp-upscript", "ucarp-downscript"), "/bin/true")},
                        name="eth0:1", check_interface=False)
    options = group.options.model_copy(update={"upscript": ucarp.DEFAULT_UPSCRIPT})
    problem = ucarp.missing_alias(options, parsed, group.script_interface)
    assert problem is not None
    assert "'iface eth0:1:ucarp inet static', which is missing" in problem.message


def test_a_label_longer_than_the_kernel_takes_is_refused_naming_it() -> None:
    raw = {"ucarp-vid": "1", "ucarp-vip": "10.0.0.101", "ucarp-password": "s"}
    problems = ucarp.alias_problems("enp0s31f6:1", raw)
    assert [p.option for p in problems] == ["ucarp-upscript"]
    assert ("the default action brings up 'enp0s31f6:1:ucarp', a label of 17 bytes, but the "
            "kernel allows at most 15") in problems[0].message
    # own scripts bring up nothing labelled: no limit
    assert ucarp.alias_problems("enp0s31f6:1", {**raw, "ucarp-upscript": "/bin/true",
                                                "ucarp-downscript": "/bin/true"}) == []
    assert ucarp.alias_problems("eth0:1234", raw) == []  # eth0:1234:ucarp: 15 bytes


def test_a_too_long_ucarp_alias_says_how_long_a_name_fits() -> None:
    raw = {"ucarp-vid": "1", "ucarp-vip": "10.0.0.101", "ucarp-password": "s",
           "ucarp-alias": "eth0:website"}
    [problem] = ucarp.alias_problems("eth0", raw)
    assert problem.message.startswith("ucarp-alias: 'eth0:website': the default action brings "
                                      "up 'eth0:website:ucarp', a label of 18 bytes")
    assert "NAME at most 4 byte(s)" in problem.message


@pytest.mark.parametrize("alias", ["eth1:web", "eth0:web:ucarp", "eth0:a b", "eth0:a/b",
                                   "eth0x"])
def test_ucarp_alias_must_name_the_interface_or_an_alias_of_it(alias: str) -> None:
    [problem] = ucarp.alias_problems("eth0", {"ucarp-alias": alias})
    assert problem.option == "ucarp-alias"
    assert problem.message.startswith(f"ucarp-alias: {alias!r}: must be eth0 or an alias of it")


def test_ucarp_options_on_the_stanza_a_default_action_brings_up_are_refused() -> None:
    with pytest.raises(ucarp.StanzaError) as caught:
        ucarp.group(_group_raw(1, "10.0.0.101"), name="lo:1:ucarp")
    assert any("ucarp-* options on lo:1:ucarp, the stanza a default action brings up"
               in p.message for p in caught.value.problems)


# -- carpctl check: both forms, and every clash with both places ------------------------------

def test_check_accepts_debians_alias_form_with_a_group_per_alias(tmp_path: Path) -> None:
    path = _file(tmp_path, _alias_stanza("eth0:1", 1, "10.0.0.12")
                 + _alias_stanza("eth0:2", 2, "10.0.0.22"))
    assert _check(path) == ([], 2)


def test_check_accepts_repeated_stanzas_of_one_interface_with_their_own_alias(
        tmp_path: Path) -> None:
    path = _file(tmp_path, """\
        iface eth0 inet static
            address 10.0.0.2/24
            ucarp-vid 1
            ucarp-vip 10.0.0.101
            ucarp-password secret1
            ucarp-alias eth0:web
        iface eth0 inet manual
            ucarp-vid 2
            ucarp-vip 10.0.0.102
            ucarp-password secret2
            ucarp-alias eth0:db
        """.replace("ucarp-alias", OWN_SCRIPTS.strip() + "\n    ucarp-alias"))
    assert _check(path) == ([], 2)


def test_the_same_vhid_twice_on_an_interface_names_option_value_and_both_stanzas(
        tmp_path: Path) -> None:
    path, problems = _problems(tmp_path, _alias_stanza("eth0:1", 7, "10.0.0.12"),
                               _alias_stanza("eth0:2", 7, "10.0.0.22"))
    assert problems == [_vhid_again(f"{path}:9", "eth0:2 inet static", 7, f"{path}:1",
                                    "eth0:1 inet static")]


def test_the_same_vhid_in_two_stanzas_of_the_interface_itself_is_named_across_files(
        tmp_path: Path) -> None:
    extra = tmp_path / "more"
    extra.write_text(_alias_stanza("eth0", 3, "10.0.0.3").replace("inet static", "inet manual")
                     .replace("    address 10.0.0.3/24\n", ""))
    path, problems = _problems(tmp_path, _alias_stanza("eth0", 3, "10.0.0.2"),
                               f"source {extra}\n")
    assert problems == [_vhid_again(f"{extra}:1", "eth0 inet manual", 3, f"{path}:1",
                                    "eth0 inet static")]


def test_the_same_vhid_on_two_interfaces_is_fine(tmp_path: Path) -> None:
    path = _file(tmp_path, _alias_stanza("eth0", 3, "10.0.0.2")
                 + _alias_stanza("eth1", 3, "10.0.1.2"))
    assert _check(path) == ([], 2)  # and both groups counted


def test_two_groups_bringing_up_the_same_alias_stanza_are_refused(tmp_path: Path) -> None:
    first = "iface eth0 inet static\n    address 10.0.0.2/24\n    ucarp-vid 1\n" \
            "    ucarp-vip 10.0.0.101\n    ucarp-password s1\n"
    second = "iface eth0 inet manual\n    ucarp-vid 2\n    ucarp-vip 10.0.0.102\n" \
             "    ucarp-password s2\n"
    parsed = interfaces.parse(_file(tmp_path, first + second))
    a, b = parsed.ifaces
    scripts = {"ucarp-upscript": "/bin/true", "ucarp-downscript": "/bin/true"}
    items = [groups.Defined(iface, Group(ucarp.engine_options(
        {**groups.stanza_options(iface), **scripts}, interface="eth0", check_interface=False,
        method=iface.method, address=groups.address_of(iface)), "eth0", "eth0",
        str(iface.where))) for iface in (a, b)]
    [problem] = groups.clash(items[1], items[0])
    assert problem.startswith(f"{b.where}: iface eth0 inet manual: ucarp-alias: 'eth0': the "
                              "default actions of vhid 2 bring up 'eth0:ucarp', as those of "
                              f"vhid 1 at {a.where} (iface eth0 inet static) do")


def test_groups_of_one_interface_with_different_interface_wide_options_are_refused(
        tmp_path: Path) -> None:
    path, problems = _problems(tmp_path, _alias_stanza("eth0:1", 1, "10.0.0.12"),
                               _alias_stanza("eth0:2", 2, "10.0.0.22", "    ucarp-nomcast yes\n"))
    assert problems == [
        f"{path}:9: iface eth0:2 inet static: ucarp-nomcast: 'yes': eth0 runs one engine for "
        f"all its groups, and vhid 1 at {path}:1 (iface eth0:1 inet static) has 'no': give "
        "every group of the interface the same value"]


def test_ifup_checks_only_the_clashes_of_the_stanza_it_brings_up(tmp_path: Path) -> None:
    path = _file(tmp_path, _alias_stanza("eth0:1", 1, "10.0.0.12")
                 + _alias_stanza("eth0:2", 5, "10.0.0.22")
                 + _alias_stanza("eth0:3", 5, "10.0.0.32"))
    parsed = interfaces.parse(path)
    assert groups.conflicts_of(parsed, "eth0:1", 1) == []
    [problem] = groups.conflicts_of(parsed, "eth0:2", 5)
    assert problem.startswith(f"{path}:17: iface eth0:3 inet static: ucarp-vid: '5': vhid 5 "
                              f"on eth0 again, first at {path}:9 (iface eth0:2 inet static)")
    assert groups.where_of(parsed, "eth0:3", 5) == f"{path}:17"


# -- the conf of an engine running several groups ----------------------------------------------

def _group(vid: int, name: str, **extra: str) -> Group:
    return ucarp.group(_group_raw(vid, f"10.255.0.{vid}", **extra), name=name,
                       address=f"127.0.0.{vid}")


def test_one_group_of_the_interface_itself_keeps_the_flat_conf() -> None:
    data = runtime.conf_with(None, _group(3, "lo"))
    assert "groups" not in data
    assert (data["interface"], data["vhid"], data["addr"]) == ("lo", 3, "10.255.0.3")


def test_each_group_brought_up_is_added_to_the_conf_and_the_last_removed_leaves_none() -> None:
    one = runtime.conf_with(None, _group(1, "lo:1"))
    assert one["interface"] == "lo"
    assert [(g["vhid"], g["script_interface"], g["srcip"]) for g in one["groups"]] == [
        (1, "lo:1", "127.0.0.1")]
    both = runtime.conf_with(one, _group(2, "lo:2", advskew="100"))
    assert [(g["vhid"], g["script_interface"]) for g in both["groups"]] == [
        (1, "lo:1"), (2, "lo:2")]
    assert both["groups"][1]["advskew"] == 100
    assert all("interface" not in g for g in both["groups"])
    again = runtime.conf_with(both, _group(1, "lo:1", advskew="50"))  # options changed
    assert [g.get("advskew") for g in again["groups"]] == [50, 100]
    left = runtime.conf_without(both, frozenset({1}))
    assert left is not None and [g["vhid"] for g in left["groups"]] == [2]
    assert runtime.conf_without(left, frozenset({2})) is None


def test_interface_wide_settings_stay_at_the_top_of_the_conf() -> None:
    data = runtime.conf_with(None, _group(1, "lo:1", facility="local3"))
    data = runtime.conf_with(data, _group(2, "lo:2", facility="local3"))
    assert data["facility"] == "local3"
    assert all("facility" not in g for g in data["groups"])
    assert runtime.interface_settings(data) == {"interface": "lo", "facility": "local3"}


def test_a_running_vhid_of_another_stanza_is_refused_naming_where_it_came_from() -> None:
    data = runtime.conf_with(None, _group(1, "lo:1"))
    owners = {1: Owner("lo:1", "/etc/network/interfaces:12")}
    stanza = hook.Stanza("lo:2", "lo:2", "inet", "static", "127.0.0.2",
                         _group_raw(1, "10.255.0.9"))
    problem = hook.refusal(stanza, _group(1, "lo:2"), data, owners)
    assert problem is not None and problem.startswith(
        "iface lo:2 inet static: ucarp-vid: '1': vhid 1 already runs on lo, brought up by "
        "'iface lo:1' at /etc/network/interfaces:12")
    assert hook.refusal(stanza, _group(1, "lo:1"), data, {1: Owner("lo:1")}) is None
    assert hook.refusal(stanza, _group(2, "lo:2"), data, owners) is None


def test_a_group_whose_interface_settings_differ_from_the_running_ones_is_refused() -> None:
    data = runtime.conf_with(None, _group(1, "lo:1"))
    stanza = hook.Stanza("lo:2", "lo:2", "inet", "static", None, {})
    problem = hook.refusal(stanza, _group(2, "lo:2", nomcast="yes"), data, {})
    assert problem is not None and problem.startswith(
        "iface lo:2 inet static: nomcast: None for the groups running on lo (vhid 1), True here")


def test_owners_round_trip(tmp_path: Path) -> None:
    paths = Paths("lo", tmp_path)
    assert runtime.read_owners(paths) is None
    owners = {2: Owner("lo:2", "f:9"), 1: Owner("lo", "f:1")}
    runtime.write_private(paths.owners, runtime.owners_text(owners), mode=0o644)
    assert runtime.read_owners(paths) == owners


# -- releasing each group by its own label and down action --------------------------------------

def test_release_runs_each_groups_down_action_with_its_script_interface(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = tmp_path / "down"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\n")
    script.chmod(0o755)
    data = runtime.conf_with(None, _group(1, "lo:1", downscript=str(script)))
    data = runtime.conf_with(data, _group(2, "lo", downscript=str(script)))
    paths = Paths("lo", tmp_path)
    runtime.write_private(paths.conf, runtime.dumps(data))
    runtime.release(paths, crashed=True)
    assert sorted(marker.read_text().splitlines()) == ["lo 10.255.0.2", "lo:1 10.255.0.1"]
    marker.unlink()
    runtime.release(paths, crashed=True, vhids=frozenset({1}))
    assert marker.read_text() == "lo:1 10.255.0.1\n"
    engines = runtime.groups_from_conf(paths.conf)
    assert [(e.vhid, e.label) for e in engines] == [(1, "lo:1:ucarp"), (2, "lo:ucarp")]


# -- regen: the same conf from the stanzas ---------------------------------------------------

def test_regen_writes_every_running_group_from_its_stanza_as_the_hook_does(
        tmp_path: Path) -> None:
    path = _file(tmp_path, """\
        iface lo:1 inet static
            address 127.0.0.1/8
            ucarp-vid 1
            ucarp-vip 10.255.0.1
            ucarp-password secret1
        OWN
        iface lo inet manual
            ucarp-vid 2
            ucarp-vip 10.255.0.2
            ucarp-password secret2
        OWN
        iface lo inet manual
            ucarp-vid 3
            ucarp-vip 10.255.0.3
            ucarp-password secret3
            ucarp-alias lo:c
        OWN""".replace("OWN", OWN_SCRIPTS.strip().replace("\n    ", "\n    ")))
    paths = Paths("lo", tmp_path / "run")
    hooked = runtime.conf_with(None, _group(1, "lo:1"))
    hooked = runtime.conf_with(hooked, ucarp.group(_group_raw(2, "10.255.0.2"), name="lo",
                                                   method="manual"))
    runtime.write_private(paths.conf, runtime.dumps(hooked))
    runtime.write_private(paths.owners, runtime.owners_text(
        {1: Owner("lo:1"), 2: Owner("lo")}), mode=0o644)
    text = regen.conf_for(paths, regen.Source(path, "lo"))
    assert json.loads(text) == hooked  # vhid 3 is not up: not added


def test_ifdown_of_one_group_while_the_engine_is_not_running_keeps_the_others_recorded(
        tmp_path: Path) -> None:
    # at boot the engine's unit may still be queued behind networking.service
    paths = Paths("lo", tmp_path)
    data = runtime.conf_with(runtime.conf_with(None, _group(1, "lo:1")), _group(2, "lo:2"))
    runtime.write_private(paths.conf, runtime.dumps(data))
    runtime.write_private(paths.owners, runtime.owners_text(
        {1: Owner("lo:1", "f:1"), 2: Owner("lo:2", "f:9")}), mode=0o644)
    hook.stop(paths, {"IFACE": "lo:1", "LOGICAL": "lo:1", "MODE": "stop"})
    assert runtime.conf_vhids(json.loads(paths.conf.read_text())) == [2]
    assert runtime.read_owners(paths) == {2: Owner("lo:2", "f:9")}
    hook.stop(paths, {"IFACE": "lo:3", "LOGICAL": "lo:3", "MODE": "stop"})  # none of its own
    assert runtime.conf_vhids(json.loads(paths.conf.read_text())) == [2]
    hook.stop(paths, {"IFACE": "lo:2", "LOGICAL": "lo:2", "MODE": "stop"})  # the last one
    assert not paths.conf.exists() and not paths.owners.exists()
