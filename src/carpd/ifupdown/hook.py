"""What /etc/network/if-up.d/carpd and if-down.d/carpd do, from ifupdown's environment.

ifupdown runs the hooks with ``IFACE``, ``LOGICAL``, ``ADDRFAM``, ``METHOD``, ``MODE``
(start/stop: the same under ifupdown2, whose ``PHASE`` differs) and one ``IF_<OPTION>`` per stanza
option; ``ucarp-vid 3`` arrives as ``IF_UCARP_VID=3``.

Starting (``MODE=start``, after the interface got its address): every ``ucarp-*`` option is checked
first; on any problem each is printed, naming the stanza, the option, the value and what is
allowed, and the hook fails (so does ``ifup``) with nothing started.  Otherwise the engine's options
go to ``/run/carpd/IFACE.conf`` (0600) and one engine runs for the interface: as the systemd unit
``carpd@IFACE.service`` when systemd is PID 1, else under :mod:`carpd.ifupdown.supervisor`.  A
second start with the same options leaves the running engine alone; changed options restart it.

Stopping (``MODE=stop``, before the address goes): the engine is stopped and waited for: it bows
out, so the peer takes over at once, runs its down script and removes the VIP.  Then nothing of it
is left, whatever the stanza says now.
"""

from __future__ import annotations

import os
import signal
import string
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from carpd import control
from carpd.ifupdown import runtime
from carpd.ifupdown.runtime import Paths

if TYPE_CHECKING:
    from carpd.config import Options

OPTION_PREFIX = "IF_UCARP_"
PASSWORD_VARIABLE = "IF_UCARP_PASSWORD"
READY_TIMEOUT = 15.0
STOP_MARGIN = 15.0
"""Seconds beyond the engine's script timeout that stopping it may take before it is killed."""
IFUPDOWN_PROGRAMS = ("ifup", "ifdown", "ifquery", "ifreload")
ENV_INTERFACES = "CARPD_IFUPDOWN_INTERFACES"
ENV_STATE_DIR = "CARPD_IFUPDOWN_STATE_DIR"
_UNIT_SAFE = frozenset(string.ascii_letters + string.digits + ":_.")


class HookError(Exception):
    """The hook cannot do its work; each line of the message is printed."""


def say(message: str) -> None:
    for line in message.splitlines():
        print(f"carpd: {line}", file=sys.stderr, flush=True)


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def unit_name(interface: str) -> str:
    """``carpd@IFACE.service``, IFACE escaped as ``systemd-escape`` does."""
    escaped = "".join(
        chr(b) if (chr(b) in _UNIT_SAFE) and not (i == 0 and b == ord("."))
        else "-" if b == ord("/") else f"\\x{b:02x}"
        for i, b in enumerate(os.fsencode(interface)))
    return f"carpd@{escaped}.service"


def stanza_options(env: Mapping[str, str]) -> dict[str, str]:
    """``IF_UCARP_MASTER=yes`` -> ``{"ucarp-master": "yes"}``."""
    return {"ucarp-" + key[len(OPTION_PREFIX):].lower().replace("_", "-"): value
            for key, value in env.items() if key.startswith(OPTION_PREFIX)}


# -- the ifup or ifdown we run under ---------------------------------------------------------

