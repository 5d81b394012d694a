"""The ``ucarp-*`` options of one interfaces(5) stanza, turned into the engine's :class:`Options`.

The options and defaults are Debian's ucarp hook's (``ucarp-master`` is *preempt*, not "start as
master"), plus the ones its hook ignored or lacked.  Three checks, one after the other:
:func:`missing_options` names what a stanza with any ``ucarp-*`` option must also have (vid,
vip and a password: Debian's hook quietly starts nothing without them, carpd says so and fails);
:class:`UcarpStanza` knows the option names, the booleans and what must not be given together;
then :func:`carpd.config.build` checks every value's range, under the stanza's option names.  Each
problem names the option, the value (never the password) and what is allowed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
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
    model_validator,
)

from carpd import config
from carpd.config import ConfigError, Options
from carpd.ifupdown.interfaces import Iface, Interfaces
from carpd.ifupdown.runtime import ALIAS, MAX_LABEL, Group, label, physical

PREFIX = "ucarp-"
SHARE = Path("/usr/share/carpd")
DEFAULT_UPSCRIPT = SHARE / "vip-up"
DEFAULT_DOWNSCRIPT = SHARE / "vip-down"
TRUE = ("yes", "on", "true", "1")
FALSE = ("no", "off", "false", "0")
ALLOWED_BOOLEANS = ", ".join(f"{t}/{f}" for t, f in zip(TRUE, FALSE, strict=True)) + " (any case)"
REQUIRED = ("ucarp-vid", "ucarp-vip", "ucarp-password")


@dataclass(frozen=True)
class Problem:
    option: str | None
    """The ``ucarp-*`` option at fault, or None when it is the stanza as a whole."""
    message: str

    def __str__(self) -> str:
        return self.message


class StanzaError(ValueError):
    """The ``ucarp-*`` options of a stanza cannot run; :attr:`problems` says each reason."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(p.message for p in problems))
        self.problems = problems


def _once(value: str) -> str:
    # ifupdown joins the values of an option given twice with a newline
    if "\n" in value:
        raise ValueError("given more than once in the stanza: give it once")
    return value


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _once(str(value)).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"not a boolean: allowed: {ALLOWED_BOOLEANS}")


def _absolute(value: str) -> str:
    # the engine runs from /, and whoever ran ifup could have been anywhere
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return value


Once = Annotated[str, AfterValidator(_once)]
Flag = Annotated[bool, BeforeValidator(_flag)]
AbsolutePath = Annotated[str, AfterValidator(_once), AfterValidator(_absolute)]


