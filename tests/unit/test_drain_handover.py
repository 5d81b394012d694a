"""A planned hand-over between two election cores (issue 12), on a fake clock: the old MASTER
drains until its connections have closed (``drain_connections``) and says so with the drain
signal; the new MASTER passes its connections on for exactly as long as it hears it."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from cluster import KEY, VIP, params

from carpd.core import drainsignal, wire
from carpd.core.election import (
    Action,
    CountConnections,
    EndDrain,
    ForwardStrays,
    RunScript,
    Script,
    SendAdvert,
    SendDrainSignal,
    SendGratuitousArp,
    StartDrain,
    State,
    StopForwarding,
    VirtualHost,
)

A, B = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
MAC_A, MAC_B = b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"


@dataclass
class Node:
    host: VirtualHost
    mac: bytes
    log: list[tuple[float, Action]] = field(default_factory=list)
    open_connections: int = 0
    """What the shell would count of the connections noted at the hand-over."""

    def got(self, kind: type) -> list[float]:
        return [t for t, a in self.log if isinstance(a, kind)]


class Pair:
    """Two cores on one link (no delay): adverts and drain signals go across, the clock only
    moves when told (``run_until``), every timer is run at its deadline."""

    def __init__(self, a: dict[str, Any], b: dict[str, Any]) -> None:
        counters = iter(range(1000, 10**6, 7))
        self.nodes = {
            "a": Node(VirtualHost(params(str(A), **a), lambda: next(counters)), MAC_A),
            "b": Node(VirtualHost(params(str(B), **b), lambda: next(counters)), MAC_B)}
        self.now = 0.0
        self.dead: set[str] = set()
        self.signals_lost = False

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def start(self) -> None:
        for node in self.nodes.values():
            self.carry_out(node, node.host.start(self.now))

    def carry_out(self, node: Node, actions: list[Action]) -> None:
        for action in actions:
            node.log.append((self.now, action))
            if isinstance(action, SendAdvert):
                self.deliver_advert(node, action)
            elif isinstance(action, SendDrainSignal):
                self.deliver_signal(node, action)
            elif isinstance(action, CountConnections):
                self.carry_out(node, node.host.connections_left(node.open_connections,
                                                                self.now))

    def deliver_advert(self, sender: Node, action: SendAdvert) -> None:
        source = sender.host.params.source
        packet = wire.encode_packet(action.advert, KEY, VIP, source, ident=1)
        for other in self.nodes.values():
            if other is not sender and other.host is not None and not self._dead(other):
                self.carry_out(other, other.host.receive(packet, self.now, True, sender.mac))

    def deliver_signal(self, sender: Node, action: SendDrainSignal) -> None:
        if self.signals_lost:
            return
        for other in self.nodes.values():
            if other.host.params.source == action.to and not self._dead(other):
                self.carry_out(other, other.host.drain_signal(
                    action.data, sender.host.params.source, self.now))

    def _dead(self, node: Node) -> bool:
        return any(self.nodes[name] is node for name in self.dead)

    def run_until(self, until: float) -> None:
        while True:
            deadlines = [(d, n) for n in self.nodes.values() if not self._dead(n)
                         if (d := n.host.next_deadline()) is not None]
            if not deadlines:
                break
            at, node = min(deadlines, key=lambda x: x[0])
            if at > until:
                break
            self.now = max(self.now, at)
            self.carry_out(node, node.host.handle_timer(self.now))
        self.now = until

    def act(self, name: str, method: str, *args: Any) -> None:
        node = self[name]
        self.carry_out(node, getattr(node.host, method)(self.now, *args))


def handed_over(a: dict[str, Any] | None = None, b: dict[str, Any] | None = None,
                how: str = "stop") -> Pair:
    """a MASTER, b BACKUP, then a releases by plan at 10.0 (``how``: stop or demote)."""
    pair = Pair({"drain": 2.0, **(a or {})}, {"drain": 2.0, "advskew": 50, **(b or {})})
    pair.start()
    pair.run_until(5.0)
    assert pair["a"].host.state is State.MASTER and pair["b"].host.state is State.BACKUP
    pair.run_until(10.0)
    pair.act("a", how)
    assert pair["b"].host.state is State.MASTER
    return pair


def silenced_at(at: float) -> tuple[Pair, list[bytes]]:
    """handed_over with a 30 s drain, then a dead from ``at`` on: the pair, and the drain
    signals a sent until then (to replay)."""
    pair = handed_over({"drain": 30.0})
    pair.run_until(at)
    signals = [a.data for _, a in pair["a"].log if isinstance(a, SendDrainSignal)]
    pair.dead.add("a")
    return pair, signals


def forwarding(node: Node) -> bool:
    starts, stops = node.got(ForwardStrays), node.got(StopForwarding)
    return bool(starts) and (not stops or max(stops) < max(starts))


# ---- the new MASTER's forwarding follows the old MASTER's signal ------------------------------


def test_the_signal_keeps_the_new_master_forwarding_for_the_whole_drain() -> None:
    pair = handed_over({"drain": 30.0})
    forward = [a for _, a in pair["b"].log if isinstance(a, ForwardStrays)]
    assert forward and forward[0].to == A and forward[0].mac == MAC_A
    pair.run_until(39.9)
    assert forwarding(pair["b"]), "b stopped passing a's connections on while a drains"
    assert pair["a"].host.draining


def test_drained_stops_the_forwarding_at_once_and_the_new_master_announces_again() -> None:
    pair = handed_over({"drain": 30.0})
    pair.run_until(41.0)
    assert pair["b"].got(StopForwarding) == [40.0], "stopped exactly at a's end of drain"
    assert 40.0 in pair["b"].got(SendGratuitousArp)
    assert not pair["a"].host.signalling


def test_silence_of_the_old_master_stops_forwarding_within_a_second() -> None:
    pair = handed_over({"drain": 30.0})
    pair.run_until(15.0)
    pair.dead.add("a")  # it crashed while draining
    pair.run_until(20.0)
    stops = pair["b"].got(StopForwarding)
    assert len(stops) == 1 and 15.0 < stops[0] <= 15.0 + drainsignal.SILENCE <= 16.0
    assert pair["b"].host.state is State.MASTER, "nothing else changes"


def test_a_forged_or_replayed_signal_does_not_extend_forwarding() -> None:
    pair, signals = silenced_at(11.0)
    b = pair["b"].host
    stranger = drainsignal.Beacon(1, VIP, A, drainsignal.derive_key(b"not the password"))
    stranger.start(0, pair.now)
    forged = stranger.due(pair.now)
    assert forged is not None
    for _ in range(8):
        pair.run_until(pair.now + 0.25)
        for data in (*signals, forged):  # a's own, captured, and one with another key
            pair.carry_out(pair["b"], b.drain_signal(data, A, pair.now))
    assert pair["b"].got(StopForwarding), "replays kept b forwarding after a fell silent"
    assert b.signal_rejected[drainsignal.Reject.STALE] > 0
    assert b.signal_rejected[drainsignal.Reject.DIGEST] > 0


def test_a_signal_from_another_address_does_not_extend_forwarding() -> None:
    pair, signals = silenced_at(10.5)
    b = pair["b"].host
    assert b.drain_signal(signals[-1], IPv4Address("10.0.0.66"), pair.now) == []
    pair.run_until(12.0)
    stops = pair["b"].got(StopForwarding)
    assert stops and stops[0] <= 10.5 + drainsignal.SILENCE


def test_leaving_master_by_plan_keeps_forwarding_the_older_drain() -> None:
    """A -> B -> A: b hands back to a while a's first drain still runs: b goes on passing a's
    connections to a until a says it has drained, whatever b's own state."""
    pair = handed_over({"drain": 30.0}, how="demote")
    pair.run_until(12.0)
    pair.act("a", "promote")
    pair.act("b", "demote")  # b bows out; a takes the VIP back during its drain
    assert pair["a"].host.state is State.MASTER and pair["b"].host.state is State.BACKUP
    assert forwarding(pair["a"]) and forwarding(pair["b"])
    pair.run_until(39.0)
    assert forwarding(pair["b"]), "b stopped passing a's old connections on"
    pair.run_until(45.0)
    assert pair["b"].got(StopForwarding) == [40.0]
    assert pair["a"].got(StopForwarding) == [14.0], "a forwarded b's until b's 2 s drain ended"