def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _argv(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [os.fsdecode(a) for a in f.read().split(b"\0")[:-1]]


def invoking_ifupdown(start: int | None = None) -> tuple[int, list[str]] | None:
    """Pid and arguments of the ifup/ifdown among our ancestors (ifupdown2's is a script)."""
    pid = os.getppid() if start is None else start
    for _ in range(10):
        if pid <= 1:
            return None
        try:
            argv = _argv(pid)
            if any(os.path.basename(a) in IFUPDOWN_PROGRAMS for a in argv[:2]):
                return pid, argv
            pid = _parent(pid)
        except (OSError, ValueError, IndexError):
            return None
    return None


def ifupdown_files(argv: list[str], cwd: str) -> dict[str, str]:
    """The interfaces file (``-i``) and state folder (``--state-dir``) an ifup was given, as
    the environment the engine's scripts get."""
    wanted = {"-i": ENV_INTERFACES, "--interfaces": ENV_INTERFACES, "--state-dir": ENV_STATE_DIR}
    found: dict[str, str] = {}
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            break
        name, sep, value = arg.partition("=")
        if name in wanted:
            found[wanted[name]] = value if sep else next(args, "")
        elif arg.startswith("-i") and len(arg) > 2 and not arg.startswith("--"):
            found[ENV_INTERFACES] = arg[2:]
    for key, value in found.items():
        if "\n" in value or "\r" in value:
            flag = "-i/--interfaces" if key == ENV_INTERFACES else "--state-dir"
            raise HookError(f"ifup {flag}: {value!r}: a line break in it cannot be passed on to "
                            "the engine's scripts: allowed is a path without line breaks")
    return {key: os.path.join(cwd, value) for key, value in found.items() if value}


def script_environment() -> dict[str, str]:
    found = invoking_ifupdown()
    if found is None:
        return {}
    pid, argv = found
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = "/"
    return ifupdown_files(argv, cwd)


# -- starting -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stanza:
    interface: str
    logical: str
    family: str
    method: str
    address: str | None
    options: dict[str, str]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Stanza:
        interface = env.get("IFACE", "")
        return cls(interface, env.get("LOGICAL") or interface,
                   env.get("ADDRFAM", ""), env.get("METHOD", ""), env.get("IF_ADDRESS"),
                   stanza_options(env))

    def __str__(self) -> str:
        return f"iface {self.logical} {self.family} {self.method}"


def _validate(stanza: Stanza, script_env: Mapping[str, str]) -> Options:
    """The engine's options, or HookError naming every problem."""
    from carpd import netlink
    from carpd.ifupdown import interfaces
    from carpd.ifupdown import stanza as ucarp

    try:
        options = ucarp.engine_options(stanza.options, interface=stanza.interface,
                                       family=stanza.family, method=stanza.method,
                                       address=stanza.address)
    except ucarp.StanzaError as error:
        raise HookError("\n".join(f"{stanza}: {p}" for p in error.problems)) from None
    path = script_env.get(ENV_INTERFACES, str(interfaces.DEFAULT_FILE))
    parsed = interfaces.parse(path)
    missing = ucarp.missing_alias(options, parsed)
    if missing:
        raise HookError(f"{stanza}: {missing} (in {path})")
    if "ucarp-password" in stanza.options:
        exposed = ucarp.password_exposed(parsed, stanza.logical, stanza.family)
        if exposed:
            say(f"{stanza}: warning: {exposed}")
    if options.srcip is None and netlink.interface_info(options.interface).primary_address() \
            is None:
        raise HookError(f"{stanza}: ucarp-srcip: not given, and {options.interface} has no "
                        "IPv4 address to use instead: give ucarp-srcip")
    return options


def start(env: Mapping[str, str], paths: Paths) -> None:
    stanza = Stanza.from_env(env)
    if not stanza.options:
        return
    script_env = script_environment()
    options = _validate(stanza, script_env)
    conf, env_file = runtime.conf_text(options), runtime.env_text(script_env)
    with runtime.locked(paths.hook_lock):
        same = (runtime.read_text(paths.conf) == conf
                and runtime.read_text(paths.env) == env_file)
        running = _running(paths)
        if running and same:
            say(f"{stanza.interface}: already running; left alone")
            return
        if running:
            say(f"{stanza.interface}: options changed: restarting the engine")
            _stop(paths)
        runtime.write_private(paths.conf, conf)
        runtime.write_private(paths.env, env_file, mode=0o644)
        if systemd_running():
            # forget an earlier run's failures (start limit) before starting again
            subprocess.run(["systemctl", "reset-failed", unit_name(paths.interface)],
                           capture_output=True, check=False)
            _systemctl("start", "--no-block", unit_name(paths.interface))
        else:
            supervisor = _spawn_supervisor(paths, env)
            _wait_ready(paths, supervisor, control.socket_path(
                options.state_dir, options.interface, options.vhid))


def _running(paths: Paths) -> bool:
    if systemd_running():
        state = subprocess.run(["systemctl", "is-active", unit_name(paths.interface)],
                               capture_output=True, text=True, check=False).stdout.strip()
        return state in ("active", "activating", "reloading")
    return runtime.supervisor_pid(paths) is not None


def _systemctl(*args: str) -> None:
    # --no-block on start: at boot the hook runs inside networking.service's start job, and a
    # unit ordered after it would wait for that job, which waits for us
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HookError(f"systemctl {' '.join(args)}: {result.stderr.strip()}")


def _spawn_supervisor(paths: Paths, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    # a clean environment: the hook's holds the password (IF_UCARP_PASSWORD)
    clean = {"PATH": env.get("PATH", os.defpath), "LANG": "C.UTF-8"}
    log = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "carpd.ifupdown.main", "supervise", paths.interface,
             "--run-dir", str(paths.run_dir)],
            env=clean, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
            start_new_session=True)
    finally:
        os.close(log)


