"""The I/O shell: one engine per interface, one loop that waits for the earliest deadline or
input, feeds each group's election core and carries out what it answers.

The split is OpenBSD's: per interface one packet socket with one kernel filter for all vhids,
one netlink monitor, one control socket and one watchdog (this module); per vhid a
:class:`~carpd.engine.group.Group` with its ``VirtualHost`` and its own script queue.  Frames are
handed to the group of their vhid.  Inputs: frames, netlink link events, finished scripts,
health verdicts, control requests and signals (through a wakeup pipe).  Time is
``monotonic()`` (of ``io``), read here and passed in.

Every bit of I/O goes through ``Engine.io`` (:mod:`carpd.engine.engine_io`: the real world by
default), so the unit tests run the engine's own logic on fakes.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import selectors
import signal
from collections.abc import Callable, Iterable, Iterator
from ipaddress import IPv4Address
from typing import Any, Generic, TypeVar

from carpd.config.problems import ConfigError
from carpd.core import wire
from carpd.core.election import State
from carpd.engine import _memory, control, drainsock, engine_io, identity, netlink, sdnotify
from carpd.engine.engine_io import EngineIO, WatchdogLike
from carpd.engine.group import Group
from carpd.engine.settings import EngineSettings, NoSettings, Settings, Validation, stop_budget

log = logging.getLogger("carpd")

EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
SCRIPT_DRAIN_SLACK = 5.0
RELOAD_FIXED = ("interface", "mcast", "nomcast", "ignoreifstate", "state_dir", "persist_dir")
"""Interface-level keys a reload cannot change (the socket, the filter, the folders)."""

__all__ = ["EXIT_SIGNALS", "Engine", "source_address"]

T = TypeVar("T")


def source_address(options: Settings,
                   interface_info: Callable[[str], netlink.InterfaceInfo] = netlink.interface_info,
                   ) -> IPv4Address:
    """The group's -s/--srcip, or the interface's primary address (ConfigError if none)."""
    if options.srcip is not None:
        return options.srcip
    try:
        primary = interface_info(options.interface).primary_address()
    except LookupError:
        primary = None
    if primary is None:
        raise ConfigError(f"-s/--srcip: not given, and {options.interface} has no IPv4 address "
                          "to use instead")
    return primary


ADVERT_LEAD = 0.002
"""A MASTER runs its timers up to this long before its schedule: the loop's wake-up comes late
by up to a millisecond of rounding (epoll counts whole ms) plus the kernel's slack (0.1 % of
the sleep), and an advert early is harmless (peers restart their master-down timers) where a
late one is not."""
SCHEDULE_SLOTS = 8
SCHEDULE_STEP = 0.003
"""Groups due at one instant (started together, or taken over together) would all advertise in
one burst, the last ones late by the whole burst: a MASTER's schedule is its core's schedule
less ``(vhid % SCHEDULE_SLOTS) * SCHEDULE_STEP``, so 255 groups go out in 8 bursts of at most
32 adverts 3 ms apart.  Their interval is unchanged."""


def schedule_offset(vhid: int) -> float:
    """How much earlier than its core's schedule a MASTER of ``vhid`` is scheduled (the bench
    measures lateness against this schedule)."""
    return (vhid % SCHEDULE_SLOTS) * SCHEDULE_STEP


def timer_lead(group: Group) -> float:
    """How long before its core's deadline a group's timers run: a MASTER's by its schedule
    offset and ADVERT_LEAD (its other timers, re-announcement and the end of forwarding, may as
    well run those milliseconds early); a BACKUP's master-down never early."""
    if group.host.state is not State.MASTER:
        return 0.0
    return ADVERT_LEAD + schedule_offset(group.vhid)


def timers_due_at(group: Group) -> float | None:
    """When the loop runs ``group``'s timers: its core's deadline less :func:`timer_lead` (the
    loop hands the core that lead; the core counts the next interval from the deadline, not
    from when the loop got to it, so running early never moves the schedule)."""
    deadline = group.next_deadline()
    return None if deadline is None else deadline - timer_lead(group)


COMPACT_SLACK = 64
"""Stale entries the timer queue tolerates beyond one per live item before it sweeps them."""


