"""The ``carpd`` command: ucarp's command line, validated before anything starts."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from carpd.config.problems import ConfigError
from carpd.engine import control, identity
from carpd.engine.daemon import Engine, source_address
from carpd.engine.logs import setup as setup_logging
from carpd.engine.settings import EngineSettings, NoSettings, validated

log = logging.getLogger("carpd")

EXIT_USAGE = 2
EXIT_RUNTIME = 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["--help"]
    try:
        config = validated(argv)  # in a process of its own: this one never loads pydantic
        sources = {o.vhid: source_address(o) for o in config.groups}
        locks = _take_groups(config)
    except ConfigError as error:
        for problem in error.problems:
            for line in problem.located.splitlines():
                print(f"carpd: {line}", file=sys.stderr)
        return EXIT_USAGE
    except NoSettings as nothing:  # --help
        return nothing.code
    options = config.first
    tag = f"carpd[{options.interface}]" if config.config_file else \
        f"carpd[{options.interface}/{options.vhid}]"
    setup_logging(options.facility, foreground=True, debug=options.debug, tag=tag)
    if config.password_on_command_line:
        log.warning("the password was given with -p/--pass: anyone can read it with ps; "
                    "use -o/--passfile")
    try:
        engine = Engine(config, sources, argv, locks)
    except (OSError, LookupError) as error:
        log.error("cannot start on %s: %s", options.interface, error)
        return EXIT_RUNTIME
    if options.daemonize:
        _daemonize()
        setup_logging(options.facility, foreground=False, debug=options.debug, tag=tag)
    pidfiles: list[Path] = []

    def signals_ready() -> None:
        # Only now: a SIGTERM sent to the pid in the file is handled (the pidfile goes too).
        if options.daemonize:
            pidfiles.append(_write_pidfile(config))

    try:
        return _run(engine, signals_ready)
    finally:
        for pidfile in pidfiles:
            with contextlib.suppress(FileNotFoundError):
                pidfile.unlink()


def _run(engine: Engine, signals_ready: Callable[[], None]) -> int:
    for group in engine.groups.values():
        p, options = group.host.params, group.options
        group.log.info("vhid %d on %s from %s, VIP %s: interval %.3f s, master down after "
                       "%.3f s", options.vhid, options.interface, group.source, options.addr,
                       p.advert_interval, p.master_down_interval)
        if options.advbase == 0:
            group.log.warning("advbase 0: the master-down interval is one advert interval, so "
                              "one lost or late advert makes a backup take over")
    return engine.run(signals_ready)


def _take_groups(config: EngineSettings) -> dict[int, identity.GroupLock]:
    """Each group's identity in this network namespace, and the engine's socket: a second
    engine for a vhid, or for the interface's socket, is refused (ConfigError)."""
    options = config.first
    locks: dict[int, identity.GroupLock] = {}
    try:
        for vhid in config.vhids:
            locks[vhid] = identity.GroupLock(options.interface, vhid)
        path = control.socket_path(options.state_dir, options.interface,
                                   None if config.config_file else options.vhid)
        _refuse_live_socket(path, options.interface)
    except identity.GroupTaken:
        _release(locks)
        raise ConfigError(f"vhid {vhid} on {options.interface}: already run by carpd"
                          f"{_runner(config, vhid)}") from None
    except ConfigError:
        _release(locks)
        raise
    return locks


def _release(locks: dict[int, identity.GroupLock]) -> None:
    for lock in locks.values():
        lock.release()


def _refuse_live_socket(path: Path, interface: str) -> None:
    try:
        reply = control.request(path, {"cmd": "status"}, timeout=2.0)
    except (OSError, ValueError):
        return
    raise ConfigError(f"{interface}: {path} is served by carpd pid {reply.get('pid')} "
                      f"(interface {reply.get('interface')}, vhids "
                      f"{_vhids_of(reply)}): already running")


def _vhids_of(reply: dict[str, object]) -> str:
    groups = reply.get("groups")
    if isinstance(groups, list):
        return ",".join(str(g.get("vhid")) for g in groups if isinstance(g, dict))
    return str(reply.get("vhid"))


def _runner(config: EngineSettings, vhid: int) -> str:
    """`` pid N`` of the engine that runs ``vhid``, if its socket says so."""
    options = config.first
    for path, request in ((control.socket_path(options.state_dir, options.interface, vhid),
                           {"cmd": "status"}),
                          (control.socket_path(options.state_dir, options.interface),
                           {"cmd": "status", "vhid": vhid})):
        with contextlib.suppress(OSError, ValueError):
            reply = control.request(path, request, timeout=2.0)
            if reply.get("ok"):
                return f" pid {reply.get('pid')}"
    return " (another engine in this network namespace)"


def _daemonize() -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _write_pidfile(config: EngineSettings) -> Path:
    options = config.first
    name = f"{options.interface}.pid" if config.config_file else \
        f"{options.interface}.{options.vhid}.pid"
    path = options.pidfile or options.state_dir / name
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