# ---- the old MASTER's drain waits for its connections -----------------------------------------


def test_drain_connections_ends_the_drain_when_the_last_connection_closes() -> None:
    pair = handed_over({"drain": 2.0, "drain_connections": 60.0})
    a = pair["a"]
    assert (10.0, StartDrain(count=True)) in a.log
    a.open_connections = 3
    pair.run_until(20.0)
    assert a.host.draining and forwarding(pair["b"])
    assert a.host.status(pair.now)["drain"]["connections"] == 3
    a.open_connections = 0
    pair.run_until(21.0)
    assert a.got(EndDrain) and 20.0 < a.got(EndDrain)[0] <= 20.0 + drainsignal.INTERVAL
    assert (a.got(EndDrain)[0], RunScript(Script.DOWN)) in a.log
    assert pair["b"].got(StopForwarding) == a.got(EndDrain)


def test_drain_connections_never_ends_before_drain() -> None:
    pair = handed_over({"drain": 5.0, "drain_connections": 60.0})
    pair.run_until(20.0)
    assert pair["a"].got(EndDrain) == [15.0]


def test_drain_connections_is_a_cap() -> None:
    pair = handed_over({"drain": 2.0, "drain_connections": 60.0})
    pair["a"].open_connections = 1  # a connection that never closes
    pair.run_until(69.9)
    assert pair["a"].host.draining
    pair.run_until(71.0)
    assert pair["a"].got(EndDrain) == [70.0]
    assert pair["b"].got(StopForwarding) == [70.0]