class UcarpStanza(BaseModel):
    """The ``ucarp-*`` options as written; values stay text until :func:`config.build`."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    # required, but by missing_options(): a missing one here would hide the others' problems
    vid: Once | None = Field(None, alias="ucarp-vid")
    vip: Once | None = Field(None, alias="ucarp-vip")
    password: Once | None = Field(None, alias="ucarp-password", repr=False)
    passfile: AbsolutePath | None = Field(None, alias="ucarp-passfile")
    upscript: AbsolutePath = Field(str(DEFAULT_UPSCRIPT), alias="ucarp-upscript")
    downscript: AbsolutePath = Field(str(DEFAULT_DOWNSCRIPT), alias="ucarp-downscript")
    master: Flag = Field(False, alias="ucarp-master")
    advskew: Once | None = Field(None, alias="ucarp-advskew")
    advbase: Once | None = Field(None, alias="ucarp-advbase")
    deadratio: Once | None = Field(None, alias="ucarp-deadratio")
    nomcast: Flag = Field(False, alias="ucarp-nomcast")
    xparam: Once | None = Field(None, alias="ucarp-xparam")
    facility: Once | None = Field(None, alias="ucarp-facility")
    neutral: Flag = Field(False, alias="ucarp-neutral")
    ignoreifstate: Flag = Field(False, alias="ucarp-ignoreifstate")
    mcast: Once | None = Field(None, alias="ucarp-mcast")
    debug: Flag = Field(False, alias="ucarp-debug")
    srcip: Once | None = Field(None, alias="ucarp-srcip")
    drain: Once | None = Field(None, alias="ucarp-drain")
    drain_connections: Once | None = Field(None, alias="ucarp-drain-connections")
    reannounce: Once | None = Field(None, alias="ucarp-reannounce")
    replay_check: Flag = Field(True, alias="ucarp-replay-check")
    # may be given several times: ifupdown joins the values with a newline
    track_script: str | None = Field(None, alias="ucarp-track-script")
    track_interval: Once | None = Field(None, alias="ucarp-track-interval")
    track_timeout: Once | None = Field(None, alias="ucarp-track-timeout")
    track_fall: Once | None = Field(None, alias="ucarp-track-fall")
    track_rise: Once | None = Field(None, alias="ucarp-track-rise")
    track_interface: str | None = Field(None, alias="ucarp-track-interface")
    # the name the group's scripts get (MASTER: ifup NAME:ucarp); default the stanza's own
    alias: Once | None = Field(None, alias="ucarp-alias")
    # a dedicated cluster network: adverts on the stanza's interface, the VIP on this one
    vip_interface: Annotated[Once, AfterValidator(config.interface_name)] | None = Field(
        None, alias="ucarp-vip-interface")

    @model_validator(mode="after")
    def _one_password(self) -> UcarpStanza:
        if self.password is not None and self.passfile is not None:
            raise ValueError("ucarp-password and ucarp-passfile: give one of them, not both")
        return self

    # Defined last, so it wraps every other validator, the whole-stanza ones too.
    @model_validator(mode="wrap")
    @classmethod
    def _password_never_in_errors(cls, data: Any,
                                  handler: ValidatorFunctionWrapHandler) -> UcarpStanza:
        try:
            stanza: UcarpStanza = handler(data)
        except ValidationError as error:
            raise config.without_secret(error, "ucarp-password") from None
        return stanza


KNOWN = tuple(str(f.alias) for f in UcarpStanza.model_fields.values())
BOOLEANS = frozenset(str(f.alias) for f in UcarpStanza.model_fields.values()
                     if f.annotation is bool)
# Options field -> the stanza option a person wrote it as
OPTION_NAMES: dict[str, str] = {
    "vhid": "ucarp-vid", "addr": "ucarp-vip", "password": "ucarp-password",
    "upscript": "ucarp-upscript", "downscript": "ucarp-downscript", "preempt": "ucarp-master",
    "advskew": "ucarp-advskew", "advbase": "ucarp-advbase", "deadratio": "ucarp-deadratio",
    "nomcast": "ucarp-nomcast", "xparam": "ucarp-xparam", "facility": "ucarp-facility",
    "neutral": "ucarp-neutral", "ignoreifstate": "ucarp-ignoreifstate", "mcast": "ucarp-mcast",
    "debug": "ucarp-debug", "srcip": "ucarp-srcip", "drain": "ucarp-drain",
    "drain_connections": "ucarp-drain-connections",
    "reannounce": "ucarp-reannounce", "replay_check": "ucarp-replay-check",
    "track_script": "ucarp-track-script", "track_interval": "ucarp-track-interval",
    "track_timeout": "ucarp-track-timeout", "track_fall": "ucarp-track-fall",
    "track_rise": "ucarp-track-rise", "track_interface": "ucarp-track-interface",
    "vip_interface": "ucarp-vip-interface", "interface": "interface",
}
REPEATABLE = ("ucarp-track-script", "ucarp-track-interface")
"""Options that may be given more than once (ifupdown joins the values with a newline)."""


def missing_options(raw: Mapping[str, str]) -> list[str]:
    """Which of :data:`REQUIRED` the ``ucarp-*`` options ``raw`` lack (ucarp-passfile stands in
    for ucarp-password)."""
    given = set(raw) | ({"ucarp-password"} if "ucarp-passfile" in raw else set())
    return [name for name in REQUIRED if name not in given]


def _listed(names: list[str]) -> str:
    names = [f"{n} (or ucarp-passfile)" if n == "ucarp-password" else n for n in names]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _missing_problem(missing: list[str]) -> Problem:
    all_three = len(missing) == len(REQUIRED)
    needed = "all three are" if all_three else f"{_listed(list(REQUIRED))} are all"
    return Problem(missing[0], f"{_listed(missing)}: missing: {needed} needed once any ucarp-* "
                               "option is given")


def _stanza_problems(error: ValidationError, given: Mapping[str, str]) -> list[Problem]:
    problems = []
    for item in error.errors():
        option = str(item["loc"][0]) if item["loc"] else None
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            text = f"{option}: unknown option: known are {', '.join(KNOWN)}"
        elif option is None:
            text = message
            option = message.split(":", 1)[0].split()[0]
        elif option == "ucarp-password":
            text = f"{option}: <hidden>: {message}"
        else:
            text = f"{option}: {given.get(option, item.get('input'))!r}: {message}"
        problems.append(Problem(option, text))
    return problems


def parse(options: Mapping[str, str]) -> UcarpStanza:
    """The ``ucarp-*`` options of a stanza (name -> value as ifupdown hands it over)."""
    try:
        return UcarpStanza.model_validate(dict(options))
    except ValidationError as error:
        raise StanzaError(_stanza_problems(error, options)) from None


def check_stanza(name: str, family: str) -> list[Problem]:
    """What rules out an engine whatever the ``ucarp-*`` values are.  An alias stanza
    (``iface eth0:1``, Debian's form for several groups) is fine: its group runs in eth0's
    engine."""
    problems = []
    if family != "inet":
        problems.append(Problem(None, f"ucarp-* options on an {family} stanza: carpd runs on "
                                      "IPv4 only (IPv6 is not supported yet): put them in the "
                                      f"inet stanza of {name}"))
    if name.endswith(f":{ALIAS}"):
        problems.append(Problem(None, f"ucarp-* options on {name}, the stanza a default action "
                                      "brings up on MASTER: put them in the stanza of "
                                      f"{name.removesuffix(':' + ALIAS)}"))
    return problems


def default_actions(raw: Mapping[str, str]) -> list[str]:
    """Which of ucarp-upscript and ucarp-downscript ``raw`` leaves at carpd's default action
    (which brings the stanza ``NAME:ucarp`` up and down)."""
    return [name for name, default in (("ucarp-upscript", DEFAULT_UPSCRIPT),
                                       ("ucarp-downscript", DEFAULT_DOWNSCRIPT))
            if raw.get(name, str(default)) == str(default)]


def vip_interface(name: str, raw: Mapping[str, str]) -> str | None:
    """ucarp-vip-interface, when it names another interface than the stanza's (``eth0`` for a
    group advertising on eth1: a dedicated cluster network); None when the VIP is on the
    stanza's own."""
    given = raw.get("ucarp-vip-interface", "").strip()
    try:
        config.interface_name(given)
    except ValueError:
        return None  # none, or not an interface name: the stanza model says so
    return given if given != physical(name) else None


