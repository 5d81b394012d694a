"""Moving a running node from Debian's ucarp to carpd (``/usr/libexec/carpd/migrate``).

Debian's ucarp has no maintainer scripts and no if-down hook: its daemons, started by its if-up
hook from the ``ucarp-*`` stanzas of /etc/network/interfaces, outlive the package's removal (which
``Conflicts: ucarp`` causes when carpd is installed).  carpd's postinst runs this on first install
and upgrade; it is also safe to run by hand at any time, as often as wanted.

For each stanza with ``ucarp-*`` options (those carpd takes over first):

1. its ``ucarp-*`` options are checked as the if-up hook checks them; on a problem (an alias or
   inet6 stanza, a value ucarp wrapped to 8 bits, a missing script) its ucarp daemon is left
   running and the problem printed: fix the stanza, run this again;
2. the ucarp daemon of that interface and vhid is found.  Only a process of this system (our
   root and network namespace) whose uids are all 0 and whose program is root's ucarp binary
   (``/usr/sbin/ucarp`` itself, or a deleted ``/usr/sbin/ucarp`` once the package is gone)
   counts; only then is its command line read, for ``-i/-v/-a/-s/-b/-k/-M`` (never the
   password);
3. it is MASTER if it is heard advertising (its own adverts, for one interval, 3 s at most) or
   its VIP is on the interface.  A MASTER is frozen (SIGSTOP: it sends nothing more) and the
   bow-out advert ucarp never sends goes out for it (advbase 255, advskew 255, its source
   address, vhid and VIP, signed with the stanza's password), so that the peer takes over at
   once rather than after the master-down interval.  A ucarp peer hears through libpcap
   (``pcap_open_live``, 1 s timeout): its TPACKET_V3 ring of 8 blocks of 256 KiB hands frames
   over only when a block is retired, by a 1 s timer ticking at its own phase or when the
   block is full.  So the first bow-out goes out in BOW_OUT_COPIES identical copies, enough to
   fill any block: the peer reads it at once rather than up to 1 s late (a carpd peer takes
   the first copy and rejects the others as replays).  While the bow-out is out, the node
   keeps the VIP but neither answers ARP for it nor sends ARP from it (the engine's drain
   rule, :class:`carpd.engine.arpguard.ArpGuard`), so traffic already headed here is served
   and the LAN learns only the peer: a ucarp peer adds the VIP in its up script before it
   advertises.  Once the peer's advert is heard (TAKEOVER_WAIT at most) the VIP goes, then
   the rule; on any failure both go too (the rule also dies with this process).  Where
   nftables cannot be used, the VIP goes before the bow-out instead;
4. it is stopped (SIGTERM, SIGKILL if it lingers) and waited for;
5. then, if ifupdown has the interface up and no carpd engine runs for it, the engine is started
   exactly as the if-up hook starts it.  So there are never two daemons for one vhid.

The counter of the bow-out: ucarp peers accept any authentic advert, carpd peers only one whose
counter is newer than the newest they accepted (see :mod:`carpd.core.election`).  A ucarp MASTER
that never heard a peer draws a fresh random counter for every advert, so what a carpd peer holds as
newest cannot be known; the first bow-out carries the counter after the MASTER's last one (newer
whenever the peer took that one as news), and if no peer takes over within a moment, a second
carries that counter plus 2**63: of two counters half a circle apart one is always newer.
"""

from __future__ import annotations

import contextlib
import errno
import getopt
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from carpd.config.load import Options
from carpd.core import wire
from carpd.debian.ifupdown import groups, hook, interfaces, runtime
from carpd.debian.ifupdown import stanza as ucarp
from carpd.debian.ifupdown.runtime import Paths
from carpd.engine import link, netlink, release
from carpd.engine.arpguard import ArpGuard

UCARP = "/usr/sbin/ucarp"
DELETED = " (deleted)"
# ucarp 1.5.2's own getopt strings
SHORT_OPTIONS = "i:s:v:p:Pa:hb:k:x:nu:d:Dr:zf:Bo:SM"
LONG_OPTIONS = ["interface=", "srcip=", "mcast=", "vhid=", "pass=", "passfile=", "preempt",
                "neutral", "addr=", "help", "advbase=", "advskew=", "upscript=", "downscript=",
                "deadratio=", "debug", "shutdown", "daemonize", "ignoreifstate", "nomcast",
                "facility=", "xparam="]
