"""What /etc/network/if-up.d/carpd and if-down.d/carpd do, from ifupdown's environment.

ifupdown runs the hooks with ``IFACE``, ``LOGICAL``, ``ADDRFAM``, ``METHOD``, ``MODE``
(start/stop: the same under ifupdown2, whose ``PHASE`` differs) and one ``IF_<OPTION>`` per stanza
option; ``ucarp-vid 3`` arrives as ``IF_UCARP_VID=3``.

Starting (``MODE=start``, after the interface got its address): every ``ucarp-*`` option is checked
first, and the stanza against the others of its interface (no vhid twice: both named as
``file:line``); on any problem each is printed, naming the stanza, the option, the value and what
is allowed, and the hook fails (so does ``ifup``) with nothing started.  One engine runs every group
of an interface (a group of the alias stanza ``eth0:1`` runs in eth0's): the group is added to
``/run/carpd/IFACE.conf`` (0600) and the engine started (as the systemd unit
``carpd@IFACE.service`` when systemd is PID 1, else under :mod:`carpd.debian.ifupdown.supervisor`),
or, if it runs, asked to reload (``{"cmd": "reload"}``): the new group starts, the others are left
alone.  ``IFACE.groups`` records which stanza brought each group up.

Stopping (``MODE=stop``, before the address goes): the groups that stanza (``LOGICAL``) brought up
are taken out of the conf and the engine reloads: each bows out, so the peer takes over at once,
drains and runs its down script; the others are untouched.  Without a group left the engine is
stopped and waited for, and nothing of it is left, whatever the stanza says now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import string
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carpd.debian.ifupdown import runtime
from carpd.debian.ifupdown.runtime import Group, Paths
from carpd.engine import control, release
from carpd.engine.settings import STOP_MARGIN

OPTION_PREFIX = "IF_UCARP_"
PASSWORD_VARIABLE = "IF_UCARP_PASSWORD"
READY_TIMEOUT = 15.0
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


def _validate(stanza: Stanza, script_env: Mapping[str, str]) -> Group:
    """The stanza's group, or HookError naming every problem (clashes with the other stanzas
    of its interface in the interfaces file included)."""
    from carpd.debian.ifupdown import groups, interfaces
    from carpd.debian.ifupdown import stanza as ucarp
    from carpd.engine import netlink

    try:
        group = ucarp.group(stanza.options, name=stanza.interface, logical=stanza.logical,
                            family=stanza.family, method=stanza.method, address=stanza.address)
    except ucarp.StanzaError as error:
        raise HookError("\n".join(p.at(None, stanza=str(stanza)).located
                                   for p in error.problems)) from None
    options = group.options
    path = script_env.get(ENV_INTERFACES, str(interfaces.DEFAULT_FILE))
    parsed = interfaces.parse(path)
    missing = ucarp.missing_alias(options, parsed, group.script_interface)
    if missing:
        raise HookError(f"{missing.at(None, stanza=str(stanza)).located} (in {path})")
    clashes = groups.conflicts_of(parsed, stanza.logical, options.vhid)
    if clashes:
        raise HookError("\n".join(clashes))
    if "ucarp-password" in stanza.options:
        exposed = ucarp.password_exposed(parsed, stanza.logical, stanza.family)
        if exposed:
            say(f"{stanza}: warning: {exposed}")
    if options.srcip is None and netlink.interface_info(options.interface).primary_address() \
            is None:
        raise HookError(f"{stanza}: ucarp-srcip: not given, and {options.interface} has no "
                        "IPv4 address to use instead: give ucarp-srcip")
    return dataclasses.replace(group, where=groups.where_of(parsed, stanza.logical,
                                                            options.vhid))


def start(env: Mapping[str, str], paths: Paths) -> bool:
    """Run the stanza's group in its interface's engine; False if it ran so already."""
    stanza = Stanza.from_env(env)
    if not stanza.options:
        return False
    script_env = script_environment()
    group = _validate(stanza, script_env)
    env_file = runtime.env_text(script_env)
    with runtime.locked(paths.hook_lock):
        return _add(paths, stanza, group, env_file, env)


def _owners(paths: Paths, data: Mapping[str, Any] | None) -> dict[int, runtime.Owner]:
    """Who brought up each group of the conf; a conf of carpd 0.1.0 has one group, its
    interface's."""
    if data is None:
        return {}
    owners = runtime.read_owners(paths)
    if owners is None:
        owners = {}
    for vhid in runtime.conf_vhids(data):
        owners.setdefault(vhid, runtime.Owner(paths.interface))
    return owners