def vip_on(name: str, raw: Mapping[str, str]) -> str:
    """The interface the group's VIP is on (see :func:`vip_interface`)."""
    return vip_interface(name, raw) or physical(name)


def script_interface(name: str, raw: Mapping[str, str]) -> str:
    """The name the group's scripts get: ucarp-alias, else the VIP's interface when it is
    another (``eth0``: MASTER runs ``ifup eth0:ucarp``), else the stanza's own (``eth0:1``)."""
    alias = raw.get("ucarp-alias", "").strip()
    return alias or vip_interface(name, raw) or name


def _bad_alias(given: str, on: str, elsewhere: bool) -> Problem:
    whose = f"{on} (ucarp-vip-interface)" if elsewhere else on
    hint = ("" if elsewhere or ":" not in given.strip() or physical(given.strip()) == on else
            f"; to hold the VIP on {physical(given.strip())} (a cluster network for the "
            f"adverts), give ucarp-vip-interface {physical(given.strip())} too")
    return Problem("ucarp-alias", f"ucarp-alias: {given!r}: must be {whose} or an alias of it "
                                  f"({on}:NAME, without blanks, '/' or a trailing ':{ALIAS}'): "
                                  f"the default actions bring up NAME:{ALIAS}{hint}")


def alias_problems(name: str, raw: Mapping[str, str]) -> list[Problem]:
    """ucarp-alias must name the VIP's interface (``eth0``: the stanza's, or
    ucarp-vip-interface) or an alias ``eth0:X`` of it, and the label the default actions give
    the VIP (``NAME:ucarp``) must fit the kernel's 15 bytes."""
    given = raw.get("ucarp-alias")
    on = vip_on(name, raw)
    if given is not None and ("\n" in given or not given.strip()):
        return []  # given twice or empty: the stanza model says so
    if given is not None:
        alias = given.strip()
        if (alias != on and not alias.startswith(on + ":")) or alias.endswith(f":{ALIAS}") \
                or any(c.isspace() or c == "/" for c in alias):
            return [_bad_alias(given, on, on != physical(name))]
    chosen = script_interface(name, raw)
    too_long = len(os.fsencode(label(chosen))) - MAX_LABEL
    defaults = default_actions(raw)
    if too_long <= 0 or not defaults:
        return []
    option = "ucarp-alias" if given is not None else defaults[0]
    value = f"{given!r}: " if given is not None else ""
    room = MAX_LABEL - len(os.fsencode(label(on))) - 1  # bytes left for NAME in on:NAME:ucarp
    instead = (f"give a shorter ucarp-alias ({on}:NAME, NAME at most {room} byte(s)), or name "
               "your own ucarp-upscript and ucarp-downscript" if room > 0 else
               f"{on} leaves no room for an alias name: name your own ucarp-upscript and "
               "ucarp-downscript")
    return [Problem(option, f"{option}: {value}the default action brings up {label(chosen)!r}, "
                            f"a label of {len(os.fsencode(label(chosen)))} bytes, but the kernel "
                            f"allows at most {MAX_LABEL}: {instead}")]