LISTEN_MARGIN = 0.5
"""Seconds beyond one advert interval to listen for the MASTER's own advert."""
LISTEN_AT_MOST = 3.0
"""Seconds of an advert interval listened to at most (a MASTER also holds the VIP)."""
FIRST_BOW_OUT_WAIT = 0.02
"""Seconds to wait for a peer to take over after the first bow-out before sending the second."""
TAKEOVER_WAIT = 1.5
"""Seconds the VIP stays (its ARP dropped) after the bow-outs while no peer advertises: a ucarp
peer that read none of the copies (cut short by a full transmit queue) acts on the bow-out up
to 1 s late, then runs its up script; less than a carpd peer's master-down interval (3 advert
intervals at least), after which it would take over with the VIP still here."""
BOW_OUT_COPIES = 1700
"""Copies of the first bow-out, sent back to back.  libpcap 1.10 (bookworm, trixie) gives
ucarp's capture a TPACKET_V3 ring of 8 blocks of 256 KiB (262144, 8, 1000 ms asked of the
kernel); the bow-out (70 bytes) takes 160 bytes of a block with its headers, so 1639 copies
fill the open block whatever it held, and the kernel hands it to ucarp at once."""
BURST_WAIT = 0.05
"""Seconds the copies may wait for a full transmit queue (ENOBUFS) before the rest are dropped:
they only hurry a ucarp peer, the first copy is what counts."""
STOP_WAIT = 10.0
"""Seconds a ucarp daemon may take to exit on SIGTERM (it runs its down script) before SIGKILL."""
HALF_CIRCLE = wire.COUNTER_MODULUS // 2
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
IP_ADD_MEMBERSHIP = 35
PREFIX = "carpd-migrate"


def say(message: str) -> None:
    for line in message.splitlines():
        print(f"{PREFIX}: {line}", flush=True)


# -- the ucarp daemons ----------------------------------------------------------------------

@dataclass(frozen=True)
class UcarpArgs:
    """What a ucarp command line says, the password left out."""

    interface: str
    vhid: int
    vip: IPv4Address
    srcip: IPv4Address | None
    advbase: int = 1
    advskew: int = 0
    broadcast: bool = False

    @property
    def interval(self) -> float:
        return self.advbase + self.advskew / 256


def parse_ucarp_args(argv: list[str]) -> UcarpArgs | None:
    """ucarp's options as its getopt_long reads them; None if it cannot be read."""
    try:
        found, _rest = getopt.gnu_getopt(argv[1:], SHORT_OPTIONS, LONG_OPTIONS)
        values: dict[str, str] = {}
        for name, value in found:
            long = name.lstrip("-")
            key = {"i": "interface", "v": "vhid", "a": "addr", "s": "srcip", "b": "advbase",
                   "k": "advskew", "M": "nomcast"}.get(long, long)
            values[key] = value
        srcip = values.get("srcip")
        return UcarpArgs(values["interface"], int(values["vhid"]) & 0xFF,
                         IPv4Address(values["addr"]), IPv4Address(srcip) if srcip else None,
                         int(values.get("advbase", "1")) & 0xFF,
                         int(values.get("advskew", "0")) & 0xFF, "nomcast" in values)
    except (getopt.GetoptError, KeyError, ValueError):
        return None


@dataclass
class UcarpDaemon:
    pid: int
    pidfd: int
    args: UcarpArgs

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signum)

    def wait(self, timeout: float) -> bool:
        """Whether it exited within ``timeout`` seconds."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(int(timeout * 1000)))

    def close(self) -> None:
        os.close(self.pidfd)


def _same(path_a: str, path_b: str) -> bool:
    a, b = os.stat(path_a), os.stat(path_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _is_ucarp(pid: int) -> bool:
    """Its program is root's ucarp binary: the installed /usr/sbin/ucarp itself, or, once the
    package is gone, a deleted /usr/sbin/ucarp (a process in another mount namespace, such as a
    chroot's, sees our root's path with a prefix: the caller checks that its root is ours)."""
    program = os.stat(f"/proc/{pid}/exe")
    if program.st_uid != 0 or program.st_mode & 0o022:
        return False
    with contextlib.suppress(FileNotFoundError):
        installed = os.stat(UCARP)
        return (program.st_dev, program.st_ino) == (installed.st_dev, installed.st_ino)
    name = os.readlink(f"/proc/{pid}/exe")
    return name.endswith(DELETED) and name.removesuffix(DELETED).endswith(UCARP)


def _trusted(pid: int) -> bool:
    """A ucarp daemon of this system run by root: never decided by what any user can set."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        uids = fields.get("Uid", "").split()
        return (len(uids) == 4 and all(uid == "0" for uid in uids)
                and _same(f"/proc/{pid}/root", "/")
                and _same(f"/proc/{pid}/ns/net", "/proc/self/ns/net")
                and _is_ucarp(pid))
    except OSError:
        return False


