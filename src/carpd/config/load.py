"""ucarp's command line (plus ``--config``) onto the option table's model, and checking it.

The options themselves (types, ranges, defaults, flags, help) are declared once, in
:mod:`carpd.config.options`; this module derives the command line from them, reads the files that
may hold the password and validates: first the model (what a person gave), then this machine (the
interfaces exist, the scripts are executable files).  Every problem is a
:class:`carpd.config.problems.Problem` naming the option, the value and what is allowed; all are
raised at once, before anything starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from carpd.config.options import (
    BY_NAME,
    FACILITIES,
    IFNAMSIZ,
    PER_ENGINE_KEYS,
    ROWS,
    Options,
    environment_problems,
    interface_name,
    shown_name,
    without_secret,
)
from carpd.config.problems import HIDDEN, ConfigError, Problem
from carpd.engine import identity
from carpd.engine.settings import STOP_MARGIN, EngineGroups, Secret, stop_budget

__all__ = ["FACILITIES", "FLAGS", "HIDDEN", "IFNAMSIZ", "INTERFACE_KEYS", "STOP_MARGIN",
           "ConfigError", "EngineConfig", "Options", "Secret", "build", "engine_config",
           "from_command_line",
           "interface_name", "parser", "read_passfile", "stop_budget", "validate",
           "without_secret"]


FLAGS: dict[str, str] = {row.name: shown_name(row.name) for row in ROWS if row.is_field}
"""Option name in the model -> how a person writes it on ucarp's command line."""


def _problem(item: Any, names: Mapping[str, str], given: Mapping[str, Any]) -> Problem:
    """One of pydantic's errors as a problem under the names the person used."""
    loc = item["loc"]
    reason = str(item["msg"]).removeprefix("Value error, ")
    if not loc:  # the options together
        return Problem(reason, "options")
    name = str(loc[0])
    # one of several values (a --track-script of two): that one
    index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    shown = item.get("input") if index is not None else given.get(name, item.get("input"))
    return Problem(reason, names.get(name, name), _shown(name, shown), field=name, index=index)


def _shown(name: str, value: Any) -> str:
    return HIDDEN if name == "password" else repr(_plain(value))


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _in_table_order(problem: Problem) -> tuple[int, int]:
    """Options in the table's order, each value of several in its own; the options together
    last."""
    order = list(BY_NAME).index(problem.field) if problem.field in BY_NAME else len(BY_NAME)
    return (order, -1 if problem.index is None else problem.index)


def validate(given: Mapping[str, Any], names: Mapping[str, str] = FLAGS, *,
             interfaces: bool = True) -> tuple[Options | None, list[Problem]]:
    """``given`` (field name -> value) as :class:`Options`, and every problem of it: the
    model's, then this machine's (``interfaces=False``: not whether the interfaces exist).  The
    options are None when there is any problem.  ``names``: how to name each field (default:
    its command-line flags)."""
    options: Options | None = None
    problems: list[Problem] = []
    refused: frozenset[tuple[Any, ...]] = frozenset()
    try:
        options = Options(**given)
    except ValidationError as error:
        items = error.errors()
        refused = frozenset(tuple(item["loc"]) for item in items)
        problems = [_problem(item, names, given) for item in items]
    for unmet in environment_problems(dict(given), refused, interfaces):
        value = given[unmet.name]
        if unmet.index is not None:
            value = _values(unmet.name, value)[unmet.index]
        problems.append(Problem(unmet.reason, names.get(unmet.name, unmet.name),
                                _shown(unmet.name, value), field=unmet.name, index=unmet.index))
    problems.sort(key=_in_table_order)
    return (None if problems else options), problems


def _values(name: str, value: Any) -> list[Any]:
    exists = BY_NAME[name].exists
    items = exists.items(value) if exists is not None and exists.items else value
    return list(items)


