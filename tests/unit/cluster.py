"""A fake clock and an in-memory link for testing the election of several VirtualHosts.

A :class:`Cluster` wires N :class:`~carpd.core.election.VirtualHost` s to one simulated Ethernet
segment.  Every ``SendAdvert`` is encoded with :func:`carpd.core.wire.encode_packet` and delivered
to every other node's ``receive()`` after ``delay`` seconds; the clock jumps to the earliest pending
event (a delivery or a node's ``next_deadline()``), so a simulated minute takes milliseconds.  Nodes
can crash, be restarted, stopped, unplugged (carrier loss, ``link_changed``) or isolated (a silent
partition: carrier stays up), demoted and promoted.

Timers are checked as they run: ``handle_timer`` is called exactly at ``next_deadline()`` and
must then move the deadline, so a timer that does not fire at its deadline fails the test.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from carpd.core import wire
from carpd.core.election import (
    Action,
    Params,
    RunScript,
    Script,
    SendAdvert,
    SendGratuitousArp,
    State,
    Transition,
    VirtualHost,
)

KEY = b"secret"
VIP = IPv4Address("10.99.0.100")
MAX_STEPS = 1_000_000


def params(source: str, **settings: object) -> Params:
    """A node's Params: vhid 1, password "secret", VIP 10.99.0.100 unless ``settings`` say."""
    fields: dict[str, object] = {"vhid": 1, "key": KEY, "vip": VIP}
    fields.update(settings)
    return Params(source=IPv4Address(source), **fields)  # type: ignore[arg-type]


@dataclass
class Node:
    name: str
    params: Params
    host: VirtualHost | None = None
    """None while crashed or stopped."""
    attached: bool = True
    """Packets flow to and from this node (False: unplugged or isolated)."""
    carrier: bool = True
    log: list[tuple[float, Action]] = field(default_factory=list)
    timer_fired_at: list[tuple[float, float]] = field(default_factory=list)
    """(deadline, time handle_timer was called) for every timer that fired."""

    @property
    def alive(self) -> bool:
        return self.host is not None

    @property
    def state(self) -> State | None:
        return None if self.host is None else self.host.state


@dataclass(order=True)
class _Delivery:
    at: float
    seq: int
    target: str = field(compare=False)
    packet: bytes = field(compare=False)


