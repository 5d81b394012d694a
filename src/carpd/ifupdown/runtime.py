"""What the hook leaves in /run/carpd for one interface, and releasing the VIP of a dead engine.

Per interface ``IFACE`` (beside the engine's own ``IFACE.VHID.sock``):

- ``IFACE.conf``        the engine's options as JSON (``carpd --config``), mode 0600: it holds the
                        password, which never goes on a command line or into an environment
- ``IFACE.env``         the environment of the engine's scripts (``KEY="value"`` lines, systemd's
                        EnvironmentFile format): which interfaces file and state folder the ifup
                        that started it used, so ``ifup IFACE:ucarp`` reads the same ones
- ``IFACE.supervisor``  without systemd: the supervisor's pid, locked while it runs
- ``IFACE.log``         without systemd: what the supervisor and the engine print
- ``IFACE.hook``        locked while a hook works on the interface, so two never overlap

This module is on the path of ``ifdown`` (a hand-over waits for it): it imports pyroute2 and
pydantic only when it must touch addresses.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from carpd.config import Options

RUN_DIR = Path("/run/carpd")
DEFAULT_DRAIN = 2.0
"""carpd's --drain default: the conf leaves out what is at its default."""
ALIAS = "ucarp"
"""The alias the default actions bring up (``IFACE:ucarp``): what an engine may leave behind."""
# what the engine needs no field of: it runs in the foreground under a supervisor
_NOT_IN_CONF = {"password", "password_on_command_line", "daemonize", "pidfile"}


@dataclass(frozen=True)
class Paths:
    interface: str
    run_dir: Path = RUN_DIR

    def _file(self, suffix: str) -> Path:
        return self.run_dir / f"{self.interface}.{suffix}"

    @property
    def conf(self) -> Path:
        return self._file("conf")

    @property
    def env(self) -> Path:
        return self._file("env")

    @property
    def supervisor(self) -> Path:
        return self._file("supervisor")

    @property
    def log(self) -> Path:
        return self._file("log")

    @property
    def hook_lock(self) -> Path:
        return self._file("hook")

    def remove(self) -> None:
        """Everything but the log (kept for a look after the fact) and demotions (kept as a
        setting is): also the control sockets of an engine that was killed and could not
        remove its own (``IFACE.VHID.sock``)."""
        for path in (self.conf, self.env, self.supervisor, *self.control_sockets()):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def control_sockets(self) -> list[Path]:
        return [p for p in self.run_dir.glob(f"{glob.escape(self.interface)}.*.sock")
                if p.name.rsplit(".", 2)[0] == self.interface]


def conf_text(options: Options) -> str:
    data = options.model_dump(mode="json", exclude_defaults=True, exclude=_NOT_IN_CONF)
    data["interface"] = options.interface
    data["addr"] = str(options.addr)
    data["password"] = os.fsdecode(options.password)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


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
class Engine:
    """What releasing an engine's VIP needs from its ``IFACE.conf``."""

    interface: str
    vip: IPv4Address
    downscript: str | None
    xparam: str | None
    script_timeout: float
    drain: float = DEFAULT_DRAIN

    @classmethod
    def from_conf(cls, path: Path) -> Engine | None:
        text = read_text(path)
        if text is None:
            return None
        data: dict[str, Any] = json.loads(text)
        return cls(str(data["interface"]), IPv4Address(data["addr"]), data.get("downscript"),
                   data.get("xparam"), float(data.get("script_timeout", 30.0)),
                   float(data.get("drain", DEFAULT_DRAIN)))

    @property
    def stop_budget(self) -> float:
        from carpd.config import stop_budget

        return stop_budget(self.drain, self.script_timeout)

    def script_argv(self) -> list[str] | None:
        if not self.downscript:
            return None
        argv = [self.downscript, self.interface, str(self.vip)]
        return [*argv, self.xparam] if self.xparam else argv


def held_addresses(interface: str, vip: IPv4Address) -> list[IPv4Address]:
    """The VIP and every address labelled ``IFACE:ucarp`` that ``interface`` holds."""
    from carpd import netlink

    try:
        info = netlink.interface_info(interface)
    except LookupError:
        return []
    label = f"{interface}:{ALIAS}"
    return [address for address, _prefix, name in info.addresses
            if address == vip or name == label]


def release(paths: Paths, crashed: bool, env: Mapping[str, str] | None = None, *,
            only_if_held: bool = False) -> list[str]:
    """Make sure the interface no longer holds what an engine that is gone held.

    After a crash the down script runs first, whether or not the VIP is still there (the
    engine's watchdog may have removed it already): ``ifdown IFACE:ucarp`` then keeps
    ifupdown's record right, so that the next ``ifup IFACE:ucarp`` brings the alias up again.
    (A down script runs at every engine start too, so it must bear running when nothing is
    up: carpd's vip-down asks ifupdown first.)  Then whatever is left goes over netlink.
    ``only_if_held``: after a stop that may have killed the engine, run the down script
    only if something is left.  Returns what was done, for the log."""
    from carpd import netlink

    engine = Engine.from_conf(paths.conf)
    if engine is None:
        return []
    done: list[str] = []
    held = held_addresses(engine.interface, engine.vip)
    argv = engine.script_argv()
    if crashed and argv is not None and (held or not only_if_held):
        script_env = {**read_env(paths.env), **(env or {})}
        script_env.setdefault("PATH", os.environ.get("PATH", os.defpath))
        done.append(f"ran {' '.join(argv)}: {_run_script(argv, script_env, engine)}")
        held = held_addresses(engine.interface, engine.vip)
    for address in held:
        with contextlib.suppress(LookupError, OSError):
            if netlink.remove_address(engine.interface, address):
                done.append(f"removed {address} from {engine.interface}")
    return done


def _run_script(argv: list[str], env: Mapping[str, str], engine: Engine) -> str:
    try:
        result = subprocess.run(argv, env=dict(env), stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=engine.script_timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"killed after {engine.script_timeout:g} s"
    except OSError as error:
        return f"cannot run: {error.strerror}"
    output = (result.stdout + result.stderr).decode(errors="replace").strip()
    return f"exit {result.returncode}" + (f": {output}" if output else "")
