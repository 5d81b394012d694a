"""The ``ucarp-*`` options of one interfaces(5) stanza, turned into the engine's :class:`Options`.

The options and defaults are Debian's ucarp hook's (``ucarp-master`` is *preempt*, not "start as
master"), plus the ones its hook ignored or lacked.  Three checks, one after the other:
:func:`missing_options` names what a stanza with any ``ucarp-*`` option must also have (vid,
vip and a password: Debian's hook quietly starts nothing without them, carpd says so and fails);
:class:`UcarpStanza` (derived from the option table, :mod:`carpd.config.options`) knows the option
names, the booleans and what must not be given together; then :func:`carpd.config.validate` checks
every value's range, under the stanza's option names, and this machine (the interfaces exist, the
scripts are executable).  Each problem (:class:`carpd.config.problems.Problem`) names the option,
the value (never the password) and what is allowed; whoever shows it adds the place.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from carpd.config import load
from carpd.config.load import ConfigError, Options
from carpd.config.options import (
    DEFAULT_DOWNSCRIPT,
    DEFAULT_UPSCRIPT,
    ROWS,
    SHARE,
    Kind,
    Row,
    hiding,
)
from carpd.config.problems import HIDDEN, Problem, Problems
from carpd.debian.ifupdown.interfaces import Iface, Interfaces
from carpd.debian.ifupdown.runtime import ALIAS, MAX_LABEL, Group, label, physical

__all__ = ["DEFAULT_DOWNSCRIPT", "DEFAULT_UPSCRIPT", "KNOWN", "OPTION_NAMES", "SHARE", "Problem",
           "StanzaError", "UcarpStanza", "engine_options", "group", "parse"]

PREFIX = "ucarp-"
TRUE = ("yes", "on", "true", "1")
FALSE = ("no", "off", "false", "0")
ALLOWED_BOOLEANS = ", ".join(f"{t}/{f}" for t, f in zip(TRUE, FALSE, strict=True)) + " (any case)"
REQUIRED = ("ucarp-vid", "ucarp-vip", "ucarp-password")


class StanzaError(Problems):
    """The ``ucarp-*`` options of a stanza cannot run; :attr:`problems` says each reason."""


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
InterfaceName = Annotated[Once, AfterValidator(load.interface_name)]
_TEXT_OF = {Kind.TEXT: Once, Kind.PATH: AbsolutePath, Kind.LINES: str,
            Kind.IFNAME: InterfaceName}
"""How each kind of stanza option is written (a flag is :data:`Flag`)."""


class _Rules(BaseModel):
    """What :class:`UcarpStanza` checks beyond each option's own value."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    @model_validator(mode="after")
    def _one_password(self) -> _Rules:
        if getattr(self, "password", None) is not None and \
                getattr(self, "passfile", None) is not None:
            raise PydanticCustomError("one_password", "give one of them, not both",
                                      {"option": "ucarp-password",
                                       "label": "ucarp-password and ucarp-passfile"})
        return self

    _password_never_in_errors = hiding("ucarp-password")  # last: it wraps every other one


def _stanza_field(row: Row) -> tuple[Any, Any]:
    """The option of ``row`` as the stanza writes it: its type and its default."""
    assert row.stanza is not None
    if row.stanza.kind is Kind.FLAG:
        return Flag, Field(Options.model_fields[row.name].default, alias=row.stanza.name)
    text = _TEXT_OF[row.stanza.kind]
    if row.stanza.default is not None:
        return text, Field(row.stanza.default, alias=row.stanza.name)
    return text | None, Field(None, alias=row.stanza.name, repr=row.name != "password")


UcarpStanza = create_model(  # type: ignore[call-overload]
    "UcarpStanza", __base__=_Rules,
    __doc__="The ``ucarp-*`` options as written; values stay text until :func:`load.build`.",
    **{row.stanza.name.removeprefix(PREFIX).replace("-", "_"): _stanza_field(row)
       for row in ROWS if row.stanza is not None})
"""The ``ucarp-*`` options as written, derived from the option table; values stay text until
:func:`load.build`.  The required ones are optional here: :func:`missing_options` names them,
so that a missing one does not hide the others' problems."""

KNOWN = tuple(row.stanza.name for row in ROWS if row.stanza is not None)
BOOLEANS = frozenset(row.stanza.name for row in ROWS
                     if row.stanza is not None and row.stanza.kind is Kind.FLAG)
OPTION_NAMES: dict[str, str] = {
    "interface": "interface",
    **{row.name: row.stanza.name for row in ROWS if row.stanza is not None and row.is_field}}
"""Options field -> the stanza option a person wrote it as."""
REPEATABLE = tuple(row.stanza.name for row in ROWS
                   if row.stanza is not None and row.stanza.kind is Kind.LINES)
"""Options that may be given more than once (ifupdown joins the values with a newline)."""
_FIELD_OF = {option: name for name, option in OPTION_NAMES.items()}
_STANZA_DEFAULTS = {row.name: row.stanza.default for row in ROWS
                    if row.stanza is not None and row.stanza.default is not None}
"""What a stanza means when it leaves an option out, where that differs from the engine."""


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
    return Problem(f"missing: {needed} needed once any ucarp-* option is given", missing[0],
                   label=_listed(missing))


