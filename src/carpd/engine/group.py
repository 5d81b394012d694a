"""One VIP group (one vhid) of an engine: its election core and everything that is its own.

The engine (:mod:`carpd.engine.daemon`) owns what an interface has once: the packet socket and its
kernel filter, the netlink monitor, the control socket, the watchdog, the signals and the loop.
A :class:`Group` owns what each vhid has: its :class:`~carpd.core.election.VirtualHost`, its own
script queue (a hung script of one group never delays another's), its drain rule and stray
forwarder, its health checks and its demotion markers.  The engine hands it the frames carrying
its vhid, the link events and ``now``; the group carries out what its core answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import MutableMapping
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Protocol

from carpd.core import election, wire
from carpd.core.election import Action, Script, State
from carpd.engine import netlink, release, scripts, sdnotify, strays
from carpd.engine.engine_io import EngineIO, VipSender
from carpd.engine.link import random_counter, random_ident
from carpd.engine.logs import RateLimiter
from carpd.engine.settings import Settings

log = logging.getLogger("carpd")


class Port(Protocol):
    """What a group needs of its engine's interface, and the world it runs in (``io``: the
    scripts, the nftables rules, the clocks, ...: :mod:`carpd.engine.engine_io`)."""

    ifname: str
    mac: bytes
    io: EngineIO

    def send(self, frame: bytes) -> None: ...

    def send_signal(self, data: bytes, to: IPv4Address, source: IPv4Address) -> None:
        """A drain signal (:mod:`carpd.core.drainsignal`) to ``to``, from ``source``."""
        ...

    def interface_info(self, ifname: str) -> netlink.InterfaceInfo:
        """What the kernel says of ``ifname`` (read once per loop turn: 255 groups announcing
        at once must not dump the addresses 255 times)."""
        ...

    def touched(self, group: Group) -> None:
        """``group``'s core was fed something: its timers may have moved."""
        ...


class _VhidLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return f"{self.extra['prefix'] if self.extra else ''}{msg}", kwargs


