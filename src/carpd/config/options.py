"""THE option table: every option a person can give carpd, declared once.

Each field of :class:`Options` is one option: its type and range (pydantic), its default, and,
as markers in its ``Annotated`` metadata, its command-line flags and help (:class:`Cli`), its
``ucarp-*`` stanza option (:class:`Stanza`), each with its man page's text (``man``, roff),
whether it is one per engine (:data:`PER_ENGINE`) and what to check of it on this machine
(:class:`Exists`).  The few inputs that are no field (``--passfile``, ``--config``,
``ucarp-alias``) are :data:`INPUTS` beside it.  Derived from this table, and nowhere else
written down:

- the pydantic model itself (this class), ranges and defaults included;
- ucarp's command line (:func:`carpd.config.load.parser`) and how errors name each option
  (:data:`carpd.config.load.FLAGS`);
- the stanza model and mapping (:class:`carpd.debian.ifupdown.stanza.UcarpStanza`,
  ``OPTION_NAMES``, ``KNOWN``: ``carpctl check``'s list of known options);
- the per-engine keys of a ``--config`` with groups, and the interface-wide stanza options;
- what the engine (which never loads pydantic) reads: :class:`carpd.engine.settings.Settings`
  and ``PER_ENGINE_KEYS``, written from this table by ``make settings``
  (:mod:`carpd.config.write_settings`; a field's engine type is its annotation's, or the class
  of an ``AfterValidator`` that is one, as ``Secret``);
- the option lists of the man pages debian/carpd.8 and debian/carpd-interfaces.5, written from
  it by ``make man`` (:mod:`carpd.config.write_man`: each entry's tag from the flags or the
  stanza name, its text the marker's ``man``, else the help).

Adding an option is one field here (its markers' ``man=`` texts, or its help serves), then
``make settings man``, plus its test: tests/unit/test_option_table.py fails until those have
written their files again.  The model holds only what a person gives: how it arrived (the
password on the command line) is :class:`carpd.config.load.EngineConfig`'s, and what depends on
this machine (does the interface exist, is the script executable) is checked after the model, by
:func:`environment_problems`.
"""

from __future__ import annotations

import enum
import os
import shlex
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from carpd.config.problems import HIDDEN
from carpd.core import wire
from carpd.engine import identity
from carpd.engine.settings import Places, Secret

FACILITIES = (
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog", "user",
    "uucp", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7", "none",
)
IFNAMSIZ = 16
"""Linux's limit on an interface name, its final NUL included."""
SHARE = Path("/usr/share/carpd")
DEFAULT_UPSCRIPT = SHARE / "vip-up"
DEFAULT_DOWNSCRIPT = SHARE / "vip-down"


# -- the markers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cli:
    """The option on ucarp's command line (argparse's ``dest`` is the field's name)."""

    flags: tuple[str, ...]
    help: str
    action: str | None = None
    """``store_true``, ``store_false`` or ``append``; None: takes a value."""
    metavar: str | None = None
    shown: str | None = None
    """How an error names it, if not by its flags joined with '/'."""
    man: str | None = None
    """Its entry's text in carpd(8): roff lines, indented as the code around them (else its
    help, as a sentence)."""
    man_arg: str | None = None
    """How carpd(8) names its value (roff), if not as --help does (in lower case)."""

    @property
    def name(self) -> str:
        return self.shown or "/".join(self.flags)


def cli(*flags: str, help: str, action: str | None = None, metavar: str | None = None,
        shown: str | None = None, man: str | None = None, man_arg: str | None = None) -> Cli:
    return Cli(flags, help, action, metavar, shown, man, man_arg)


class Kind(enum.Enum):
    """How a stanza writes the option's value (ifupdown hands every value over as text)."""

    TEXT = "text"
    """Given once, checked by the model."""
    FLAG = "flag"
    """A boolean: yes/no, on/off, true/false, 1/0."""
    PATH = "path"
    """An absolute path, given once."""
    LINES = "lines"
    """May be given several times: ifupdown joins the values with a newline."""
    IFNAME = "ifname"
    """An interface name, given once."""


@dataclass(frozen=True)
class Stanza:
    """The option in an interfaces(5) stanza."""

    name: str
    kind: Kind = Kind.TEXT
    default: str | None = None
    """What the stanza means when it leaves the option out, if not the engine's default."""
    man: str | None = None
    """Its entry's text in carpd-interfaces(5), as :attr:`Cli.man` (else the flags' help)."""
    man_arg: str | None = None
    """How that page names its value (roff), if not as carpd(8) does ("boolean": a FLAG)."""


@dataclass(frozen=True)
class Exists:
    """A check of the value against this machine, after the model: the reason it fails, or
    None.  ``each``: the type of one value of several, checked one by one (``items``: how the
    model makes a list of them of what was given)."""

    check: Callable[[Any], str | None]
    each: Any = None
    items: Callable[[Any], Any] | None = None