def test_without_drain_connections_the_drain_counts_nothing() -> None:
    pair = handed_over({"drain": 2.0})
    pair.run_until(13.0)
    assert not pair["a"].got(CountConnections)
    assert pair["a"].got(EndDrain) == [12.0]


def test_an_old_master_stopping_tells_the_new_one_it_drains() -> None:
    """Stopped (INIT), it still hears the new MASTER and signals to it."""
    pair = handed_over({"drain": 2.0, "drain_connections": 60.0})
    pair["a"].open_connections = 1
    pair.run_until(12.0)
    assert pair["a"].host.state is State.INIT
    sent = [a for _, a in pair["a"].log if isinstance(a, SendDrainSignal)]
    assert sent and {s.to for s in sent} == {B}
    assert len(sent) >= 2 / drainsignal.INTERVAL - 1


def test_a_ucarp_new_master_cuts_the_drain_to_drain() -> None:
    """A ucarp node passes nothing back: waiting for the connections would only hold the VIP
    on both; and it is never sent a signal."""
    pair = Pair({"drain": 2.0, "drain_connections": 60.0}, {"advskew": 50})
    pair["b"].mac = wire.ucarp_source_mac(1)
    pair.start()
    pair.run_until(10.0)
    pair["a"].open_connections = 1
    original = pair.deliver_advert

    def as_ucarp(sender: Node, action: SendAdvert) -> None:
        if sender is pair["b"]:  # ucarp's MAC: the receiver is told it does not drain
            packet = wire.encode_packet(action.advert, KEY, VIP, B, ident=1)
            pair.carry_out(pair["a"], pair["a"].host.receive(packet, pair.now, False,
                                                             sender.mac))
        else:
            original(sender, action)

    pair.deliver_advert = as_ucarp  # type: ignore[method-assign]
    pair.act("a", "stop")
    pair.run_until(20.0)
    assert pair["a"].got(EndDrain) == [12.0]
    assert not pair["a"].got(SendDrainSignal)


