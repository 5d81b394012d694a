"""The option table (carpd.config.options) is the one place an option is declared: the command line,
the stanza options, the error names, the per-engine keys and the man pages' option lists all
follow it (the engine's settings and the man pages' lists written from it by `make settings` and
`make man`), and a test fails when any of them drifts from it."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import ModuleType
from typing import Annotated

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from carpd.config import load, options, write_man, write_settings
from carpd.config.options import ROWS, Kind
from carpd.debian.ifupdown import groups, runtime
from carpd.debian.ifupdown import stanza as ucarp
from carpd.engine import settings as engine_settings
from carpd.engine.settings import Settings, settings_from_plain, settings_to_plain

DEBIAN = Path(__file__).resolve().parents[2] / "debian"
HELP = {"-h", "--help"}


def _section(page: str, name: str) -> str:
    text = (DEBIAN / page).read_text()
    start = text.index(f".SH {name}\n")
    end = text.find("\n.SH ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def _tags(page: str) -> list[str]:
    """The first line after each ``.TP`` of the page's OPTIONS section: the entry's tag."""
    lines = _section(page, "OPTIONS").splitlines()
    return [lines[n + 1] for n, line in enumerate(lines[:-1]) if line == ".TP"]


def _plain(tag: str) -> str:
    """A tag line without roff's escaped hyphens, font changes and quotes."""
    return re.sub(r'\\f[BIRP]|"', " ", tag.replace("\\-", "-"))


def man_flags(page: str = "carpd.8") -> set[str]:
    """Every flag an entry of the page's OPTIONS section is about (``-i``, ``--interface``)."""
    return {word.rstrip(",") for tag in _tags(page) for word in _plain(tag).split()[1:]
            if word.startswith("-")}


def man_stanza_options(page: str = "carpd-interfaces.5") -> set[str]:
    """The ``ucarp-*`` option each entry of the page's OPTIONS section is about."""
    return {_plain(tag).split()[1] for tag in _tags(page)}


def table_flags() -> set[str]:
    return {flag for row in ROWS if row.cli is not None for flag in row.cli.flags}


def parser_flags() -> set[str]:
    return {s for action in load.parser()._actions for s in action.option_strings} - HELP


# -- the man pages, both ways -----------------------------------------------------------------

def test_carpd_page_has_an_entry_for_every_flag_of_the_table() -> None:
    assert sorted(table_flags() - man_flags()) == []


def test_carpd_page_has_no_entry_for_a_flag_the_table_lacks() -> None:
    assert sorted(man_flags() - table_flags() - HELP) == []


def test_interfaces_page_has_an_entry_for_every_stanza_option_of_the_table() -> None:
    assert sorted(set(ucarp.KNOWN) - man_stanza_options()) == []


def test_interfaces_page_has_no_entry_for_a_stanza_option_the_table_lacks() -> None:
    assert sorted(man_stanza_options() - set(ucarp.KNOWN)) == []


def test_the_page_readers_find_what_the_pages_hold() -> None:
    # the readers above cannot pass by reading nothing
    assert {"-i", "--interface", "-p", "--pass", "--no-replay-check", "-h"} <= man_flags()
    assert {"ucarp-vid", "ucarp-master", "ucarp-alias"} <= man_stanza_options()


# -- what derives from the table ----------------------------------------------------------------

def test_the_command_line_has_exactly_the_flags_of_the_table() -> None:
    assert parser_flags() == table_flags()


def test_ucarps_command_line_flags_are_all_there() -> None:
    ucarp_flags = {"-i", "-s", "-v", "-p", "-o", "-a", "-b", "-k", "-r", "-u", "-d", "-f", "-S",
                   "-M", "-m", "-x", "-P", "-n", "-z", "-B", "-D", "--interface", "--srcip",
                   "--vhid", "--pass", "--passfile", "--addr", "--advbase", "--advskew",
                   "--deadratio", "--upscript", "--downscript", "--facility",
                   "--ignoreifstate", "--nomcast", "--mcast", "--xparam", "--preempt",
                   "--neutral", "--shutdown", "--daemonize", "--debug"}
    assert sorted(ucarp_flags - parser_flags()) == []