def _stanza_problem(item: Any, given: Mapping[str, str]) -> Problem:
    option = str(item["loc"][0]) if item["loc"] else None
    reason = str(item["msg"]).removeprefix("Value error, ")
    if item["type"] == "extra_forbidden":
        return Problem(f"unknown option: known are {', '.join(KNOWN)}", option)
    if option is None:  # the stanza as a whole: the error's context names the options
        context = item.get("ctx") or {}
        return Problem(reason, context.get("option"), label=context.get("label"))
    if option == "ucarp-password":
        return Problem(reason, option, HIDDEN)
    return Problem(reason, option, repr(given.get(option, item.get("input"))))


def parse(options: Mapping[str, str]) -> BaseModel:
    """The ``ucarp-*`` options of a stanza (name -> value as ifupdown hands it over)."""
    try:
        stanza: BaseModel = UcarpStanza.model_validate(dict(options))
    except ValidationError as error:
        raise StanzaError([_stanza_problem(item, options) for item in error.errors()]) \
            from None
    return stanza


def check_stanza(name: str, family: str) -> list[Problem]:
    """What rules out an engine whatever the ``ucarp-*`` values are.  An alias stanza
    (``iface eth0:1``, Debian's form for several groups) is fine: its group runs in eth0's
    engine."""
    problems = []
    if family != "inet":
        problems.append(Problem(f"ucarp-* options on an {family} stanza: carpd runs on IPv4 "
                                "only (IPv6 is not supported yet): put them in the inet stanza "
                                f"of {name}"))
    if name.endswith(f":{ALIAS}"):
        problems.append(Problem(f"ucarp-* options on {name}, the stanza a default action "
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
        load.interface_name(given)
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
    return Problem(f"must be {whose} or an alias of it ({on}:NAME, without blanks, '/' or a "
                   f"trailing ':{ALIAS}'): the default actions bring up NAME:{ALIAS}{hint}",
                   "ucarp-alias", repr(given))


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
    value = repr(given) if given is not None else None
    room = MAX_LABEL - len(os.fsencode(label(on))) - 1  # bytes left for NAME in on:NAME:ucarp
    instead = (f"give a shorter ucarp-alias ({on}:NAME, NAME at most {room} byte(s)), or name "
               "your own ucarp-upscript and ucarp-downscript" if room > 0 else
               f"{on} leaves no room for an alias name: name your own ucarp-upscript and "
               "ucarp-downscript")
    return [Problem(f"the default action brings up {label(chosen)!r}, a label of "
                    f"{len(os.fsencode(label(chosen)))} bytes, but the kernel allows at most "
                    f"{MAX_LABEL}: {instead}", option, value)]


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
        return load.read_passfile(raw["ucarp-passfile"])
    except ConfigError as error:
        raise StanzaError([p.named("ucarp-passfile") for p in error.problems]) from None


def _value(option: str, value: str) -> Any:
    """What :func:`load.build` takes for one option as ifupdown hands it over."""
    if option in BOOLEANS:
        return _flag(value)
    if option in REPEATABLE:
        return value.split("\n")  # one value per line (config splits each further)
    return value


def _given(raw: Mapping[str, str], reported: set[str | None]) -> dict[str, Any]:
    """The values :func:`load.build` should check: those not reported wrong already."""
    given: dict[str, Any] = dict(_STANZA_DEFAULTS)
    for option, value in raw.items():
        if option in reported or option not in _FIELD_OF:
            continue
        given[_FIELD_OF[option]] = _value(option, value)
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
    that the interfaces exist, as they may be created only when ifupdown brings them up."""
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
    given["interface"] = interface
    given["vip_interface"] = None if "ucarp-vip-interface" in reported else vip_interface(
        interface, raw)
    given["state_dir"] = state_dir
    given = {name: value for name, value in given.items() if value is not None}
    options, found = load.validate(given, OPTION_NAMES, interfaces=check_interface)
    problems += [p for p in found if p.option not in reported]
    if problems or options is None:
        raise StanzaError(problems)
    return options


def readable_password(iface: Iface) -> Problem | None:
    """A warning at the line of ucarp-password when the stanza's password is in a file every
    user can read."""
    for option in iface.options:
        if option.name != "ucarp-password":
            continue
        try:
            mode = stat.S_IMODE(os.stat(option.where.file).st_mode)
        except OSError:
            continue
        if mode & 0o004:
            return Problem(f"{option.where.file} is readable by every user (mode {mode:o}), so "
                           "is the password: chmod o-r it, or move the password to a root-only "
                           "file named by ucarp-passfile", "ucarp-password",
                           file=option.where.file, line=option.where.line, stanza=str(iface),
                           warning=True)
    return None


def password_exposed(parsed: Interfaces, logical: str, family: str) -> str | None:
    """The warning of :func:`readable_password` for the stanza ``logical``, without its place."""
    for iface in parsed.find(logical, family):
        warning = readable_password(iface)
        if warning:
            return warning.message
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
    return Problem(f"the default action brings up and down the stanza 'iface {alias} inet "
                   "static', which is missing: add it, or name your own scripts",
                   label=" and ".join(defaults))