def test_the_old_master_signals_only_once_it_has_heard_the_new_one() -> None:
    pair = handed_over({"drain": 30.0})
    pair.run_until(10.1)
    first = min(pair["a"].got(SendDrainSignal))
    assert first == 10.0, "the new MASTER's first advert names it: the first signal goes at once"


def test_a_lost_drained_signal_is_repeated_and_silence_still_ends_it() -> None:
    pair = handed_over({"drain": 3.0})
    pair.run_until(12.9)
    pair.signals_lost = True
    pair.run_until(20.0)
    stops = pair["b"].got(StopForwarding)
    assert len(stops) == 1 and stops[0] <= 13.0 + drainsignal.SILENCE
    drained = [a for t, a in pair["a"].log if isinstance(a, SendDrainSignal) and t >= 13.0]
    assert len(drained) == drainsignal.DRAINED_REPEATS


def test_status_shows_the_drain_and_the_forwarding() -> None:
    pair = handed_over({"drain": 2.0, "drain_connections": 60.0})
    pair["a"].open_connections = 2
    pair.run_until(11.0)
    drain = pair["a"].host.status(pair.now)["drain"]
    assert drain == {"connections": 2, "left": 59.0, "to": str(B)}
    forward = pair["b"].host.status(pair.now)["forwarding"]
    assert forward["to"] == str(A) and forward["connections"] == 2


def test_stopping_after_taking_the_vip_back_ends_the_older_hand_over_at_once() -> None:
    """A -> B -> A, then a loses its link (no hand-over) and is stopped: its first hand-over
    (still counting connections) must not hold the stop up to its cap."""
    pair = handed_over({"drain": 2.0, "drain_connections": 600.0}, how="demote")
    pair["a"].open_connections = 1
    pair.run_until(12.0)
    pair.act("a", "promote")
    pair.act("b", "demote")
    assert pair["a"].host.state is State.MASTER
    pair.run_until(20.0)
    assert pair["a"].host.signalling, "a's first hand-over still runs (1 connection)"
    a = pair["a"]
    pair.carry_out(a, a.host.link_changed(False, pair.now))
    assert a.host.state is State.INIT and a.host.signalling
    pair.act("a", "stop")
    pair.run_until(25.0)
    assert not pair["a"].host.draining and not pair["a"].host.signalling


def test_signals_while_not_forwarding_are_counted_and_ignored() -> None:
    pair = handed_over({"drain": 2.0})
    pair.run_until(20.0)
    b = pair["b"].host
    before = b.signal_rejected[drainsignal.Reject.NOT_FORWARDING]  # "drained" repeated
    assert b.drain_signal(b"CARPDRN1" + bytes(drainsignal.SIZE - 8), A, pair.now) == []
    assert b.signal_rejected[drainsignal.Reject.NOT_FORWARDING] == before + 1


def test_a_preempted_carpd_master_signals_from_the_first_advert_of_the_preempter() -> None:
    """Preempted by a carpd node (planned: it drains), the old MASTER's first signal goes out
    at once, not an advert interval later (the new MASTER would have fallen silent by then)."""
    pair = Pair({"drain": 5.0, "advskew": 50},
                {"drain": 5.0, "preempt": True, "replay_check": False})  # b answers no farewell
    a, b = pair["a"], pair["b"]
    pair.carry_out(a, a.host.start(0.0))
    pair.run_until(5.0)
    assert a.host.state is State.MASTER
    pair.carry_out(b, b.host.start(5.0))
    pair.run_until(8.0)
    assert b.host.state is State.MASTER and a.host.draining
    taken = min(b.got(ForwardStrays))
    assert min(a.got(SendDrainSignal)) == taken
    pair.run_until(taken + 4.9)
    assert forwarding(b), "b stopped passing a's connections on during a's 5 s drain"
    pair.run_until(taken + 6.0)
    assert b.got(StopForwarding) == [taken + 5.0]
