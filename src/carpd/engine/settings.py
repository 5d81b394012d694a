"""What a running engine sees of its options: plain, already validated data, no pydantic.

Validation (pydantic, :mod:`carpd.config`) runs in a short-lived process of its own
(:mod:`carpd.config.validate`) at start and at each reload; the engine reads back what it made as
JSON (:func:`engine_settings_from_json`), so that its long-running process never loads
pydantic (issue 9: memory).  :class:`Settings` is the option table's
(:class:`carpd.config.options.Options`) fields, types and defaults, written here by
``make settings`` (:mod:`carpd.config.write_settings`) between the marked lines: the table stays
the one place an option is declared, and tests/unit/test_option_table.py fails when this file is
not what the generator writes.  The conversion to and from JSON follows each field's type, and
the computed properties (:class:`Places`) are the model's too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, fields
from ipaddress import IPv4Address
from pathlib import Path
from types import UnionType
from typing import Any, Generic, Protocol, TypeVar, Union, get_args, get_origin, get_type_hints

from carpd.config.problems import HIDDEN, ConfigError

__all__ = ["PER_ENGINE_KEYS", "EngineGroups", "EngineSettings", "NoSettings", "Places", "Secret",
           "Settings", "Validation", "engine_settings_from_json", "engine_settings_to_json",
           "stop_budget", "validated"]


class Secret(bytes):
    """The password: bytes wherever it is used (HMAC key), but never shown by repr() or str(),
    so no log line, traceback or error message can carry it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Secret({HIDDEN})"

    __str__ = __repr__


STOP_MARGIN = 15.0
"""Seconds beyond the drain and the down script that stopping an engine may take."""


def stop_budget(drain: float, script_timeout: float) -> float:
    """How long stopping an engine may take before it is killed: the drain, then the down
    script, then the margin.  The systemd unit (through EXTEND_TIMEOUT_USEC) and carpd's own
    supervisor both wait this long."""
    return drain + script_timeout + STOP_MARGIN


class _Where(Protocol):
    @property
    def interface(self) -> str: ...
    @property
    def script_interface(self) -> str | None: ...
    @property
    def vip_interface(self) -> str | None: ...


class Places:
    """Where a group's VIP and scripts are: the computed properties of the model
    (:class:`carpd.config.options.Options`) and of :class:`Settings` alike."""

    @property
    def scripts_interface(self: _Where) -> str:
        """The scripts put the VIP where it lives: by default on the VIP's interface."""
        return self.script_interface or self.vip_interface or self.interface

    @property
    def vip_on(self: _Where) -> str:
        return self.vip_interface or self.interface


# -- generated from the option table (carpd.config.options) by `make settings`: edit the table


@dataclass(frozen=True, kw_only=True)
class Settings(Places):
    """One group's validated options: the option table's fields, types and defaults (see
    :class:`carpd.config.options.Options` for each)."""

    interface: str
    vhid: int = 1
    addr: IPv4Address
    password: Secret
    upscript: Path | None = None
    downscript: Path | None = None
    preempt: bool = False
    advskew: int = 0
    advbase: int = 1
    deadratio: int = 3
    nomcast: bool = False
    xparam: str | None = None
    facility: str = "daemon"
    neutral: bool = False
    ignoreifstate: bool = False
    mcast: IPv4Address = IPv4Address("224.0.0.18")  # noqa: RUF009
    debug: bool = False
    srcip: IPv4Address | None = None
    shutdown: bool = False
    daemonize: bool = False
    pidfile: Path | None = None
    ucarp_mac: bool = False
    script_timeout: float = 30.0
    state_dir: Path = Path("/run/carpd")
    drain: float = 2.0
    drain_connections: float = 0.0
    reannounce: float = 0.0
    replay_check: bool = True
    track_script: tuple[tuple[str, ...], ...] = ()
    track_interval: float = 1.0
    track_timeout: float | None = None
    track_fall: int = 2
    track_rise: int = 2
    track_interface: tuple[str, ...] = ()
    script_interface: str | None = None
    vip_interface: str | None = None
    persist_dir: Path = Path("/var/lib/carpd")


PER_ENGINE_KEYS = (
    "interface",
    "nomcast",
    "facility",
    "ignoreifstate",
    "mcast",
    "debug",
    "daemonize",
    "pidfile",
    "state_dir",
    "persist_dir",
)
"""Options with one value per engine (shared by all the groups it runs); every other is a
group's."""

# -- end of what `make settings` writes


_TYPES = get_type_hints(Settings)
"""Each field's type, which says how its value goes to JSON and back."""


def _to_plain(value: Any) -> Any:
    if isinstance(value, bytes):  # the password: not always text
        return value.hex()
    if isinstance(value, IPv4Address | Path):
        return str(value)
    if isinstance(value, tuple):
        return [_to_plain(item) for item in value]
    return value