def _argv(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [os.fsdecode(a) for a in f.read().split(b"\0")[:-1]]


UNREADABLE = "unreadable"


def _read_trusted(pid: int, pidfd: int) -> UcarpArgs | str | None:
    """A trusted daemon's arguments, UNREADABLE if they cannot be read, None if untrusted."""
    try:
        if not _trusted(pid):
            return None
        args = parse_ucarp_args(_argv(pid))
        # still the process the pidfd names, and still trusted after its argv was read
        signal.pidfd_send_signal(pidfd, 0)
        if not _trusted(pid):
            return None
    except OSError:
        return None
    return UNREADABLE if args is None else args


def find_daemons() -> tuple[list[UcarpDaemon], list[int]]:
    """The trusted ucarp daemons, and the pids of those whose command line cannot be read.
    Each pidfd is opened before the checks, so a pid reused meanwhile is never signalled."""
    daemons, unreadable = [], []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        args = _read_trusted(pid, pidfd)
        if isinstance(args, UcarpArgs):
            daemons.append(UcarpDaemon(pid, pidfd, args))
            continue
        os.close(pidfd)
        if args is UNREADABLE:
            unreadable.append(pid)
    return sorted(daemons, key=lambda d: d.pid), unreadable


# -- the stanzas carpd takes over -----------------------------------------------------------

@dataclass(frozen=True)
class Takeover:
    """A stanza with ``ucarp-*`` options, and what ifupdown says of its interface."""

    iface: interfaces.Iface
    physical: str | None
    """The interface's name when ifupdown has the stanza up (IFACE), else None."""
    raw: dict[str, str]

    @property
    def name(self) -> str:
        return self.physical or self.iface.name

    @property
    def address(self) -> str | None:
        found = [o.value for o in self.iface.options if o.name == "address"]
        return found[0] if found else None

    def vhid(self) -> int | None:
        """The vhid as ucarp ran it (it kept the low 8 bits of ucarp-vid 263: 7)."""
        with contextlib.suppress(ValueError):
            return int(self.raw.get("ucarp-vid", "").strip()) & 0xFF
        return None

    def options(self, parsed: interfaces.Interfaces) -> Options:
        """The engine's options for the group (raises :class:`ucarp.StanzaError`)."""
        from carpd.debian.ifupdown import groups

        return groups.stanza_group(self.iface, parsed, interface=self.name,
                                   check_interface=self.physical is not None).options

    def refused(self, parsed: interfaces.Interfaces) -> bool:
        try:
            self.options(parsed)
        except ucarp.StanzaError:
            return True
        return False

    def hook_env(self) -> dict[str, str]:
        """The environment ifupdown gives the if-up hook for this stanza."""
        env = {"IFACE": self.name, "LOGICAL": self.iface.name, "ADDRFAM": self.iface.family,
               "METHOD": self.iface.method, "MODE": "start", "PHASE": "post-up",
               "PATH": os.environ.get("PATH", os.defpath)}
        if self.address:
            env["IF_ADDRESS"] = self.address.split("/")[0]
        for option, value in self.raw.items():
            env["IF_" + option.upper().replace("-", "_")] = value
        return env


def up_interfaces() -> dict[str, str]:
    """logical name -> interface, of what ifupdown has up (``ifquery --state``)."""
    result = subprocess.run(["ifquery", "--state"], capture_output=True, text=True, check=False)
    up = {}
    for line in result.stdout.splitlines():
        physical, sep, logical = line.strip().partition("=")
        if sep:
            up[logical] = physical
    return up


def takeovers(parsed: interfaces.Interfaces, up: Mapping[str, str]) -> list[Takeover]:
    found = []
    for iface in parsed.ifaces:
        raw = groups.stanza_options(iface)
        # alias and non-inet stanzas too: carpd refuses them, and says so if ucarp ran them
        if raw and not parsed.is_template(iface):
            found.append(Takeover(iface, up.get(iface.name), raw))
    return found


# -- the wire: the MASTER's own adverts, the peer's, the bow-out ----------------------------

def _tap_filter(vhid: int) -> list[link.Insn]:
    """IPv4 (IHL 5, as ucarp and carpd send) of protocol 112 and this vhid, either way."""
    ld_h, ld_b, jeq, ret = 0x28, 0x30, 0x15, 0x06
    return [(ld_h, 0, 0, 12), (jeq, 0, 5, wire.ETH_P_IP),
            (ld_b, 0, 0, 14 + 9), (jeq, 0, 3, wire.CARP_PROTO),
            (ld_b, 0, 0, 14 + 20 + 1), (jeq, 0, 1, vhid),
            (ret, 0, 0, 0xFFFF), (ret, 0, 0, 0)]


class CarpTap:
    """The CARP frames of one vhid on one interface, sent and received, and a way to send."""

    def __init__(self, interface: str, vhid: int, broadcast: bool) -> None:
        self.interface = interface
        self.group = wire.DEFAULT_GROUP
        self.mac = netlink.interface_info(interface).mac
        self.destination = wire.BROADCAST_MAC if broadcast else wire.multicast_mac(self.group)
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self._member = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            link.attach_filter(self._sock, _tap_filter(vhid))
            self._sock.bind((interface, ETH_P_ALL))
            # the NIC accepts the group's MAC while we listen for the peer
            mreqn = struct.pack("4s4si", self.group.packed, bytes(4),
                                socket.if_nametoindex(interface))
            self._member.setsockopt(socket.IPPROTO_IP, IP_ADD_MEMBERSHIP, mreqn)
        except OSError:
            self.close()
            raise

    def frames(self, until: float) -> Iterator[tuple[bytes, bool]]:
        """(IPv4 packet, sent by this host) until the monotonic time ``until``."""
        while (left := until - time.monotonic()) > 0:
            ready, _, _ = select.select([self._sock], [], [], left)
            if not ready:
                return
            frame, address = self._sock.recvfrom(2048)
            packet = wire.strip_ethernet(frame, self.group)
            if packet is not None:
                yield packet, address[2] == PACKET_OUTGOING

    def ignore_own(self) -> None:
        """From now on, not the frames this host sends (such as the bow-out's copies)."""
        self._sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)

    def send(self, packet: bytes, copies: int = 1) -> int:
        """Send ``packet`` ``copies`` times back to back; how many went (at least the first, or
        OSError): a full transmit queue gets BURST_WAIT to drain, then the rest are dropped."""
        frame = wire.encode_ethernet(self.destination, self.mac, wire.ETH_P_IP, packet)
        sent, deadline = 0, time.monotonic() + BURST_WAIT
        while sent < copies:
            try:
                self._sock.sendto(frame, (self.interface, wire.ETH_P_IP))
            except OSError as error:
                if error.errno != errno.ENOBUFS or (sent and time.monotonic() > deadline):
                    if sent:
                        return sent
                    raise
                time.sleep(0.001)
                continue
            sent += 1
        return sent

    def close(self) -> None:
        self._sock.close()
        self._member.close()


