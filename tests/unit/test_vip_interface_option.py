"""A dedicated cluster network: the adverts on one interface, the VIP on another
(``ucarp-vip-interface``, ``--vip-interface``), from the stanza to the conf, the release and
the netlink events.  Pure: parsing, checks, files and netlink messages built in memory."""

from __future__ import annotations

import socket
import textwrap
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from carpd.config import load
from carpd.config.load import ConfigError
from carpd.core.election import Script
from carpd.debian import carpctl
from carpd.debian.ifupdown import groups, hook, interfaces, runtime
from carpd.debian.ifupdown import stanza as ucarp
from carpd.debian.ifupdown.stanza import StanzaError
from carpd.engine import netlink
from carpd.engine.group import script_argv

SCRIPTS = {"ucarp-upscript": "/bin/true", "ucarp-downscript": "/bin/true"}
BASE = {"ucarp-vid": "1", "ucarp-vip": "10.0.0.101", "ucarp-password": "secret", **SCRIPTS}


def _group(name: str = "eth1", **extra: str) -> runtime.Group:
    raw = {**BASE, **{f"ucarp-{k.replace('_', '-')}": v for k, v in extra.items()}}
    return ucarp.group(raw, name=name, check_interface=False)


def _problems(name: str = "eth1", check_interface: bool = False, **extra: str) -> list[str]:
    raw = {**BASE, **{f"ucarp-{k.replace('_', '-')}": v for k, v in extra.items()}}
    with pytest.raises(StanzaError) as caught:
        ucarp.engine_options(raw, interface=name, check_interface=check_interface)
    return [p.message for p in caught.value.problems]


# -- the stanza option --------------------------------------------------------------------------

def test_the_engine_runs_on_the_stanzas_interface_and_the_vip_is_on_the_named_one() -> None:
    group = _group(vip_interface="eth0")
    assert (group.options.interface, group.options.vip_interface) == ("eth1", "eth0")
    assert group.options.vip_on == "eth0"


def test_master_brings_up_the_vip_interfaces_ucarp_stanza_by_default() -> None:
    group = _group(vip_interface="eth0")
    assert group.script_interface == "eth0"  # vip-up: ifup eth0:ucarp, the VIP on eth0
    options = group.options.model_copy(update={"script_interface": group.script_interface})
    up = script_argv(options)[Script.UP]
    assert up is not None and up[1:] == ["eth0", "10.0.0.101"]


def test_an_alias_of_the_vip_interface_names_what_master_brings_up() -> None:
    group = _group(vip_interface="eth0", alias="eth0:web")
    assert group.script_interface == "eth0:web"
    assert runtime.label(group.script_interface) == "eth0:web:ucarp"


def test_an_alias_stanza_advertising_on_eth1_holds_its_vip_on_eth0() -> None:
    group = _group("eth1:1", vip_interface="eth0")
    assert (group.options.interface, group.options.vip_on) == ("eth1", "eth0")
    assert group.script_interface == "eth0"


def test_the_stanzas_own_interface_as_vip_interface_changes_nothing() -> None:
    group = _group(vip_interface="eth1")
    assert group.options.vip_interface is None and group.script_interface == "eth1"


def test_an_alias_of_the_advert_interface_is_refused_when_the_vip_is_elsewhere() -> None:
    assert _problems(vip_interface="eth0", alias="eth1:web") == [
        "ucarp-alias: 'eth1:web': must be eth0 (ucarp-vip-interface) or an alias of it "
        "(eth0:NAME, without blanks, '/' or a trailing ':ucarp'): the default actions bring up "
        "NAME:ucarp"]


def test_an_alias_on_another_interface_without_vip_interface_says_to_give_it() -> None:
    [problem] = _problems(alias="eth0:web")
    assert problem.startswith("ucarp-alias: 'eth0:web': must be eth1 or an alias of it")
    assert problem.endswith("; to hold the VIP on eth0 (a cluster network for the adverts), "
                            "give ucarp-vip-interface eth0 too")


@pytest.mark.parametrize("value", ["eth0:1", "eth0/1", "a-name-too-long-x", "eth 0"])
def test_a_vip_interface_that_is_no_interface_name_is_named_with_what_is_allowed(
        value: str) -> None:
    assert _problems(vip_interface=value) == [
        f"ucarp-vip-interface: {value!r}: not an interface name: allowed: 1 to 15 characters, "
        "without '/', ':' or whitespace"]


def test_a_vip_interface_given_twice_is_refused() -> None:
    assert _problems(vip_interface="eth0\neth2") == [
        "ucarp-vip-interface: 'eth0\\neth2': given more than once in the stanza: give it once"]