def _from_plain(kind: Any, value: Any) -> Any:
    if value is None:
        return None
    if get_origin(kind) in (Union, UnionType):  # X | None: X
        kind = next(arm for arm in get_args(kind) if arm is not type(None))
    if get_origin(kind) is tuple:  # tuple[X, ...]
        return tuple(_from_plain(get_args(kind)[0], item) for item in value)
    if kind is Secret:
        return Secret(bytes.fromhex(value))
    if kind in (IPv4Address, Path, float):
        return kind(value)
    return value


def settings_to_plain(options: Any) -> dict[str, Any]:
    """Every field of ``options`` (a :class:`Settings` or an Options) as JSON-ready data."""
    return {f.name: _to_plain(getattr(options, f.name)) for f in fields(Settings)}


def settings_from_plain(data: dict[str, Any]) -> Settings:
    return Settings(**{name: _from_plain(kind, data[name]) for name, kind in _TYPES.items()})


class _Group(Protocol):
    @property
    def interface(self) -> str: ...
    @property
    def vhid(self) -> int: ...


G = TypeVar("G", bound=_Group)


@dataclass(frozen=True)
class EngineGroups(Generic[G]):
    """What one engine runs: its groups (the interface-level keys the same in all) and the
    --config file they came from, if any."""

    groups: tuple[G, ...]
    config_file: str | None = None
    password_on_command_line: bool = False
    """The password came with -p/--pass: anyone can read it with ps."""

    @property
    def first(self) -> G:
        return self.groups[0]

    @property
    def interface(self) -> str:
        return self.groups[0].interface

    @property
    def vhids(self) -> tuple[int, ...]:
        return tuple(g.vhid for g in self.groups)


class EngineSettings(EngineGroups[Settings]):
    """The engine's groups as the engine runs them (:class:`Settings`)."""


def engine_settings_to_json(config: EngineGroups[Any]) -> str:
    """An EngineConfig (validated Options) or :class:`EngineSettings` as one JSON text."""
    return json.dumps({"groups": [settings_to_plain(g) for g in config.groups],
                       "config_file": config.config_file,
                       "password_on_command_line": config.password_on_command_line})


def engine_settings_from_json(text: str) -> EngineSettings:
    data = json.loads(text)
    return EngineSettings(tuple(settings_from_plain(g) for g in data["groups"]),
                          data["config_file"], bool(data["password_on_command_line"]))


class NoSettings(Exception):
    """The validator gave no result (it printed --help, or died): exit with :attr:`code`."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the validator exited {code} without a result")
        self.code = code


PACKAGES = Path(__file__).resolve().parents[2]
"""Where this carpd was imported from: the validator imports the same one (whatever put it on
this process's path: PYTHONPATH, a wrapper's sys.path, the interpreter's own)."""
_VALIDATOR = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
              "import carpd.config.validate; sys.exit(carpd.config.validate.main())")


def _interpreter_flags() -> list[str]:
    """This interpreter's own flags, for the validator to run as this engine does."""
    flags = sys.flags
    found = [f for f, on in (("-I", flags.isolated), ("-S", flags.no_site),
                             ("-E", flags.ignore_environment and not flags.isolated),
                             ("-s", flags.no_user_site and not flags.isolated),
                             ("-B", flags.dont_write_bytecode)) if on]
    return found + ["-O"] * flags.optimize


class Validation:
    """:mod:`carpd.config.validate` run on ``argv`` (carpd's command line), in a process of its own
    so that this one never loads pydantic; its answer read as it comes (:meth:`read`, the loop
    watches :meth:`fileno`), then :meth:`result`."""

    def __init__(self, argv: list[str]) -> None:
        self._argv = argv
        read, write = os.pipe()
        try:
            self._child = subprocess.Popen(
                [sys.executable, *_interpreter_flags(), "-c", _VALIDATOR, str(PACKAGES),
                 str(write)], stdin=subprocess.PIPE, pass_fds=(write,))
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        self._read = read
        self._answer = b""
        assert self._child.stdin is not None
        with self._child.stdin:  # never in argv: it may hold the password
            self._child.stdin.write(json.dumps(argv).encode())

    def fileno(self) -> int:
        return self._read

    def read(self) -> bool:
        """Read what the validator has written; True once it has all been read."""
        chunk = os.read(self._read, 65536)
        self._answer += chunk
        return not chunk

    def result(self) -> EngineSettings:
        """The validated settings (once :meth:`read` said done); ConfigError as the validator
        words it, NoSettings if it gave no answer."""
        self._close_pipe()
        code = self._child.wait()
        if not self._answer:
            raise NoSettings(code)
        answer = json.loads(self._answer)
        if not answer["ok"]:
            raise ConfigError(str(answer["error"]))
        return engine_settings_from_json(json.dumps(answer["config"]))

    def _close_pipe(self) -> None:
        if self._read >= 0:
            os.close(self._read)
            self._read = -1

    def close(self) -> None:
        """Give up on it (the engine stops)."""
        self._close_pipe()
        if self._child.poll() is None:
            self._child.kill()
            self._child.wait()


def validated(argv: list[str]) -> EngineSettings:
    """``argv`` validated by :mod:`carpd.config.validate` (see :class:`Validation`),
    waiting for it."""
    validation = Validation(argv)
    while not validation.read():
        pass
    return validation.result()