@dataclass
class Heard:
    counter: int | None = None
    """The counter of the daemon's last authentic advert."""
    foreign_key: bool = False
    """It advertises, but not with the stanza's password."""

    @property
    def advertising(self) -> bool:
        return self.counter is not None or self.foreign_key


def listen_to_own(tap: CarpTap, args: UcarpArgs, key: bytes, source: IPv4Address) -> Heard:
    """The daemon's own adverts for one interval: a BACKUP sends none."""
    expect = wire.Expect(args.vhid, key, args.vip, IPv4Address(0), tap.group)
    heard = Heard()
    listen = min(args.interval, LISTEN_AT_MOST) + LISTEN_MARGIN
    for packet, sent in tap.frames(time.monotonic() + listen):
        if not sent or packet[12:16] != source.packed:
            continue
        result = wire.inspect(packet, expect)
        if isinstance(result, wire.Received):
            heard.counter = result.advert.counter
            return heard
        heard.foreign_key = heard.foreign_key or result is wire.Reject.BAD_HMAC
    return heard


def peer_took_over(tap: CarpTap, args: UcarpArgs, key: bytes, source: IPv4Address,
                   seconds: float) -> IPv4Address | None:
    """The address of a peer that advertised (not a bow-out) within ``seconds``."""
    expect = wire.Expect(args.vhid, key, args.vip, source, tap.group)
    for packet, sent in tap.frames(time.monotonic() + seconds):
        result = None if sent else wire.inspect(packet, expect)
        if isinstance(result, wire.Received) and result.advert.advbase != wire.BOW_OUT:
            return result.source
    return None