class TimerQueue(Generic[T]):
    """The instants at which the loop runs each group's timers, soonest first: a turn pays
    for the groups it ran or fed, not for all 255.

    The loop :meth:`push`-es a group after running its timers; anything else that feeds a
    group (a frame, a link event, a request, a signal, a group stopping) :meth:`touch`-es it,
    and it is queued again at its new instant before the queue is next read.  Its earlier
    entry stays in the heap, stale (each item's live entry is known by its sequence number),
    and is skipped when it comes up: a group whose deadline moved later never runs early.
    :meth:`discard` forgets an item for good.  Items are told apart by identity (``id``)."""

    def __init__(self, due_at: Callable[[T], float | None]) -> None:
        self._due_at = due_at
        self._heap: list[tuple[float, int, T]] = []
        self._live: dict[int, tuple[float, int]] = {}
        """id(item) -> (instant, sequence number) of its one live entry."""
        self._touched: dict[int, T] = {}
        self._order = itertools.count()  # ties in time go first in, first out; T is not compared

    def rebuild(self, items: Iterable[T]) -> None:
        """Queue exactly ``items``, each at its instant now."""
        self._heap, self._live, self._touched = [], {}, {}
        for item in items:
            self.push(item)

    def push(self, item: T) -> None:
        """Queue ``item`` at its instant now (nothing if it has none)."""
        key = id(item)
        self._touched.pop(key, None)
        due = self._due_at(item)
        live = self._live.get(key)
        if due is None:
            self._live.pop(key, None)
        elif live is None or live[0] != due:
            order = next(self._order)
            self._live[key] = (due, order)
            heapq.heappush(self._heap, (due, order, item))
            if len(self._heap) > 2 * len(self._live) + COMPACT_SLACK:
                self._compact()

    def touch(self, item: T) -> None:
        """``item``'s instant may have changed: queue it again before the next read."""
        self._touched[id(item)] = item

    def discard(self, item: T) -> None:
        """Forget ``item`` (a group gone): it is never given out again unless pushed."""
        self._touched.pop(id(item), None)
        self._live.pop(id(item), None)

    def soonest(self) -> float | None:
        self._refresh()
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[T]:
        """Every item due at ``now``, soonest first, taken off the queue (push each back once
        its timers have run)."""
        self._refresh()
        due = []
        while self._heap and self._heap[0][0] <= now:
            _at, order, item = heapq.heappop(self._heap)
            if self._is_live(item, order):
                del self._live[id(item)]
                due.append(item)
        return due

    def __len__(self) -> int:
        """Items queued (live entries)."""
        self._refresh()
        return len(self._live)

    def _refresh(self) -> None:
        while self._touched:
            self.push(next(iter(self._touched.values())))

    def _is_live(self, item: T, order: int) -> bool:
        live = self._live.get(id(item))
        return live is not None and live[1] == order

    def _drop_stale(self) -> None:
        while self._heap and not self._is_live(self._heap[0][2], self._heap[0][1]):
            heapq.heappop(self._heap)

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if self._is_live(e[2], e[1])]
        heapq.heapify(self._heap)


def vhid_of(packet: bytes) -> int | None:
    """The vhid of a CARP packet (after its IPv4 header), None if too short."""
    if not packet:
        return None
    at = (packet[0] & 0x0F) * 4 + 1
    return packet[at] if len(packet) > at else None