class Cluster:
    """N virtual hosts on one in-memory link, on one fake clock (seconds, starting at 0)."""

    def __init__(self, nodes: dict[str, Params], delay: float = 0.0, seed: int = 0) -> None:
        self.now = 0.0
        self.delay = delay
        self.rng = random.Random(seed)
        self.nodes = {name: Node(name, p) for name, p in nodes.items()}
        self._in_flight: list[_Delivery] = []
        self._seq = 0

    def __getitem__(self, name: str) -> VirtualHost:
        host = self.nodes[name].host
        assert host is not None, f"{name} is not running"
        return host

    # ---- driving the nodes ------------------------------------------------------------------

    def start(self, *names: str) -> None:
        for name in names or tuple(self.nodes):
            node = self.nodes[name]
            node.host = VirtualHost(node.params, lambda: self.rng.getrandbits(64))
            if not node.carrier:
                self._dispatch(node, node.host.link_changed(False, self.now))
            self._dispatch(node, node.host.start(self.now))

    restart = start

    def crash(self, name: str) -> None:
        """The process dies: nothing more is sent, nothing is run."""
        self.nodes[name].host = None

    def stop(self, name: str) -> None:
        """An orderly shutdown: whatever stop() returns goes out, then the process is gone."""
        node = self.nodes[name]
        self._dispatch(node, self[name].stop(self.now))
        node.host = None

    def unplug(self, name: str) -> None:
        """Carrier lost: the node hears of it (link_changed) and is off the link."""
        node = self.nodes[name]
        node.attached = node.carrier = False
        if node.host is not None:
            self._dispatch(node, node.host.link_changed(False, self.now))

    def plug(self, name: str) -> None:
        node = self.nodes[name]
        node.attached = node.carrier = True
        if node.host is not None:
            self._dispatch(node, node.host.link_changed(True, self.now))

    def isolate(self, name: str) -> None:
        """A silent partition: carrier stays up, but no packet reaches or leaves the node."""
        self.nodes[name].attached = False

    def rejoin(self, name: str) -> None:
        """End a silent partition (an unplugged node stays off the link until plugged)."""
        node = self.nodes[name]
        node.attached = node.carrier

    def demote(self, name: str, until: float = float("inf")) -> None:
        self._dispatch(self.nodes[name], self[name].demote(self.now, until))

    def promote(self, name: str) -> None:
        self._dispatch(self.nodes[name], self[name].promote(self.now))

    def set_health(self, name: str, healthy: bool) -> None:
        self._dispatch(self.nodes[name], self[name].set_health(healthy, self.now))

    def inject(self, name: str, packet: bytes) -> None:
        """Hand ``packet`` to one node now, as if it came off the link."""
        node = self.nodes[name]
        self._dispatch(node, self[name].receive(packet, self.now))

    # ---- the clock --------------------------------------------------------------------------

    def run_until(self, until: float) -> None:
        """Carry out every event due at or before ``until``, in time order; then now = until."""
        for _ in range(MAX_STEPS):
            if not self._step(until):
                self.now = max(self.now, until)
                return
        raise AssertionError(f"more than {MAX_STEPS} events before t={until}: a timer loop?")

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def _step(self, until: float) -> bool:
        timer = self._earliest_timer()
        delivery = self._in_flight[0] if self._in_flight else None
        if delivery is not None and (timer is None or delivery.at <= timer[0]):
            if delivery.at > until:
                return False
            heapq.heappop(self._in_flight)
            self.now = delivery.at
            self._deliver(delivery)
            return True
        if timer is None or timer[0] > until:
            return False
        deadline, node = timer
        assert deadline >= self.now, f"{node.name}: deadline {deadline} is in the past ({self.now})"
        host = node.host
        assert host is not None
        just_before = math.nextafter(deadline, -math.inf)
        assert host.handle_timer(just_before) == [], f"{node.name}: timer fired before {deadline}"
        assert host.next_deadline() == deadline
        self.now = deadline
        self._dispatch(node, host.handle_timer(deadline))
        node.timer_fired_at.append((deadline, self.now))
        assert host.next_deadline() != deadline, \
            f"{node.name}: handle_timer({deadline}) at its deadline did not fire the timer"
        return True

    def _earliest_timer(self) -> tuple[float, Node] | None:
        earliest: tuple[float, Node] | None = None
        for node in self.nodes.values():
            if node.host is not None:
                deadline = node.host.next_deadline()
                if deadline is not None and (earliest is None or deadline < earliest[0]):
                    earliest = (deadline, node)
        return earliest

    # ---- the link ---------------------------------------------------------------------------

    def _dispatch(self, node: Node, actions: list[Action]) -> None:
        for action in actions:
            node.log.append((self.now, action))
            if isinstance(action, SendAdvert) and node.attached:
                self._send(node, action.advert)

    def _send(self, sender: Node, advert: wire.Advert) -> None:
        p = sender.params
        self._seq += 1
        packet = wire.encode_packet(advert, p.key, p.vip, p.source, self._seq, p.group)
        for name in self.nodes:
            if name != sender.name:
                heapq.heappush(self._in_flight,
                               _Delivery(self.now + self.delay, self._seq, name, packet))

    def _deliver(self, delivery: _Delivery) -> None:
        node = self.nodes[delivery.target]
        if node.attached and node.host is not None:
            self._dispatch(node, node.host.receive(delivery.packet, self.now))

    # ---- what happened ----------------------------------------------------------------------

    def masters(self) -> list[str]:
        return [n.name for n in self.nodes.values() if n.state is State.MASTER]

    def states(self) -> dict[str, State | None]:
        return {n.name: n.state for n in self.nodes.values()}

    def transitions(self, name: str) -> list[tuple[float, Transition]]:
        return [(t, a) for t, a in self.nodes[name].log if isinstance(a, Transition)]

    def became_master_at(self, name: str) -> list[float]:
        return [t for t, a in self.transitions(name) if a.new is State.MASTER]

    def adverts(self, name: str) -> list[tuple[float, wire.Advert]]:
        return [(t, a.advert) for t, a in self.nodes[name].log if isinstance(a, SendAdvert)]

    def scripts(self, name: str) -> list[tuple[float, Script]]:
        return [(t, a.script) for t, a in self.nodes[name].log if isinstance(a, RunScript)]

    def actions_between(self, name: str, start: float, end: float) -> list[Action]:
        return [a for t, a in self.nodes[name].log if start <= t <= end]

    def garps(self, name: str) -> list[float]:
        return [t for t, a in self.nodes[name].log if isinstance(a, SendGratuitousArp)]

    def clear_logs(self) -> None:
        for node in self.nodes.values():
            node.log.clear()
            node.timer_fired_at.clear()
