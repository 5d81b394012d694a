"""``carpd-ifupdown regen IFACE``: write ``/run/carpd/IFACE.conf`` again, from the stanza.

The hook writes an engine's options to ``IFACE.conf`` in the shape the carpd that ran it knew.
After an upgrade the new carpd may know another shape (an option renamed, added, dropped), so
carpd's maintainer scripts run this, with the *new* code, before restarting each engine: the
stanza that ``ifup`` brought up is read again from the interfaces file that ifup read (the
``-i`` recorded in ``IFACE.env``, else ``/etc/network/interfaces``), its logical name from
ifupdown's state (``ifstate.IFACE`` in ``--state-dir``, else ``/run/network``), and its
``ucarp-*`` options go through the same checks and the same writer as at ``ifup``.  The result is
loaded the way ``carpd --config`` loads it before it replaces ``IFACE.conf``.

Exit status 0: ``IFACE.conf`` is what this carpd would write (rewritten or already so); 1: it
cannot be (no such stanza any more, or the new carpd refuses a value): the old file is kept and
each problem printed, and the engine is best left running as it is; 3: no ``IFACE.conf`` (the
interface was taken down meanwhile): nothing to do.

``--hand-over``: run while the maintainer scripts stop an engine that may be MASTER, to make its
bow-out count.  carpd 0.1.0, like a lone ucarp MASTER, draws a fresh random counter for every
advert, its bow-out included; a newer carpd peer takes over at once only on a counter newer than
the newest it accepted, so it drops such a bow-out half the time and waits for the master-down
interval, longer than the drain.  This listens to the engine's own adverts (it prints
``listening`` once it does); when the engine bows out and no peer advertises within
:data:`PEER_WAIT`, it sends the bow-out again for it, signed with the stanza's password, with the
counter after the engine's last and then that plus 2**63 (of two counters half a circle apart,
one is always newer), while the engine still drains (the VIP stays on the link meanwhile).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING

from carpd.debian.ifupdown import groups, interfaces, runtime
from carpd.debian.ifupdown import stanza as ucarp
from carpd.debian.ifupdown.hook import ENV_INTERFACES, ENV_STATE_DIR
from carpd.debian.ifupdown.runtime import Paths

if TYPE_CHECKING:
    from carpd.config.load import Options
    from carpd.core.wire import Expect
    from carpd.debian.ifupdown.migrate import CarpTap

EXIT_CANNOT = 1
EXIT_GONE = 3
DEFAULT_STATE_DIR = Path("/run/network")
PEER_WAIT = 0.05
"""Seconds a peer may take to advertise after the engine's own bow-out before we send ours."""
SECOND_WAIT = 0.02
"""Seconds between our two bow-outs (the first may be older than what the peer holds)."""
HAND_OVER_TIMEOUT = 120.0
"""The most this listens (the maintainer scripts end it once the engine is gone)."""


class RegenError(Exception):
    """IFACE.conf cannot be written again; each line of the message is a problem."""


@dataclass(frozen=True)
class Source:
    """Where the stanza of a running engine is: the interfaces file and its logical name."""

    file: Path
    logical: str


def source_of(paths: Paths) -> Source:
    env = runtime.read_env(paths.env)
    state_dir = Path(env.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR)
    return Source(Path(env.get(ENV_INTERFACES) or interfaces.DEFAULT_FILE),
                  logical_name(paths.interface, state_dir))


def logical_name(interface: str, state_dir: Path) -> str:
    """The logical interface ifupdown brought up as ``interface`` (``IFACE=LOGICAL`` in its
    state), else the interface itself."""
    for name in (f"ifstate.{interface}", "ifstate"):
        text = runtime.read_text(state_dir / name) or ""
        for line in text.splitlines():
            physical, sep, logical = line.strip().partition("=")
            if sep and physical == interface and logical:
                return logical
    return interface


