"""What the hook leaves in /run/carpd for one interface, and releasing the VIP of a dead engine.

Per interface ``IFACE`` (beside the engine's own ``IFACE.VHID.sock``):

- ``IFACE.conf``        the engine's options as JSON (``carpd --config``), mode 0600: it holds the
                        passwords, which never go on a command line or into an environment.  One
                        group: today's flat object; several (or one brought up by an alias): the
                        "groups" form, ``{"interface": ..., <interface keys>, "groups": [...]}``
- ``IFACE.groups``      which stanza brought each group up (``{"VHID": {"stanza": LOGICAL,
                        "where": "file:line"}}``, no secret): ``ifdown LOGICAL`` removes those
- ``IFACE.env``         the environment of the engine's scripts (``KEY="value"`` lines, systemd's
                        EnvironmentFile format): which interfaces file and state folder the ifup
                        that started it used, so ``ifup IFACE:ucarp`` reads the same ones
- ``IFACE.supervisor``  without systemd: the supervisor's pid, locked while it runs
- ``IFACE.log``         without systemd: what the supervisor and the engine print
- ``IFACE.hook``        locked while a hook works on the interface, so two never overlap

This module is on the path of ``ifdown`` (a hand-over waits for it): it never imports pyroute2
(addresses go through :mod:`carpd.engine.release`, the standard library's netlink) and imports
pydantic only when it must.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from carpd.engine import release as _release
from carpd.engine.identity import RUN_DIR
from carpd.engine.release import ALIAS
from carpd.engine.release import alias_label as label
from carpd.engine.settings import PER_ENGINE_KEYS
from carpd.engine.settings import stop_budget as engine_stop_budget

if TYPE_CHECKING:
    from carpd.config.load import Options

__all__ = ["ALIAS", "RUN_DIR", "label"]

DEFAULT_DRAIN = 2.0
"""carpd's --drain default: the conf leaves out what is at its default."""
# what the engine needs no field of: it runs in the foreground under a supervisor
_NOT_IN_CONF = {"password", "password_on_command_line", "daemonize", "pidfile"}
INTERFACE_KEYS = PER_ENGINE_KEYS
"""The engine's settings that are one per interface: every group of the interface shares them."""
MAX_LABEL = 15
"""The kernel's limit on an address label (IFNAMSIZ - 1) in bytes."""


def physical(name: str) -> str:
    """The interface an ifupdown name is on: ``eth0`` for ``eth0:1`` and ``eth0:1:ucarp``."""
    return name.split(":", 1)[0]