def test_each_flag_stores_under_its_fields_name() -> None:
    dests = {s: a.dest for a in load.parser()._actions for s in a.option_strings}
    for row in ROWS:
        for flag in row.cli.flags if row.cli else ():
            assert dests[flag] == row.name, flag


def test_every_field_is_a_row_and_every_other_row_an_input() -> None:
    fields = set(load.Options.model_fields)
    assert {row.name for row in ROWS if row.is_field} == fields
    assert {row.name for row in ROWS if not row.is_field} == {i.name for i in options.INPUTS}


def test_every_stanza_option_maps_to_its_field() -> None:
    for row in ROWS:
        if row.stanza is not None and row.is_field:
            assert ucarp.OPTION_NAMES[row.name] == row.stanza.name
    aliases = tuple(str(f.alias) for f in ucarp.UcarpStanza.model_fields.values())
    assert aliases == ucarp.KNOWN


def test_every_stanza_option_is_named_ucarp_something_once() -> None:
    assert all(name.startswith("ucarp-") for name in ucarp.KNOWN)
    assert len(set(ucarp.KNOWN)) == len(ucarp.KNOWN)


def test_stanza_booleans_are_the_flag_options() -> None:
    booleans = {"ucarp-master", "ucarp-nomcast", "ucarp-neutral", "ucarp-ignoreifstate",
                "ucarp-debug", "ucarp-replay-check"}
    assert booleans == ucarp.BOOLEANS
    for row in ROWS:
        if row.stanza is not None and row.stanza.kind is Kind.FLAG:
            assert load.Options.model_fields[row.name].annotation is bool


def test_error_names_come_from_the_flags() -> None:
    assert load.FLAGS["vhid"] == "-v/--vhid"
    assert load.FLAGS["password"] == "-p/--pass or -o/--passfile"
    assert load.FLAGS["replay_check"] == "--no-replay-check"
    assert load.FLAGS["script_interface"] == "script_interface"  # in a --config file only


def test_per_engine_keys_are_the_same_for_the_engine_and_the_hook() -> None:
    assert set(load.INTERFACE_KEYS) == set(runtime.INTERFACE_KEYS)
    assert set(groups.INTERFACE_OPTIONS) == {"mcast", "nomcast", "ignoreifstate", "facility",
                                             "debug"}


def test_the_drain_connections_option_is_everywhere_an_option_is() -> None:
    row = options.BY_NAME["drain_connections"]
    assert row.cli is not None and row.cli.flags == ("--drain-connections",)
    assert row.stanza is not None and row.stanza.name == "ucarp-drain-connections"
    assert "--drain-connections" in man_flags()
    assert "ucarp-drain-connections" in man_stanza_options()
    opts = ucarp.engine_options({"ucarp-vid": "1", "ucarp-vip": "10.0.0.1",
                                 "ucarp-password": "x", "ucarp-upscript": "/bin/true",
                                 "ucarp-downscript": "/bin/true",
                                 "ucarp-drain-connections": "30"}, interface="lo")
    assert opts.drain_connections == 30.0
    given = vars(load.parser().parse_args(["--drain-connections", "45"]))
    assert given == {"drain_connections": "45"}


@pytest.mark.parametrize(("argv", "message"), [
    (["--drain-connections", "-1"],
     "--drain-connections: '-1': Input should be greater than or equal to 0"),
    (["--drain-connections", "86401"],
     "--drain-connections: '86401': Input should be less than or equal to 86400"),
])
def test_drain_connections_out_of_range_is_refused_by_name(argv: list[str], message: str) -> None:
    with pytest.raises(load.ConfigError) as caught:
        load.from_command_line(["-i", "lo", "-a", "10.0.0.1", "-p", "x", *argv])
    assert str(caught.value) == message


def test_help_of_every_flag_is_shown() -> None:
    text = " ".join(load.parser().format_help().split())
    for row in ROWS:
        if row.cli is not None:
            assert " ".join(row.cli.help.split()) in text, row.name


