"""The ``carpd`` command: ucarp's command line, validated before anything starts."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

from carpd import control, netlink
from carpd.config import ConfigError, Options, from_command_line
from carpd.daemon import Engine
from carpd.logs import setup as setup_logging

log = logging.getLogger("carpd")

EXIT_USAGE = 2
EXIT_RUNTIME = 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["--help"]
    try:
        options = from_command_line(argv)
        source = _source_address(options)
        _refuse_second_engine(options)
    except ConfigError as error:
        for line in str(error).splitlines():
            print(f"carpd: {line}", file=sys.stderr)
        return EXIT_USAGE
    tag = f"carpd[{options.interface}/{options.vhid}]"
    setup_logging(options.facility, foreground=True, debug=options.debug, tag=tag)
    if options.password_on_command_line:
        log.warning("the password was given with -p/--pass: anyone can read it with ps; "
                    "use -o/--passfile")
    try:
        engine = Engine(options, source)
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
            pidfiles.append(_write_pidfile(options))

    try:
        return _run(engine, options, source, signals_ready)
    finally:
        for pidfile in pidfiles:
            with contextlib.suppress(FileNotFoundError):
                pidfile.unlink()


def _run(engine: Engine, options: Options, source: IPv4Address,
         signals_ready: Callable[[], None]) -> int:
    log.info("vhid %d on %s from %s, VIP %s: interval %.3f s, master down after %.3f s",
             options.vhid, options.interface, source, options.addr,
             engine.host.params.advert_interval, engine.host.params.master_down_interval)
    if options.advbase == 0:
        log.warning("advbase 0: the master-down interval is one advert interval, so one lost or "
                    "late advert makes a backup take over")
    return engine.run(signals_ready)


def _source_address(options: Options) -> IPv4Address:
    if options.srcip is not None:
        return options.srcip
    try:
        primary = netlink.interface_info(options.interface).primary_address()
    except LookupError:
        primary = None
    if primary is None:
        raise ConfigError(f"-s/--srcip: not given, and {options.interface} has no IPv4 address "
                          "to use instead")
    return primary


def _refuse_second_engine(options: Options) -> None:
    path = control.socket_path(options.state_dir, options.interface, options.vhid)
    try:
        reply = control.request(path, {"cmd": "status"}, timeout=2.0)
    except (OSError, ValueError):
        return
    raise ConfigError(f"vhid {options.vhid} on {options.interface}: already run by carpd "
                      f"pid {reply.get('pid')}")


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


def _write_pidfile(options: Options) -> Path:
    path = options.pidfile or options.state_dir / f"{options.interface}.{options.vhid}.pid"
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