class Group:
    """One vhid on the engine's interface, wired to the real world through ``port``."""

    def __init__(self, options: Settings, source: IPv4Address, port: Port,
                 tagged: bool = False) -> None:
        self.options = options
        self.source = source
        self.port = port
        self.io = io = port.io
        self.log = _VhidLog(log, {"prefix": f"vhid {options.vhid}: " if tagged else ""})
        self.host = election.VirtualHost(params(options, source), random_counter)
        self.scripts = io.scripts(script_argv(options), options.script_timeout)
        self.arp_guard = io.arp_rule(options.vip_on, options.vhid, options.addr)
        self.forwarder = io.forwarder(options.vip_on, options.vhid, options.addr)
        self.health = io.health(
            options.track_script, options.track_interval, options.track_timeout,
            options.track_fall, options.track_rise, _tracked(options), io.monotonic)
        self._drops = RateLimiter(io.monotonic)
        self._dest_mac = wire.BROADCAST_MAC if options.nomcast else \
            wire.multicast_mac(options.mcast)
        self._ucarp_mac = wire.ucarp_source_mac(options.vhid)
        self._src_mac = self._ucarp_mac if options.ucarp_mac else port.mac
        p = self.host.params
        self._advert_frames = wire.AdvertFrames(p.key, p.vip, p.source, p.group, self._dest_mac,
                                                self._src_mac)
        self._persistent_demotion = False
        self._was_master = False
        self._own_vip_port: VipSender | None = None if options.vip_on == port.ifname else \
            io.open_vip_port(options.vip_on)
        """The VIP's own interface, when the adverts go out on another: its ARP goes there."""
        self._vip_port: Port | VipSender = self._own_vip_port or port
        self._drain_flows: set[strays.Flow] = set()
        """The TCP connections to the VIP open at the hand-over and not closed since."""

    @property
    def vhid(self) -> int:
        return self.options.vhid

    @property
    def vip(self) -> IPv4Address:
        return self.options.addr

    # ---- set-up -------------------------------------------------------------------------------

    @property
    def demote_marker(self) -> Path:
        o = self.options
        return o.state_dir / f"{o.interface}.{o.vhid}.demoted"

    @property
    def persistent_demote_marker(self) -> Path:
        """Survives reboots and upgrades, until ``carpctl promote``."""
        o = self.options
        return o.persist_dir / "demoted" / f"{o.interface}.{o.vhid}"

    def start(self, now: float, carrier: bool) -> None:
        """Start the scripts' worker, the checks and the election (INIT until carrier)."""
        self.scripts.start()
        if self.health.active:
            self.health.start()
            self.host.set_health(self.health.healthy, now)  # before start(): only the verdict
        self.carry_out(self.host.start(now, carrier=carrier, demoted=self._demoted_at_start()))

    def _demoted_at_start(self) -> bool:
        self._persistent_demotion = self.persistent_demote_marker.exists()
        marker = self.persistent_demote_marker if self._persistent_demotion else \
            self.demote_marker
        if self._persistent_demotion or self.demote_marker.exists():
            self.log.info("demoted (%s exists): staying BACKUP until promoted", marker)
            return True
        return False

    # ---- inputs -------------------------------------------------------------------------------

    def receive(self, frame: bytes, packet: bytes, now: float) -> None:
        # carpd sends from the NIC's MAC, ucarp from 00:00:5e:00:00:VHID
        carpd_peer = frame[6:12] != self._ucarp_mac
        self.carry_out(self.host.receive(packet, now, carpd_peer, frame[6:12]))

    def drain_signal(self, data: bytes, source: IPv4Address, now: float) -> None:
        self.carry_out(self.host.drain_signal(data, source, now))

    def on_timer(self, now: float, lead: float = 0.0) -> None:
        """Run the timers due at ``now`` (a MASTER's up to ``lead`` early)."""
        self.carry_out(self.host.handle_timer(now, lead))

    def next_deadline(self) -> float | None:
        return self.host.next_deadline()

    def link_changed(self, carrier: bool, now: float) -> None:
        self.carry_out(self.host.link_changed(carrier, now))

    def addresses_removed(self, removed: set[IPv4Address] | frozenset[IPv4Address],
                          lost_events: bool, now: float) -> None:
        """Someone deleted addresses (or netlink lost events): if it was our VIP while MASTER,
        the core decides what to do."""
        vip = self.vip
        if (self.host.state is State.MASTER and (vip in removed or lost_events)
                and not self._holds_vip()):
            self.log.warning("%s was deleted from %s while MASTER: running the up action again",
                             vip, self.options.vip_on)
            self.carry_out(self.host.vip_lost(now))

    def on_health(self) -> None:
        if not self.health.read():
            return
        healthy = self.health.healthy
        if healthy:
            self.log.warning("healthy again: every check passes")
        else:
            self.log.warning("unhealthy: %s", self.health.why())
        self.carry_out(self.host.set_health(healthy, self.io.monotonic()))

    def _holds_vip(self) -> bool:
        try:
            return self.io.interface_info(self.options.vip_on).has(self.vip)
        except (LookupError, OSError):
            return False

    def on_scripts(self) -> None:
        for finished in self.scripts.finished():
            self.carry_out(self.host.script_finished(finished.script, self.io.monotonic()))

    def step_down(self, now: float) -> None:
        self.log.info("SIGUSR2: stepping down")
        self.carry_out(self.host.step_down(now))

    # ---- actions ------------------------------------------------------------------------------

    def carry_out(self, actions: list[Action]) -> None:
        self.port.touched(self)
        # Adverts first: starting a script forks this process and logging writes, which would
        # delay a takeover on the wire by milliseconds.
        for action in actions:
            if isinstance(action, election.SendAdvert):
                self._send_advert(action.advert)
        for action in actions:
            if not isinstance(action, election.SendAdvert):
                self._carry_out_one(action)

    def _carry_out_one(self, action: Action) -> None:
        # The core holds gratuitous ARP back while the up script runs (it adds the VIP) and
        # the end of the ARP rule until the down script has run (Params.await_scripts).
        if isinstance(action, election.SendGratuitousArp):
            self._announce()
        elif isinstance(action, election.RunScript):
            self.scripts.submit(action.script)
        elif isinstance(action, election.Transition):
            self.log.warning("%s -> %s: %s", action.old.value, action.new.value, action.reason)
            sdnotify.notify(f"STATUS={self.summary()}")
        elif isinstance(action, election.Dropped):
            self._log_drop(action)
        elif isinstance(action, election.StartDrain):
            self._start_drain(action.count)
        elif isinstance(action, election.EndDrain):
            self.arp_guard.release()
        elif isinstance(action, election.ForwardStrays):
            # its MAC as the adverts' interface saw it: the loop guard's, if the VIP is there too
            same_link = self.options.vip_on == self.port.ifname
            self._forward_strays(action.to, action.mac if same_link else None)
        elif isinstance(action, election.StopForwarding):
            self._stop_forwarding()
        elif isinstance(action, election.CountConnections):
            self._count_connections()
        elif isinstance(action, election.SendDrainSignal):
            self.port.send_signal(action.data, action.to, self.source)

    def _start_drain(self, count: bool) -> None:
        o = self.options
        if count:
            self._drain_flows = self.io.open_connections(self.vip)
            self.log.info("draining until the %d TCP connections to %s have closed (at least "
                          "%.1f s, at most %.1f s), without answering ARP for it",
                          len(self._drain_flows), self.vip, o.drain,
                          max(o.drain, o.drain_connections))
        else:
            self.log.info("draining for %.1f s: keeping %s without answering ARP for it",
                          o.drain, self.vip)
        self.arp_guard.engage()

    def _count_connections(self) -> None:
        self._drain_flows &= self.io.open_connections(self.vip)
        left = len(self._drain_flows)
        if not left:
            self.log.info("the last connection to %s open at the hand-over has closed", self.vip)
        self.carry_out(self.host.connections_left(left, self.io.monotonic()))

    def _stop_forwarding(self) -> None:
        to = self.forwarder.forwarding_to
        if to is not None:
            self.log.info("no longer passing %s's connections on: it said its drain is over, "
                          "or fell silent", to)
        self.forwarder.release()

    def _forward_strays(self, to: IPv4Address, mac: bytes | None = None) -> None:
        """Pass the draining master's connections back to it: only to another host on our
        subnet, never to an address a forged advert could pick (broadcast, elsewhere)."""
        ifname = self.options.vip_on
        try:
            info = self.io.interface_info(ifname)
        except (LookupError, OSError) as error:
            self.log.warning("not forwarding to %s: cannot read %s: %s", to, ifname, error)
            return
        if not info.is_on_link_unicast(to):
            self.log.warning("not forwarding to %s: not a unicast address on %s's subnets", to,
                             ifname)
            return
        self.forwarder.engage(to, mac)

    def _send_advert(self, advert: wire.Advert) -> None:
        self.port.send(self._advert_frames.frame(advert, random_ident()))

    def _announce(self) -> None:
        """Gratuitous ARP for the VIP and every address of the NAME:ucarp alias (NAME: the
        group's script_interface)."""
        addresses = [self.vip]
        with contextlib.suppress(LookupError, OSError):
            info = self.port.interface_info(self.options.vip_on)
            label = release.alias_label(self.options.scripts_interface)
            addresses += [a for a in info.labelled(label) if a != self.vip]
        for address in addresses:
            self._vip_port.send(wire.encode_gratuitous_arp(self._vip_port.mac, address))

    def _log_drop(self, dropped: election.Dropped) -> None:
        held = self._drops.allow(dropped.reason)
        if held is not None:
            more = f" (and {held} more since the last report)" if held else ""
            self.log.warning("dropped a packet from %s: %s%s", dropped.source,
                             dropped.reason.value, more)

    # ---- status and control -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        h = self.host
        now = self.io.monotonic()
        wall = self.io.time() - now
        core = h.status(now)
        return {
            "interface": self.options.interface, "vhid": h.params.vhid,
            "vip": str(h.params.vip), "srcip": str(h.params.source), "state": core["state"],
            "since": round(core["since"] + wall, 3), "demoted": core["demoted"],
            "demotion": self._demotion(core, wall), "healthy": core["healthy"],
            "health": self.health.status(wall), "why": self._why(core, wall),
            "master": core["master"],
            "master_since": _wall(core["master_since"], wall),
            "pid": os.getpid(), "sent": core["sent"], "accepted": core["accepted"],
            "transitions": core["transitions"], "rejected": core["rejected"],
            "script_interface": self.options.scripts_interface,
            "vip_interface": self.options.vip_on,
            "drain": core["drain"], "forwarding": core["forwarding"],
        }

    def _demotion(self, core: dict[str, Any], wall: float) -> dict[str, Any] | None:
        if not core["demoted"] or core["demoted_since"] is None:
            return None
        return {"persistent": self._persistent_demotion,
                "until": _wall(core["demoted_until"], wall),
                "since": _wall(core["demoted_since"], wall)}

    def _why(self, core: dict[str, Any], wall: float) -> str | None:
        """Why this node is BACKUP, or holds the VIP only as a last resort (one line)."""
        demotion = self._demotion(core, wall)
        if demotion is not None:
            since = _clock(demotion["since"])
            if demotion["until"] is not None:
                return f"stepped down since {since}, until {_clock(demotion['until'])}"
            kind = "demoted (persistent)" if demotion["persistent"] else "demoted"
            return f"{kind} since {since}: carpctl promote {self.options.interface} ends it"
        if self.host.healthy:
            return None
        last_resort = ": holding the VIP as a last resort" if self.host.last_resort else ""
        failing = self.health.why() or "a check failed and has passed since (awaiting rise)"
        return f"unhealthy: {failing}{last_resort}"

    def summary(self) -> str:
        """One line for `systemctl status`: ``MASTER of 10.0.0.1 (vhid 3) since 12:03:04``."""
        h = self.host
        now = self.io.monotonic()
        since = time.strftime("%H:%M:%S", time.localtime(self.io.time() - now + h.since))
        line = f"{h.state.value} of {h.params.vip} (vhid {h.params.vhid}) since {since}"
        if not h.healthy:
            line += " (unhealthy" + (": last resort)" if h.last_resort else ")")
        elif h.demotion_in_force(now):
            line += " (demoted)"
        return line

    def status_line(self) -> str:
        s = self.status()
        rejected = ", ".join(f"{k}={v}" for k, v in s["rejected"].items()) or "none"
        return (f"state {s['state']} (master heard: {s['master'] or 'none'}); sent {s['sent']}, "
                f"accepted {s['accepted']}, rejected: {rejected}")

    def demote(self, persistent: bool, now: float) -> str | None:
        """The error to answer, or None once demoted."""
        error = self._record_demotion(persistent)
        if error is not None:
            return error
        self._persistent_demotion = self._persistent_demotion or persistent
        self.carry_out(self.host.demote(now))
        return None

    def promote(self, now: float) -> str | None:
        for marker in (self.persistent_demote_marker, self.demote_marker):
            try:
                marker.unlink(missing_ok=True)
            except OSError as error:
                return f"not promoted: cannot remove {marker}: {error.strerror}"
        self._persistent_demotion = False
        self.carry_out(self.host.promote(now))
        return None

    def _record_demotion(self, persistent: bool) -> str | None:
        """Write the demotion's markers (the persistent one under PERSIST_DIR); the error
        to answer, or None."""
        marker = self.demote_marker
        try:
            marker.touch(mode=0o644)
            if persistent:
                marker = self.persistent_demote_marker
                marker.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                marker.touch(mode=0o644)
                os.chmod(marker.parent, 0o755)  # the unit's UMask=0077 masks the modes above
                os.chmod(marker, 0o644)
        except OSError as error:
            return f"not demoted: cannot record it in {marker}: {error.strerror}"
        return None

    # ---- stopping -----------------------------------------------------------------------------

    def begin_stop(self, now: float) -> None:
        """Bow out if MASTER, then drain (the loop keeps running the timers) and run the down
        script; :meth:`stopped` tells when it is over."""
        self._was_master = self.host.state is State.MASTER
        self.carry_out(self.host.stop(now))

    def cut_drain_short(self, now: float) -> None:
        self.carry_out(self.host.end_drain(now))

    @property
    def draining(self) -> bool:
        return self.host.draining

    def stopped(self) -> bool:
        """The drain is over and no script runs or waits."""
        return not self.host.draining and not self.host.signalling and self.scripts.idle

    def release(self) -> None:
        """The last of a stop: no VIP, rule or check stays behind."""
        self.health.close()
        self._release_vip()
        self.arp_guard.release()
        self.forwarder.release()
        if self._own_vip_port is not None:
            self._own_vip_port.close()

    def _release_vip(self) -> None:
        """No VIP may stay behind on an interface whose group is gone."""
        ifname = self.options.vip_on
        try:
            # the VIP alone: groups of one engine may share a label (several on eth0)
            removed = self.io.release_vip(ifname, self.vip)
        except OSError as error:
            self.log.debug("could not check for the VIP at exit: %s", error)
            return
        if removed:
            why = "the down script left it" if self._was_master else "it was there without us"
            self.log.warning("removed %s from %s at exit: %s",
                             ", ".join(str(a) for a in removed), ifname, why)


