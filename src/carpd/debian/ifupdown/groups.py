"""Several VIP groups on one interface: the stanzas that define them, and what may not clash.

Two stanza forms put several groups on one interface, each group run by the interface's one
engine:

- Debian's: ``ucarp-*`` options on an alias stanza ``iface eth0:1 inet static``, whose
  ``address`` is this node's source for the group's adverts; MASTER runs ``ifup eth0:1:ucarp``;
- carpd's own: several ``iface eth0 inet ...`` stanzas, each with the ``ucarp-*`` options of one
  group (ifupdown runs the hooks once per stanza), ``ucarp-alias eth0:NAME`` naming what each
  group's MASTER brings up (``ifup eth0:NAME:ucarp``), no address needed.

Whatever the form, on one interface: no vhid twice, no two groups bringing up the same
``NAME:ucarp`` with the default actions, and one value of each interface-wide option (the engine
has one multicast group, one log facility, ...).  Each clash names both stanzas as
``file:line``, so nothing starts and no group is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from carpd.config.options import ROWS
from carpd.config.problems import Problem
from carpd.debian.ifupdown import interfaces
from carpd.debian.ifupdown import stanza as ucarp
from carpd.debian.ifupdown.interfaces import Iface
from carpd.debian.ifupdown.runtime import Group, label, physical

INTERFACE_OPTIONS = {row.name: row.stanza.name for row in ROWS
                     if row.per_engine and row.stanza is not None}
"""The engine's interface-wide settings a stanza may give (Options field -> stanza option)."""


def stanza_options(iface: Iface) -> dict[str, str]:
    """The ucarp-* options as ifupdown passes them (a repeated one joined by newline)."""
    raw: dict[str, str] = {}
    for option in iface.options:
        if option.name.startswith(ucarp.PREFIX):
            earlier = raw.get(option.name)
            raw[option.name] = option.value if earlier is None else f"{earlier}\n{option.value}"
    return raw


def address_of(iface: Iface) -> str | None:
    found = [o.value for o in iface.options if o.name == "address"]
    return found[0] if found else None


def carp_stanzas(parsed: interfaces.Interfaces) -> list[Iface]:
    """The stanzas with ``ucarp-*`` options that ifupdown may bring up (not templates)."""
    return [i for i in parsed.ifaces if has_stanza_options(i) and not parsed.is_template(i)]


def has_stanza_options(iface: Iface) -> bool:
    """Whether ``iface`` has any ``ucarp-*`` option."""
    return any(option.name.startswith(ucarp.PREFIX) for option in iface.options)


def stanza_group(iface: Iface, parsed: interfaces.Interfaces, *,
                 interface: str | None = None, check_interface: bool = False) -> Group:
    """The group ``iface`` defines; :class:`ucarp.StanzaError` with every problem, the missing
    ``NAME:ucarp`` stanza of the default actions included.  ``interface``: the name ifupdown
    brings it up as (IFACE), default the stanza's."""
    group = ucarp.group(stanza_options(iface), name=interface or iface.name, logical=iface.name,
                        family=iface.family, method=iface.method, address=address_of(iface),
                        where=str(iface.where), check_interface=check_interface)
    missing = ucarp.missing_alias(group.options, parsed, group.script_interface)
    if missing:
        raise ucarp.StanzaError([missing])
    return group


@dataclass(frozen=True)
class Defined:
    """A stanza and the group it defines."""

    iface: Iface
    group: Group


def defined(parsed: interfaces.Interfaces, stanzas: Iterable[Iface]) -> list[Defined]:
    """The groups of those ``stanzas`` that define one without a problem (the others' problems
    are reported on their own)."""
    found = []
    for iface in stanzas:
        try:
            found.append(Defined(iface, stanza_group(iface, parsed)))
        except ucarp.StanzaError:
            continue
    return found


def clash(new: Defined, first: Defined) -> list[str]:
    """:func:`clash_problems` as ``file:line: iface ...: message`` lines."""
    return [p.located for p in clash_problems(new, first)]