class Engine:
    """Every group of one interface, wired to the world through ``io`` (the real one unless a
    test hands it fakes: :mod:`carpd.engine.engine_io`)."""

    def __init__(self, config: EngineSettings, sources: dict[int, IPv4Address],
                 argv: list[str] | None = None,
                 locks: dict[int, identity.GroupLock] | None = None,
                 io: EngineIO | None = None) -> None:
        first = config.first
        self.io = io = engine_io.REAL if io is None else io
        self.config = config
        self.argv = argv
        self.ifname = first.interface
        self._timer_queue: TimerQueue[Group] = TimerQueue(timers_due_at)
        self.info = io.interface_info(first.interface)
        self.mac = self.info.mac
        self.tagged = config.config_file is not None
        """Log lines of a group name its vhid (an engine run from --config may have several)."""
        self.link = io.open_link(first.interface, None if first.nomcast else first.mcast,
                                 first.mcast, config.vhids)
        self.monitor = None if first.ignoreifstate else io.open_monitor(self.info.index)
        self.signals = io.open_signals(first.interface)
        self._carrier = self.info.carrier
        self.groups = {o.vhid: Group(o, sources[o.vhid], self, self.tagged)
                       for o in config.groups}
        self.retiring: dict[int, Group] = {}
        """Groups removed (or changed) by a reload, or stopping: bowing out, draining, down."""
        self._replacements: dict[int, tuple[Settings, IPv4Address]] = {}
        self._locks: dict[int, engine_io.GroupLockLike] = dict(locks or {})
        path = control.socket_path(first.state_dir, self.ifname,
                                   None if self.tagged else first.vhid)
        self.control = io.open_control(path, self._control_request)
        self._selector = io.selector()
        self._watched: dict[int, list[Any]] = {}
        self._signals: list[int] = []
        self._stopping = False
        self._exit_by: float | None = None
        self._filtered = sorted(config.vhids)
        self._infos: dict[str, netlink.InterfaceInfo] = {}
        """Interface info read during this loop turn (forgotten at the next)."""
        self.watchdog: WatchdogLike | None = None
        self._validation: Validation | None = None
        """The --config file of a reload being validated (see :meth:`reload`)."""

    # ---- what groups see of the interface (carpd.engine.group.Port) -----------------------------

    def send(self, frame: bytes) -> None:
        self.link.send(frame)

    def send_signal(self, data: bytes, to: IPv4Address, source: IPv4Address) -> None:
        if self.signals is not None:
            self.signals.send(data, to, source)

    def interface_info(self, ifname: str) -> netlink.InterfaceInfo:
        info = self._infos.get(ifname)
        if info is None:
            info = self._infos[ifname] = self.io.interface_info(ifname)
        return info

    def touched(self, group: Group) -> None:
        self._timer_queue.touch(group)

    @property
    def host(self) -> Any:
        """The election core of the first group (for callers of one-group engines)."""
        return next(iter(self.groups.values())).host

    def all_groups(self) -> Iterator[Group]:
        yield from self.groups.values()
        yield from self.retiring.values()

    # ---- set-up -------------------------------------------------------------------------------

    def run(self, signals_ready: Callable[[], None] | None = None) -> int:
        # before any thread
        self.watchdog = self.io.watchdog((g.options.vip_on, g.vip) for g in self.groups.values())
        wakeup_read = self._install_signals()
        if signals_ready is not None:
            signals_ready()
        self._selector.register(wakeup_read, selectors.EVENT_READ, self._on_signal_pipe)
        self.start()
        sdnotify.notify("READY=1", f"STATUS={self.status_summary()}")
        _memory.settle()
        self._loop()
        code = self.shut_down()
        self.watchdog.disarm()
        return code

    def start(self) -> None:
        """Watch the link, the control socket and the monitors; start every group."""
        sel = self._selector
        sel.register(self.link, selectors.EVENT_READ, self._on_frames)
        sel.register(self.control, selectors.EVENT_READ, self._on_control)
        if self.monitor is not None:
            sel.register(self.monitor, selectors.EVENT_READ, self._on_link_event)
        if self.signals is not None:
            sel.register(self.signals, selectors.EVENT_READ, self._on_drain_signals)
        now = self.io.monotonic()
        for group in self.groups.values():
            self._start_group(group, now)

    def _start_group(self, group: Group, now: float) -> None:
        carrier = self.monitor is None or self._carrier
        group.start(now, carrier)
        self._watch(group, group.scripts, lambda _f: group.on_scripts())
        if group.health.active:
            self._watch(group, group.health, lambda _f: self._on_health(group))

    def _watch(self, group: Group, fileobj: Any, handler: Callable[[Any], None]) -> None:
        self._selector.register(fileobj, selectors.EVENT_READ, handler)
        self._watched.setdefault(id(group), []).append(fileobj)

    def _unwatch(self, group: Group) -> None:
        for fileobj in self._watched.pop(id(group), []):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fileobj)

    def _install_signals(self) -> int:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in (*EXIT_SIGNALS, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, self._on_signal)
        return read_fd

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.deliver_signal(signum)

    def deliver_signal(self, signum: int) -> None:
        """``signum`` arrived: handled at the end of this loop turn (see :meth:`turn`)."""
        self._signals.append(signum)

    # ---- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            self.turn()

    def turn(self) -> None:
        """One turn of the loop: wait for input or the soonest deadline, feed the groups, run
        the timers due, then handle the signals that came meanwhile."""
        self._loop_once()
        self._handle_signals()

    def _loop_once(self) -> None:
        timers = self._timer_queue
        deadlines = [d for d in (timers.soonest(), self.control.next_deadline(), self._exit_by)
                     if d is not None]
        timeout = max(0.0, min(deadlines) - self.io.monotonic()) if deadlines else None
        ready = self._selector.select(timeout)
        self._infos.clear()
        for key, _events in ready:  # each group a handler feeds is touched (re-queued)
            handler: Callable[[Any], None] = key.data
            handler(key.fileobj)
        now = self.io.monotonic()
        for group in timers.pop_due(now):
            group.on_timer(now, timer_lead(group))
            timers.push(group)
        self._finish_retired(now)
        for idle in self.control.expire():
            self._drop_client(idle)

    def _on_frames(self, _fileobj: Any) -> None:
        try:
            frames = self.link.receive()
        except OSError as error:
            # ENETDOWN once after an admin's `ip link set IFACE down`: the carrier event from
            # netlink moves the election; the socket works again when the link comes back.
            log.info("reading frames on %s: %s", self.ifname, error.strerror)
            return
        mcast = self.config.first.mcast
        for frame in frames:
            packet = wire.strip_ethernet(frame, mcast)
            if packet is None:
                continue
            group = self._group_for(packet)
            if group is not None:
                group.receive(frame, packet, self.io.monotonic())

    def _on_drain_signals(self, _fileobj: Any) -> None:
        assert self.signals is not None
        for data, source in self.signals.receive():
            vhid = drainsock.vhid_of(data)
            # a group being restarted by a reload may still forward: both instances hear it
            for group in (self.groups.get(vhid or 0), self.retiring.get(vhid or 0)):
                if group is not None:
                    group.drain_signal(data, source, self.io.monotonic())

    def _group_for(self, packet: bytes) -> Group | None:
        vhid = vhid_of(packet)
        group = self.groups.get(vhid) if vhid is not None else None
        if group is None and len(self.groups) == 1 and not self.retiring:
            # one group: it counts every frame it rejects, as a lone engine always has
            group = next(iter(self.groups.values()))
        if group is None and vhid is not None:
            group = self.retiring.get(vhid)
        return group

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
        now = self.io.monotonic()
        if events.carrier is not None:
            self._carrier = events.carrier
            for group in list(self.all_groups()):
                group.link_changed(events.carrier, now)
        if events.removed_from or events.lost_events:
            for group in list(self.groups.values()):
                index = self._index_of(group.options.vip_on)
                removed = events.removed_from.get(index, frozenset()) if index else frozenset()
                group.addresses_removed(removed, events.lost_events, now)

    def _index_of(self, ifname: str) -> int | None:
        """The index of ``ifname``: the VIP of a group may be on another interface than the
        engine's (None if it is gone)."""
        if ifname == self.ifname:
            return self.info.index
        try:
            return self.interface_info(ifname).index
        except (LookupError, OSError):
            return None

    def _on_health(self, group: Group) -> None:
        group.on_health()
        sdnotify.notify(f"STATUS={self.status_summary()}")

    def _on_control(self, _fileobj: Any) -> None:
        for _ in range(control.ACCEPTS_PER_TURN):  # a burst of clients must not fill the backlog
            conn, evicted = self.control.accept()
            for old in evicted:
                self._drop_client(old)
            if conn is None:
                return
            self._selector.register(conn, selectors.EVENT_READ, self._on_control_client)

    def _on_control_client(self, conn: Any) -> None:
        if not self.control.serve(conn):
            return
        if conn in self.control.waiting:  # answered later (a reload): only no longer read
            self._selector.unregister(conn)
        else:
            self._drop_client(conn)

    def _drop_client(self, conn: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()

    def _on_signal_pipe(self, fd: Any) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 4096)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            now = self.io.monotonic()
            if signum == signal.SIGUSR1:
                for group in self.groups.values():
                    group.log.info("%s", group.status_line())
            elif signum == signal.SIGUSR2:
                for group in self.groups.values():  # every group steps down
                    group.step_down(now)
            else:
                log.info("%s: shutting down", signal.Signals(signum).name)
                self._stopping = True

    # ---- status and control -------------------------------------------------------------------

    def status_summary(self) -> str:
        """One line for `systemctl status`: each group's ``MASTER of VIP (vhid N) since ...``."""
        return "; ".join(g.summary() for g in self.groups.values())

    def status_line(self) -> str:
        return "; ".join(g.status_line() for g in self.groups.values())

    def _control_request(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "reload":
            return self.reload()
        if cmd not in ("status", "demote", "promote"):
            return {"ok": False, "error": f"unknown command {cmd!r}: allowed: status, demote, "
                                          "promote, reload"}
        groups = self._addressed(request.get("vhid"))
        if isinstance(groups, str):
            return {"ok": False, "error": groups}
        now = self.io.monotonic()
        for group in groups:
            error = None
            if cmd == "demote":
                error = group.demote(request.get("persistent") is True, now)
            elif cmd == "promote":
                error = group.promote(now)
            if error is not None:
                return {"ok": False, "error": error}
        return self._answer(groups)

    def _addressed(self, vhid: Any) -> list[Group] | str:
        """The groups a request addresses (all without "vhid"), or the error to answer."""
        if vhid is None:
            return list(self.groups.values())
        group = self.groups.get(vhid) if type(vhid) is int else None
        if group is None:
            have = ", ".join(str(v) for v in self.groups) or "none"
            return f"no group with vhid {vhid!r} on {self.ifname} (its groups: {have})"
        return [group]

    def _answer(self, groups: list[Group]) -> dict[str, Any]:
        """{"ok", "interface", "pid", "groups": [...], "stopping": [vhid...],
        "stopping_groups": [...]}, and when one group is answered for, its fields at the top too
        (as an engine of one group always has).  "stopping_groups": the status of each group
        still bowing out, draining (connections left) or running its down script."""
        statuses = [g.status() for g in groups]
        reply: dict[str, Any] = {"ok": True, "interface": self.ifname, "pid": os.getpid(),
                                 "groups": statuses, "stopping": sorted(self.retiring),
                                 "stopping_groups": [{**g.status(), "stopping": True}
                                                     for g in self.retiring.values()]}
        if len(statuses) == 1:
            reply = {**statuses[0], **reply}
        return reply

    # ---- reload -------------------------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Read the --config file again: start new groups, release removed ones as at a stop,
        restart changed ones, leave the others untouched.  An invalid file changes nothing.
        The file is validated in a process of its own (see :mod:`carpd.config.validate`) while the
        loop goes on; the client is answered once it is done (:meth:`_on_validated`)."""
        if self.config.config_file is None or self.argv is None:
            return {"ok": False, "error": "reload: this engine was started without --config: "
                                          "there is no file to read again"}
        if self._validation is not None:
            return {"ok": False, "error": "reload: another reload is under way: try again"}
        try:
            self._validation = Validation(self.argv)
        except OSError as error:
            log.error("reload refused, nothing changed: %s", error)
            return {"ok": False, "error": f"reload refused, nothing changed: {error}"}
        self._selector.register(self._validation, selectors.EVENT_READ, self._on_validated)
        return control.LATER

    def _on_validated(self, _fileobj: Any) -> None:
        validation = self._validation
        if validation is None or not validation.read():
            return
        self._selector.unregister(validation)
        self._validation = None
        self.control.answer_waiting(self._reload_with(validation))

    def _reload_with(self, validation: Validation) -> dict[str, Any]:
        try:
            new = validation.result()
        except (ConfigError, NoSettings) as error:
            return _refused(error)
        return self.reload_settings(new)

    def reload_settings(self, new: EngineSettings) -> dict[str, Any]:
        """Run the groups of ``new`` (validated settings) instead: the second half of
        :meth:`reload`, and the reply to its client."""
        try:
            self._check_fixed(new)
            sources = {o.vhid: source_address(o, self.io.interface_info) for o in new.groups}
            self._lock_new(new)
        except (ConfigError, identity.GroupTaken) as error:
            return _refused(error)
        wanted = {o.vhid: (o, sources[o.vhid]) for o in new.groups}
        plan = self._plan(wanted)
        self._apply(plan, wanted)
        self.config = new
        self._refilter()
        log.info("reloaded %s: started %s, stopping %s, restarting %s, unchanged %s",
                 self.config.config_file, *(_vhids(plan[k]) for k in plan))
        return {**self._answer(list(self.groups.values())), **plan}

    def _check_fixed(self, new: EngineSettings) -> None:
        old = self.config.first
        for key in RELOAD_FIXED:
            if getattr(new.first, key) != getattr(old, key):
                raise ConfigError(f"{key}: {getattr(new.first, key)!s} instead of "
                                  f"{getattr(old, key)!s}: restart the engine to change it")

    def _lock_new(self, new: EngineSettings) -> None:
        """Take the identity of each group not run yet (GroupTaken if another engine runs
        one: then none is taken)."""
        taken: dict[int, engine_io.GroupLockLike] = {}
        try:
            for vhid in new.vhids:
                if vhid not in self._locks:
                    taken[vhid] = self.io.lock_group(self.ifname, vhid)
        except identity.GroupTaken as error:
            for lock in taken.values():
                lock.release()
            raise identity.GroupTaken(f"{error}: already run by another carpd in this "
                                      "network namespace") from None
        self._locks.update(taken)

    def _plan(self, wanted: dict[int, tuple[Settings, IPv4Address]]) -> dict[str, list[int]]:
        running = self.groups
        return {
            "started": [v for v in wanted if v not in running],
            "stopped": [v for v in running if v not in wanted],
            "restarted": [v for v in running if v in wanted
                          and wanted[v] != (running[v].options, running[v].source)],
            "unchanged": [v for v in running if v in wanted
                          and wanted[v] == (running[v].options, running[v].source)],
        }

    def _apply(self, plan: dict[str, list[int]],
               wanted: dict[int, tuple[Settings, IPv4Address]]) -> None:
        now = self.io.monotonic()
        for vhid in plan["stopped"]:
            self._retire(vhid, now)
        for vhid in plan["restarted"]:
            self._retire(vhid, now)
            self._replacements[vhid] = wanted[vhid]  # starts once the old one has stopped
        for vhid in plan["started"]:
            if vhid in self.retiring:  # removed by an earlier reload, still stopping
                self._replacements[vhid] = wanted[vhid]
            else:
                self._add_group(*wanted[vhid], now)
        self._finish_retired(now)

    def _retire(self, vhid: int, now: float) -> None:
        group = self.groups.pop(vhid)
        self.retiring[vhid] = group
        self._replacements.pop(vhid, None)
        group.begin_stop(now)

    def _add_group(self, options: Settings, source: IPv4Address, now: float) -> None:
        group = Group(options, source, self, self.tagged)
        self.groups[options.vhid] = group
        if self.watchdog is not None:
            self.watchdog.hold(options.vip_on, options.addr)
        self._start_group(group, now)

    def _finish_retired(self, now: float) -> None:
        """Groups whose drain is over and whose scripts have run: release what they held;
        start what replaces them."""
        for vhid, group in list(self.retiring.items()):
            if not group.stopped():
                continue
            del self.retiring[vhid]
            self._timer_queue.discard(group)
            self._unwatch(group)
            group.scripts.finish()
            group.scripts.join(1.0)
            group.release()
            if self.watchdog is not None:
                self.watchdog.drop(group.options.vip_on, group.vip)
            replacement = self._replacements.pop(vhid, None)
            if replacement is not None:
                self._add_group(*replacement, now)
            elif vhid in self._locks:
                self._locks.pop(vhid).release()
            group.log.info("stopped")
            self._refilter()

    def _refilter(self) -> None:
        """The kernel filter lets through the vhids of the groups running or stopping."""
        vhids = sorted({*self.groups, *self.retiring})
        if vhids != self._filtered:
            self.link.set_vhids(vhids)
            self._filtered = vhids

    # ---- shutting down ------------------------------------------------------------------------

    def shut_down(self) -> int:
        """Stop every group (bow out, drain, down script, release) and close what the
        engine holds; the exit code."""
        groups = list(self.all_groups())
        drain = max(max(g.options.drain, g.options.drain_connections) for g in groups)
        script_timeout = max(g.options.script_timeout for g in groups)
        # The drain and the down script may take longer than the unit's TimeoutStopSec.
        budget = stop_budget(drain, script_timeout)
        sdnotify.notify("STOPPING=1", f"EXTEND_TIMEOUT_USEC={int(budget * 1_000_000)}")
        now = self.io.monotonic()
        for vhid in list(self.groups):
            self._retire(vhid, now)
        self._replacements.clear()
        self._stopping = False
        self._exit_by = now + drain + script_timeout + SCRIPT_DRAIN_SLACK
        self._finish_retired(now)
        while self.retiring and self.io.monotonic() < self._exit_by:
            if self._stopping:  # another exit signal cuts the drains short
                for group in self.retiring.values():
                    group.cut_drain_short(self.io.monotonic())
            self.turn()
        for group in self.retiring.values():
            group.log.error("scripts still running at exit")
            group.release()
        if self._validation is not None:
            self._validation.close()
        self.control.close()
        self.link.close()
        if self.signals is not None:
            self.signals.close()
        if self.monitor is not None:
            self.monitor.close()
        return 0


def _refused(error: Exception) -> dict[str, Any]:
    log.error("reload refused, nothing changed: %s", error)
    return {"ok": False, "error": f"reload refused, nothing changed: {error}"}


def _vhids(vhids: list[int]) -> str:
    return ",".join(str(v) for v in vhids) or "-"