def source_address(method: str, address: str | None, srcip: str | None) -> str | None:
    """ucarp-srcip, else a static stanza's own address; None lets the engine use the primary."""
    if srcip is not None:
        return srcip
    if method == "static" and address:
        return address.split()[0].split("/")[0]  # ifupdown2 keeps the prefix length
    return None


def _password(raw: Mapping[str, str]) -> bytes:
    if "ucarp-password" in raw:
        return os.fsencode(raw["ucarp-password"])
    try:
        return config.read_passfile(raw["ucarp-passfile"])
    except ConfigError as error:
        raise StanzaError([Problem("ucarp-passfile", str(error).replace(
            "-o/--passfile", "ucarp-passfile", 1))]) from None


def _value(option: str, value: str) -> Any:
    """What :func:`config.build` takes for one option as ifupdown hands it over."""
    if option in BOOLEANS:
        return _flag(value)
    if option == "ucarp-track-script":
        return value.split("\n")  # one command per line (config splits each into words)
    return value  # ucarp-track-interface: config splits it on whitespace, newlines too


def _given(raw: Mapping[str, str], reported: set[str | None]) -> dict[str, Any]:
    """The values :func:`config.build` should check: those not reported wrong already."""
    field_of = {option: name for name, option in OPTION_NAMES.items()}
    given: dict[str, Any] = {"upscript": str(DEFAULT_UPSCRIPT),
                             "downscript": str(DEFAULT_DOWNSCRIPT)}
    for option, value in raw.items():
        if option in reported or option not in field_of:
            continue
        given[field_of[option]] = _value(option, value)
    if not reported & {"ucarp-password", "ucarp-passfile"}:
        given["password"] = _password(raw)
    return given