def build(given: Mapping[str, Any], flags: Mapping[str, str] = FLAGS, *,
          interfaces: bool = True) -> Options:
    """Validate ``given`` into :class:`Options`, or raise :class:`ConfigError` with every
    problem (see :func:`validate`)."""
    options, problems = validate(given, flags, interfaces=interfaces)
    if options is None:
        raise ConfigError(problems)
    return options


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
                raise ConfigError(Problem(problem, flag, repr(path)))
            return f.read()
    except OSError as error:
        raise ConfigError(Problem(f"cannot be read: {error.strerror}", flag, repr(path))) \
            from None


def read_passfile(path: str) -> bytes:
    """The first line of a password file, without its newline (as ucarp reads it); refused
    unless only root can read it."""
    first = _read_private(path, "-o/--passfile").split(b"\n", 1)[0]
    return first.rstrip(b"\r\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit 2 with a usage dump
        raise ConfigError(message)


def parser() -> argparse.ArgumentParser:
    """ucarp's command line, plus carpd's own options: one argument per option of the table
    that has flags (:class:`carpd.config.options.Cli`), in the table's order."""
    p = _Parser(prog="carpd", description="CARP virtual-IP failover, a drop-in for ucarp.",
                argument_default=argparse.SUPPRESS)
    for row in ROWS:
        if row.cli is None:
            continue
        extra: dict[str, Any] = {}
        if row.cli.action is not None:
            extra["action"] = row.cli.action
        if row.cli.metavar is not None:
            extra["metavar"] = row.cli.metavar
        p.add_argument(*row.cli.flags, dest=row.name, help=row.cli.help, **extra)
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
        raise ConfigError(Problem("give one of them, not both", "-p/--pass",
                                  label="-p/--pass and -o/--passfile"))
    if passfile is not None:
        args["password"] = read_passfile(str(passfile))
    elif isinstance(args.get("password"), str):
        args["password"] = os.fsencode(args["password"])


def _per_namespace(args: dict[str, Any]) -> None:
    """Under ``ip netns exec NAME`` the default folders are the namespace's own (see
    :mod:`carpd.engine.identity`), so that each namespace may run its own engine for a vhid."""
    for name in ("state_dir", "persist_dir"):
        if name not in args:
            args[name] = str(identity.namespace_folder(Options.model_fields[name].default))


INTERFACE_KEYS = PER_ENGINE_KEYS
"""Keys with one value per engine; every other key belongs to a group."""


class EngineConfig(EngineGroups[Options]):
    """What one engine runs, validated: its groups, each a complete :class:`Options` (the
    interface-level keys the same in all), and the --config file they came from, if any."""


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
    return EngineConfig((_one_group(data, given),), config_file, "password" in given)


def _one_group(merged: dict[str, Any], given: dict[str, Any]) -> Options:
    """Today's form: the file's keys, overridden by the command line's."""
    if "password" in given and "passfile" in merged:
        del merged["passfile"]
    if "passfile" in given and "password" in merged:
        del merged["password"]
    merged.update(given)
    _per_namespace(merged)
    _password(merged)
    if "password" not in merged:
        raise ConfigError(Problem("a password is required", "-p/--pass or -o/--passfile"))
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
    merged = {**shared, **entry}
    where += f" (vhid {entry.get('vhid', 1)})"
    try:
        _password(merged)
        if "password" not in merged:
            raise ConfigError(Problem("a password is required", "password or passfile"))
        return build(merged, {})  # errors name the file's keys
    except ConfigError as error:
        raise ConfigError([dataclasses.replace(p, stanza=where) for p in error.problems]) \
            from None


def _distinct_vhids(groups: tuple[Options, ...], path: str) -> None:
    first: dict[int, int] = {}
    for n, group in enumerate(groups):
        m = first.setdefault(group.vhid, n)
        if m != n:
            raise ConfigError(f"--config: {path!r}: groups[{m}] and groups[{n}] both have vhid "
                              f"{group.vhid}: one group per vhid on an interface")
