"""THE option table: every option a person can give carpd, declared once.

Each field of :class:`Options` is one option: its type and range (pydantic), its default, and,
as markers in its ``Annotated`` metadata, its command-line flags and help (:class:`Cli`), its
``ucarp-*`` stanza option (:class:`Stanza`), whether it is one per engine (:data:`PER_ENGINE`)
and what to check of it on this machine (:class:`Exists`).  The few inputs that are no field
(``--passfile``, ``--config``, ``ucarp-alias``) are :data:`INPUTS` beside it.  Derived from this
table, and nowhere else written down:

- the pydantic model itself (this class), ranges and defaults included;
- ucarp's command line (:func:`carpd.config.load.parser`) and how errors name each option
  (:data:`carpd.config.load.FLAGS`);
- the stanza model and mapping (:class:`carpd.debian.ifupdown.stanza.UcarpStanza`,
  ``OPTION_NAMES``, ``KNOWN``: ``carpctl check``'s list of known options);
- the per-engine keys of a ``--config`` with groups, and the interface-wide stanza options;
- what the engine (which never loads pydantic) reads: :class:`carpd.engine.settings.Settings`
  and ``PER_ENGINE_KEYS``, written from this table by ``make settings``
  (:mod:`carpd.config.write_settings`; a field's engine type is its annotation's, or the class
  of an ``AfterValidator`` that is one, as ``Secret``);
- the man pages' option lists are checked against it (tests/unit/test_option_table.py).

Adding an option is one field here, then ``make settings`` (plus its test and its man page
entries: tests/unit/test_option_table.py fails until each is there).  The model holds only what
a person gives: how it arrived (the password on the command line) is
:class:`carpd.config.load.EngineConfig`'s, and what depends on this machine (does the interface
exist, is the script executable) is checked after the model, by :func:`environment_problems`.
"""

from __future__ import annotations

import enum
import os
import shlex
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from carpd.config.problems import HIDDEN
from carpd.core import wire
from carpd.engine import identity
from carpd.engine.settings import Places, Secret

FACILITIES = (
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog", "user",
    "uucp", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7", "none",
)
IFNAMSIZ = 16
"""Linux's limit on an interface name, its final NUL included."""
SHARE = Path("/usr/share/carpd")
DEFAULT_UPSCRIPT = SHARE / "vip-up"
DEFAULT_DOWNSCRIPT = SHARE / "vip-down"


# -- the markers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cli:
    """The option on ucarp's command line (argparse's ``dest`` is the field's name)."""

    flags: tuple[str, ...]
    help: str
    action: str | None = None
    """``store_true``, ``store_false`` or ``append``; None: takes a value."""
    metavar: str | None = None
    shown: str | None = None
    """How an error names it, if not by its flags joined with '/'."""

    @property
    def name(self) -> str:
        return self.shown or "/".join(self.flags)


def cli(*flags: str, help: str, action: str | None = None, metavar: str | None = None,
        shown: str | None = None) -> Cli:
    return Cli(flags, help, action, metavar, shown)


class Kind(enum.Enum):
    """How a stanza writes the option's value (ifupdown hands every value over as text)."""

    TEXT = "text"
    """Given once, checked by the model."""
    FLAG = "flag"
    """A boolean: yes/no, on/off, true/false, 1/0."""
    PATH = "path"
    """An absolute path, given once."""
    LINES = "lines"
    """May be given several times: ifupdown joins the values with a newline."""
    IFNAME = "ifname"
    """An interface name, given once."""


@dataclass(frozen=True)
class Stanza:
    """The option in an interfaces(5) stanza."""

    name: str
    kind: Kind = Kind.TEXT
    default: str | None = None
    """What the stanza means when it leaves the option out, if not the engine's default."""


@dataclass(frozen=True)
class Exists:
    """A check of the value against this machine, after the model: the reason it fails, or
    None.  ``each``: the type of one value of several, checked one by one (``items``: how the
    model makes a list of them of what was given)."""

    check: Callable[[Any], str | None]
    each: Any = None
    items: Callable[[Any], Any] | None = None


class _PerEngine:
    """Marks an option with one value per engine (shared by all the groups it runs)."""


PER_ENGINE = _PerEngine()


# -- the values --------------------------------------------------------------------------------

def executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


COMMAND_ALLOWED = "allowed: a command line (a string) or its words (a list of strings)"


