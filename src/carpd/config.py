"""Every value a person gives carpd, in one pydantic model, and ucarp's command line onto it.

Errors name the option, the value and what is allowed, and are raised before anything starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import stat
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
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from carpd import identity, wire

FACILITIES = (
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog", "user",
    "uucp", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7", "none",
)

Octet = Annotated[int, Field(ge=0, le=255)]
Count = Annotated[int, Field(ge=1, le=255)]
Seconds = Annotated[float, Field(gt=0, le=3600)]
IFNAMSIZ = 16
"""Linux's limit on an interface name, its final NUL included."""


HIDDEN = "<hidden>"


class ConfigError(ValueError):
    """A value a person gave is not allowed; the message says which, and what is."""


class Secret(bytes):
    """The password: bytes wherever it is used (HMAC key), but never shown by repr() or str(),
    so no log line, traceback or error message can carry it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Secret({HIDDEN})"

    __str__ = __repr__


def _hidden(value: Any, loc: tuple[int | str, ...], key: str) -> Any:
    if loc and loc[0] == key:
        return HIDDEN
    if isinstance(value, dict) and key in value:
        return {**value, key: HIDDEN}
    return value


def without_secret(error: ValidationError, key: str) -> ValidationError:
    """``error`` with the value of ``key`` replaced wherever pydantic kept the input (a field's
    own error, or a whole-model error whose input is every field).  Each error keeps its type,
    location and message."""
    details: list[InitErrorDetails] = [
        {"type": PydanticCustomError(item["type"], item["msg"]), "loc": item["loc"],
         "input": _hidden(item["input"], item["loc"], key)}
        for item in error.errors(include_url=False)]
    return ValidationError.from_exception_data(error.title, details, hide_input=True)


def _executable_file(path: Path) -> bool:
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


def _runnable(command: tuple[str, ...]) -> tuple[str, ...]:
    if not command or not command[0]:
        raise ValueError("no command given: allowed: an absolute path to an executable file, "
                         "then its arguments")
    if not command[0].startswith("/"):
        raise ValueError("the command must start with an absolute path to an executable file")
    if not _executable_file(Path(command[0])):
        raise ValueError(f"{command[0]} must be an existing executable file")
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


Command = Annotated[tuple[str, ...], BeforeValidator(_words), AfterValidator(_runnable)]
InterfaceName = Annotated[str, AfterValidator(interface_name)]


class Options(BaseModel):
    """What one carpd engine runs with."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    interface: str
    srcip: IPv4Address | None = None
    vhid: Annotated[int, Field(ge=1, le=255)] = 1
    password: Annotated[bytes, AfterValidator(Secret)] = Field(
        repr=False, min_length=1, max_length=wire.MAX_PASSWORD_BYTES)
    addr: IPv4Address
    preempt: bool = False
    neutral: bool = False
    advbase: Octet = 1
    advskew: Octet = 0
    deadratio: Annotated[int, Field(ge=1, le=255)] = 3
    upscript: Path | None = None
    downscript: Path | None = None
    xparam: str | None = None
    debug: bool = False
    shutdown: bool = False
    daemonize: bool = False
    facility: str = "daemon"
    ignoreifstate: bool = False
    nomcast: bool = False
    mcast: IPv4Address = wire.DEFAULT_GROUP
    pidfile: Path | None = None
    ucarp_mac: bool = False
    script_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    drain: Annotated[float, Field(ge=0, le=300)] = 2.0
    drain_connections: Annotated[float, Field(ge=0, le=86400)] = 0.0
    """After a planned release, keep the VIP until the TCP connections to it that existed at
    the hand-over have closed, at most this many seconds (0: the fixed ``drain``)."""
    reannounce: Annotated[float, Field(ge=0, le=86400)] = 0.0
    state_dir: Path = Path("/run/carpd")
    password_on_command_line: bool = False
    replay_check: bool = True
    track_script: Annotated[tuple[Command, ...], BeforeValidator(_commands)] = ()
    track_interval: Seconds = 1.0
    track_timeout: Seconds | None = None
    track_fall: Count = 2
    track_rise: Count = 2
    track_interface: Annotated[tuple[InterfaceName, ...],
                               BeforeValidator(_interface_names)] = ()
    persist_dir: Path = Path("/var/lib/carpd")
    script_interface: Annotated[str, AfterValidator(_script_interface)] | None = None
    """The first argument of this group's scripts (default: the VIP's interface)."""
    vip_interface: InterfaceName | None = None
    """The interface the VIP lives on (default: the interface the adverts go out on)."""

    @property
    def scripts_interface(self) -> str:
        """The scripts put the VIP where it lives: by default on the VIP's interface."""
        return self.script_interface or self.vip_on

    @property
    def vip_on(self) -> str:
        return self.vip_interface or self.interface

    @field_validator("interface", "vip_interface")
    @classmethod
    def _interface_exists(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            socket.if_nametoindex(value)
        except OSError:
            raise ValueError("no such network interface") from None
        return value

    @field_validator("upscript", "downscript")
    @classmethod
    def _executable(cls, value: Path | None) -> Path | None:
        if value is not None and not _executable_file(value):
            raise ValueError("must be an existing executable file")
        return value

    @field_validator("facility")
    @classmethod
    def _known_facility(cls, value: str) -> str:
        if value.lower() not in FACILITIES:
            raise ValueError("allowed: " + ", ".join(FACILITIES))
        return value.lower()

    @field_validator("mcast")
    @classmethod
    def _multicast(cls, value: IPv4Address) -> IPv4Address:
        if not value.is_multicast:
            raise ValueError("must be an IPv4 multicast address (224.0.0.0/4)")
        return value

    @model_validator(mode="after")
    def _interval_not_zero(self) -> Options:
        if self.advbase == 0 and self.advskew == 0:
            raise ValueError("advbase and advskew cannot both be 0")
        if self.advbase == wire.BOW_OUT and self.advskew == wire.BOW_OUT:
            raise ValueError("advbase 255 with advskew 255 is the bow-out's timing (\"I am "
                             "stopping, take over\"): lower either")
        return self

    # Defined last, so it wraps every other validator, the whole-model ones too.
    @model_validator(mode="wrap")
    @classmethod
    def _password_never_in_errors(cls, data: Any,
                                  handler: ValidatorFunctionWrapHandler) -> Options:
        try:
            options: Options = handler(data)
        except ValidationError as error:
            raise without_secret(error, "password") from None
        return options


# option name in the model -> how a person wrote it on ucarp's command line
FLAGS: dict[str, str] = {
    "interface": "-i/--interface", "srcip": "-s/--srcip", "vhid": "-v/--vhid",
    "password": "-p/--pass or -o/--passfile", "addr": "-a/--addr", "advbase": "-b/--advbase",
    "advskew": "-k/--advskew", "deadratio": "-r/--deadratio", "upscript": "-u/--upscript",
    "downscript": "-d/--downscript", "facility": "-f/--facility", "mcast": "-m/--mcast",
    "xparam": "-x/--xparam", "pidfile": "--pidfile", "script_timeout": "--script-timeout",
    "state_dir": "--state-dir", "drain": "--drain", "reannounce": "--reannounce",
    "drain_connections": "--drain-connections",
    "replay_check": "--no-replay-check", "track_script": "--track-script",
    "track_interval": "--track-interval", "track_timeout": "--track-timeout",
    "track_fall": "--track-fall", "track_rise": "--track-rise",
    "track_interface": "--track-interface", "persist_dir": "--persist-dir",
    "script_interface": "script_interface", "vip_interface": "--vip-interface",
}


STOP_MARGIN = 15.0
"""Seconds beyond the drain and the down script that stopping an engine may take."""


def stop_budget(drain: float, script_timeout: float) -> float:
    """How long stopping an engine may take before it is killed: the drain, then the down
    script, then the margin.  The systemd unit (through EXTEND_TIMEOUT_USEC) and carpd's own
    supervisor both wait this long."""
    return drain + script_timeout + STOP_MARGIN


def describe(error: ValidationError, flags: dict[str, str], given: dict[str, Any]) -> str:
    """One line per problem: the option, the value given and what is allowed."""
    lines = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else ""
        flag = flags.get(name, name or "options")
        message = str(item["msg"]).removeprefix("Value error, ")
        # one of several values (a --track-script of two): that one
        one_of_several = len(item["loc"]) > 1 and isinstance(item["loc"][1], int)
        shown = item.get("input") if one_of_several else given.get(name, item.get("input"))
        value = HIDDEN if name == "password" else repr(_plain(shown))
        lines.append(f"{flag}: {value}: {message}" if name else f"{flag}: {message}")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def build(given: dict[str, Any], flags: dict[str, str] = FLAGS) -> Options:
    """Validate ``given`` into :class:`Options`, or raise :class:`ConfigError`."""
    try:
        return Options(**given)
    except ValidationError as error:
        raise ConfigError(describe(error, flags, given)) from None


def private_file_problem(st: os.stat_result) -> str | None:
    """Why a file that may hold the password cannot be trusted with it (as ssh judges keys):
    it must belong to root (or to the user carpd runs as) and be unreadable to others."""
    owners = {0, os.geteuid()}
    if st.st_uid not in owners:
        also = f" or uid {os.geteuid()}" if os.geteuid() else ""
        return f"is owned by uid {st.st_uid}, not root{also}: chown root it"
    if st.st_mode & 0o077:
        what = "read" if st.st_mode & 0o044 else "change or run"
        return (f"mode {stat.S_IMODE(st.st_mode):o} lets group or others {what} it: "
                "chmod 600 it")
    return None


def _read_private(path: str, flag: str) -> bytes:
    """The content of a root-only file, checked on the file opened (no race with a rename)."""
    try:
        with open(path, "rb") as f:
            problem = private_file_problem(os.fstat(f.fileno()))
            if problem is not None:
                raise ConfigError(f"{flag}: {path!r}: {problem}")
            return f.read()
    except OSError as error:
        raise ConfigError(f"{flag}: {path!r}: cannot be read: {error.strerror}") from None


def read_passfile(path: str) -> bytes:
    """The first line of a password file, without its newline (as ucarp reads it); refused
    unless only root can read it."""
    first = _read_private(path, "-o/--passfile").split(b"\n", 1)[0]
    return first.rstrip(b"\r\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit 2 with a usage dump
        raise ConfigError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="carpd", description="CARP virtual-IP failover, a drop-in for ucarp.",
                argument_default=argparse.SUPPRESS)
    a = p.add_argument
    flag = "store_true"
    a("-i", "--interface", help="network interface to run on (required)")
    a("-s", "--srcip", help="our own address on it (default: its primary IPv4 address)")
    a("-v", "--vhid", help="virtual host id, 1..255 (default 1)")
    a("-p", "--pass", dest="password", help="password (visible in ps: prefer --passfile)")
    a("-o", "--passfile", help="file whose first line is the password")
    a("-P", "--preempt", action=flag, help="take over from a slower master")
    a("-n", "--neutral", action=flag, help="do not run the down script at start")
    a("-a", "--addr", help="the virtual IP address (required)")
    a("-b", "--advbase", help="advert base interval in seconds, 0..255 (default 1)")
    a("-k", "--advskew", help="advert skew in 1/256 s, 0..255 (default 0)")
    a("-x", "--xparam", help="extra argument for the scripts")
    a("-u", "--upscript", help="run as SCRIPT IFACE VIP [XPARAM] on becoming MASTER")
    a("-d", "--downscript", help="run as SCRIPT IFACE VIP [XPARAM] on leaving MASTER")
    a("-D", "--debug", action=flag, help="log debug messages")
    a("-r", "--deadratio", help="master-down ratio, 1..255 (default 3)")
    a("-z", "--shutdown", action=flag,
      help="accepted for ucarp: carpd always runs the down script when it exits as MASTER")
    a("-B", "--daemonize", action=flag, help="run in the background (writes a pidfile)")
    a("-f", "--facility", help="syslog facility, or 'none' (default daemon)")
    a("-S", "--ignoreifstate", action=flag, help="ignore carrier changes")
    a("-M", "--nomcast", action=flag, help="send adverts to Ethernet broadcast")
    a("-m", "--mcast", help=f"multicast group (default {wire.DEFAULT_GROUP})")
    a("--config", help="JSON file of options (root-only readable; may hold the password)")
    a("--pidfile", help="pidfile with -B (default STATE_DIR/IFACE.VHID.pid)")
    a("--ucarp-mac", action=flag,
      help="send adverts from ucarp's 00:00:5e:00:00:VHID instead of the NIC's MAC")
    a("--script-timeout", help="seconds a script may run (default 30)")
    a("--state-dir", help="runtime folder (default /run/carpd)")
    a("--drain", help="seconds to keep the VIP after a planned release, not answering ARP for "
      "it, so requests in flight finish (default 2; 0 to release at once)")
    a("--drain-connections", metavar="SECONDS",
      help="after a planned release keep the VIP until the TCP connections to it that existed "
      "at the hand-over have closed, at most this long (default 0: --drain alone)")
    a("--reannounce", help="while MASTER, gratuitous ARP every this many seconds (default 0: "
      "off)")
    a("--no-replay-check", dest="replay_check", action="store_false",
      help="accept adverts whose counter is not newer (replay protection off)")
    a("--track-script", action="append", metavar="'PATH [ARGS]'",
      help="healthy while this command exits 0 (repeatable: all must pass)")
    a("--track-interval", metavar="SECONDS", help="run the checks this often (default 1)")
    a("--track-timeout", metavar="SECONDS",
      help="a check running longer fails (default: the interval, at least 1 s)")
    a("--track-fall", metavar="N", help="failures in a row that make a check fail (default 2)")
    a("--track-rise", metavar="N", help="passes in a row that make it pass again (default 2)")
    a("--track-interface", action="append", metavar="IFACE",
      help="unhealthy while IFACE has no carrier (repeatable; also \"eth1 eth2\")")
    a("--vip-interface", metavar="IFACE",
      help="hold the VIP on IFACE, adverts staying on -i (a dedicated cluster network; "
      "default: the -i interface)")
    a("--persist-dir", metavar="DIR",
      help="where demotions that survive a reboot are kept (default /var/lib/carpd)")
    return p


def read_config_file(path: str) -> dict[str, Any]:
    """A JSON object of option names; refused unless only root can read it (it may hold the
    password)."""
    raw = _read_private(path, "--config")
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise ConfigError(f"--config: {path!r}: not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path!r}: must hold a JSON object")
    return data


def _password(args: dict[str, Any]) -> None:
    """Turn --pass/--passfile into the model's bytes ``password``."""
    passfile = args.pop("passfile", None)
    if passfile is not None and args.get("password") is not None:
        raise ConfigError("-p/--pass and -o/--passfile: give one of them, not both")
    if passfile is not None:
        args["password"] = read_passfile(str(passfile))
    elif isinstance(args.get("password"), str):
        args["password"] = os.fsencode(args["password"])


def _per_namespace(args: dict[str, Any]) -> None:
    """Under ``ip netns exec NAME`` the default folders are the namespace's own (see
    :mod:`carpd.identity`), so that each namespace may run its own engine for a vhid."""
    for name in ("state_dir", "persist_dir"):
        if name not in args:
            args[name] = str(identity.namespace_folder(Options.model_fields[name].default))


INTERFACE_KEYS = ("interface", "mcast", "nomcast", "ignoreifstate", "facility", "debug",
                  "daemonize", "pidfile", "state_dir", "persist_dir")
"""Keys with one value per engine; every other key belongs to a group."""


@dataclass(frozen=True)
class EngineConfig:
    """What one engine runs: its groups (each a complete :class:`Options`, the interface-level
    keys the same in all) and the --config file they came from, if any."""

    groups: tuple[Options, ...]
    config_file: str | None = None

    @property
    def first(self) -> Options:
        return self.groups[0]

    @property
    def interface(self) -> str:
        return self.groups[0].interface

    @property
    def vhids(self) -> tuple[int, ...]:
        return tuple(g.vhid for g in self.groups)


def from_command_line(argv: list[str]) -> Options:
    """Parse ucarp's command line (plus ``--config``) into validated :class:`Options`: of a
    ``--config`` file listing several groups, every group is checked and the first returned
    (:func:`engine_config` returns them all)."""
    return engine_config(argv).first


def engine_config(argv: list[str]) -> EngineConfig:
    """Parse ucarp's command line (plus ``--config``, flat or with ``"groups"``) into the
    validated groups of one engine, or raise :class:`ConfigError`."""
    given = vars(parser().parse_args(argv))
    config_file = given.pop("config", None)
    data = read_config_file(config_file) if config_file else {}
    if "groups" in data:
        return EngineConfig(_groups(data, given, str(config_file)), config_file)
    return EngineConfig((_one_group(data, given),), config_file)


def _one_group(merged: dict[str, Any], given: dict[str, Any]) -> Options:
    """Today's form: the file's keys, overridden by the command line's."""
    if "password" in given and "passfile" in merged:
        del merged["passfile"]
    if "passfile" in given and "password" in merged:
        del merged["password"]
    merged.update(given)
    merged["password_on_command_line"] = "password" in given
    _per_namespace(merged)
    _password(merged)
    if "password" not in merged:
        raise ConfigError("-p/--pass or -o/--passfile: a password is required")
    return build(merged)


def _groups(data: dict[str, Any], given: dict[str, Any], path: str) -> tuple[Options, ...]:
    entries = data.pop("groups")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"--config: {path!r}: \"groups\" must be a non-empty list of objects")
    for key in data:
        if key not in INTERFACE_KEYS:
            raise ConfigError(f"--config: {path!r}: {key!r} is a group key: set it in each "
                              f"group of \"groups\" (interface keys: {', '.join(INTERFACE_KEYS)})")
    for key in given:
        if key not in INTERFACE_KEYS:
            flag = FLAGS.get(key, "-p/--pass or -o/--passfile" if key == "passfile" else key)
            raise ConfigError(f"{flag}: set it per group in the --config file's \"groups\", "
                              "not on the command line")
    shared = {**data, **given}
    _per_namespace(shared)
    groups = tuple(_group(shared, entry, n, path) for n, entry in enumerate(entries))
    _distinct_vhids(groups, path)
    return groups


def _group(shared: dict[str, Any], entry: Any, n: int, path: str) -> Options:
    where = f"--config: {path!r}: groups[{n}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a JSON object")
    for key in entry:
        if key in INTERFACE_KEYS:
            raise ConfigError(f"{where}: {key!r} is an interface key: set it once, beside "
                              "\"groups\"")
    merged = {**shared, **entry, "password_on_command_line": False}
    where += f" (vhid {entry.get('vhid', 1)})"
    try:
        _password(merged)
        if "password" not in merged:
            raise ConfigError("password or passfile: a password is required")
        return build(merged, {})  # errors name the file's keys
    except ConfigError as error:
        raise ConfigError("\n".join(f"{where}: {line}" for line in str(error).splitlines())) \
            from None


def _distinct_vhids(groups: tuple[Options, ...], path: str) -> None:
    first: dict[int, int] = {}
    for n, group in enumerate(groups):
        m = first.setdefault(group.vhid, n)
        if m != n:
            raise ConfigError(f"--config: {path!r}: groups[{m}] and groups[{n}] both have vhid "
                              f"{group.vhid}: one group per vhid on an interface")
