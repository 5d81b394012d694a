"""``carpctl``: check interfaces files, and look at or steer the running engines.

- ``carpctl check [FILE]``            parse FILE (default /etc/network/interfaces) as ifupdown does,
                                      check every stanza's ucarp-* options; each problem as
                                      ``file:line: message``; exit 1 if there is any; warn of a
                                      ucarp-password in a file every user can read
- ``carpctl status [IFACE [VHID]] [--json]``  what each engine says on its control socket, and
                                      why it is BACKUP (demoted, unhealthy) if it is; configured
                                      engines that do not run; whether each VIP really is on its
                                      interface when that contradicts the state
- ``carpctl metrics [IFACE] [--textfile DIR]``  the same as Prometheus text, printed or written
                                      at once to DIR/carpd.prom (node-exporter's textfile
                                      collector)
- ``carpctl demote IFACE [VHID] [--persistent]``  make the engines step back (a plain demotion
                                      persists across engine restarts, a persistent one across
                                      reboots and upgrades too)
- ``carpctl promote IFACE [VHID]``    undo ``demote``, either kind
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from carpd.config.problems import Problem, in_order
from carpd.debian.debian_status import DPKG_STATUS, ifupdown_status
from carpd.debian.ifupdown import groups, interfaces
from carpd.debian.ifupdown import stanza as ucarp
from carpd.debian.ifupdown.runtime import RUN_DIR
from carpd.engine import control, identity, metrics

EXIT_PROBLEMS = 1
EXIT_NO_ENGINE = 3


# -- check ----------------------------------------------------------------------------------

def check(path: Path) -> tuple[list[str], int]:
    """Every problem of ``path`` as ``file:line: message``, and how many ucarp stanzas it has."""
    return check_parsed(interfaces.parse(path))


def _first_only(iface: interfaces.Iface) -> list[Problem]:
    """ifupdown2 hands a hook only the first value of an option given several times: each
    ucarp-track-script or ucarp-track-interface line after the first would be ignored."""
    problems = []
    for name in ucarp.REPEATABLE:
        lines = [o for o in iface.options if o.name == name]
        if len(lines) < 2:
            continue
        instead = ("name them all on one line" if name == "ucarp-track-interface" else
                   "give one (a script of your own may run several checks)")
        problems.append(Problem(f"given {len(lines)} times, but ifupdown2 passes only the first "
                                f"to carpd: {instead}", name, file=lines[1].where.file,
                                line=lines[1].where.line, stanza=str(iface)))
    return problems


def check_problems(parsed: interfaces.Interfaces,
                   ifupdown2: bool = False) -> tuple[list[Problem], int]:
    """Every problem of what :func:`interfaces.parse` read, by file and line, and how many
    ucarp stanzas it has; ``ifupdown2``: as ifupdown2 will run the hooks."""
    problems = list(parsed.problems)
    carp = groups.carp_stanzas(parsed)
    for iface in carp:
        problems += groups.check_iface(iface, parsed)
        if ifupdown2:
            problems += _first_only(iface)
    problems += groups.conflicts(parsed, carp)  # several groups per interface: no clash
    return in_order(problems, parsed.files), len(carp)


def check_parsed(parsed: interfaces.Interfaces,
                 ifupdown2: bool = False) -> tuple[list[str], int]:
    """:func:`check_problems`, each problem as ``file:line: message``."""
    problems, count = check_problems(parsed, ifupdown2)
    return [p.located for p in problems], count


def password_warnings(path: Path) -> list[str]:
    """``file:line: iface ...: warning: ...`` for each ucarp-password others can read."""
    return password_warnings_parsed(interfaces.parse(path))


def password_warnings_parsed(parsed: interfaces.Interfaces) -> list[str]:
    """:func:`password_warnings` of what :func:`interfaces.parse` read."""
    found = (ucarp.readable_password(iface) for iface in parsed.ifaces
             if not parsed.is_template(iface))
    return [warning.located for warning in found if warning is not None]


def _cmd_check(args: argparse.Namespace) -> int:
    parsed = interfaces.parse(args.file)  # once: it may be large, and may change meanwhile
    # it lives until the command ends: spare the cyclic collector rescanning it for every
    # stanza checked (which made checking superlinear in the stanzas)
    gc.freeze()
    problems, count = check_parsed(parsed, ifupdown2=_flavour(args) == "ifupdown2")
    if count:  # what ifupdown runs matters only to ucarp-* stanzas
        _print_ifupdown_note(args)
    for line in problems + password_warnings_parsed(parsed):
        print(line)
    if problems:
        print(f"{args.file}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"{args.file}: OK ({count} ucarp stanza(s))")
    return 0


def ifupdown_note(status_file: Path = DPKG_STATUS) -> str | None:
    """What the installed ifupdown (from dpkg's status) means for ucarp-* stanzas, if anything."""
    status = ifupdown_status(status_file)
    if status.flavour == "ifupdown2" and status.ifupdown2 is not None:
        return (f"note: ifupdown2 {status.ifupdown2.version} is installed. It runs carpd's hooks "
                "(PHASE=up/down, with the prefix in IF_ADDRESS), but merges each IFACE:ucarp "
                "stanza into IFACE: the VIP is added by `ifup IFACE` on every node and `ifup "
                "IFACE:ucarp` fails. carpd copes: every engine starts as BACKUP and its down "
                "action removes the VIP, and under ifupdown2 the default actions add and remove "
                "the VIP with ip(8) instead of ifup/ifdown IFACE:ucarp.")
    if status.flavour is None:
        return ("note: neither ifupdown nor ifupdown2 is installed: ucarp-* stanzas start "
                "nothing; run carpd directly or install ifupdown")
    return None


def _flavour(args: argparse.Namespace) -> str | None:
    try:
        return ifupdown_status(args.dpkg_status).flavour
    except OSError:
        return None


def _print_ifupdown_note(args: argparse.Namespace) -> None:
    try:
        note = ifupdown_note(args.dpkg_status)
    except OSError:
        return
    if note:
        print(note, file=sys.stderr)


# -- the running engines --------------------------------------------------------------------

def _sockets(state_dir: Path, interface: str | None, vhid: int | None = None) -> list[Path]:
    """The control sockets that may serve ``interface`` (every one without): its engine's
    ``IFACE.sock`` and the ``IFACE.VHID.sock`` of engines of one group started by hand.  A
    dotted name may be either (``eth0.100.sock``: interface eth0.100, or eth0's vhid 100): the
    replies say which (:func:`_groups_of`)."""
    found = sorted(state_dir.glob("*.sock"))
    if interface is None:
        return found
    return [p for p in found if _may_serve(p.name.removesuffix(".sock"), interface, vhid)]


def _may_serve(name: str, interface: str, vhid: int | None) -> bool:
    if name == interface:
        return True
    head, _, tail = name.rpartition(".")
    return head == interface and tail.isdigit() and vhid in (None, int(tail))


def _socket_name(path: Path) -> tuple[str, int | None]:
    """The interface and vhid a socket's name suggests (for one that does not answer)."""
    name = path.name.removesuffix(".sock")
    head, _, tail = name.rpartition(".")
    return (head, int(tail)) if head and tail.isdigit() else (name, None)


def _ask(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    try:
        return control.request(path, request)
    except (OSError, ValueError) as error:
        return {"interface": _socket_name(path)[0], "error": f"no answer on {path}: {error}"}


def _groups_of(reply: dict[str, Any], interface: str | None = None,
               vhid: int | None = None) -> list[dict[str, Any]]:
    """One entry per group of an engine's reply (an engine of one group, or older than
    groups, answers with that group's fields alone), only those of ``interface`` and ``vhid``
    when given; an error reply as it is."""
    if "error" in reply:
        return [reply]
    groups = reply.get("groups")
    entries = [g for g in groups if isinstance(g, dict)] if isinstance(groups, list) else [reply]
    stopping = reply.get("stopping_groups")  # draining: its connections left
    entries += [g for g in stopping if isinstance(g, dict)] if isinstance(stopping, list) else []
    return [g for g in entries if (interface is None or g.get("interface") == interface)
            and (vhid is None or g.get("vhid") == vhid)]


def _status_replies(state_dir: Path, interface: str | None,
                    vhid: int | None) -> list[dict[str, Any]]:
    replies = []
    for path in _sockets(state_dir, interface, vhid):
        reply = _ask(path, {"cmd": "status"})
        replies += _groups_of(reply, interface, vhid)
    return replies


def _one_line(text: str) -> str:
    """``text`` safe to print on one terminal line: a check's output may hold line breaks or
    escape sequences."""
    return "".join(c if c.isprintable() else " " for c in text).strip()


def _ago(since: Any, now: float) -> str:
    if not isinstance(since, int | float):
        return "-"
    seconds = max(0, int(now - since))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def _table(replies: list[dict[str, Any]]) -> str:
    now = time.time()
    rows = [["IFACE", "VHID", "VIP", "STATE", "FOR", "MASTER", "DEMOTED", "PID"]]
    for r in replies:
        if "error" in r:
            state = str(r.get("state", "NO ANSWER"))
            rows.append([str(r.get("interface", "?")), "-", "-", state, "-", "-", "-", "-"])
            continue
        state = f"{r.get('state')}, STOPPING" if r.get("stopping") is True else \
            str(r.get("state"))
        rows.append([str(r.get("interface")), str(r.get("vhid")), str(r.get("vip")),
                     state, _ago(r.get("since"), now), str(r.get("master") or "-"),
                     "yes" if r.get("demoted") else "no", str(r.get("pid"))])
        why = r.get("why")
        if why:  # under its group's row: why it is BACKUP, or MASTER only as a last resort
            rows.append([f"  why: {_one_line(str(why))}"])
        contradiction = _vip_contradiction(r)
        if contradiction:
            rows.append([f"  vip: {contradiction}"])
        rows += [[line] for line in _handover_lines(r)]
    widths = [max(len(row[i]) for row in rows if len(row) > 1) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
             for row in rows]
    return "\n".join(table + [f"{r.get('interface')}: {r['error']}" for r in replies
                              if "error" in r])


def _handover_lines(reply: dict[str, Any]) -> list[str]:
    """Under a group's row: its drain (connections of the hand-over still open), and whose
    connections it passes on."""
    lines = []
    drain = reply.get("drain")
    if isinstance(drain, dict):
        count = drain.get("connections")
        left = f"{count} connection{'s' if count != 1 else ''} left, " if count is not None \
            else ""
        told = f"; telling {drain['to']}" if drain.get("to") else ""
        lines.append(f"  drain: {left}{float(drain.get('left') or 0):.0f} s at most{told}")
    forwarding = reply.get("forwarding")
    if isinstance(forwarding, dict):
        count = forwarding.get("connections")
        left = f": {count} connection{'s' if count != 1 else ''} left there" \
            if count is not None else ""
        lines.append(f"  forwarding: {forwarding.get('to')}'s connections go on to it while "
                     f"it drains{left}")
    return lines


def _vip_present(reply: dict[str, Any]) -> bool | None:
    """Whether the group's VIP is on its interface (``vip_interface``: it may be another than
    the adverts'), read from the kernel; None if unknown (no such interface, or no VIP in the
    reply)."""
    from carpd.engine import netlink

    try:
        vip = IPv4Address(str(reply["vip"]))
        on = reply.get("vip_interface") or reply["interface"]
        return netlink.interface_info(str(on)).has(vip)
    except (KeyError, ValueError, LookupError, OSError):
        return None


def _vip_contradiction(reply: dict[str, Any]) -> str | None:
    """What is wrong when the VIP's presence contradicts the state: a MASTER without it (its up
    action failed, or someone removed it), a BACKUP with it (left behind, or added by ifupdown2
    at ifup: clients may reach this node)."""
    present, state = reply.get("vip_present"), reply.get("state")
    vip, interface = reply.get("vip"), reply.get("interface")
    if present is False and state == "MASTER":
        return f"MASTER, but {vip} is not on {interface}"
    if present is True and state in ("BACKUP", "INIT") and not reply.get("drain"):
        return f"{state}, but {vip} is on {interface} (left behind, or added by someone else)"
    return None


def _configured(state_dir: Path, interface: str | None) -> list[str]:
    """Interfaces whose engine the ifupdown hook started (it wrote their IFACE.conf)."""
    names = sorted(p.name.removesuffix(".conf") for p in state_dir.glob("*.conf"))
    return [n for n in names if interface is None or n == interface]


def _why_not_running(state_dir: Path, interface: str) -> str:
    """What systemd says of the engine's unit (a crash loop shows here), or what the
    supervisor's log says last."""
    if Path("/run/systemd/system").is_dir():
        unit = f"carpd@{interface}.service"
        out = subprocess.run(["systemctl", "show", unit, "-p", "ActiveState", "-p", "SubState",
                              "-p", "Result", "-p", "NRestarts"],
                             capture_output=True, text=True, check=False).stdout
        fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return (f"{unit} is {fields.get('ActiveState', '?')} ({fields.get('SubState', '?')}), "
                f"last result {fields.get('Result', '?')}, restarted "
                f"{fields.get('NRestarts', '?')} times")
    log = state_dir / f"{interface}.log"
    with contextlib.suppress(OSError):
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "exited" in ln]
        if lines:
            return lines[-1]
    return "its engine does not answer"


def _missing_engines(state_dir: Path, interface: str | None,
                     replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answered = {r.get("interface") for r in replies if "error" not in r}
    return [{"interface": name, "state": "NOT RUNNING", "error": _why_not_running(state_dir, name)}
            for name in _configured(state_dir, interface)
            if name not in answered and not _answers(state_dir, name)]


def _answers(state_dir: Path, interface: str) -> bool:
    """An engine of the interface answers (one of another VHID than `status IFACE VHID` asked
    runs all the same; a socket left behind by a killed engine does not count)."""
    return any("error" not in r for r in _status_replies(state_dir, interface, None))


def _no_engine(args: argparse.Namespace) -> int:
    where = f" on {args.interface}" if args.interface else ""
    where += f" vhid {args.vhid}" if args.vhid is not None else ""
    print(f"carpctl: no carpd engine{where} (no control socket in {args.state_dir})",
          file=sys.stderr)
    return EXIT_NO_ENGINE


def _cmd_status(args: argparse.Namespace) -> int:
    if _configured(args.state_dir, args.interface):  # engines the ifupdown hooks started
        _print_ifupdown_note(args)
    replies = _status_replies(args.state_dir, args.interface, args.vhid)
    for reply in replies:
        if "error" not in reply:
            reply["vip_present"] = _vip_present(reply)
    replies += _missing_engines(args.state_dir, args.interface, replies)
    if args.json:  # the replies as they are: demotion, healthy, health and why too
        print(json.dumps(replies, indent=2))
    elif replies:
        print(_table(replies))
    if not replies:
        return _no_engine(args)
    return 1 if any("error" in r for r in replies) else 0


def _conf_groups(path: Path) -> list[tuple[int | None, str | None]]:
    """The VHID and VIP of each group an engine's IFACE.conf names (flat, or with "groups");
    [(None, None)] if it cannot be read: it is root's only."""
    try:
        conf = json.loads(path.read_text())
        entries = conf.get("groups", [conf])
        return [(int(g.get("vhid", 1)), str(g["addr"])) for g in entries]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [(None, None)]


def _metrics_engines(state_dir: Path, interface: str | None) -> list[metrics.GroupStatus]:
    """Every group of every engine with a control socket (with its reply), then every group
    of every configured engine without one."""
    found = []
    for path in _sockets(state_dir, interface):
        reply = _ask(path, {"cmd": "status"})
        if "error" not in reply:
            found += [metrics.GroupStatus(str(g.get("interface")), None, None, g)
                      for g in _groups_of(reply, interface)]
            continue
        # one that does not answer (a killed engine leaves its socket): what its conf says
        name, vhid = _socket_name(path)
        groups = _conf_groups(state_dir / f"{name}.conf")
        if vhid is None:  # the engine's own IFACE.sock: every group its conf names
            found += [metrics.GroupStatus(name, group, vip, reply) for group, vip in groups]
            continue
        found.append(metrics.GroupStatus(name, vhid, dict(groups).get(vhid), reply))
    running = {engine.interface for engine in found}
    for name in _configured(state_dir, interface):
        if name not in running:
            found += [metrics.GroupStatus(name, group, vip)
                      for group, vip in _conf_groups(state_dir / f"{name}.conf")]
    return found


def _cmd_metrics(args: argparse.Namespace) -> int:
    text = metrics.exposition(_metrics_engines(args.state_dir, args.interface))
    if args.textfile is None:
        sys.stdout.write(text)
        return 0
    try:
        metrics.write_textfile(args.textfile, text)
    except OSError as error:
        print(f"carpctl: cannot write {args.textfile / metrics.TEXTFILE_NAME}: "
              f"{error.strerror or error}", file=sys.stderr)
        return EXIT_PROBLEMS
    return 0


def _steer_request(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """The request; "vhid" only for an engine of the interface (``IFACE.sock``): one of one
    group (``IFACE.VHID.sock``) was picked by its name."""
    request: dict[str, Any] = {"cmd": args.command}
    if args.vhid is not None and path.name == f"{args.interface}.sock":
        request["vhid"] = args.vhid
    if getattr(args, "persistent", False):
        request["persistent"] = True
    return request


def _steered(args: argparse.Namespace, reply: dict[str, Any]) -> str | None:
    """What went wrong with one group's ``reply``, or None when the engine did as asked."""
    if "error" in reply or reply.get("ok") is False:
        return str(reply.get("error", reply))
    demotion = reply.get("demotion")
    if getattr(args, "persistent", False) and not (
            isinstance(demotion, dict) and demotion.get("persistent") is True):
        return ("demoted, but the engine did not record the demotion as persistent (is it "
                "older than carpctl?): it will not survive a reboot")
    return None


def _serving(state_dir: Path, interface: str, vhid: int | None) -> list[Path]:
    """The sockets whose engine runs a group of ``interface`` (``vhid`` only, if given).  A
    name that reads both ways (``eth0.100.sock`` while an interface eth0.100 exists) is asked
    first: a demotion must not reach another interface's engine."""
    return [p for p in _sockets(state_dir, interface, vhid)
            if not _ambiguous(p, interface)
            or [g for g in _groups_of(_ask(p, {"cmd": "status"}), interface, vhid)
                if "error" not in g]]


def _ambiguous(path: Path, interface: str) -> bool:
    name = path.name.removesuffix(".sock")
    if name == interface:
        return False
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _cmd_steer(args: argparse.Namespace) -> int:
    sockets = _serving(args.state_dir, args.interface, args.vhid)
    if not sockets:
        return _no_engine(args)
    failed = False
    done = f"{args.command}d" + (" (persistent)" if getattr(args, "persistent", False) else "")
    for path in sockets:
        reply = _ask(path, _steer_request(args, path))
        for group in _groups_of(reply, args.interface, args.vhid) if reply.get("ok") else [reply]:
            problem = _steered(args, group)
            if problem is not None:
                failed = True
                print(f"carpctl: {path.name}: {problem}", file=sys.stderr)
            else:
                print(f"{group.get('interface', args.interface)} vhid {group.get('vhid', '?')}: "
                      f"{done}, now {group.get('state', '?')}")
    return 1 if failed else 0


def _vhid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 255:
        raise argparse.ArgumentTypeError(f"{text!r}: a VHID is a number from 1 to 255")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carpctl", description="Check and steer carpd.")
    p.add_argument("--state-dir", type=Path, default=identity.namespace_folder(RUN_DIR),
                   help=f"where the engines' control sockets are (default {RUN_DIR})")
    p.add_argument("--dpkg-status", type=Path, default=DPKG_STATUS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="check an interfaces file and its ucarp-* options")
    c.add_argument("file", nargs="?", type=Path, default=interfaces.DEFAULT_FILE)
    c.set_defaults(run=_cmd_check)
    s = sub.add_parser("status", help="show the engines' state, and why one is BACKUP")
    s.add_argument("interface", nargs="?")
    s.add_argument("vhid", nargs="?", type=_vhid, help="only this group")
    s.add_argument("--json", action="store_true", help="print the engines' replies as JSON")
    s.set_defaults(run=_cmd_status)
    m = sub.add_parser("metrics", help="print the engines' state and counters as Prometheus text")
    m.add_argument("interface", nargs="?")
    m.add_argument("--textfile", type=Path, metavar="DIR",
                   help=f"write it at once to DIR/{metrics.TEXTFILE_NAME} instead (for "
                        f"node-exporter: {metrics.TEXTFILE_DIR})")
    m.set_defaults(run=_cmd_metrics)
    for name, text in (("demote", "make IFACE's engines step back to BACKUP and stay there"),
                       ("promote", "let IFACE's engines take part in the election again")):
        d = sub.add_parser(name, help=text)
        d.add_argument("interface")
        d.add_argument("vhid", nargs="?", type=_vhid,
                       help="only this group (default: every group of IFACE)")
        d.set_defaults(run=_cmd_steer)
        if name == "demote":
            d.add_argument("--persistent", action="store_true",
                           help="stay demoted across reboots and upgrades too, until promote")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
