"""The I/O shell: one loop that waits for the earliest deadline or input, feeds the election core
and carries out what it answers.

Inputs: frames from the raw socket, netlink link events, finished scripts, control requests and
signals (through a wakeup pipe).  Time is ``time.monotonic()``, read here and passed in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from carpd import control, election, health, netlink, sdnotify, wire
from carpd.arpguard import ArpGuard, StrayForwarder
from carpd.config import Options, stop_budget
from carpd.election import Action, Script, State
from carpd.logs import RateLimiter
from carpd.net import Link, random_counter, random_ident
from carpd.scripts import ScriptRunner
from carpd.watchdog import Watchdog

log = logging.getLogger("carpd")

EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
SCRIPT_DRAIN_SLACK = 5.0


def alias_label(ifname: str) -> str:
    return f"{ifname}:ucarp"


class Engine:
    """One virtual host on one interface, wired to the real world."""

    def __init__(self, options: Options, source: IPv4Address) -> None:
        self.options = options
        self.info = netlink.interface_info(options.interface)
        self.host = election.VirtualHost(_params(options, source), random_counter)
        self.link = Link(options.interface, None if options.nomcast else options.mcast,
                         group=options.mcast, vhids=(options.vhid,))
        self.monitor = None if options.ignoreifstate else netlink.LinkMonitor(self.info.index)
        self.scripts = ScriptRunner(_script_argv(options), options.script_timeout)
        self.control = control.ControlServer(
            control.socket_path(options.state_dir, options.interface, options.vhid),
            self._control_request)
        self._selector = selectors.DefaultSelector()
        self._signals: list[int] = []
        self._stopping = False
        self._drops = RateLimiter(time.monotonic)
        group_mac = wire.multicast_mac(options.mcast)
        self._dest_mac = wire.BROADCAST_MAC if options.nomcast else group_mac
        self.arp_guard = ArpGuard(options.interface, options.vhid, options.addr)
        self.forwarder = StrayForwarder(options.interface, options.vhid, options.addr)
        self._release_guard_after_down = False
        self._up_pending = 0
        self._src_mac = wire.ucarp_source_mac(options.vhid) if options.ucarp_mac else self.info.mac
        self.health = health.Health(
            options.track_script, options.track_interval, options.track_timeout,
            options.track_fall, options.track_rise, options.track_interface)
        self._persistent_demotion = False

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

    def _demoted_at_start(self, now: float) -> None:
        self._persistent_demotion = self.persistent_demote_marker.exists()
        marker = self.persistent_demote_marker if self._persistent_demotion else \
            self.demote_marker
        if self._persistent_demotion or self.demote_marker.exists():
            self.host.demote(now)
            log.info("demoted (%s exists): staying BACKUP until promoted", marker)

    def _start_health(self, now: float) -> None:
        if not self.health.active:
            return
        self.health.start()
        self._selector.register(self.health, selectors.EVENT_READ, self._on_health)
        self.host.set_health(self.health.healthy, now)  # before start(): only the verdict

    def run(self, signals_ready: Callable[[], None] | None = None) -> int:
        watchdog = Watchdog(self.options.interface, self.options.addr)  # before any thread
        self.scripts.start()
        wakeup_read = self._install_signals()
        if signals_ready is not None:
            signals_ready()
        sel = self._selector
        sel.register(self.link, selectors.EVENT_READ, self._on_frames)
        sel.register(self.scripts, selectors.EVENT_READ, self._on_scripts)
        sel.register(self.control, selectors.EVENT_READ, self._on_control)
        sel.register(wakeup_read, selectors.EVENT_READ, self._on_signal_pipe)
        if self.monitor is not None:
            sel.register(self.monitor, selectors.EVENT_READ, self._on_link_event)
        now = time.monotonic()
        self._demoted_at_start(now)
        self._start_health(now)
        if not self.info.carrier and self.monitor is not None:
            self.host.link_changed(False, now)  # before start: starts in INIT, waits for carrier
        self._carry_out(self.host.start(now))
        sdnotify.notify("READY=1", f"STATUS={self.status_summary()}")
        self._loop()
        code = self._shut_down()
        watchdog.disarm()
        return code

    def _install_signals(self) -> int:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in (*EXIT_SIGNALS, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, self._on_signal)
        return read_fd

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)

    # ---- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            self._loop_once()
            self._handle_signals()

    def _loop_once(self) -> None:
        deadlines = [d for d in (self.host.next_deadline(), self.control.next_deadline())
                     if d is not None]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        for key, _events in self._selector.select(timeout):
            handler: Callable[[Any], None] = key.data
            handler(key.fileobj)
        self._carry_out(self.host.handle_timer(time.monotonic()))
        for idle in self.control.expire():
            self._drop_client(idle)

    def _on_frames(self, _fileobj: Any) -> None:
        try:
            frames = self.link.receive()
        except OSError as error:
            # ENETDOWN once after an admin's `ip link set IFACE down`: the carrier event from
            # netlink moves the election; the socket works again when the link comes back.
            log.info("reading frames on %s: %s", self.options.interface, error.strerror)
            return
        ucarp_mac = wire.ucarp_source_mac(self.options.vhid)
        for frame in frames:
            packet = wire.strip_ethernet(frame, self.options.mcast)
            if packet is not None:
                # carpd sends from the NIC's MAC, ucarp from 00:00:5e:00:00:VHID
                carpd_peer = frame[6:12] != ucarp_mac
                self._carry_out(self.host.receive(packet, time.monotonic(), carpd_peer))

    def _on_link_event(self, _fileobj: Any) -> None:
        assert self.monitor is not None
        before = (self.monitor.fileno(), self.monitor.reopened)
        events = self.monitor.read()
        if self.monitor.reopened != before[1]:
            # After ENOBUFS the monitor reopened its socket (maybe on the same fd number, but
            # closing the old one took it out of the selector): watch the new one.
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(before[0])
            self._selector.register(self.monitor, selectors.EVENT_READ, self._on_link_event)
        now = time.monotonic()
        if events.carrier is not None:
            self._carry_out(self.host.link_changed(events.carrier, now))
        vip = self.host.params.vip
        if (self.host.state is State.MASTER and (vip in events.removed or events.lost_events)
                and not self._holds_vip()):
            log.warning("%s was deleted from %s while MASTER: running the up action again",
                        vip, self.options.interface)
            self._carry_out(self.host.vip_lost(now))

    def _on_health(self, _fileobj: Any) -> None:
        if not self.health.read():
            return
        healthy = self.health.healthy
        if healthy:
            log.warning("healthy again: every check passes")
        else:
            log.warning("unhealthy: %s", self.health.why())
        self._carry_out(self.host.set_health(healthy, time.monotonic()))
        sdnotify.notify(f"STATUS={self.status_summary()}")

    def _holds_vip(self) -> bool:
        try:
            return netlink.interface_info(self.options.interface).has(self.host.params.vip)
        except (LookupError, OSError):
            return False

    def _on_scripts(self, _fileobj: Any) -> None:
        for finished in self.scripts.finished():
            if finished.script is Script.DOWN and self._release_guard_after_down:
                self._release_guard_after_down = False
                self.arp_guard.release()
            if finished.script is Script.UP:
                self._up_pending -= 1
            if finished.script is Script.UP and self.host.state is State.MASTER:
                self._announce()  # the up action may have added more addresses

    def _on_control(self, _fileobj: Any) -> None:
        for _ in range(control.ACCEPTS_PER_TURN):  # a burst of clients must not fill the backlog
            conn, evicted = self.control.accept()
            for old in evicted:
                self._drop_client(old)
            if conn is None:
                return
            self._selector.register(conn, selectors.EVENT_READ, self._on_control_client)

    def _on_control_client(self, conn: Any) -> None:
        if self.control.serve(conn):
            self._drop_client(conn)

    def _drop_client(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()

    def _on_signal_pipe(self, fd: Any) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 4096)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            now = time.monotonic()
            if signum == signal.SIGUSR1:
                log.info("%s", self.status_line())
            elif signum == signal.SIGUSR2:
                log.info("SIGUSR2: stepping down")
                self._carry_out(self.host.demote(now, until=now + self.host.step_down_hold))
            else:
                log.info("%s: shutting down", signal.Signals(signum).name)
                self._stopping = True

    # ---- actions ------------------------------------------------------------------------------

    def _carry_out(self, actions: list[Action]) -> None:
        # Adverts first: starting a script forks this process and logging writes, which would
        # delay a takeover on the wire by milliseconds.
        for action in actions:
            if isinstance(action, election.SendAdvert):
                self._send_advert(action.advert)
        for action in actions:
            if isinstance(action, election.SendAdvert):
                continue
            if isinstance(action, election.SendGratuitousArp):
                # Announcing before the up action has added the VIP would steer clients to a
                # host that drops them; the announcement follows the up script instead.
                if not self._up_pending:
                    self._announce()
            elif isinstance(action, election.RunScript):
                if action.script is Script.UP:
                    self._up_pending += 1
                self.scripts.submit(action.script)
            elif isinstance(action, election.Transition):
                log.warning("%s -> %s: %s", action.old.value, action.new.value, action.reason)
                sdnotify.notify(f"STATUS={self.status_summary()}")
            elif isinstance(action, election.Dropped):
                self._log_drop(action)
            elif isinstance(action, election.StartDrain):
                self._start_drain()
            elif isinstance(action, election.EndDrain):
                self._end_drain(actions)
            elif isinstance(action, election.ForwardStrays):
                self._forward_strays(action.to)
            elif isinstance(action, election.StopForwarding):
                self.forwarder.release()

    def _start_drain(self) -> None:
        log.info("draining for %.1f s: keeping %s without answering ARP for it",
                 self.options.drain, self.options.addr)
        self.arp_guard.engage()

    def _end_drain(self, actions: list[Action]) -> None:
        """Lift the ARP rule once the VIP is gone: after the down script, if one comes."""
        if any(isinstance(a, election.RunScript) and a.script is Script.DOWN for a in actions):
            self._release_guard_after_down = True
        else:
            self.arp_guard.release()

    def _forward_strays(self, to: IPv4Address) -> None:
        """Pass the draining master's connections back to it: only to another host on our
        subnet, never to an address a forged advert could pick (broadcast, elsewhere)."""
        try:
            info = netlink.interface_info(self.options.interface)
        except (LookupError, OSError) as error:
            log.warning("not forwarding to %s: cannot read %s: %s", to, self.options.interface,
                        error)
            return
        if not info.is_on_link_unicast(to):
            log.warning("not forwarding to %s: not a unicast address on %s's subnets", to,
                        self.options.interface)
            return
        self.forwarder.engage(to)

    def _send_advert(self, advert: wire.Advert) -> None:
        p = self.host.params
        packet = wire.encode_packet(advert, p.key, p.vip, p.source, random_ident(), p.group)
        self.link.send(wire.encode_ethernet(self._dest_mac, self._src_mac, wire.ETH_P_IP, packet))

    def _announce(self) -> None:
        """Gratuitous ARP for the VIP and every address of the IFACE:ucarp alias."""
        addresses = [self.host.params.vip]
        with contextlib.suppress(LookupError, OSError):
            info = netlink.interface_info(self.options.interface)
            addresses += [a for a in info.labelled(alias_label(self.options.interface))
                          if a != self.host.params.vip]
        for address in addresses:
            self.link.send(wire.encode_gratuitous_arp(self.info.mac, address))

    def _log_drop(self, dropped: election.Dropped) -> None:
        held = self._drops.allow(dropped.reason)
        if held is not None:
            more = f" (and {held} more since the last report)" if held else ""
            log.warning("dropped a packet from %s: %s%s", dropped.source, dropped.reason.value,
                        more)

    # ---- status and control -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        h = self.host
        now = time.monotonic()
        wall = time.time() - now
        return {
            "interface": self.options.interface, "vhid": h.params.vhid,
            "vip": str(h.params.vip), "srcip": str(h.params.source), "state": h.state.value,
            "since": round(h.since + wall, 3), "demoted": h.demotion_in_force(now),
            "demotion": self._demotion(now, wall), "healthy": h.healthy,
            "health": self.health.status(wall), "why": self._why(now, wall),
            "master": str(h.master.address) if h.master else None,
            "master_since": round(h.master.since + wall, 3) if h.master else None,
            "pid": _pid(), "sent": h.sent, "accepted": h.accepted, "transitions": h.transitions,
            "rejected": {reason.name.lower(): n for reason, n in h.rejected.items()},
        }

    def _demotion(self, now: float, wall: float) -> dict[str, Any] | None:
        h = self.host
        if not h.demotion_in_force(now) or h.demoted_since is None:
            return None
        until = h.demoted_until
        return {"persistent": self._persistent_demotion,
                "until": None if until is None or until == float("inf") else
                round(until + wall, 3),
                "since": round(h.demoted_since + wall, 3)}

    def _why(self, now: float, wall: float) -> str | None:
        """Why this node is BACKUP, or holds the VIP only as a last resort (one line)."""
        demotion = self._demotion(now, wall)
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

    def status_summary(self) -> str:
        """One line for `systemctl status`: ``MASTER of 10.0.0.1 (vhid 3) since 12:03:04``."""
        h = self.host
        since = time.strftime("%H:%M:%S", time.localtime(time.time() - time.monotonic()
                                                          + h.since))
        line = f"{h.state.value} of {h.params.vip} (vhid {h.params.vhid}) since {since}"
        if not h.healthy:
            line += " (unhealthy" + (": last resort)" if h.last_resort else ")")
        elif h.demotion_in_force(time.monotonic()):
            line += " (demoted)"
        return line

    def status_line(self) -> str:
        s = self.status()
        rejected = ", ".join(f"{k}={v}" for k, v in s["rejected"].items()) or "none"
        return (f"state {s['state']} (master heard: {s['master'] or 'none'}); sent {s['sent']}, "
                f"accepted {s['accepted']}, rejected: {rejected}")

    def _control_request(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        now = time.monotonic()
        if cmd == "status":
            return {"ok": True, **self.status()}
        if cmd == "demote":
            persistent = request.get("persistent") is True
            error = self._record_demotion(persistent)
            if error is not None:
                return {"ok": False, "error": error}
            self._persistent_demotion = self._persistent_demotion or persistent
            self._carry_out(self.host.demote(now))
            return {"ok": True, **self.status()}
        if cmd == "promote":
            for marker in (self.persistent_demote_marker, self.demote_marker):
                try:
                    marker.unlink(missing_ok=True)
                except OSError as error:
                    return {"ok": False, "error": f"not promoted: cannot remove "
                                                  f"{marker}: {error.strerror}"}
            self._persistent_demotion = False
            self._carry_out(self.host.promote(now))
            return {"ok": True, **self.status()}
        return {"ok": False, "error": f"unknown command {cmd!r}: allowed: status, demote, promote"}

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

    # ---- shutting down ------------------------------------------------------------------------

    def _shut_down(self) -> int:
        was_master = self.host.state is State.MASTER
        # The drain and the down script may take longer than the unit's TimeoutStopSec.
        budget = stop_budget(self.options.drain, self.options.script_timeout)
        sdnotify.notify("STOPPING=1", f"EXTEND_TIMEOUT_USEC={int(budget * 1_000_000)}")
        self._carry_out(self.host.stop(time.monotonic()))
        self._drain_before_exit()
        drained = self.scripts.drain(self.options.script_timeout + SCRIPT_DRAIN_SLACK)
        if not drained:
            log.error("scripts still running at exit")
        self.health.close()
        self._release_vip(was_master)
        self.arp_guard.release()
        self.forwarder.release()
        self.control.close()
        self.link.close()
        if self.monitor is not None:
            self.monitor.close()
        return 0

    def _drain_before_exit(self) -> None:
        """Keep serving the control socket and the timers until the drain is over; another
        exit signal cuts it short."""
        self._stopping = False
        while self.host.draining and not self._stopping:
            self._loop_once()
            self._handle_signals()
        self._carry_out(self.host.end_drain(time.monotonic()))

    def _release_vip(self, was_master: bool) -> None:
        """No VIP may stay behind on an interface whose engine is gone."""
        try:
            removed = netlink.remove_address(self.options.interface, self.host.params.vip)
        except (LookupError, OSError) as error:
            log.debug("could not check for the VIP at exit: %s", error)
            return
        if removed:
            why = "the down script left it" if was_master else "it was there without us"
            log.warning("removed %s from %s at exit: %s", self.host.params.vip,
                        self.options.interface, why)


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def _pid() -> int:
    return os.getpid()


def _params(options: Options, source: IPv4Address) -> election.Params:
    return election.Params(
        vhid=options.vhid, key=options.password, vip=options.addr, source=source,
        advbase=options.advbase, advskew=options.advskew, deadratio=options.deadratio,
        preempt=options.preempt, neutral=options.neutral, group=options.mcast,
        drain=options.drain, reannounce=options.reannounce,
        replay_check=options.replay_check,
    )


def _script_argv(options: Options) -> dict[Script, list[str] | None]:
    extra = [options.xparam] if options.xparam is not None else []

    def argv(path: Path | None) -> list[str] | None:
        return [str(path), options.interface, str(options.addr), *extra] if path else None

    return {Script.UP: argv(options.upscript), Script.DOWN: argv(options.downscript)}