def find_stanza(parsed: interfaces.Interfaces, source: Source,
                vhid: int | None = None) -> interfaces.Iface:
    """The stanza ``source.logical`` with ucarp-* options (of vhid ``vhid``, where several
    stanzas of that name each define a group)."""
    found = [i for i in parsed.find(source.logical, "inet") if groups.stanza_options(i)]
    if vhid is not None and len(found) > 1:
        found = [i for i in found if _vhid(i) == vhid]
    if len(found) != 1:
        how = "no" if not found else f"{len(found)}"
        of = f" of vhid {vhid}" if vhid is not None else ""
        raise RegenError("\n".join([*parsed.errors,
                                    f"{source.file}: {how} 'iface {source.logical} inet' "
                                    f"stanza(s) with ucarp-* options{of}"]))
    return found[0]


def _vhid(iface: interfaces.Iface) -> int | None:
    try:
        return int(groups.stanza_options(iface).get("ucarp-vid", "").strip())
    except ValueError:
        return None


def group_for(paths: Paths, parsed: interfaces.Interfaces, source: Source,
              vhid: int | None = None) -> runtime.Group:
    """The group the stanza ``source.logical`` defines now, checked as at ``ifup``."""
    iface = find_stanza(parsed, source, vhid)
    name = iface.name if runtime.physical(iface.name) == paths.interface else paths.interface
    try:
        group = groups.stanza_group(iface, parsed, interface=name, check_interface=True)
    except ucarp.StanzaError as error:
        where = iface.where
        raise RegenError("\n".join(p.at(where.file, where.line, str(iface)).located
                                   for p in error.problems)) from None
    return group


def conf_for(paths: Paths, source: Source) -> str:
    """What the hook would write to IFACE.conf for the stanzas now: those that brought up the
    groups it runs (``IFACE.groups``; carpd 0.1.0 kept no such record: the one stanza
    ifupdown has up); RegenError if it cannot be."""
    parsed = interfaces.parse(source.file)
    owners = runtime.read_owners(paths)
    if owners is None:
        return runtime.conf_text([group_for(paths, parsed, source)])
    found = [group_for(paths, parsed, Source(source.file, owner.stanza), vhid)
             for vhid, owner in sorted(owners.items())]
    for group, vhid in zip(found, sorted(owners), strict=True):
        if group.vhid != vhid:
            raise RegenError(f"{group.where}: iface {group.stanza}: ucarp-vid is now "
                             f"{group.vhid}, but vhid {vhid} runs: take it down and up again")
    return runtime.conf_text(found)


def _loads(path: Path) -> None:
    """RegenError unless the engine would accept path as its --config."""
    from carpd.config import load

    try:
        load.from_command_line(["--config", str(path)])
    except (load.ConfigError, SystemExit) as error:
        raise RegenError(f"{path}: the engine refuses it: {error}") from None


def regenerate(paths: Paths) -> bool | None:
    """Write IFACE.conf again from the stanza: True if it changed, False if it was so already,
    None if there is none (the interface is down); RegenError if it cannot be."""
    if not paths.conf.exists():
        return None
    text = conf_for(paths, source_of(paths))
    with runtime.locked(paths.hook_lock):
        current = runtime.read_text(paths.conf)
        if current is None:
            return None
        if current == text:
            return False
        candidate = paths.run_dir / f".{paths.interface}.conf.regen"
        try:
            runtime.write_private(candidate, text)
            _loads(candidate)
            os.replace(candidate, paths.conf)
        finally:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
    return True


# -- hand-over: the engine's bow-out, again, with a counter its peers take -----------------


def _options(paths: Paths) -> Options:
    from carpd.config import load

    return load.from_command_line(["--config", str(paths.conf)])


def _source(options: Options) -> IPv4Address | None:
    from carpd.engine import netlink

    if options.srcip is not None:
        return options.srcip
    return netlink.interface_info(options.interface).primary_address()


def _bow_out_packet(options: Options, source: IPv4Address, counter: int) -> bytes:
    from carpd.core import wire

    advert = wire.Advert(options.vhid, wire.BOW_OUT, wire.BOW_OUT, counter)
    return wire.encode_packet(advert, bytes(options.password), options.addr, source,
                              int.from_bytes(os.urandom(2), "big"), options.mcast)