def _tracked(options: Settings) -> tuple[str, ...]:
    """The tracked interfaces, and the VIP's own when the adverts go out on another: without
    carrier there, the group is unhealthy (a healthy peer takes the VIP)."""
    extra = (options.vip_on,) if options.vip_on != options.interface else ()
    return tuple(dict.fromkeys((*options.track_interface, *extra)))


def _wall(monotonic: float | None, wall: float) -> float | None:
    return None if monotonic is None else round(monotonic + wall, 3)


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def params(options: Settings, source: IPv4Address) -> election.Params:
    return election.Params(
        vhid=options.vhid, key=options.password, vip=options.addr, source=source,
        advbase=options.advbase, advskew=options.advskew, deadratio=options.deadratio,
        preempt=options.preempt, neutral=options.neutral, group=options.mcast,
        drain=options.drain, drain_connections=options.drain_connections,
        reannounce=options.reannounce,
        replay_check=options.replay_check, await_scripts=True,
    )


def script_argv(options: Settings) -> dict[Script, list[str] | None]:
    """The group's up and down scripts as they are run
    (:func:`carpd.engine.scripts.script_argv`)."""
    def argv(path: Path | None) -> list[str] | None:
        return scripts.script_argv(path, options.scripts_interface, options.addr,
                                   options.xparam)

    return {Script.UP: argv(options.upscript), Script.DOWN: argv(options.downscript)}