def bow_out(tap: CarpTap, args: UcarpArgs, key: bytes, source: IPv4Address,
            last: int | None, copies: int = BOW_OUT_COPIES) -> str:
    """Send the bow-out (``copies`` of it; a second if no peer answers the first); what
    happened, for the log."""
    first = (last + 1) % wire.COUNTER_MODULUS if last is not None \
        else int.from_bytes(os.urandom(8), "big")
    tap.ignore_own()
    started = time.monotonic()
    for counter in (first, (first + HALF_CIRCLE) % wire.COUNTER_MODULUS):
        advert = wire.Advert(args.vhid, wire.BOW_OUT, wire.BOW_OUT, counter)
        tap.send(wire.encode_packet(advert, key, args.vip, source,
                                    int.from_bytes(os.urandom(2), "big"), tap.group),
                 copies if counter == first else 1)
        wait = FIRST_BOW_OUT_WAIT if counter == first else TAKEOVER_WAIT
        peer = peer_took_over(tap, args, key, source, wait)
        if peer is not None:
            return f"{peer} took over after {(time.monotonic() - started) * 1000:.0f} ms"
    return (f"no peer advertised within {TAKEOVER_WAIT + FIRST_BOW_OUT_WAIT:g} s (a peer "
            "takes over after its master-down interval)")


# -- one stanza -----------------------------------------------------------------------------

def _held(interface: str, vip: IPv4Address) -> list[IPv4Address]:
    """What ucarp ``-i interface`` held: ``-i eth0:1`` (Debian's alias form) means eth0, and
    its default action labels the VIP eth0:1:ucarp."""
    return release.held(runtime.physical(interface), vip, runtime.label(interface))


def _release(interface: str, vip: IPv4Address) -> list[IPv4Address]:
    """Take what ucarp ``-i interface`` held off the interface; what was removed."""
    with contextlib.suppress(OSError):
        return release.release(runtime.physical(interface), vip, runtime.label(interface))
    return []


def _open_tap(args: UcarpArgs, where: str) -> CarpTap | None:
    try:
        return CarpTap(runtime.physical(args.interface), args.vhid, args.broadcast)
    except (OSError, LookupError) as error:
        say(f"{where}: cannot listen or send on {args.interface} ({error}): no bow-out")
        return None


def _remove(args: UcarpArgs, where: str) -> None:
    gone = ", ".join(str(a) for a in _release(args.interface, args.vip)) or "nothing"
    say(f"{where}: removed {gone} from {args.interface}")


def _guard(args: UcarpArgs, where: str) -> ArpGuard | None:
    """The VIP's ARP dropped on this node (the engine's drain rule); None if it cannot be."""
    guard = ArpGuard(runtime.physical(args.interface), args.vhid, args.vip)
    if guard.engage():
        say(f"{where}: ARP for {args.vip} dropped here until the peer takes over")
        return guard
    say(f"{where}: ARP for {args.vip} cannot be dropped here (nftables): it goes first")
    return None


def hand_over(daemon: UcarpDaemon, key: bytes, source: IPv4Address | None,
              where: str) -> None:
    """If the daemon is MASTER: freeze it, bow out for it, and remove its addresses once a
    peer advertises (TAKEOVER_WAIT at most), meanwhile answering no ARP for the VIP: so the
    VIP is on some node all the while and never answered for by two."""
    args = daemon.args
    tap = _open_tap(args, where) if source is not None else None
    guard: ArpGuard | None = None
    try:
        heard = listen_to_own(tap, args, key, source) if tap and source else Heard()
        if heard.foreign_key:
            say(f"{where}: warning: its adverts are not signed with the stanza's password: "
                "its peers may not hear the bow-out")
        held = _held(args.interface, args.vip)
        if not (heard.advertising or held):
            say(f"{where} is BACKUP")
            return
        daemon.signal(signal.SIGSTOP)  # silent from now on, as if it had died
        say(f"{where} is MASTER: frozen")
        guard = _guard(args, where) if tap and source and held else None
        if guard is None:
            _remove(args, where)  # no rule to keep it quiet: it goes before the bow-out
        if tap and source:
            say(f"{where}: bow-out sent from {source}: "
                f"{bow_out(tap, args, key, source, heard.counter)}")
    except OSError as error:
        say(f"{where}: hand-over failed ({error}): stopping it all the same")
    finally:
        if guard is not None:
            # after the wait (or a failure): the VIP first, never answered for here once the
            # rule goes
            try:
                _remove(args, where)
            finally:
                guard.release()
        if tap is not None:
            tap.close()