def refusal(stanza: Stanza, group: Group, data: Mapping[str, Any] | None,
            owners: Mapping[int, runtime.Owner]) -> str | None:
    """Why the running engine's groups (``data``, brought up by ``owners``) leave no room for
    ``group``: its vhid run for another stanza, or other interface-wide settings."""
    if data is None:
        return None
    owner = owners.get(group.vhid)
    if group.vhid in runtime.conf_vhids(data) and owner and owner.stanza != group.stanza:
        at = f" at {owner.where}" if owner.where else ""
        vid = stanza.options.get("ucarp-vid", str(group.vhid))
        return (f"{stanza}{f' ({group.where})' if group.where else ''}: ucarp-vid: {vid!r}: "
                f"vhid {group.vhid} already runs on {_on(data)}, brought up by "
                f"'iface {owner.stanza}'{at}: each group of an interface needs a vhid of its "
                f"own (or take that one down first: ifdown {owner.stanza})")
    differ = _settings_changed(data, group)
    others = [v for v in runtime.conf_vhids(data) if v != group.vhid]
    if differ and others:
        running = runtime.interface_settings(data)
        wanted = runtime.interface_conf(group.options)
        return (f"{stanza}: {', '.join(differ)}: {running.get(differ[0])!r} for the groups "
                f"running on {_on(data)} (vhid "
                f"{', '.join(str(v) for v in runtime.conf_vhids(data))}), "
                f"{wanted.get(differ[0])!r} here: one engine runs all the groups of an "
                "interface: give them all the same value")
    return None


def _settings_changed(data: Mapping[str, Any], group: Group) -> list[str]:
    """The interface-wide settings in which ``group`` differs from the running engine's."""
    running = runtime.interface_settings(data)
    wanted = runtime.interface_conf(group.options)
    return sorted(k for k in set(running) | set(wanted) if running.get(k) != wanted.get(k))


def _on(data: Mapping[str, Any]) -> str:
    return str(data.get("interface", "?"))


def _add(paths: Paths, stanza: Stanza, group: Group, env_file: str,
         env: Mapping[str, str]) -> bool:
    """Add ``group`` to the interface's engine: start it, or rewrite its conf and reload."""
    # The conf lists the groups whose stanzas ifupdown has up, whether or not the engine runs
    # now: at boot, the unit of the first alias is still queued behind networking.service when
    # the next alias comes up; a dead engine's groups are up all the same and start with it.
    data = runtime.read_conf(paths.conf)
    owners = _owners(paths, data)
    problem = refusal(stanza, group, data, owners)
    if problem:
        raise HookError(problem)
    running = _running(paths)
    wanted = runtime.conf_with(data, group)
    owners[group.vhid] = runtime.Owner(group.stanza, group.where)
    same_env = runtime.read_text(paths.env) == env_file
    if running and same_env and data == wanted:
        runtime.write_private(paths.owners, runtime.owners_text(owners), mode=0o644)
        say(f"{paths.interface}: already running; left alone (vhid {group.vhid}, {stanza})")
        return False
    if running and data is not None and _settings_changed(data, group):
        # only this group runs (refusal() said so): a reload cannot change what is one per
        # engine (the socket, the filter, the log)
        say(f"{paths.interface}: options changed: restarting the engine")
        _stop(paths)
        running, data, owners = False, None, {group.vhid: owners[group.vhid]}
        wanted = runtime.conf_with(None, group)
    if running and not same_env:
        say(f"{paths.interface}: run by another ifup (-i or --state-dir): restarting the "
            "engine")
        _stop(paths)
        running = False
    if running and data is not None:
        known = group.vhid in runtime.conf_vhids(data)
        _reload(paths, data, wanted, owners)
        say(f"{stanza}: options changed: vhid {group.vhid} restarted in the engine of "
            f"{paths.interface}" if known else
            f"{stanza}: vhid {group.vhid} added to the engine of {paths.interface}")
        return True
    runtime.write_private(paths.conf, runtime.dumps(wanted))
    runtime.write_private(paths.env, env_file, mode=0o644)
    runtime.write_private(paths.owners, runtime.owners_text(owners), mode=0o644)
    _launch(paths, wanted, env)
    return True