def clash_problems(new: Defined, first: Defined) -> list[Problem]:
    """Why ``new`` cannot run beside ``first`` (which comes earlier): on one interface, the
    same vhid or interface-wide settings; on any, the same ``NAME:ucarp`` brought up by the
    default actions (a group's VIP may be on another interface than its adverts').  Each
    problem is at ``new``'s stanza and names ``first``'s."""
    a, b = new.group, first.group
    on = a.options.interface
    same_engine = on == b.options.interface
    there = f"{first.iface.where} ({first.iface})"
    problems = []
    if same_engine and a.vhid == b.vhid:
        vid = stanza_options(new.iface).get("ucarp-vid", str(a.vhid))
        problems.append(Problem(f"vhid {a.vhid} on {on} again, first at {there}: each group of "
                                "an interface needs a vhid of its own", "ucarp-vid", repr(vid)))
    elif a.script_interface == b.script_interface and _both_default(new, first):
        vip_on = physical(a.script_interface)
        problems.append(Problem(
            f"the default actions of vhid {a.vhid} bring up {label(a.script_interface)!r}, as "
            f"those of vhid {b.vhid} at {there} do: give each group its own ucarp-alias "
            f"({vip_on}:NAME) and 'iface {vip_on}:NAME:ucarp' stanza", "ucarp-alias",
            repr(a.script_interface)))
    if same_engine:
        for field, option in INTERFACE_OPTIONS.items():
            mine, theirs = getattr(a.options, field), getattr(b.options, field)
            if mine != theirs:
                problems.append(Problem(
                    f"{on} runs one engine for all its groups, and vhid {b.vhid} at {there} has "
                    f"{_shown(theirs)!r}: give every group of the interface the same value",
                    option, repr(_shown(mine)), field=field))
    where = new.iface.where
    return [p.at(where.file, where.line, str(new.iface)) for p in problems]


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _both_default(new: Defined, first: Defined) -> bool:
    return bool(ucarp.default_actions(stanza_options(new.iface))
                and ucarp.default_actions(stanza_options(first.iface)))


def conflicts(parsed: interfaces.Interfaces, stanzas: Iterable[Iface]) -> list[Problem]:
    """Every clash between the groups of ``stanzas`` (see :func:`clash_problems`), each
    reported once, at the later stanza."""
    problems: list[Problem] = []
    earlier: dict[str, list[Defined]] = {}
    bringing_up: dict[str, list[Defined]] = {}
    """script interface -> the groups of every interface whose scripts get it"""
    for item in defined(parsed, stanzas):
        if item.iface.family != "inet":
            continue
        on = item.group.options.interface
        same = earlier.setdefault(on, [])
        for first in same:
            problems += clash_problems(item, first)
        same.append(item)
        alike = bringing_up.setdefault(item.group.script_interface, [])
        for first in alike:
            if first.group.options.interface != on:
                problems += clash_problems(item, first)
        alike.append(item)
    return problems


def conflicts_of(parsed: interfaces.Interfaces, logical: str, vhid: int | None) -> list[str]:
    """The clashes that involve the stanza ``logical`` of vhid ``vhid`` (what ``ifup logical``
    brings up) and any other stanza of its interface."""
    candidates = carp_stanzas(parsed)
    vip_on = {physical(_scripts_name(i)) for i in candidates if i.name == logical}
    # the stanzas of its interface, and those whose VIP is on the same interface as its own
    stanzas = [i for i in candidates if physical(i.name) == physical(logical)
               or physical(_scripts_name(i)) in vip_on]
    items = [d for d in defined(parsed, stanzas) if d.iface.family == "inet"]
    mine = {id(d) for d in items
            if d.iface.name == logical and (vhid is None or d.group.vhid == vhid)}
    problems: list[str] = []
    for later_at, later in enumerate(items):
        for first in items[:later_at]:
            if id(later) in mine or id(first) in mine:
                problems += clash(later, first)
    return problems


def _scripts_name(iface: Iface) -> str:
    """The name the scripts of ``iface``'s group get, read off its options (no validation)."""
    return ucarp.script_interface(iface.name, stanza_options(iface))


def check_iface(iface: Iface, parsed: interfaces.Interfaces) -> list[Problem]:
    """Each problem of one stanza's ``ucarp-*`` options, at the line of the option at fault
    (``carpctl check``)."""
    try:
        stanza_group(iface, parsed)
    except ucarp.StanzaError as error:
        return [p.at(_where(iface, p).file, _where(iface, p).line, str(iface))
                for p in error.problems]
    return []


def _where(iface: Iface, problem: Problem) -> interfaces.Where:
    """The line of the option at fault: of an option given several times (ucarp-track-script),
    the one whose value the problem shows, else the last; the stanza's for the stanza as a
    whole."""
    lines = [o for o in iface.options if o.name == problem.option]
    if not lines:
        return iface.where
    quoting = [o for o in lines if problem.value in {repr(value)
                                                      for value in (o.value, *o.value.split())}]
    return (quoting or lines)[-1].where


def where_of(parsed: interfaces.Interfaces, logical: str, vhid: int) -> str:
    """``file:line`` of the stanza ``logical`` whose group is vhid ``vhid`` ("" if none)."""
    for item in defined(parsed, (i for i in carp_stanzas(parsed) if i.name == logical)):
        if item.group.vhid == vhid:
            return str(item.iface.where)
    return ""