class _PerEngine:
    """Marks an option with one value per engine (shared by all the groups it runs)."""


PER_ENGINE = _PerEngine()


# -- the values --------------------------------------------------------------------------------

def executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


COMMAND_ALLOWED = "allowed: a command line (a string) or its words (a list of strings)"


def _words(value: Any) -> Any:
    """One command: a line of words (split as the shell would, without running one), or
    already its words."""
    if isinstance(value, list | tuple):
        return value
    if not isinstance(value, str):
        raise ValueError(COMMAND_ALLOWED)
    try:
        return shlex.split(value)
    except ValueError as error:
        raise ValueError(f"cannot be split into words: {str(error).lower()}") from None


def _command(command: tuple[str, ...]) -> tuple[str, ...]:
    if not command or not command[0]:
        raise ValueError("no command given: allowed: an absolute path to an executable file, "
                         "then its arguments")
    if not command[0].startswith("/"):
        raise ValueError("the command must start with an absolute path to an executable file")
    return command


def _commands(value: Any) -> Any:
    # a single command on its own (JSON written by hand) is a list of one
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"allowed: a list of commands, each {COMMAND_ALLOWED.split(': ')[1]}")
    return value


def _interface_names(value: Any) -> Any:
    """Names apart, whether given one by one or several in a string ("eth1 eth2")."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list | tuple):
        return [name for item in value
                for name in (item.split() if isinstance(item, str) else [item])]
    return value


def _script_interface(name: str) -> str:
    """The name up/down scripts get as their first argument: an interface, or an alias of
    one (Debian's ``eth0:1``)."""
    if not 0 < len(name) < IFNAMSIZ or "/" in name or name != "".join(name.split()):
        raise ValueError(f"not an interface or alias name: allowed: 1 to {IFNAMSIZ - 1} "
                         "characters, without '/' or whitespace")
    return name


def interface_name(name: str) -> str:
    """``name`` if it can name a network interface (not an alias: no ':'), else ValueError."""
    if not 0 < len(name) < IFNAMSIZ or any(c in name for c in "/:") or name != "".join(
            name.split()):
        raise ValueError(f"not an interface name: allowed: 1 to {IFNAMSIZ - 1} characters, "
                         "without '/', ':' or whitespace")
    return name


def _facility(value: str) -> str:
    if value.lower() not in FACILITIES:
        raise ValueError("allowed: " + ", ".join(FACILITIES))
    return value.lower()


def _multicast(value: IPv4Address) -> IPv4Address:
    if not value.is_multicast:
        raise ValueError("must be an IPv4 multicast address (224.0.0.0/4)")
    return value


def _interface_exists(name: str) -> str | None:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return "no such network interface"
    return None


def _executable(path: Path) -> str | None:
    return None if executable_file(path) else "must be an existing executable file"


def _runnable(command: tuple[str, ...]) -> str | None:
    return None if executable_file(Path(command[0])) else \
        f"{command[0]} must be an existing executable file"


Command = Annotated[tuple[str, ...], BeforeValidator(_words), AfterValidator(_command)]
InterfaceName = Annotated[str, AfterValidator(interface_name)]
Octet = Annotated[int, Field(ge=0, le=255)]
Count = Annotated[int, Field(ge=1, le=255)]
Seconds = Annotated[float, Field(gt=0, le=3600)]
EXISTS = Exists(_interface_exists)
EXECUTABLE = Exists(_executable)


# -- the secret in errors ----------------------------------------------------------------------

def _hidden(value: Any, loc: tuple[int | str, ...], key: str) -> Any:
    if loc and loc[0] == key:
        return HIDDEN
    if isinstance(value, dict) and key in value:
        return {**value, key: HIDDEN}
    return value


def hiding(key: str) -> Any:
    """A model validator that keeps the value of ``key`` out of the model's errors.  Assign it
    last in the class, so that it wraps every other validator, the whole-model ones too."""

    def never_in_errors(cls: type[BaseModel], data: Any,
                        handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(data)
        except ValidationError as error:
            raise without_secret(error, key) from None

    return model_validator(mode="wrap")(classmethod(never_in_errors))  # type: ignore[arg-type]


def without_secret(error: ValidationError, key: str) -> ValidationError:
    """``error`` with the value of ``key`` replaced wherever pydantic kept the input (a field's
    own error, or a whole-model error whose input is every field).  Each error keeps its type,
    location, message and context."""
    details: list[InitErrorDetails] = [
        {"type": PydanticCustomError(item["type"], item["msg"], _plain_ctx(item.get("ctx"))),
         "loc": item["loc"], "input": _hidden(item["input"], item["loc"], key)}
        for item in error.errors(include_url=False)]
    return ValidationError.from_exception_data(error.title, details, hide_input=True)


def _plain_ctx(ctx: dict[str, Any] | None) -> dict[str, Any] | None:
    """The context of an error that other code reads (a custom error's), not an exception's."""
    if not ctx:
        return None
    plain = {k: v for k, v in ctx.items() if isinstance(v, str | int | float)}
    return plain or None


# -- the table ---------------------------------------------------------------------------------

class Options(BaseModel, Places):
    """What one carpd engine runs with: one field per option (see the module's docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    interface: Annotated[
        str, EXISTS, PER_ENGINE,
        cli("-i", "--interface", help="network interface to run on (required)", man="""
            Network interface to run on (required).
            """)]
    vhid: Annotated[
        int, Field(ge=1, le=255),
        Stanza("ucarp-vid", man="""
            The virtual host id, 1 to 255 (required).
            Every node of the group has the same.
            """),
        cli("-v", "--vhid", help="virtual host id, 1..255 (default 1)", man="""
            Virtual host id, 1 to 255 (default 1).
            """)] = 1
    addr: Annotated[
        IPv4Address,
        Stanza("ucarp-vip", man="""
            The virtual IPv4 address (required).
            """),
        cli("-a", "--addr", help="the virtual IP address (required)",
            man_arg="address", man="""
            The virtual IPv4 address (required).
            """)]
    password: Annotated[
        bytes,
        Field(repr=False, min_length=1, max_length=wire.MAX_PASSWORD_BYTES),
        AfterValidator(Secret),
        Stanza("ucarp-password", man=r"""
            The group's shared password, at most 19 bytes (required unless
            .I ucarp\-passfile
            is given; not both).
            It never goes on a command line: the hook hands it to the engine in a file
            only root can read.
            .B ifup
            and
            .B carpctl check
            warn when it sits in an interfaces file every user can read.
            """),
        cli("-p", "--pass", shown="-p/--pass or -o/--passfile",
            help="password (visible in ps: prefer --passfile)", man=r"""
            Password shared by the hosts.
            Anyone can read it with
            .BR ps (1):
            prefer
            .BR \-o " or " \-\-config .
            """)]
    upscript: Annotated[
        Path | None, EXECUTABLE,
        Stanza("ucarp-upscript", Kind.PATH, str(DEFAULT_UPSCRIPT), man=r"""
            Run as
            .I script interface vip
            .RI [ xparam ]
            on becoming MASTER (default
            .IR /usr/share/carpd/vip\-up :
            .B ifup
            .IB interface :ucarp\fR,
            the alias stanza).
            It must be an existing executable file.
            """),
        cli("-u", "--upscript", help="run as SCRIPT IFACE VIP [XPARAM] on becoming MASTER",
            man_arg="script", man="""
            Run as
            .I script interface vip
            .RI [ xparam ]
            on becoming MASTER.
            """)] = None
    downscript: Annotated[
        Path | None, EXECUTABLE,
        Stanza("ucarp-downscript", Kind.PATH, str(DEFAULT_DOWNSCRIPT), man=r"""
            Run the same way on leaving MASTER (default
            .IR /usr/share/carpd/vip\-down :
            .B ifdown
            .IB interface :ucarp\fR).
            """),
        cli("-d", "--downscript", help="run as SCRIPT IFACE VIP [XPARAM] on leaving MASTER",
            man_arg="script", man="""
            Run as
            .I script interface vip
            .RI [ xparam ]
            on leaving MASTER.
            """)] = None
    preempt: Annotated[
        bool,
        Stanza("ucarp-master", Kind.FLAG, man="""
            Preempt: take the VIP over from a MASTER that advertises less often (default
            .BR no ).
            Not "start as MASTER": every engine starts as BACKUP.
            """),
        cli("-P", "--preempt", action="store_true", help="take over from a slower master",
            man="""
            Take over from a MASTER that advertises less often.
            """)] = False
    advskew: Annotated[
        Octet,
        Stanza("ucarp-advskew", man=r"""
            Added to the interval, in 1/256 s, 0 to 255 (default 0): the lower, the
            more preferred the node; as
            .BR \-k .
            """),
        cli("-k", "--advskew", help="advert skew in 1/256 s, 0..255 (default 0)",
            man_arg="skew", man="""
            Advertisement skew, in 1/256 seconds, 0 to 255 (default 0).
            """)] = 0
    advbase: Annotated[
        Octet,
        Stanza("ucarp-advbase", man=r"""
            Seconds between advertisements, 0 to 255 (default 1); as
            .B \-b
            of
            .BR carpd (8).
            """),
        cli("-b", "--advbase", help="advert base interval in seconds, 0..255 (default 1)",
            man_arg="seconds", man="""
            Advertisement base interval, 0 to 255 seconds (default 1).
            """)] = 1
    deadratio: Annotated[
        int, Field(ge=1, le=255),
        Stanza("ucarp-deadratio", man=r"""
            How many intervals of silence make a BACKUP take over, 1 to 255 (default 3); as
            .BR \-r .
            """),
        cli("-r", "--deadratio", help="master-down ratio, 1..255 (default 3)",
            man_arg="ratio", man="""
            A BACKUP takes over after this many advertisement intervals without one from
            the MASTER, 1 to 255 (default 3).
            """)] = 3
    nomcast: Annotated[
        bool, PER_ENGINE,
        Stanza("ucarp-nomcast", Kind.FLAG, man=r"""
            Send advertisements to the Ethernet broadcast address instead of the
            multicast group (default
            .BR no );
            as
            .BR \-M .
            """),
        cli("-M", "--nomcast", action="store_true", help="send adverts to Ethernet broadcast",
            man="""
            Send advertisements to the Ethernet broadcast address instead of the
            multicast group.
            """)] = False
    xparam: Annotated[
        str | None,
        Stanza("ucarp-xparam", man=r"""
            An extra argument for the up and down scripts; as
            .BR \-x .
            """),
        cli("-x", "--xparam", help="extra argument for the scripts",
            man_arg="parameter", man="""
            Extra argument for the scripts.
            """)] = None
    facility: Annotated[
        str, AfterValidator(_facility), PER_ENGINE,
        Stanza("ucarp-facility", man=r"""
            The syslog facility, or
            .B none
            (default
            .BR daemon );
            as
            .BR \-f .
            """),
        cli("-f", "--facility", help="syslog facility, or 'none' (default daemon)", man="""
            Syslog facility, or
            .B none
            (default
            .BR daemon ).
            """)] = "daemon"
    neutral: Annotated[
        bool,
        Stanza("ucarp-neutral", Kind.FLAG, man=r"""
            Do not run the down script at start (default
            .BR no );
            as
            .BR \-n .
            """),
        cli("-n", "--neutral", action="store_true",
            help="do not run the down script at start", man="""
            Do not run the down script at start.
            """)] = False
    ignoreifstate: Annotated[
        bool, PER_ENGINE,
        Stanza("ucarp-ignoreifstate", Kind.FLAG, man=r"""
            Ignore carrier changes of the interface (default
            .BR no );
            as
            .BR \-S .
            """),
        cli("-S", "--ignoreifstate", action="store_true", help="ignore carrier changes",
            man="""
            Ignore carrier changes on the interface.
            """)] = False
    mcast: Annotated[
        IPv4Address, AfterValidator(_multicast), PER_ENGINE,
        Stanza("ucarp-mcast", man=r"""
            The multicast group of the advertisements (default 224.0.0.18); as
            .BR \-m .
            """),
        cli("-m", "--mcast", help=f"multicast group (default {wire.DEFAULT_GROUP})",
            man_arg="group", man="""
            Multicast group (default 224.0.0.18).
            """)] = wire.DEFAULT_GROUP
    debug: Annotated[
        bool, PER_ENGINE,
        Stanza("ucarp-debug", Kind.FLAG, man=r"""
            Log more (default
            .BR no );
            as
            .BR \-D .
            """),
        cli("-D", "--debug", action="store_true", help="log debug messages", man="""
            Log debug messages.
            """)] = False
    srcip: Annotated[
        IPv4Address | None,
        Stanza("ucarp-srcip", man="""
            The node's own address, the source of its advertisements (default: the
            stanza's
            .IR address ,
            else the interface's primary address).
            """),
        cli("-s", "--srcip", help="our own address on it (default: its primary IPv4 address)",
            man_arg="address", man="""
            Our own IPv4 address on the interface (default: its primary IPv4 address).
            """)] = None
    shutdown: Annotated[
        bool,
        cli("-z", "--shutdown", action="store_true",
            help="accepted for ucarp: carpd always runs the down script when it exits as MASTER",
            man="""
            Accepted for ucarp's sake:
            .B carpd
            always runs the down script when it exits as MASTER.
            """)] = False
    daemonize: Annotated[
        bool, PER_ENGINE,
        cli("-B", "--daemonize", action="store_true",
            help="run in the background (writes a pidfile)", man="""
            Run in the background and write a pidfile.
            """)] = False
    pidfile: Annotated[
        Path | None, PER_ENGINE,
        cli("--pidfile", help="pidfile with -B (default STATE_DIR/IFACE.VHID.pid)",
            man_arg="file", man=r"""
            Pidfile with
            .B \-B
            (default
            .IR state_dir / interface .pid
            with
            .BR \-\-config ,
            .IR state_dir / interface . vhid .pid
            without).
            """)] = None
    ucarp_mac: Annotated[
        bool,
        cli("--ucarp-mac", action="store_true",
            help="send adverts from ucarp's 00:00:5e:00:00:VHID instead of the NIC's MAC", man=r"""
            Send advertisements from ucarp's source MAC address 00:00:5e:00:00:\fIvhid\fR
            instead of the interface's.
            """)] = False
    script_timeout: Annotated[
        float, Field(gt=0, le=3600),
        cli("--script-timeout", help="seconds a script may run (default 30)",
            man_arg="seconds", man="""
            How long an up or down script may run (default 30).
            """)] = 30.0
    state_dir: Annotated[
        Path, PER_ENGINE,
        cli("--state-dir", help=f"runtime folder (default {identity.RUN_DIR})",
            man_arg="directory", man="""
            Run-time directory (default
            .IR /run/carpd ).
            """)] = identity.RUN_DIR
    drain: Annotated[
        float, Field(ge=0, le=300),
        Stanza("ucarp-drain", man=r"""
            Seconds a MASTER that hands over (ifdown, stop, demotion) keeps the VIP,
            no longer answering ARP for it, so that requests in flight finish (default 2;
            0 to release at once); as
            .BR \-\-drain .
            """),
        cli("--drain", help="seconds to keep the VIP after a planned release, not answering "
            "ARP for it, so requests in flight finish (default 2; 0 to release at once)",
            man_arg="seconds", man="""
            After a planned release (a signal, or a demotion), keep the VIP this long
            without answering ARP for it, so that requests in flight finish (default 2;
            0 releases it at once).
            """)] = 2.0
    drain_connections: Annotated[
        float, Field(ge=0, le=86400),
        Stanza("ucarp-drain-connections", man=r"""
            After a planned hand-over, keep the VIP until the last TCP connection to it
            that was open at the hand-over has closed (a download, a websocket, SSH to the
            VIP), at most this many seconds and never less than
            .IR ucarp\-drain ,
            then release it at once (default 0: the fixed
            .I ucarp\-drain
            alone); a carpd new MASTER passes those connections on meanwhile (UDP port
            5112 between the nodes must be open).
            .B ifdown
            and
            .B "systemctl stop"
            return within about a second of that last connection closing, and wait that
            long at most; as
            .BR \-\-drain\-connections ;
            see HAND-OVER in
            .BR carpd (8).
            """),
        cli("--drain-connections", metavar="SECONDS",
            help="after a planned release keep the VIP until the TCP connections to it that "
            "existed at the hand-over have closed, at most this long (default 0: --drain alone)",
            man=r"""
            After a planned release, keep the VIP (without answering ARP for it) until
            every TCP connection to the VIP that was open at the hand-over has closed, at
            most this many seconds from the hand-over and never less than
            .BR \-\-drain ,
            then release it at once (default 0: the fixed
            .B \-\-drain
            alone).
            A carpd new MASTER passes every segment of those connections on to this node
            meanwhile; a ucarp one passes nothing on, so with a ucarp new MASTER the drain
            is
            .B \-\-drain
            long.
            A stop may take this long: the engine extends systemd's stop timeout to the
            longer of the two plus the script timeout and a margin, and the ifupdown hooks
            wait as long.
            See
            .B HAND\-OVER
            below.
            """)] = 0.0
    reannounce: Annotated[
        float, Field(ge=0, le=86400),
        Stanza("ucarp-reannounce", man=r"""
            Send gratuitous ARP for the VIP again every so often while MASTER (default 0:
            never); as
            .BR \-\-reannounce .
            """),
        cli("--reannounce", help="while MASTER, gratuitous ARP every this many seconds "
            "(default 0: off)", man_arg="seconds", man="""
            While MASTER, send a gratuitous ARP for the VIP this often (default 0: only
            on becoming MASTER).
            """)] = 0.0
    replay_check: Annotated[
        bool,
        Stanza("ucarp-replay-check", Kind.FLAG, man=r"""
            Drop advertisements whose counter is not newer than the last one accepted
            (replay protection; default
            .BR yes );
            .B no
            is
            .BR \-\-no\-replay\-check .
            """),
        cli("--no-replay-check", action="store_false",
            help="accept adverts whose counter is not newer (replay protection off)", man="""
            Accept advertisements whose counter is not newer than the last one accepted
            from that sender (replay protection off).
            By default a recorded advertisement sent again is dropped.
            """)] = True
    track_script: Annotated[
        tuple[Command, ...], BeforeValidator(_commands), Exists(_runnable, Command, _commands),
        Stanza("ucarp-track-script", Kind.LINES, man_arg=r"path \fR[\fPargument\fR...]\fP",
               man=r"""
            A health check: the node is healthy while this command exits 0.
            Its first word is the absolute path of an executable file; the rest is split
            into words as
            .BR sh (1)
            would (its arguments show in
            .BR ps (1):
            put no secret there).
            May be given several times, one command a line: every check must pass.
            The ready-made checks in
            .I /usr/share/carpd/checks/
            .RB ( unit\-active ,
            .BR tcp\-port ,
            .BR http\-url )
            are described under
            .B CHECKS
            in
            .BR carpd (8).
            As
            .BR \-\-track\-script .
            """),
        cli("--track-script", action="append", metavar="'PATH [ARGS]'",
            help="healthy while this command exits 0 (repeatable: all must pass)",
            man_arg=r"\(aqpath \fR[\fPargument\fR...]\fP\(aq", man="""
            A health check: the node is healthy while this command exits 0.
            The value is one command line, split into words as
            .BR sh (1)
            would (quotes group words) but run directly, without a shell; its first word
            must be the absolute path of an executable file.
            May be given several times: every check must pass.
            See
            .B CHECKS
            for ready-made ones.
            """)] = ()
    track_interval: Annotated[
        Seconds,
        Stanza("ucarp-track-interval", man=r"""
            How often each check runs (default 1); as
            .BR \-\-track\-interval .
            """),
        cli("--track-interval", metavar="SECONDS",
            help="run the checks this often (default 1)", man="""
            Run each check this often, fractions allowed (default 1; at most 3600).
            """)] = 1.0
    track_timeout: Annotated[
        Seconds | None,
        Stanza("ucarp-track-timeout", man=r"""
            How long a check may take before it counts as failed (default: the
            interval, but at least 1 second); as
            .BR \-\-track\-timeout .
            """),
        cli("--track-timeout", metavar="SECONDS",
            help="a check running longer fails (default: the interval, at least 1 s)", man="""
            A check still running after this long is killed and counts as failed
            (default: the interval, but at least 1 second).
            """)] = None
    track_fall: Annotated[
        Count,
        Stanza("ucarp-track-fall", man=r"""
            Failures in a row that make the node unhealthy (default 2); as
            .BR \-\-track\-fall .
            """),
        cli("--track-fall", metavar="N",
            help="failures in a row that make a check fail (default 2)", man_arg="count", man="""
            A passing check fails after this many failed runs in a row, 1 to 255
            (default 2).
            """)] = 2
    track_rise: Annotated[
        Count,
        Stanza("ucarp-track-rise", man=r"""
            Passes in a row that make it healthy again (default 2); as
            .BR \-\-track\-rise .
            """),
        cli("--track-rise", metavar="N",
            help="passes in a row that make it pass again (default 2)", man_arg="count", man="""
            A failing check passes again after this many passing runs in a row, 1 to 255
            (default 2).
            """)] = 2
    track_interface: Annotated[
        tuple[InterfaceName, ...], BeforeValidator(_interface_names),
        Stanza("ucarp-track-interface", Kind.LINES, man_arg=r"interface\fR...\fP", man=r"""
            Interfaces that must have carrier for the node to be healthy, separated by
            spaces; may be given several times.
            As
            .BR \-\-track\-interface .
            """),
        cli("--track-interface", action="append", metavar="IFACE",
            help="unhealthy while IFACE has no carrier (repeatable; also \"eth1 eth2\")",
            man_arg="interface", man=r"""
            The node is unhealthy while
            .I interface
            has no carrier (or does not exist), at once (netlink events, no polling).
            May be given several times, and may name several interfaces separated by
            spaces
            .RB ( "\-\-track\-interface \(dqeth1 eth2\(dq" ).
            """)] = ()
    script_interface: Annotated[str, AfterValidator(_script_interface)] | None = None
    """The first argument of this group's scripts (default: the VIP's interface); in a
    --config file only (a stanza's is ``ucarp-alias``, see :data:`INPUTS`)."""
    vip_interface: Annotated[
        InterfaceName | None, EXISTS,
        Stanza("ucarp-vip-interface", Kind.IFNAME, man=r"""
            Hold the VIP on
            .I interface
            while the advertisements go out on the stanza's: a dedicated cluster network
            (see
            .BR "A DEDICATED CLUSTER NETWORK" ).
            The default scripts then bring up
            .IB interface :ucarp
            (or
            .IB name :ucarp
            of a
            .I ucarp\-alias
            .IR interface : NAME );
            gratuitous ARP, the drain's ARP rule, the release and the watchdog act on
            .IR interface ,
            and the node is unhealthy while it has no carrier.
            An interface name (no
            .BR : );
            default: the stanza's own interface.
            As
            .BR \-\-vip\-interface .
            """),
        cli("--vip-interface", metavar="IFACE",
            help="hold the VIP on IFACE, adverts staying on -i (a dedicated cluster network; "
            "default: the -i interface)", man_arg="interface", man=r"""
            Hold the VIP on
            .I interface
            while the advertisements go out on the
            .B \-i
            interface: a dedicated cluster network (say, adverts on
            .IR eth1 ,
            the VIP on the service LAN's
            .IR eth0 ).
            Gratuitous ARP, the drain's ARP rule, the release at exit and the watchdog
            act on
            .IR interface ;
            a MASTER notices its VIP deleted from it and runs the up script again; the
            node is unhealthy while
            .I interface
            has no carrier, as with
            .BR \-\-track\-interface .
            The up and down scripts get
            .I interface
            as their first argument (not the
            .B \-i
            one), so that a script that adds the VIP to its first argument, as
            ucarp's do, puts it where it belongs.
            In
            .BR \-\-config ,
            the key
            .IR vip_interface .
            The interfaces-file option is
            .I ucarp\-vip\-interface
            (see
            .BR carpd\-interfaces (5)).
            """)] = None
    """The interface the VIP lives on (default: the interface the adverts go out on)."""
    persist_dir: Annotated[
        Path, PER_ENGINE,
        cli("--persist-dir", metavar="DIR",
            help="where demotions that survive a reboot are kept (default /var/lib/carpd)",
            man_arg="directory", man=r"""
            Where demotions that survive a reboot
            .RB ( "carpctl demote \-\-persistent" )
            are kept (default
            .IR /var/lib/carpd ).
            """)] = Path("/var/lib/carpd")

    @model_validator(mode="after")
    def _interval_not_zero(self) -> Options:
        if self.advbase == 0 and self.advskew == 0:
            raise ValueError("advbase and advskew cannot both be 0")
        if self.advbase == wire.BOW_OUT and self.advskew == wire.BOW_OUT:
            raise ValueError("advbase 255 with advskew 255 is the bow-out's timing (\"I am "
                             "stopping, take over\"): lower either")
        return self

    _password_never_in_errors = hiding("password")  # last: it wraps every other validator


@dataclass(frozen=True)
class Input:
    """An option that is no field of :class:`Options`: it arrives some other way (a password
    file read into ``password``, the --config file, the stanza's alias)."""

    name: str
    after: str
    """The field it comes after, in the table's order."""
    cli: Cli | None = None
    stanza: Stanza | None = None


INPUTS = (
    Input("passfile", "password", cli(
        "-o", "--passfile", help="file whose first line is the password", man_arg="file", man="""
        Read the password from the first line of
        .IR file .
        As
        .BR ssh (1)
        does with its keys,
        .B carpd
        refuses a file that does not belong to root (or to the user it runs as) or
        that group or others may read
        .RB ( "chmod 600" ).
        """),
        Stanza("ucarp-passfile", Kind.PATH, man="""
        A file whose first line is the password, owned by root and not readable by
        group or others; keeps the password out of the interfaces file.
        """)),
    Input("config", "daemonize", cli(
        "--config", help="JSON file of options (root-only readable; may hold the password)",
        man_arg="file", man=r"""
        A JSON object whose keys are option names (as in the long options, with
        underscores:
        .IR state_dir ,
        .IR script_timeout )
        and whose
        .I password
        is a string;
        .I track_script
        is a list of commands, each a list of words
        .RB ( "[[\(dq/usr/share/carpd/checks/tcp\-port\(dq, \(dq80\(dq]]" ).
        The file must belong to root and must not be readable by group or others.
        Options on the command line override it.
        .IP
        To run several groups in one engine the object lists them under
        .IR groups ,
        each an object of the keys of one group, beside the keys that have one value
        per engine
        .RI ( interface ", " mcast ", " nomcast ", " ignoreifstate ", " facility ,
        .IR debug ", " daemonize ", " pidfile ", " state_dir ", " persist_dir ):
        .IP
        .EX
        {"interface": "eth0", "groups": [
          {"vhid": 1, "addr": "10.0.0.101", "passfile": "/etc/carpd/pw1",
           "upscript": "/usr/share/carpd/vip\-up", "downscript": "/usr/share/carpd/vip\-down",
           "script_interface": "eth0:1"},
          {"vhid": 2, "addr": "10.0.0.102", "passfile": "/etc/carpd/pw2", "advskew": 100}]}
        .EE
        .IP
        A per-engine key inside a group, a group key beside
        .IR groups ,
        two groups with one
        .IR vhid ,
        or a group option on the command line is an error naming it.
        One key exists only in the file, per group:
        .I script_interface
        is the first argument of the group's up and down scripts (and so the alias
        .IR name :ucarp
        Debian's vip-up and vip-down bring up; default: the VIP's interface, so
        with
        .I vip_interface
        .B eth0
        name it
        .B eth0
        or
        .IB eth0 :NAME
        for the VIP to be brought up there).
        .I vip_interface
        (as
        .BR \-\-vip\-interface )
        is the interface the VIP lives on, when the advertisements go out on another
        (a dedicated cluster network; default: the interface): gratuitous ARP, the
        drain's ARP rule, the release at exit and the watchdog act there, and the
        group counts as unhealthy while that interface has no carrier.
        The file is read again on the control request
        .B {"cmd": "reload"}
        (see
        .BR FILES ):
        new groups start, removed ones are released as at a stop (last
        advertisement, drain, down script), changed ones are restarted, the others are
        left untouched; an invalid file changes nothing.
        """)),
    # the name the group's scripts get (MASTER: ifup NAME:ucarp); default the stanza's own
    Input("alias", "track_interface", stanza=Stanza("ucarp-alias", man_arg="name", man=r"""
        What the group's default scripts bring up and down:
        .B ifup
        .IB name :ucarp
        on MASTER (default: the stanza's own name,
        .I eth0
        or
        .IR eth0:1 ).
        It is the interface or an alias of it
        .RI ( eth0 : NAME ),
        and the label
        .IB name :ucarp
        must fit the kernel's 15 bytes.
        Each group of an interface needs its own.
        With
        .IR ucarp\-vip\-interface ,
        it is that interface or an alias of it.
        """)),
)


# -- what derives from it ----------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One option of the table, whatever its origin."""

    name: str
    cli: Cli | None = None
    stanza: Stanza | None = None
    per_engine: bool = False
    exists: Exists | None = None
    is_field: bool = True


def _marker(metadata: list[Any], kind: type[Any]) -> Any:
    found = [m for m in metadata if isinstance(m, kind)]
    return found[0] if found else None


def _field_rows(model: type[BaseModel]) -> Iterator[Row]:
    for name, info in model.model_fields.items():
        meta = info.metadata
        yield Row(name, _marker(meta, Cli), _marker(meta, Stanza), PER_ENGINE in meta,
                  _marker(meta, Exists))


def rows(model: type[BaseModel] = Options) -> tuple[Row, ...]:
    """The options of the table ``model`` (a grown copy of it, in tests) and :data:`INPUTS`."""
    found = list(_field_rows(model))
    for extra in INPUTS:
        at = [r.name for r in found].index(extra.after) + 1
        found.insert(at, Row(extra.name, extra.cli, extra.stanza, is_field=False))
    return tuple(found)


ROWS = rows()
"""Every option, in the table's order (the order of help, errors and lists of names)."""
BY_NAME = {row.name: row for row in ROWS}
PER_ENGINE_KEYS = tuple(row.name for row in ROWS if row.per_engine)
"""Keys with one value per engine; every other key belongs to a group."""


def shown_name(name: str) -> str:
    """How an error on the command line or in a --config names the option ``name``."""
    row = BY_NAME.get(name)
    return row.cli.name if row is not None and row.cli is not None else name


# -- this machine ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unmet:
    """A value this machine does not allow: of field ``name`` (its ``index``-th of several)."""

    name: str
    index: int | None
    reason: str


def environment_problems(values: dict[str, Any], skip: frozenset[tuple[Any, ...]] = frozenset(),
                         interfaces: bool = True) -> list[Unmet]:
    """What of ``values`` (as given, field name -> value) this machine refuses: an interface
    that does not exist, a script that is no executable file.  ``skip``: the locations the
    model already refused; ``interfaces=False`` leaves out the interfaces (which ifupdown may
    create only as it brings them up)."""
    unmet: list[Unmet] = []
    for row in ROWS:
        if row.exists is None or row.name not in values or values[row.name] is None \
                or (row.name,) in skip or (row.exists is EXISTS and not interfaces):
            continue
        unmet += _unmet(row.name, row.exists, values[row.name], skip)
    return unmet


def _unmet(name: str, exists: Exists, value: Any,
           skip: frozenset[tuple[Any, ...]]) -> list[Unmet]:
    if exists.each is None:
        typed = _typed(Options.model_fields[name].annotation, value)
        reason = None if typed is None else exists.check(typed)
        return [] if reason is None else [Unmet(name, None, reason)]
    found = []
    for index, item in enumerate(_items(exists, value)):
        typed = None if (name, index) in skip else _typed(exists.each, item)
        reason = None if typed is None else exists.check(typed)
        if reason is not None:
            found.append(Unmet(name, index, reason))
    return found


def _items(exists: Exists, value: Any) -> list[Any]:
    """The values of a field of several, as its model numbers them."""
    try:
        items = exists.items(value) if exists.items is not None else value
    except ValueError:
        return []
    return list(items) if isinstance(items, list | tuple) else []


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _typed(annotation: Any, value: Any) -> Any:
    """``value`` as the model reads it, or None if it does not."""
    key = repr(annotation)
    adapter = _ADAPTERS.get(key)
    if adapter is None:
        adapter = _ADAPTERS[key] = TypeAdapter(annotation)
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None