def _wait_ready(paths: Paths, supervisor: subprocess.Popen[bytes], sock: Path) -> None:
    """Until the engine answers on its control socket; HookError if it cannot start."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            raise HookError(_failure(paths, "the engine did not start"))
        try:
            reply = control.request(sock, {"cmd": "status"}, timeout=1.0)
            # the engine answering must be ours, not one started by other means
            if _parent(int(reply.get("pid", 0))) == supervisor.pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    _stop(paths)
    raise HookError(_failure(paths, f"the engine did not answer within {READY_TIMEOUT:g} s"))


def _failure(paths: Paths, what: str) -> str:
    tail = (runtime.read_text(paths.log) or "").strip().splitlines()[-10:]
    paths.remove()
    return "\n".join([f"{paths.interface}: {what}:", *tail])


# -- stopping -------------------------------------------------------------------------------

def stop(paths: Paths) -> None:
    with runtime.locked(paths.hook_lock):
        _stop(paths)


def _stop(paths: Paths) -> None:
    if not paths.conf.exists() and runtime.supervisor_pid(paths) is None:
        return
    if systemd_running():
        _systemctl("stop", unit_name(paths.interface))
    else:
        _stop_supervisor(paths)
    # an engine that was killed along with its supervisor leaves the VIP for us to release
    for line in runtime.release(paths, crashed=True, only_if_held=True):
        say(f"{paths.interface}: {line}")
    paths.remove()


def _stop_supervisor(paths: Paths) -> None:
    pid = runtime.supervisor_pid(paths)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    engine = runtime.Engine.from_conf(paths.conf)
    deadline = time.monotonic() + (engine.stop_budget if engine else 30.0 + STOP_MARGIN)
    while runtime.supervisor_pid(paths) is not None:
        if time.monotonic() > deadline:
            say(f"{paths.interface}: the engine did not stop in time: killing it")
            os.killpg(pid, signal.SIGKILL)
            break
        time.sleep(0.01)


def run(env: Mapping[str, str], run_dir: Path = runtime.RUN_DIR) -> int:
    env = dict(env)
    # nothing the hook runs (systemctl, the supervisor, a down script) inherits the password
    os.environ.pop(PASSWORD_VARIABLE, None)
    interface = env.get("IFACE", "")
    if not interface:
        return 0
    paths = Paths(interface, run_dir)
    stopping = env.get("MODE") == "stop"
    try:
        if env.get("MODE") == "start":
            start(env, paths)
        elif stopping:
            stop(paths)
    except HookError as error:
        say(str(error))
        # a failing stop hook would keep ifdown from taking the interface down at all
        return 0 if stopping else 1
    return 0