def _words(value: Any) -> Any:
    """One command: a line of words (split as the shell would, without running one), or
    already its words."""
    if isinstance(value, list | tuple):
        return value
    if not isinstance(value, str):
        raise ValueError(COMMAND_ALLOWED)
    try:
        return shlex.split(value)
    except ValueError as error:
        raise ValueError(f"cannot be split into words: {str(error).lower()}") from None


def _command(command: tuple[str, ...]) -> tuple[str, ...]:
    if not command or not command[0]:
        raise ValueError("no command given: allowed: an absolute path to an executable file, "
                         "then its arguments")
    if not command[0].startswith("/"):
        raise ValueError("the command must start with an absolute path to an executable file")
    return command


def _commands(value: Any) -> Any:
    # a single command on its own (JSON written by hand) is a list of one
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"allowed: a list of commands, each {COMMAND_ALLOWED.split(': ')[1]}")
    return value


def _interface_names(value: Any) -> Any:
    """Names apart, whether given one by one or several in a string ("eth1 eth2")."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list | tuple):
        return [name for item in value
                for name in (item.split() if isinstance(item, str) else [item])]
    return value


def _script_interface(name: str) -> str:
    """The name up/down scripts get as their first argument: an interface, or an alias of
    one (Debian's ``eth0:1``)."""
    if not 0 < len(name) < IFNAMSIZ or "/" in name or name != "".join(name.split()):
        raise ValueError(f"not an interface or alias name: allowed: 1 to {IFNAMSIZ - 1} "
                         "characters, without '/' or whitespace")
    return name


def interface_name(name: str) -> str:
    """``name`` if it can name a network interface (not an alias: no ':'), else ValueError."""
    if not 0 < len(name) < IFNAMSIZ or any(c in name for c in "/:") or name != "".join(
            name.split()):
        raise ValueError(f"not an interface name: allowed: 1 to {IFNAMSIZ - 1} characters, "
                         "without '/', ':' or whitespace")
    return name


def _facility(value: str) -> str:
    if value.lower() not in FACILITIES:
        raise ValueError("allowed: " + ", ".join(FACILITIES))
    return value.lower()


def _multicast(value: IPv4Address) -> IPv4Address:
    if not value.is_multicast:
        raise ValueError("must be an IPv4 multicast address (224.0.0.0/4)")
    return value


def _interface_exists(name: str) -> str | None:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return "no such network interface"
    return None


def _executable(path: Path) -> str | None:
    return None if executable_file(path) else "must be an existing executable file"


def _runnable(command: tuple[str, ...]) -> str | None:
    return None if executable_file(Path(command[0])) else \
        f"{command[0]} must be an existing executable file"


Command = Annotated[tuple[str, ...], BeforeValidator(_words), AfterValidator(_command)]
InterfaceName = Annotated[str, AfterValidator(interface_name)]
Octet = Annotated[int, Field(ge=0, le=255)]
Count = Annotated[int, Field(ge=1, le=255)]
Seconds = Annotated[float, Field(gt=0, le=3600)]
EXISTS = Exists(_interface_exists)
EXECUTABLE = Exists(_executable)


# -- the secret in errors ----------------------------------------------------------------------

def _hidden(value: Any, loc: tuple[int | str, ...], key: str) -> Any:
    if loc and loc[0] == key:
        return HIDDEN
    if isinstance(value, dict) and key in value:
        return {**value, key: HIDDEN}
    return value


def hiding(key: str) -> Any:
    """A model validator that keeps the value of ``key`` out of the model's errors.  Assign it
    last in the class, so that it wraps every other validator, the whole-model ones too."""

    def never_in_errors(cls: type[BaseModel], data: Any,
                        handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(data)
        except ValidationError as error:
            raise without_secret(error, key) from None

    return model_validator(mode="wrap")(classmethod(never_in_errors))  # type: ignore[arg-type]


def without_secret(error: ValidationError, key: str) -> ValidationError:
    """``error`` with the value of ``key`` replaced wherever pydantic kept the input (a field's
    own error, or a whole-model error whose input is every field).  Each error keeps its type,
    location, message and context."""
    details: list[InitErrorDetails] = [
        {"type": PydanticCustomError(item["type"], item["msg"], _plain_ctx(item.get("ctx"))),
         "loc": item["loc"], "input": _hidden(item["input"], item["loc"], key)}
        for item in error.errors(include_url=False)]
    return ValidationError.from_exception_data(error.title, details, hide_input=True)


def _plain_ctx(ctx: dict[str, Any] | None) -> dict[str, Any] | None:
    """The context of an error that other code reads (a custom error's), not an exception's."""
    if not ctx:
        return None
    plain = {k: v for k, v in ctx.items() if isinstance(v, str | int | float)}
    return plain or None


# -- the table ---------------------------------------------------------------------------------

class Options(BaseModel, Places):
    """What one carpd engine runs with: one field per option (see the module's docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    interface: Annotated[str, EXISTS, PER_ENGINE, cli(
        "-i", "--interface", help="network interface to run on (required)")]
    vhid: Annotated[int, Field(ge=1, le=255), Stanza("ucarp-vid"), cli(
        "-v", "--vhid", help="virtual host id, 1..255 (default 1)")] = 1
    addr: Annotated[IPv4Address, Stanza("ucarp-vip"), cli(
        "-a", "--addr", help="the virtual IP address (required)")]
    password: Annotated[
        bytes, Field(repr=False, min_length=1, max_length=wire.MAX_PASSWORD_BYTES),
        AfterValidator(Secret),
        Stanza("ucarp-password"), cli("-p", "--pass", shown="-p/--pass or -o/--passfile",
                                      help="password (visible in ps: prefer --passfile)")]
    upscript: Annotated[Path | None, EXECUTABLE, Stanza(
        "ucarp-upscript", Kind.PATH, str(DEFAULT_UPSCRIPT)), cli(
        "-u", "--upscript", help="run as SCRIPT IFACE VIP [XPARAM] on becoming MASTER")] = None
    downscript: Annotated[Path | None, EXECUTABLE, Stanza(
        "ucarp-downscript", Kind.PATH, str(DEFAULT_DOWNSCRIPT)), cli(
        "-d", "--downscript", help="run as SCRIPT IFACE VIP [XPARAM] on leaving MASTER")] = None
    preempt: Annotated[bool, Stanza("ucarp-master", Kind.FLAG), cli(
        "-P", "--preempt", action="store_true", help="take over from a slower master")] = False
    advskew: Annotated[Octet, Stanza("ucarp-advskew"), cli(
        "-k", "--advskew", help="advert skew in 1/256 s, 0..255 (default 0)")] = 0
    advbase: Annotated[Octet, Stanza("ucarp-advbase"), cli(
        "-b", "--advbase", help="advert base interval in seconds, 0..255 (default 1)")] = 1
    deadratio: Annotated[int, Field(ge=1, le=255), Stanza("ucarp-deadratio"), cli(
        "-r", "--deadratio", help="master-down ratio, 1..255 (default 3)")] = 3
    nomcast: Annotated[bool, PER_ENGINE, Stanza("ucarp-nomcast", Kind.FLAG), cli(
        "-M", "--nomcast", action="store_true", help="send adverts to Ethernet broadcast")] = False
    xparam: Annotated[str | None, Stanza("ucarp-xparam"), cli(
        "-x", "--xparam", help="extra argument for the scripts")] = None
    facility: Annotated[str, AfterValidator(_facility), PER_ENGINE, Stanza("ucarp-facility"), cli(
        "-f", "--facility", help="syslog facility, or 'none' (default daemon)")] = "daemon"
    neutral: Annotated[bool, Stanza("ucarp-neutral", Kind.FLAG), cli(
        "-n", "--neutral", action="store_true",
        help="do not run the down script at start")] = False
    ignoreifstate: Annotated[bool, PER_ENGINE, Stanza("ucarp-ignoreifstate", Kind.FLAG), cli(
        "-S", "--ignoreifstate", action="store_true", help="ignore carrier changes")] = False
    mcast: Annotated[IPv4Address, AfterValidator(_multicast), PER_ENGINE, Stanza("ucarp-mcast"),
                     cli("-m", "--mcast", help=f"multicast group (default {wire.DEFAULT_GROUP})")
                     ] = wire.DEFAULT_GROUP
    debug: Annotated[bool, PER_ENGINE, Stanza("ucarp-debug", Kind.FLAG), cli(
        "-D", "--debug", action="store_true", help="log debug messages")] = False
    srcip: Annotated[IPv4Address | None, Stanza("ucarp-srcip"), cli(
        "-s", "--srcip", help="our own address on it (default: its primary IPv4 address)")] = None
    shutdown: Annotated[bool, cli(
        "-z", "--shutdown", action="store_true",
        help="accepted for ucarp: carpd always runs the down script when it exits as MASTER")
    ] = False
    daemonize: Annotated[bool, PER_ENGINE, cli(
        "-B", "--daemonize", action="store_true",
        help="run in the background (writes a pidfile)")] = False
    pidfile: Annotated[Path | None, PER_ENGINE, cli(
        "--pidfile", help="pidfile with -B (default STATE_DIR/IFACE.VHID.pid)")] = None
    ucarp_mac: Annotated[bool, cli(
        "--ucarp-mac", action="store_true",
        help="send adverts from ucarp's 00:00:5e:00:00:VHID instead of the NIC's MAC")] = False
    script_timeout: Annotated[float, Field(gt=0, le=3600), cli(
        "--script-timeout", help="seconds a script may run (default 30)")] = 30.0
    state_dir: Annotated[Path, PER_ENGINE, cli(
        "--state-dir", help=f"runtime folder (default {identity.RUN_DIR})")] = identity.RUN_DIR
    drain: Annotated[float, Field(ge=0, le=300), Stanza("ucarp-drain"), cli(
        "--drain", help="seconds to keep the VIP after a planned release, not answering ARP for "
        "it, so requests in flight finish (default 2; 0 to release at once)")] = 2.0
    drain_connections: Annotated[float, Field(ge=0, le=86400), Stanza(
        "ucarp-drain-connections"), cli(
        "--drain-connections", metavar="SECONDS",
        help="after a planned release keep the VIP until the TCP connections to it that existed "
        "at the hand-over have closed, at most this long (default 0: --drain alone)")] = 0.0
    reannounce: Annotated[float, Field(ge=0, le=86400), Stanza("ucarp-reannounce"), cli(
        "--reannounce", help="while MASTER, gratuitous ARP every this many seconds (default 0: "
        "off)")] = 0.0
    replay_check: Annotated[bool, Stanza("ucarp-replay-check", Kind.FLAG), cli(
        "--no-replay-check", action="store_false",
        help="accept adverts whose counter is not newer (replay protection off)")] = True
    track_script: Annotated[
        tuple[Command, ...], BeforeValidator(_commands), Exists(_runnable, Command, _commands),
        Stanza("ucarp-track-script", Kind.LINES), cli(
            "--track-script", action="append", metavar="'PATH [ARGS]'",
            help="healthy while this command exits 0 (repeatable: all must pass)")] = ()
    track_interval: Annotated[Seconds, Stanza("ucarp-track-interval"), cli(
        "--track-interval", metavar="SECONDS", help="run the checks this often (default 1)")
    ] = 1.0
    track_timeout: Annotated[Seconds | None, Stanza("ucarp-track-timeout"), cli(
        "--track-timeout", metavar="SECONDS",
        help="a check running longer fails (default: the interval, at least 1 s)")] = None
    track_fall: Annotated[Count, Stanza("ucarp-track-fall"), cli(
        "--track-fall", metavar="N",
        help="failures in a row that make a check fail (default 2)")] = 2
    track_rise: Annotated[Count, Stanza("ucarp-track-rise"), cli(
        "--track-rise", metavar="N",
        help="passes in a row that make it pass again (default 2)")] = 2
    track_interface: Annotated[
        tuple[InterfaceName, ...], BeforeValidator(_interface_names),
        Stanza("ucarp-track-interface", Kind.LINES), cli(
            "--track-interface", action="append", metavar="IFACE",
            help="unhealthy while IFACE has no carrier (repeatable; also \"eth1 eth2\")")] = ()
    script_interface: Annotated[str, AfterValidator(_script_interface)] | None = None
    """The first argument of this group's scripts (default: the VIP's interface); in a
    --config file only (a stanza's is ``ucarp-alias``, see :data:`INPUTS`)."""
    vip_interface: Annotated[InterfaceName | None, EXISTS, Stanza(
        "ucarp-vip-interface", Kind.IFNAME), cli(
        "--vip-interface", metavar="IFACE",
        help="hold the VIP on IFACE, adverts staying on -i (a dedicated cluster network; "
        "default: the -i interface)")] = None
    """The interface the VIP lives on (default: the interface the adverts go out on)."""
    persist_dir: Annotated[Path, PER_ENGINE, cli(
        "--persist-dir", metavar="DIR",
        help="where demotions that survive a reboot are kept (default /var/lib/carpd)")
    ] = Path("/var/lib/carpd")

    @model_validator(mode="after")
    def _interval_not_zero(self) -> Options:
        if self.advbase == 0 and self.advskew == 0:
            raise ValueError("advbase and advskew cannot both be 0")
        if self.advbase == wire.BOW_OUT and self.advskew == wire.BOW_OUT:
            raise ValueError("advbase 255 with advskew 255 is the bow-out's timing (\"I am "
                             "stopping, take over\"): lower either")
        return self

    _password_never_in_errors = hiding("password")  # last: it wraps every other validator


@dataclass(frozen=True)
class Input:
    """An option that is no field of :class:`Options`: it arrives some other way (a password
    file read into ``password``, the --config file, the stanza's alias)."""

    name: str
    after: str
    """The field it comes after, in the table's order."""
    cli: Cli | None = None
    stanza: Stanza | None = None


INPUTS = (
    Input("passfile", "password", cli(
        "-o", "--passfile", help="file whose first line is the password"),
        Stanza("ucarp-passfile", Kind.PATH)),
    Input("config", "daemonize", cli(
        "--config", help="JSON file of options (root-only readable; may hold the password)")),
    # the name the group's scripts get (MASTER: ifup NAME:ucarp); default the stanza's own
    Input("alias", "track_interface", stanza=Stanza("ucarp-alias")),
)


# -- what derives from it ----------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One option of the table, whatever its origin."""

    name: str
    cli: Cli | None = None
    stanza: Stanza | None = None
    per_engine: bool = False
    exists: Exists | None = None
    is_field: bool = True


def _marker(metadata: list[Any], kind: type[Any]) -> Any:
    found = [m for m in metadata if isinstance(m, kind)]
    return found[0] if found else None


def _field_rows() -> Iterator[Row]:
    for name, info in Options.model_fields.items():
        meta = info.metadata
        yield Row(name, _marker(meta, Cli), _marker(meta, Stanza), PER_ENGINE in meta,
                  _marker(meta, Exists))


def _rows() -> tuple[Row, ...]:
    rows = list(_field_rows())
    for extra in INPUTS:
        at = [r.name for r in rows].index(extra.after) + 1
        rows.insert(at, Row(extra.name, extra.cli, extra.stanza, is_field=False))
    return tuple(rows)


ROWS = _rows()
"""Every option, in the table's order (the order of help, errors and lists of names)."""
BY_NAME = {row.name: row for row in ROWS}
PER_ENGINE_KEYS = tuple(row.name for row in ROWS if row.per_engine)
"""Keys with one value per engine; every other key belongs to a group."""


def shown_name(name: str) -> str:
    """How an error on the command line or in a --config names the option ``name``."""
    row = BY_NAME.get(name)
    return row.cli.name if row is not None and row.cli is not None else name


# -- this machine ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unmet:
    """A value this machine does not allow: of field ``name`` (its ``index``-th of several)."""

    name: str
    index: int | None
    reason: str


def environment_problems(values: dict[str, Any], skip: frozenset[tuple[Any, ...]] = frozenset(),
                         interfaces: bool = True) -> list[Unmet]:
    """What of ``values`` (as given, field name -> value) this machine refuses: an interface
    that does not exist, a script that is no executable file.  ``skip``: the locations the
    model already refused; ``interfaces=False`` leaves out the interfaces (which ifupdown may
    create only as it brings them up)."""
    unmet: list[Unmet] = []
    for row in ROWS:
        if row.exists is None or row.name not in values or values[row.name] is None \
                or (row.name,) in skip or (row.exists is EXISTS and not interfaces):
            continue
        unmet += _unmet(row.name, row.exists, values[row.name], skip)
    return unmet


def _unmet(name: str, exists: Exists, value: Any,
           skip: frozenset[tuple[Any, ...]]) -> list[Unmet]:
    if exists.each is None:
        typed = _typed(Options.model_fields[name].annotation, value)
        reason = None if typed is None else exists.check(typed)
        return [] if reason is None else [Unmet(name, None, reason)]
    found = []
    for index, item in enumerate(_items(exists, value)):
        typed = None if (name, index) in skip else _typed(exists.each, item)
        reason = None if typed is None else exists.check(typed)
        if reason is not None:
            found.append(Unmet(name, index, reason))
    return found


def _items(exists: Exists, value: Any) -> list[Any]:
    """The values of a field of several, as its model numbers them."""
    try:
        items = exists.items(value) if exists.items is not None else value
    except ValueError:
        return []
    return list(items) if isinstance(items, list | tuple) else []


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _typed(annotation: Any, value: Any) -> Any:
    """``value`` as the model reads it, or None if it does not."""
    key = repr(annotation)
    adapter = _ADAPTERS.get(key)
    if adapter is None:
        adapter = _ADAPTERS[key] = TypeAdapter(annotation)
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None