def _launch(paths: Paths, data: Mapping[str, Any], env: Mapping[str, str]) -> None:
    if systemd_running():
        # forget an earlier run's failures (start limit) before starting again
        subprocess.run(["systemctl", "reset-failed", unit_name(paths.interface)],
                       capture_output=True, check=False)
        _systemctl("start", "--no-block", unit_name(paths.interface))
        # a start job queued earlier may have run between our look and our write: then the
        # engine read the conf before this group was in it (a reload is a no-op otherwise)
        if _running(paths):
            problem = _ask_reload(paths, _sockets(paths, data))
            if problem:
                say(f"{paths.interface}: warning: the engine did not reload: {problem}")
    else:
        supervisor = _spawn_supervisor(paths, env)
        _wait_ready(paths, supervisor, _sockets(paths, data))


def _sockets(paths: Paths, data: Mapping[str, Any]) -> list[Path]:
    """Where the engine answers: its one socket (IFACE.sock); an engine of one group that
    predates several groups per engine answers on IFACE.VHID.sock."""
    own = runtime.engine_socket(data, paths.run_dir)
    vhids = runtime.conf_vhids(data)
    return [own, *([own.with_name(f"{data['interface']}.{vhids[0]}.sock")] if vhids else [])]


def _reload(paths: Paths, old: Mapping[str, Any], new: Mapping[str, Any] | None,
            owners: Mapping[int, runtime.Owner]) -> None:
    """Write the conf ``new`` and have the running engine take it up (``{"cmd": "reload"}``);
    on a refusal the old conf is put back and HookError says why."""
    old_owners = runtime.read_text(paths.owners)
    if new is None:
        raise ValueError("no group left: stop the engine instead")
    runtime.write_private(paths.conf, runtime.dumps(new))
    runtime.write_private(paths.owners, runtime.owners_text(owners), mode=0o644)
    error = _ask_reload(paths, _sockets(paths, new))
    if error is None:
        return
    runtime.write_private(paths.conf, runtime.dumps(old))
    if old_owners is not None:
        runtime.write_private(paths.owners, old_owners, mode=0o644)
    raise HookError(f"{paths.interface}: the engine did not take up the new groups: {error}")


RELOAD_TIMEOUT = 10.0


def _ask_reload(paths: Paths, sockets: list[Path]) -> str | None:
    """None once the engine took up its conf again, else why not.  An engine still starting
    (``systemctl start --no-block`` at boot, then ``ifup`` of the next alias) has no socket
    yet: it is waited for, as at a start."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        for sock in sockets:
            try:
                reply = control.request(sock, {"cmd": "reload"}, timeout=RELOAD_TIMEOUT)
            except (OSError, ValueError):
                continue
            return None if reply.get("ok") else str(reply.get("error", reply))
        if time.monotonic() > deadline or not _running(paths):
            return "it does not answer on " + ", ".join(str(s) for s in sockets)
        time.sleep(0.05)


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
    if os.environ.get("PYTHONPATH"):  # the supervisor runs the same carpd as the hook
        clean["PYTHONPATH"] = os.environ["PYTHONPATH"]
    log = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "carpd.debian.ifupdown.main", "supervise", paths.interface,
             "--run-dir", str(paths.run_dir)],
            env=clean, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
            start_new_session=True)
    finally:
        os.close(log)


def _wait_ready(paths: Paths, supervisor: subprocess.Popen[bytes], sockets: list[Path]) -> None:
    """Until the engine answers on its control socket; HookError if it cannot start."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            raise HookError(_failure(paths, "the engine did not start"))
        for sock in sockets:
            try:
                reply = control.request(sock, {"cmd": "status"}, timeout=1.0)
                # the engine answering must be ours, not one started by other means
                if _parent(_engine_pid(reply)) == supervisor.pid:
                    return
            except (OSError, ValueError):
                pass
        time.sleep(0.05)
    _stop(paths)
    raise HookError(_failure(paths, f"the engine did not answer within {READY_TIMEOUT:g} s"))