def engine_options(raw: Mapping[str, str], *, interface: str, family: str = "inet",
                   method: str = "static", address: str | None = None,
                   state_dir: Path | None = None, check_interface: bool = True) -> Options:
    """The engine's validated options from a stanza's ``ucarp-*`` options (``raw``), or
    :class:`StanzaError` naming every bad value at once.

    ``interface`` is the stanza's name: of an alias (``eth0:1``) the engine runs on eth0.
    ``address`` is the stanza's own (``IF_ADDRESS``); ``check_interface=False`` skips checking
    that the interface exists, as it may be created only when ifupdown brings it up."""
    problems = check_stanza(interface, family) + alias_problems(interface, raw)
    interface = physical(interface)
    missing = missing_options(raw)
    if missing:
        problems.append(_missing_problem(missing))
    try:
        parse(raw)
    except StanzaError as error:
        problems += error.problems
    reported = {p.option for p in problems} | set(missing)
    try:
        given = _given(raw, reported)
    except StanzaError as error:
        problems += error.problems
        reported |= {"ucarp-passfile", "ucarp-password"}
        given = _given(raw, reported)
    own_address = address if family == "inet" else None
    given["srcip"] = None if "ucarp-srcip" in reported else source_address(
        method, own_address, raw.get("ucarp-srcip"))
    # the name of an interface that always exists, to check every other value
    given["interface"] = interface if check_interface else "lo"
    vip_elsewhere = None if "ucarp-vip-interface" in reported else vip_interface(interface, raw)
    given["vip_interface"] = vip_elsewhere if check_interface or vip_elsewhere is None else "lo"
    given["state_dir"] = state_dir
    given = {name: value for name, value in given.items() if value is not None}
    try:
        options = config.build(given, flags=OPTION_NAMES)
    except ConfigError as error:
        problems += [p for p in (Problem(line.split(":", 1)[0], line)
                                 for line in str(error).splitlines())
                     if p.option not in reported]
    if problems:
        raise StanzaError(problems)
    return options.model_copy(update={"interface": interface, "vip_interface": vip_elsewhere})


def readable_password(iface: Iface) -> str | None:
    """``file:line: ucarp-password: ...`` when the stanza's password is in a file every user can
    read."""
    for option in iface.options:
        if option.name != "ucarp-password":
            continue
        try:
            mode = stat.S_IMODE(os.stat(option.where.file).st_mode)
        except OSError:
            continue
        if mode & 0o004:
            return (f"{option.where}: ucarp-password: {option.where.file} is readable by every "
                    f"user (mode {mode:o}), so is the password: chmod o-r it, or move the "
                    "password to a root-only file named by ucarp-passfile")
    return None


def password_exposed(parsed: Interfaces, logical: str, family: str) -> str | None:
    """The warning of :func:`readable_password` for the stanza ``logical``, without its place."""
    for iface in parsed.find(logical, family):
        warning = readable_password(iface)
        if warning:
            return warning.split(": ", 1)[1]
    return None


def group(raw: Mapping[str, str], *, name: str, logical: str | None = None,
          family: str = "inet", method: str = "static", address: str | None = None,
          where: str = "", check_interface: bool = True) -> Group:
    """The group a stanza named ``name`` (``LOGICAL`` ``logical``) defines, or
    :class:`StanzaError` naming every problem."""
    options = engine_options(raw, interface=name, family=family, method=method,
                             address=address, check_interface=check_interface)
    return Group(options, script_interface(name, raw), logical or name, where)


def missing_alias(options: Options, parsed: Interfaces,
                  script_interface: str | None = None) -> Problem | None:
    """The default actions run ``ifup/ifdown NAME:ucarp`` (NAME: the group's script
    interface, default the engine's): that stanza must exist."""
    defaults = [name for name, script, default in (
        ("ucarp-upscript", options.upscript, DEFAULT_UPSCRIPT),
        ("ucarp-downscript", options.downscript, DEFAULT_DOWNSCRIPT)) if script == default]
    alias = label(script_interface or options.interface)
    if not defaults or parsed.find(alias):
        return None
    return Problem(None, f"{' and '.join(defaults)}: the default action brings up and down the "
                         f"stanza 'iface {alias} inet static', which is missing: add it, or "
                         "name your own scripts")