def _own_bow_out(tap: CarpTap, expect: Expect, source: IPv4Address,
                 deadline: float) -> int | None:
    """The counter of the engine's own bow-out, once it is sent (None: none by deadline)."""
    from carpd.core import wire

    for packet, sent in tap.frames(deadline):
        if not sent or packet[12:16] != source.packed:
            continue
        result = wire.inspect(packet, expect)
        if isinstance(result, wire.Received) and result.advert.advbase == wire.BOW_OUT:
            return result.advert.counter
    return None


def _peer_advertised(tap: CarpTap, expect: Expect, seconds: float) -> IPv4Address | None:
    from carpd.core import wire

    for packet, sent in tap.frames(time.monotonic() + seconds):
        result = None if sent else wire.inspect(packet, expect)
        if isinstance(result, wire.Received) and result.advert.advbase != wire.BOW_OUT:
            return result.source
    return None


def hand_over(paths: Paths, timeout: float = HAND_OVER_TIMEOUT) -> str:
    """Listen until the engine bows out, then make sure a peer hears a bow-out it takes."""
    from carpd.core import wire
    from carpd.debian.ifupdown.migrate import CarpTap

    options = _options(paths)
    source = _source(options)
    if source is None or options.mcast != wire.DEFAULT_GROUP:
        print("listening", flush=True)
        return "no source address, or a group of its own: the engine's bow-out only"
    tap = CarpTap(options.interface, options.vhid, options.nomcast)
    try:
        print("listening", flush=True)
        key = bytes(options.password)
        own = wire.Expect(options.vhid, key, options.addr, IPv4Address(0), tap.group)
        last = _own_bow_out(tap, own, source, time.monotonic() + timeout)
        if last is None:
            return "no bow-out (the engine was BACKUP)"
        peers = wire.Expect(options.vhid, key, options.addr, source, tap.group)
        peer = _peer_advertised(tap, peers, PEER_WAIT)
        if peer is not None:
            return f"{peer} took over on the engine's own bow-out"
        first = (last + 1) % wire.COUNTER_MODULUS
        for counter, wait in ((first, SECOND_WAIT),
                              ((first + wire.COUNTER_MODULUS // 2) % wire.COUNTER_MODULUS, 1.0)):
            tap.send(_bow_out_packet(options, source, counter))
            peer = _peer_advertised(tap, peers, wait)
            if peer is not None:
                return f"{peer} took over on the bow-out sent again for the engine"
        return "no peer advertised after the bow-outs"
    finally:
        tap.close()


def run_hand_over(interface: str, run_dir: Path) -> int:
    try:
        what = hand_over(Paths(interface, run_dir))
    except (ImportError, OSError, ValueError, LookupError) as error:
        print("listening", flush=True)  # nothing to wait for
        print(f"carpd: {interface}: hand-over: {error}", file=sys.stderr)
        return EXIT_CANNOT
    print(f"carpd: {interface}: hand-over: {what}", file=sys.stderr)
    return 0


def run(interface: str, run_dir: Path = runtime.RUN_DIR) -> int:
    paths = Paths(interface, run_dir)
    try:
        changed = regenerate(paths)
    except (RegenError, interfaces.ReadError, OSError, ValueError) as error:
        for line in str(error).splitlines():
            print(f"carpd: {interface}: {line}", file=sys.stderr)
        return EXIT_CANNOT
    if changed is None:
        print(f"carpd: {interface}: no {paths.conf}: not running", file=sys.stderr)
        return EXIT_GONE
    what = "written again from its stanza" if changed else "already as its stanza says"
    print(f"carpd: {interface}: {paths.conf} {what}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carpd-ifupdown regen",
                                description="write IFACE's engine options again from its stanza")
    p.add_argument("interface")
    p.add_argument("--run-dir", type=Path, default=runtime.RUN_DIR,
                   help=f"where the per-interface files live (default {runtime.RUN_DIR})")
    p.add_argument("--hand-over", action="store_true",
                   help="instead: while the engine stops, make sure its peers hear it bow out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.hand_over:
        return run_hand_over(args.interface, args.run_dir)
    return run(args.interface, args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