def test_the_table_builds_a_parser_that_refuses_an_unknown_flag() -> None:
    with pytest.raises(load.ConfigError):
        load.parser().parse_args(["--frobnicate"])
    assert isinstance(load.parser(), argparse.ArgumentParser)


def _every_field_given() -> options.Options:
    """Options with every field set away from its default (the scripts: this interpreter)."""
    return options.Options(
        interface="lo", vhid=7, addr="10.1.2.3", password=b"\xffnot utf-8", upscript=sys.executable,
        downscript=sys.executable, preempt=True, advskew=9, advbase=2, deadratio=4, nomcast=True,
        xparam="x y", facility="local3", neutral=True, ignoreifstate=True, mcast="224.0.0.19",
        debug=True, srcip="10.1.2.1", shutdown=True, daemonize=True, pidfile="/run/x.pid",
        ucarp_mac=True, script_timeout=5, state_dir="/tmp/s", drain=1.5, drain_connections=3,
        reannounce=4, replay_check=False,
        track_script=[f"{sys.executable} -c 'pass'", ["/bin/true"]],
        track_interval=2, track_timeout=1.5, track_fall=3, track_rise=4,
        track_interface="eth1 eth2", script_interface="lo:1", vip_interface="lo",
        persist_dir="/tmp/p")


def test_the_engines_settings_have_every_field_of_the_table_in_order_with_its_default() -> None:
    table = options.Options.model_fields
    assert [f.name for f in dataclasses.fields(Settings)] == list(table)
    for f in dataclasses.fields(Settings):
        default = table[f.name].default
        expected = dataclasses.MISSING if default is PydanticUndefined else default
        assert f.default == expected, f.name


def test_every_field_reaches_the_engine_through_json_as_the_model_made_it() -> None:
    given = _every_field_given()
    plain = json.loads(json.dumps(settings_to_plain(given)))
    settings = settings_from_plain(plain)
    for name in options.Options.model_fields:
        value = getattr(settings, name)
        assert value == getattr(given, name), name
        assert type(value) is type(getattr(given, name)), name
        assert value != options.Options.model_fields[name].default, f"{name} left at default"


def _properties(model: type) -> set[str]:
    return {name for name in dir(model) if isinstance(getattr(model, name, None), property)}


def test_the_engines_settings_offer_every_property_of_the_model() -> None:
    properties = _properties(options.Options) - _properties(BaseModel)
    assert {"vip_on", "scripts_interface"} <= properties
    bare = options.Options(interface="lo", addr="10.1.2.3", password=b"p")
    for given in (_every_field_given(), bare):
        settings = settings_from_plain(settings_to_plain(given))
        for name in properties:
            assert getattr(settings, name) == getattr(given, name), name


# -- the engine's side, written from the table --------------------------------------------------

def test_the_engines_settings_are_what_the_generator_writes_from_the_table() -> None:
    text = Path(engine_settings.__file__).read_text()
    assert write_settings.rewritten(text) == text, "run `make settings`"
    assert write_settings.main(["--check"]) == 0


class _Grown(options.Options):
    """The table with two made-up options, as one would add them: a field each."""

    knob: Annotated[Path | None, options.PER_ENGINE, options.cli(
        "--knob", help="a made-up per-engine option")] = None
    peers: Annotated[
        tuple[IPv4Address, ...],
        options.Stanza("ucarp-peers", Kind.LINES, man=r"""
            The peers' addresses; as
            .BR \-\-peer .
            """),
        options.cli("--peer", action="append", help="a made-up group option")] = ()