def _engine_pid(reply: Mapping[str, Any]) -> int:
    """The pid in a status reply: one group's, or the first of the "groups"."""
    groups = reply.get("groups")
    if "pid" not in reply and isinstance(groups, list) and groups and \
            isinstance(groups[0], dict):
        reply = groups[0]
    return int(reply.get("pid", 0) or 0)


def _failure(paths: Paths, what: str) -> str:
    tail = (runtime.read_text(paths.log) or "").strip().splitlines()[-10:]
    paths.remove()
    return "\n".join([f"{paths.interface}: {what}:", *tail])


# -- stopping -------------------------------------------------------------------------------

def stop(paths: Paths, env: Mapping[str, str] | None = None) -> None:
    """Take down the groups the stanza of ``env`` (``LOGICAL``) brought up: all of them when
    none is left (the engine stops, as it always did), else only those, by a reload (each
    bows out, drains and runs its down script; the others are untouched)."""
    logical = (env or {}).get("LOGICAL") or (env or {}).get("IFACE") or paths.interface
    with runtime.locked(paths.hook_lock):
        data = runtime.read_conf(paths.conf)
        if data is None:
            _stop(paths)
            return
        owners = _owners(paths, data)
        mine = frozenset(v for v, o in owners.items() if o.stanza == logical)
        if not mine:
            return  # another stanza's groups: this one brought none up
        left = runtime.conf_without(data, mine)
        if left is None:
            _stop(paths)
            return
        others = {v: o for v, o in owners.items() if v not in mine}
        if _running(paths):
            _remove_groups(paths, data, left, others, mine)
            return
        # not running (its unit still queued at boot, or given up): only the record changes
        for line in runtime.release(paths, crashed=True, only_if_held=True, vhids=mine):
            say(f"{paths.interface}: {line}")
        runtime.write_private(paths.conf, runtime.dumps(left))
        runtime.write_private(paths.owners, runtime.owners_text(others), mode=0o644)


def _remove_groups(paths: Paths, data: Mapping[str, Any], left: Mapping[str, Any],
                   owners: Mapping[int, runtime.Owner], gone: frozenset[int]) -> None:
    """Reload without the groups ``gone``; wait until the engine no longer runs them (each
    bowed out, drained and ran its down script), then take whatever they left."""
    removed = runtime.conf_without(data, frozenset(runtime.conf_vhids(data)) - gone)
    engines = [] if removed is None else [runtime.ConfGroup.from_group(g)
                                          for g in runtime.conf_groups(removed)]
    _reload(paths, data, left, owners)
    budget = max((e.stop_budget for e in engines), default=30.0 + STOP_MARGIN)
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline and gone & _running_vhids(_sockets(paths, left)):
        time.sleep(0.05)
    for engine in engines:
        with contextlib.suppress(OSError):
            for address in release.release(engine.vip_on, engine.vip, engine.label):
                say(f"{paths.interface}: removed {address} left by vhid {engine.vhid}")
    say(f"{paths.interface}: vhid {', '.join(str(v) for v in sorted(gone))} taken down; "
        f"the engine runs vhid {', '.join(str(v) for v in runtime.conf_vhids(left))}")


def _running_vhids(sockets: list[Path]) -> frozenset[int]:
    """The vhids the engine reports in its status (empty if it does not answer)."""
    for sock in sockets:
        try:
            reply = control.request(sock, {"cmd": "status"}, timeout=1.0)
        except (OSError, ValueError):
            continue
        groups = reply.get("groups")
        listed = groups if isinstance(groups, list) else [reply]
        stopping = reply.get("stopping")  # removed, still bowing out, draining, running down
        return frozenset([*(int(g.get("vhid", 0)) for g in listed if isinstance(g, dict)),
                          *(int(v) for v in (stopping if isinstance(stopping, list) else []))])
    return frozenset()


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
    budget = runtime.stop_budget(paths.conf)
    deadline = time.monotonic() + (budget if budget is not None else 30.0 + STOP_MARGIN)
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
    # an alias stanza's group (iface eth0:1) runs in the engine of eth0
    paths = Paths(runtime.physical(interface), run_dir)
    stopping = env.get("MODE") == "stop"
    try:
        if env.get("MODE") == "start":
            start(env, paths)
        elif stopping:
            stop(paths, env)
    except HookError as error:
        say(str(error))
        # a failing stop hook would keep ifdown from taking the interface down at all
        return 0 if stopping else 1
    return 0
