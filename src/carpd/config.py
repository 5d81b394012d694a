"""Every value a person gives carpd, in one pydantic model, and ucarp's command line onto it.

Errors name the option, the value and what is allowed, and are raised before anything starts.
"""

from __future__ import annotations

import argparse
import os
import socket
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from carpd import wire

FACILITIES = (
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog", "user",
    "uucp", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7", "none",
)

Octet = Annotated[int, Field(ge=0, le=255)]


class ConfigError(ValueError):
    """A value a person gave is not allowed; the message says which, and what is."""


class Options(BaseModel):
    """What one carpd engine runs with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    interface: str
    srcip: IPv4Address | None = None
    vhid: Annotated[int, Field(ge=1, le=255)] = 1
    password: bytes = Field(repr=False, min_length=1, max_length=wire.MAX_PASSWORD_BYTES)
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
    state_dir: Path = Path("/run/carpd")
    password_on_command_line: bool = False

    @field_validator("interface")
    @classmethod
    def _interface_exists(cls, value: str) -> str:
        try:
            socket.if_nametoindex(value)
        except OSError:
            raise ValueError("no such network interface") from None
        return value

    @field_validator("upscript", "downscript")
    @classmethod
    def _executable(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_file() and os.access(value, os.X_OK)):
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
        return self


# option name in the model -> how a person wrote it on ucarp's command line
FLAGS: dict[str, str] = {
    "interface": "-i/--interface", "srcip": "-s/--srcip", "vhid": "-v/--vhid",
    "password": "-p/--pass or -o/--passfile", "addr": "-a/--addr", "advbase": "-b/--advbase",
    "advskew": "-k/--advskew", "deadratio": "-r/--deadratio", "upscript": "-u/--upscript",
    "downscript": "-d/--downscript", "facility": "-f/--facility", "mcast": "-m/--mcast",
    "xparam": "-x/--xparam", "pidfile": "--pidfile", "script_timeout": "--script-timeout",
    "state_dir": "--state-dir",
}


def describe(error: ValidationError, flags: dict[str, str], given: dict[str, Any]) -> str:
    """One line per problem: the option, the value given and what is allowed."""
    lines = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else ""
        flag = flags.get(name, name or "options")
        message = str(item["msg"]).removeprefix("Value error, ")
        if name == "password":
            value = "<hidden>"
        else:
            value = repr(_plain(given.get(name, item.get("input"))))
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


def read_passfile(path: str) -> bytes:
    """The first line of a password file, without its newline (as ucarp reads it)."""
    try:
        with open(path, "rb") as f:
            line = f.readline()
    except OSError as error:
        raise ConfigError(f"-o/--passfile: {path!r}: cannot be read: {error.strerror}") from None
    return line.rstrip(b"\r\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 with its own message
        raise ConfigError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="carpd", description="CARP virtual-IP failover, a drop-in for ucarp.",
                add_help=True)
    a = p.add_argument
    a("-i", "--interface", required=True, help="network interface to run on")
    a("-s", "--srcip", help="our own address on it (default: its primary IPv4 address)")
    a("-v", "--vhid", type=str, default="1", help="virtual host id, 1..255 (default 1)")
    a("-p", "--pass", dest="password", help="password (visible in ps: prefer --passfile)")
    a("-o", "--passfile", help="file whose first line is the password")
    a("-P", "--preempt", action="store_true", help="take over from a slower master")
    a("-n", "--neutral", action="store_true", help="do not run the down script at start")
    a("-a", "--addr", required=True, help="the virtual IP address")
    a("-b", "--advbase", type=str, default="1", help="advert base interval, s (default 1)")
    a("-k", "--advskew", type=str, default="0", help="advert skew, 1/256 s (default 0)")
    a("-x", "--xparam", help="extra argument for the scripts")
    a("-u", "--upscript", help="run as SCRIPT IFACE VIP [XPARAM] on becoming MASTER")
    a("-d", "--downscript", help="run as SCRIPT IFACE VIP [XPARAM] on leaving MASTER")
    a("-D", "--debug", action="store_true", help="log debug messages")
    a("-r", "--deadratio", type=str, default="3", help="master-down ratio (default 3)")
    a("-z", "--shutdown", action="store_true",
      help="accepted for ucarp: carpd always runs the down script when it exits as MASTER")
    a("-B", "--daemonize", action="store_true", help="run in the background (writes a pidfile)")
    a("-f", "--facility", default="daemon", help="syslog facility, or 'none' (default daemon)")
    a("-S", "--ignoreifstate", action="store_true", help="ignore carrier changes")
    a("-M", "--nomcast", action="store_true", help="send adverts to Ethernet broadcast")
    a("-m", "--mcast", default=str(wire.DEFAULT_GROUP), help="multicast group (224.0.0.18)")
    a("--pidfile", help="pidfile (default /run/carpd/IFACE-VHID.pid with -B)")
    a("--ucarp-mac", action="store_true",
      help="send adverts from ucarp's 00:00:5e:00:00:VHID instead of the NIC's MAC")
    a("--script-timeout", type=str, default="30", help="seconds a script may run (default 30)")
    a("--state-dir", default="/run/carpd", help="runtime folder (default /run/carpd)")
    return p


def from_command_line(argv: list[str]) -> Options:
    """Parse ucarp's command line into validated :class:`Options`."""
    args = vars(parser().parse_args(argv))
    passfile = args.pop("passfile")
    if passfile is not None and args["password"] is not None:
        raise ConfigError("-p/--pass and -o/--passfile: give one of them, not both")
    if passfile is not None:
        args["password"] = read_passfile(passfile)
        args["password_on_command_line"] = False
    elif args["password"] is not None:
        args["password"] = os.fsencode(args["password"])
        args["password_on_command_line"] = True
    else:
        raise ConfigError("-p/--pass or -o/--passfile: a password is required")
    return build({k: v for k, v in args.items() if v is not None})