def stop_daemon(daemon: UcarpDaemon, options: Options) -> None:
    """Stop one ucarp daemon, handing its VIP over first if it is MASTER."""
    args = daemon.args
    where = f"{args.interface} vhid {args.vhid}: ucarp (pid {daemon.pid})"
    try:
        hand_over(daemon, bytes(options.password), args.srcip or options.srcip, where)
    finally:
        # also after a failure: a frozen daemon must not stay behind
        daemon.signal(signal.SIGTERM)
        daemon.signal(signal.SIGCONT)
        if daemon.wait(STOP_WAIT):
            say(f"{where} stopped")
        else:
            daemon.signal(signal.SIGKILL)
            daemon.wait(STOP_WAIT)
            say(f"{where} did not stop within {STOP_WAIT:g} s: killed")
    _release(args.interface, args.vip)


def start_engine(takeover: Takeover, run_dir: Path) -> bool:
    """Start the interface's engine as the if-up hook does, unless one runs; False on failure."""
    paths = Paths(runtime.physical(takeover.name), run_dir)
    if takeover.physical is None:
        say(f"{takeover.iface}: not up (ifquery --state): its engine starts at ifup")
        return True
    # a running engine may lack this stanza's group (each group of an interface is added to
    # its one engine): the hook adds it, or leaves the engine alone when it runs it already
    try:
        changed = hook.start(takeover.hook_env(), paths)
    except hook.HookError as error:
        say(f"{takeover.name}: carpd's engine did not start:\n{error}")
        return False
    say(f"{takeover.name}: carpd's engine " + ("started" if changed else
                                                "already runs: left alone"))
    return True


def _refused(takeover: Takeover, error: ucarp.StanzaError, mine: list[UcarpDaemon]) -> bool:
    """Say why carpd cannot take the stanza over, if anything runs or would run for it;
    False if so."""
    if not mine and takeover.physical is None:
        return True  # nothing runs for it: ifup (and carpctl check) will say what is wrong
    problems = "\n".join(p.at(None, stanza=str(takeover.iface)).located for p in error.problems)
    left = ("ucarp keeps running (pid " + ", ".join(str(d.pid) for d in mine) + ")"
            if mine else "carpd runs nothing for it")
    say(f"{problems}\ncarpd cannot take this stanza over; {left}: fix it, then run "
        f"{sys.argv[0]} again")
    return False


def migrate_stanza(takeover: Takeover, parsed: interfaces.Interfaces,
                   daemons: list[UcarpDaemon], run_dir: Path) -> bool:
    """Hand over from this stanza's ucarp daemon (if any) to carpd; False on a problem."""
    vhid = takeover.vhid()
    mine = [d for d in daemons if d.args.interface == takeover.name and d.args.vhid == vhid]
    try:
        options = takeover.options(parsed)
    except ucarp.StanzaError as error:
        for daemon in mine:  # the stanza's own: left running, not "named by no stanza"
            daemons.remove(daemon)
            daemon.close()
        return _refused(takeover, error, mine)
    with runtime.locked(Paths(runtime.physical(takeover.name), run_dir).hook_lock):
        for daemon in mine:
            stop_daemon(daemon, options)
            daemons.remove(daemon)
            daemon.close()
    return start_engine(takeover, run_dir)


def _exit_on_signal(signum: int, _frame: object) -> None:
    """SIGTERM or SIGHUP: exit as on an error, so no frozen daemon, ARP rule or VIP of a
    hand-over under way is left behind."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None, run_dir: Path = runtime.RUN_DIR) -> int:
    del argv  # no options
    if os.geteuid() != 0:
        say("must run as root")
        return 1
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    parsed = interfaces.parse(interfaces.DEFAULT_FILE)
    daemons, unreadable = find_daemons()
    try:
        ok = True
        # the stanzas carpd takes over first: a refused one (the interface's inet6 stanza, say)
        # then finds only the daemons that are really its own
        found = takeovers(parsed, up_interfaces())
        for takeover in sorted(found, key=lambda t: t.refused(parsed)):
            ok = migrate_stanza(takeover, parsed, daemons, run_dir) and ok
        for daemon in daemons:
            say(f"ucarp (pid {daemon.pid}) on {daemon.args.interface} vhid "
                f"{daemon.args.vhid}: no stanza of {interfaces.DEFAULT_FILE} with ucarp-* "
                "options names it: left alone")
        for pid in unreadable:
            say(f"ucarp (pid {pid}): its command line cannot be read: left alone")
    finally:
        for daemon in daemons:
            daemon.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