def _settings_module(model: type[BaseModel], folder: Path,
                     monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """carpd/engine/settings.py as the generator writes it for ``model``, imported."""
    path = folder / "grown_settings.py"
    path.write_text(write_settings.rewritten(Path(engine_settings.__file__).read_text(), model))
    spec = importlib.util.spec_from_file_location("grown_settings", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "grown_settings", module)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


def test_an_option_added_to_the_table_reaches_the_engine_with_no_other_edit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grown = _settings_module(_Grown, tmp_path, monkeypatch)
    names = [f.name for f in dataclasses.fields(grown.Settings)]
    assert names == [*options.Options.model_fields, "knob", "peers"]
    per_engine = grown.PER_ENGINE_KEYS
    assert per_engine == (*engine_settings.PER_ENGINE_KEYS, "knob")
    given = _Grown(interface="lo", addr="10.1.2.3", password=b"p", knob="/etc/knob",
                   peers=["10.1.2.4", "10.1.2.5"])
    settings = grown.settings_from_plain(json.loads(json.dumps(grown.settings_to_plain(given))))
    assert settings.knob == Path("/etc/knob")
    assert settings.peers == (IPv4Address("10.1.2.4"), IPv4Address("10.1.2.5"))
    assert grown.Settings(interface="lo", addr=given.addr, password=given.password).peers == ()


def test_the_generator_refuses_a_type_the_engines_settings_cannot_carry() -> None:
    class Odd(options.Options):
        net: IPv4Network | None = None

    with pytest.raises(write_settings.UnknownType, match="IPv4Network"):
        write_settings.render(Odd)


# -- the man pages' option lists, written from the table ------------------------------------------

@pytest.mark.parametrize("page", write_man.PAGES, ids=lambda page: page.path.name)
def test_the_man_pages_option_lists_are_what_the_generator_writes_from_the_table(
        page: write_man.Page) -> None:
    text = (DEBIAN / page.path.name).read_text()
    assert page.rewritten(text) == text, "run `make man`"


def test_the_man_page_generator_finds_nothing_to_write() -> None:
    # the pages of this tree (in a package build the module is a copy elsewhere)
    assert write_man.main(["--check"], debian=DEBIAN) == 0


def test_the_man_page_generator_exits_non_zero_on_a_stale_page(tmp_path: Path) -> None:
    for page in write_man.PAGES:
        text = (DEBIAN / page.path.name).read_text()
        (tmp_path / page.path.name).write_text(text.replace("(required)", "(needed)", 1))
    assert write_man.main(["--check"], debian=tmp_path) == 1


def test_an_entry_edited_by_hand_is_written_back_and_the_rest_of_the_page_kept() -> None:
    text = (DEBIAN / "carpd.8").read_text()
    edited = text.replace("Network interface to run on (required).",
                          "Network interface to run on.").replace(
        "CARP virtual IP failover daemon", "A CARP virtual IP failover daemon")
    assert edited.count("Network interface to run on.") == 1
    assert write_man.CARPD.rewritten(edited) == \
        text.replace("CARP virtual IP failover daemon", "A CARP virtual IP failover daemon")


def test_an_option_added_to_the_table_gets_an_entry_on_both_man_pages() -> None:
    carpd, interfaces = ((DEBIAN / page.path.name).read_text() for page in write_man.PAGES)
    knob = '.TP\n.BI \\-\\-knob " knob"\nA made\\-up per\\-engine option.\n'
    peer = '.TP\n.BI \\-\\-peer " peers"\nA made\\-up group option.\n'
    peers = '.TP\n.BI ucarp\\-peers " peers"\nThe peers\' addresses; as\n.BR \\-\\-peer .\n'
    grown = write_man.CARPD.rewritten(carpd, _Grown)
    assert grown == carpd.replace(write_man.END, knob + peer + write_man.END)
    grown = write_man.INTERFACES.rewritten(interfaces, _Grown)
    assert grown == interfaces.replace(write_man.END, peers + write_man.END)


def test_a_stanza_option_with_no_text_and_no_help_is_refused() -> None:
    class Mute(options.Options):
        mute: Annotated[bool, options.Stanza("ucarp-mute", Kind.FLAG)] = False

    with pytest.raises(ValueError, match=r"mute: give ucarp-mute its text \(Stanza\(man="):
        write_man.INTERFACES.render(Mute)


def test_a_man_page_order_naming_no_option_of_the_table_is_refused() -> None:
    page = dataclasses.replace(write_man.CARPD, first=("interface", "frobnicate"))
    with pytest.raises(ValueError, match="carpd.8: no such option in the table: .'frobnicate'."):
        page.render()