class _RunFile:
    """A file of the interface in the run folder: ``RUN_DIR/IFACE.SUFFIX``."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    @overload
    def __get__(self, paths: None, owner: type[Paths]) -> _RunFile: ...
    @overload
    def __get__(self, paths: Paths, owner: type[Paths] | None = None) -> Path: ...

    def __get__(self, paths: Paths | None, owner: type[Paths] | None = None) -> Path | _RunFile:
        if paths is None:  # on the class itself
            return self
        return paths.run_dir / f"{paths.interface}.{self.suffix}"


@dataclass(frozen=True)
class Paths:
    interface: str
    run_dir: Path = RUN_DIR

    conf = _RunFile("conf")
    env = _RunFile("env")
    supervisor = _RunFile("supervisor")
    log = _RunFile("log")
    hook_lock = _RunFile("hook")
    owners = _RunFile("groups")

    def remove(self) -> None:
        """Everything but the log (kept for a look after the fact) and demotions (kept as a
        setting is): also the control sockets of an engine that was killed and could not
        remove its own (``IFACE.sock``, and ``IFACE.VHID.sock`` of the conf's groups, as an
        engine of carpd 0.1.0 named it)."""
        sockets = self.control_sockets()
        for path in (self.conf, self.env, self.supervisor, self.owners, *sockets):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def control_sockets(self) -> list[Path]:
        """The sockets an engine of the conf may have: not those of another interface whose
        name goes on with a dot (``eth0.10.sock`` is VLAN eth0.10's engine, unless eth0's
        conf runs vhid 10)."""
        vhids: list[int] = []
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            data = read_conf(self.conf)
            vhids = conf_vhids(data) if data is not None else []
        names = [f"{self.interface}.sock", *(f"{self.interface}.{v}.sock" for v in vhids)]
        return [self.run_dir / name for name in names if (self.run_dir / name).exists()]


@dataclass(frozen=True)
class Group:
    """One VIP group as a stanza brings it up: the engine's options for it, the name its
    scripts get (``eth0:1`` for Debian's alias form: MASTER runs ``ifup eth0:1:ucarp``) and the
    stanza that brought it up."""

    options: Options
    script_interface: str
    stanza: str = ""
    """The logical name of the stanza (``LOGICAL``): its ``ifdown`` removes the group."""
    where: str = ""
    """``file:line`` of the stanza, for messages."""

    @property
    def vhid(self) -> int:
        return self.options.vhid


def group_conf(group: Group) -> dict[str, Any]:
    """The group's keys in the "groups" form (every per-group key; no interface key)."""
    options = group.options
    data = options.model_dump(mode="json", exclude_defaults=True,
                              exclude=_NOT_IN_CONF | set(INTERFACE_KEYS))
    data["vhid"] = options.vhid
    data["addr"] = str(options.addr)
    data["password"] = os.fsdecode(options.password)
    data["script_interface"] = group.script_interface
    return data


def interface_conf(options: Options) -> dict[str, Any]:
    """The interface keys of a group's options (those not at their default)."""
    data = options.model_dump(mode="json", exclude_defaults=True,
                              include=set(INTERFACE_KEYS) - _NOT_IN_CONF)
    data["interface"] = options.interface
    return data


def conf_data(groups: Sequence[Group]) -> dict[str, Any]:
    """What ``IFACE.conf`` holds for ``groups`` (at least one, all on one interface)."""
    return shaped(interface_conf(groups[0].options), [group_conf(g) for g in groups])


def shaped(interface: Mapping[str, Any], groups: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Today's flat object for one group whose scripts get the interface itself (what carpd
    0.1.0 wrote, and any engine reads), else the "groups" form; groups sorted by vhid."""
    ordered = sorted(groups, key=lambda g: int(g.get("vhid", 1)))
    if len(ordered) == 1 and ordered[0].get("script_interface") == interface["interface"]:
        flat = {**interface, **ordered[0]}
        del flat["script_interface"]
        return flat
    return {**interface, "groups": [dict(g) for g in ordered]}


def conf_text(groups: Sequence[Group] | Options) -> str:
    if not isinstance(groups, Sequence):
        groups = [Group(groups, groups.interface)]
    return dumps(conf_data(groups))


def dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _split(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The interface keys and the per-group keys of each group, of a conf in either form."""
    interface = {k: v for k, v in data.items() if k in INTERFACE_KEYS}
    groups = [{k: v for k, v in g.items() if k not in INTERFACE_KEYS}
              for g in conf_groups(data)]
    for group in groups:
        group.setdefault("vhid", 1)
    return interface, groups


def conf_with(data: Mapping[str, Any] | None, group: Group) -> dict[str, Any]:
    """The conf ``data`` with ``group`` added, replacing the group of its vhid if any."""
    kept = [] if data is None else [g for g in _split(data)[1] if g["vhid"] != group.vhid]
    return shaped(interface_conf(group.options), [*kept, group_conf(group)])


def conf_without(data: Mapping[str, Any], vhids: frozenset[int]) -> dict[str, Any] | None:
    """The conf ``data`` without the groups of ``vhids``; None when no group is left."""
    interface, groups = _split(data)
    kept = [g for g in groups if g["vhid"] not in vhids]
    return shaped(interface, kept) if kept else None


def conf_vhids(data: Mapping[str, Any]) -> list[int]:
    return [int(g["vhid"]) for g in _split(data)[1]]


def interface_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    return _split(data)[0]


def engine_socket(data: Mapping[str, Any], run_dir: Path = RUN_DIR) -> Path:
    """The control socket of the engine running a conf (one per engine: ``IFACE.sock``): in
    the run folder the conf is in (see :func:`engine_state_dir`)."""
    from carpd.engine import identity

    given = data.get("state_dir") or engine_state_dir(run_dir)
    folder = Path(given) if given else identity.namespace_folder(RUN_DIR)
    return folder / f"{data['interface']}.sock"


def engine_state_dir(run_dir: Path) -> Path | None:
    """The ``--state-dir`` of an engine whose conf is in ``run_dir``: that folder, so that its
    control socket and demotions are beside its conf; None for the default run folder, where
    the engine's own default (per network namespace) is the same."""
    return None if run_dir == RUN_DIR else run_dir


def conf_groups(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The groups of an ``IFACE.conf`` (either form), each with the interface keys merged in
    and ``script_interface`` set (default as the engine's: the VIP's interface)."""
    shared = {k: v for k, v in data.items() if k != "groups"}
    groups = data.get("groups")
    if not isinstance(groups, list):
        groups = [{}]
    merged = [{**shared, **group} for group in groups if isinstance(group, dict)]
    for group in merged:
        group.setdefault("script_interface",
                         group.get("vip_interface") or shared.get("interface", ""))
    return merged


def read_conf(path: Path) -> dict[str, Any] | None:
    text = read_text(path)
    if text is None:
        return None
    data = json.loads(text)
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Owner:
    """Which stanza brought a group up."""

    stanza: str
    where: str = ""


def read_owners(paths: Paths) -> dict[int, Owner] | None:
    """vhid -> the stanza that brought it up; None when there is no record (carpd 0.1.0 wrote
    none: its one group belongs to whatever stanza is taken down)."""
    text = read_text(paths.owners)
    if text is None:
        return None
    found: dict[int, Owner] = {}
    with contextlib.suppress(ValueError, AttributeError):
        for vhid, owner in json.loads(text).items():
            found[int(vhid)] = Owner(str(owner["stanza"]), str(owner.get("where", "")))
    return found


def owners_text(owners: Mapping[int, Owner]) -> str:
    data = {str(vhid): {"stanza": o.stanza, "where": o.where}
            for vhid, o in sorted(owners.items())}
    return json.dumps(data, indent=2) + "\n"


def env_text(env: Mapping[str, str]) -> str:
    """``KEY="value"`` lines; a line break in a value (which would start a line of its own) is
    refused with ValueError."""
    def quoted(value: str) -> str:
        if "\n" in value or "\r" in value:
            raise ValueError(f"{value!r}: a line break cannot be written to an environment file")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "".join(f"{key}={quoted(value)}\n" for key, value in sorted(env.items()))


def read_env(path: Path) -> dict[str, str]:
    """The ``KEY="value"`` lines :func:`env_text` writes."""
    env: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if not sep or not key or key.startswith("#"):
                continue
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            env[key] = value
    return env


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` atomically by a root-owned file of ``mode`` that never had another."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode("utf-8", "surrogateescape"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def supervisor_pid(paths: Paths) -> int | None:
    """The pid of the supervisor running for the interface: the one holding its lock."""
    try:
        fd = os.open(paths.supervisor, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.read(fd, 64).decode().strip()
        return int(text) if text.isdigit() else None
    else:
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ConfGroup:
    """One group of an engine's ``IFACE.conf``, as releasing its VIP needs it."""

    interface: str
    vip: IPv4Address
    downscript: str | None
    xparam: str | None
    script_timeout: float
    drain: float = DEFAULT_DRAIN
    script_interface: str = field(default="", compare=False)
    vhid: int = field(default=0, compare=False)
    vip_interface: str = field(default="", compare=False)
    """Where the VIP is when not on ``interface`` (a dedicated cluster network)."""
    drain_connections: float = field(default=0.0, compare=False)
    """A drain may last this long too (until the hand-over's connections have closed)."""

    @classmethod
    def from_conf(cls, path: Path) -> ConfGroup | None:
        """The first group of the conf (see :func:`groups_from_conf` for all)."""
        found = groups_from_conf(path)
        return found[0] if found else None

    @classmethod
    def from_group(cls, data: Mapping[str, Any]) -> ConfGroup:
        interface = str(data["interface"])
        vip_interface = str(data.get("vip_interface") or "")
        return cls(interface, IPv4Address(data["addr"]), data.get("downscript"),
                   data.get("xparam"), float(data.get("script_timeout", 30.0)),
                   float(data.get("drain", DEFAULT_DRAIN)),
                   str(data.get("script_interface") or vip_interface or interface),
                   int(data.get("vhid", 1)), vip_interface,
                   float(data.get("drain_connections", 0.0)))

    @property
    def vip_on(self) -> str:
        """The interface the VIP is on: what releasing it looks at."""
        return self.vip_interface or self.interface

    @property
    def label(self) -> str:
        return label(self.script_interface or self.interface)

    @property
    def stop_budget(self) -> float:
        return engine_stop_budget(max(self.drain, self.drain_connections), self.script_timeout)

    def script_argv(self) -> list[str] | None:
        """The down script as the engine runs it."""
        from carpd.engine.scripts import script_argv

        return script_argv(self.downscript, self.script_interface or self.interface, self.vip,
                           self.xparam)


def groups_from_conf(path: Path) -> list[ConfGroup]:
    """What releasing needs of every group in ``IFACE.conf`` (either form)."""
    data = read_conf(path)
    return [] if data is None else [ConfGroup.from_group(g) for g in conf_groups(data)]


def stop_budget(path: Path) -> float | None:
    """How long stopping the engine of ``IFACE.conf`` may take (its slowest group)."""
    groups = groups_from_conf(path)
    return max(g.stop_budget for g in groups) if groups else None


def release(paths: Paths, crashed: bool, env: Mapping[str, str] | None = None, *,
            only_if_held: bool = False, vhids: frozenset[int] | None = None) -> list[str]:
    """Make sure the interface no longer holds what an engine that is gone held.

    After a crash the down script runs first, whether or not the VIP is still there (the
    engine's watchdog may have removed it already): ``ifdown IFACE:ucarp`` then keeps
    ifupdown's record right, so that the next ``ifup IFACE:ucarp`` brings the alias up again.
    (A down script runs at every engine start too, so it must bear running when nothing is
    up: carpd's vip-down asks ifupdown first.)  Then whatever is left goes, as
    :func:`carpd.engine.release.release` takes it.  ``only_if_held``: after a stop that may have
    killed the engine, run the down script only if something is left.  Each group of the conf
    (only ``vhids`` if given) is released by its own label and down script.  Returns what was
    done, for the log."""
    done: list[str] = []
    for group in groups_from_conf(paths.conf):
        if vhids is None or group.vhid in vhids:
            done += _release_group(paths, group, crashed, env, only_if_held)
    return done


def _release_group(paths: Paths, group: ConfGroup, crashed: bool,
                   env: Mapping[str, str] | None, only_if_held: bool) -> list[str]:
    done: list[str] = []
    argv = group.script_argv()
    if crashed and argv is not None and (
            not only_if_held or _release.held(group.vip_on, group.vip, group.label)):
        script_env = {**read_env(paths.env), **(env or {})}
        script_env.setdefault("PATH", os.environ.get("PATH", os.defpath))
        done.append(f"ran {' '.join(argv)}: {_run_script(argv, script_env, group)}")
    with contextlib.suppress(OSError):
        removed = _release.release(group.vip_on, group.vip, group.label)
        done += [f"removed {address} from {group.vip_on}" for address in removed]
    return done


def _run_script(argv: list[str], env: Mapping[str, str], group: ConfGroup) -> str:
    try:
        result = subprocess.run(argv, env=dict(env), stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=group.script_timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"killed after {group.script_timeout:g} s"
    except OSError as error:
        return f"cannot run: {error.strerror}"
    output = (result.stdout + result.stderr).decode(errors="replace").strip()
    return f"exit {result.returncode}" + (f": {output}" if output else "")