def test_a_vip_interface_that_does_not_exist_is_refused_when_ifup_checks() -> None:
    assert _problems("lo", check_interface=True, vip_interface="nosuchif9") == [
        "ucarp-vip-interface: 'nosuchif9': no such network interface"]


def test_the_label_of_a_long_vip_interface_must_fit_the_kernels_limit() -> None:
    raw = {"ucarp-vid": "1", "ucarp-vip-interface": "verylongname12"}
    [problem] = ucarp.alias_problems("eth1", raw)
    assert problem.message.startswith("ucarp-upscript: the default action brings up "
                                      "'verylongname12:ucarp', a label of 20 bytes")


def test_the_hook_reads_the_option_from_ifupdowns_environment() -> None:
    env = {"IF_UCARP_VIP_INTERFACE": "eth0", "IF_UCARP_VID": "1"}
    assert hook.stanza_options(env) == {"ucarp-vip-interface": "eth0", "ucarp-vid": "1"}
    assert "ucarp-vip-interface" in ucarp.KNOWN


# -- the command line ---------------------------------------------------------------------------

def test_the_command_line_takes_vip_interface() -> None:
    options = load.from_command_line(["-i", "lo", "-p", "x", "-a", "10.0.0.1",
                                        "--vip-interface", "lo"])
    assert options.vip_on == "lo"


@pytest.mark.parametrize(("value", "why"), [
    ("eth0:1", "not an interface name: allowed: 1 to 15 characters, without '/', ':' or "
               "whitespace"),
    ("nosuchif9", "no such network interface")])
def test_a_bad_vip_interface_on_the_command_line_names_the_flag_and_value(
        value: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load.from_command_line(["-i", "lo", "-p", "x", "-a", "10.0.0.1",
                                  "--vip-interface", value])
    assert str(caught.value) == f"--vip-interface: {value!r}: {why}"


# -- carpctl check ------------------------------------------------------------------------------

CLUSTER = """\
    auto eth0 eth1
    iface eth0 inet static
        address 10.0.0.2/24
    iface eth1 inet static
        address 192.168.100.2/24
        ucarp-vid 1
        ucarp-vip 10.0.0.101
        ucarp-password secret
        ucarp-vip-interface eth0
        ucarp-alias eth0:web
        SCRIPTS
    iface eth0:web:ucarp inet static
        address 10.0.0.101/32
    """


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "interfaces"
    path.write_text(textwrap.dedent(text))
    path.chmod(0o600)
    return path


def test_check_accepts_the_cluster_network_layout(tmp_path: Path) -> None:
    text = CLUSTER.replace("SCRIPTS", "ucarp-upscript /bin/true\n        "
                                      "ucarp-downscript /bin/true")
    assert carpctl.check_parsed(interfaces.parse(_file(tmp_path, text))) == ([], 1)


def test_check_names_the_line_of_a_bad_vip_interface(tmp_path: Path) -> None:
    text = CLUSTER.replace("SCRIPTS", "ucarp-upscript /bin/true").replace(
        "vip-interface eth0", "vip-interface eth0:0")
    path = _file(tmp_path, text)
    problems, _count = carpctl.check_parsed(interfaces.parse(path))
    assert f"{path}:9: iface eth1 inet static: ucarp-vip-interface: 'eth0:0': not an " \
           "interface name" in "\n".join(problems), problems


def test_the_default_actions_need_the_stanza_on_the_vip_interface(tmp_path: Path) -> None:
    path = _file(tmp_path, CLUSTER.replace("SCRIPTS", "").replace("eth0:web:ucarp", "eth1:web"))
    iface = next(i for i in interfaces.parse(path).ifaces if i.name == "eth1")
    group = _group(vip_interface="eth0", alias="eth0:web")
    defaults = group.options.model_copy(update={"upscript": ucarp.DEFAULT_UPSCRIPT,
                                                "downscript": ucarp.DEFAULT_DOWNSCRIPT})
    problem = ucarp.missing_alias(defaults, interfaces.parse(path), group.script_interface)
    assert problem is not None and "'iface eth0:web:ucarp inet static', which is missing" in \
        problem.message
    assert groups.stanza_options(iface)["ucarp-vip-interface"] == "eth0"


# -- the conf the hook writes, and releasing ----------------------------------------------------

def test_the_conf_keeps_the_vip_interface_and_release_looks_there(tmp_path: Path) -> None:
    group = _group(vip_interface="eth0", alias="eth0:web")
    paths = runtime.Paths("eth1", tmp_path)
    runtime.write_private(paths.conf, runtime.conf_text([group]))
    [engine] = runtime.groups_from_conf(paths.conf)
    assert (engine.interface, engine.vip_on, engine.label) == ("eth1", "eth0", "eth0:web:ucarp")
    assert engine.script_argv() == ["/bin/true", "eth0:web", "10.0.0.101"]


def test_a_conf_without_vip_interface_releases_on_the_engines_interface(tmp_path: Path) -> None:
    paths = runtime.Paths("eth1", tmp_path)
    runtime.write_private(paths.conf, runtime.conf_text([_group()]))
    [engine] = runtime.groups_from_conf(paths.conf)
    assert engine.vip_on == "eth1"


# -- netlink: a VIP deleted from another interface than the engine's --------------------------

def _deladdr(index: int, address: str) -> Any:
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET
    msg["index"] = index
    msg["prefixlen"] = 32
    msg["attrs"] = [("IFA_ADDRESS", address), ("IFA_LOCAL", address)]
    msg["header"] = {"type": netlink.RTM_DELADDR}
    return msg


def test_addresses_deleted_from_any_interface_are_reported_by_index() -> None:
    events = netlink.link_events([_deladdr(3, "10.0.0.101"), _deladdr(2, "192.168.100.9")], 2)
    assert events.removed_from == {3: frozenset({IPv4Address("10.0.0.101")}),
                                   2: frozenset({IPv4Address("192.168.100.9")})}
    assert events.removed == frozenset({IPv4Address("192.168.100.9")})  # ours
    assert events.carrier is None


# -- two groups of different interfaces bringing up one NAME:ucarp ----------------------------

TWO_ENGINES = """\
    iface eth0 inet static
        address 10.0.0.2/24
        ucarp-vid 1
        ucarp-vip 10.0.0.101
        ucarp-password s1
    iface eth1 inet static
        address 192.168.100.2/24
        ucarp-vid 2
        ucarp-vip 10.0.0.102
        ucarp-password s2
        ucarp-vip-interface eth0
    """


def _defined(iface: interfaces.Iface) -> groups.Defined:
    """The group of ``iface``, validated with scripts that exist here; its script interface
    is what the default actions would get."""
    raw = groups.stanza_options(iface)
    group = ucarp.group({**raw, **SCRIPTS}, name=iface.name, method=iface.method,
                        address=groups.address_of(iface), where=str(iface.where),
                        check_interface=False)
    return groups.Defined(iface, group)


def test_a_group_of_another_interface_bringing_up_the_same_alias_is_refused(
        tmp_path: Path) -> None:
    parsed = interfaces.parse(_file(tmp_path, TWO_ENGINES))
    on_eth0, on_eth1 = (_defined(i) for i in parsed.ifaces)
    assert on_eth1.group.script_interface == on_eth0.group.script_interface == "eth0"
    [problem] = groups.clash(on_eth1, on_eth0)
    assert problem == (
        f"{on_eth1.iface.where}: iface eth1 inet static: ucarp-alias: 'eth0': the default "
        f"actions of vhid 2 bring up 'eth0:ucarp', as those of vhid 1 at {on_eth0.iface.where} "
        "(iface eth0 inet static) do: give each group its own ucarp-alias (eth0:NAME) and "
        "'iface eth0:NAME:ucarp' stanza")


def test_the_same_vhid_on_two_engines_whose_vips_share_an_interface_is_fine(
        tmp_path: Path) -> None:
    parsed = interfaces.parse(_file(tmp_path, TWO_ENGINES.replace("ucarp-vid 2", "ucarp-vid 1")
                                    + "    ucarp-alias eth0:db\n"))
    on_eth0, on_eth1 = (_defined(i) for i in parsed.ifaces)
    assert groups.clash(on_eth1, on_eth0) == []


def test_the_scripts_of_a_command_line_group_get_the_vip_interface() -> None:
    options = load.from_command_line(["-i", "lo", "-p", "x", "-a", "10.0.0.1",
                                        "--vip-interface", "lo", "-u", "/bin/true"])
    moved = options.model_copy(update={"interface": "eth1", "vip_interface": "eth0"})
    up = script_argv(moved)[Script.UP]
    assert up == ["/bin/true", "eth0", "10.0.0.1"]  # as ucarp's scripts: ip addr add $2 dev $1
    assert moved.model_copy(update={"script_interface": "eth0:web"}).scripts_interface == \
        "eth0:web"


def test_a_conf_group_without_script_interface_releases_by_the_vip_interfaces_label() -> None:
    data = {"interface": "eth1", "addr": "10.0.0.1", "vip_interface": "eth0",
            "downscript": "/bin/true"}
    [group] = runtime.conf_groups(data)
    engine = runtime.ConfGroup.from_group(group)
    assert (engine.label, engine.vip_on) == ("eth0:ucarp", "eth0")
    assert engine.script_argv() == ["/bin/true", "eth0", "10.0.0.1"]
