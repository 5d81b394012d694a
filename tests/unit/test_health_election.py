"""Health in the election core (issue 11, rule 3), on the fake clock of :mod:`cluster`.

- an unhealthy MASTER bows out and a healthy peer takes over at once, preempt or not;
- an unhealthy node never takes the VIP from a live MASTER, preempt or not;
- last resort: with no healthy node left, one node still holds the VIP;
- healthy again after rise: the node behaves as configured.
"""

from __future__ import annotations

from cluster import Cluster, params

from carpd.core import wire
from carpd.core.election import (
    LAST_RESORT_ADVSKEW,
    RunScript,
    Script,
    SendAdvert,
    StartDrain,
    State,
    Transition,
)


def pair(preempt: bool = False, drain: float = 0.0) -> Cluster:
    """a (advskew 0) and b (advskew 100); a is MASTER once started."""
    cluster = Cluster({
        "a": params("10.0.0.1", advskew=0, preempt=preempt, drain=drain),
        "b": params("10.0.0.2", advskew=100, preempt=preempt, drain=drain),
    }, delay=1 / 1024)
    cluster.start("a", "b")
    cluster.run_for(5.0)
    assert cluster.masters() == ["a"]
    return cluster


def test_unhealthy_master_bows_out_and_the_healthy_backup_takes_over_at_once() -> None:
    cluster = pair(preempt=False)
    cluster.clear_logs()
    at = cluster.now
    cluster.set_health("a", False)
    adverts = cluster.adverts("a")
    assert (adverts[0][1].advbase, adverts[0][1].advskew) == (wire.BOW_OUT, wire.BOW_OUT)
    cluster.run_for(0.01)
    assert cluster.masters() == ["b"]
    assert cluster.became_master_at("b") == [at + 1 / 1024]


def test_unhealthy_master_drains_when_a_drain_is_configured() -> None:
    cluster = pair(drain=2.0)
    actions = cluster["a"].set_health(False, cluster.now)
    assert StartDrain() in actions and RunScript(Script.DOWN) not in actions


def test_unhealthy_backup_never_takes_the_vip_from_a_live_master_even_with_preempt() -> None:
    cluster = Cluster({
        "a": params("10.0.0.1", advskew=100, preempt=True),
        "b": params("10.0.0.2", advskew=0, preempt=True),
    }, delay=1 / 1024)
    cluster.start("a")
    cluster.run_for(5.0)
    cluster.start("b")
    cluster.set_health("b", False)  # b would preempt a if healthy
    cluster.run_for(30.0)
    assert cluster.masters() == ["a"]
    assert cluster.transitions("b")[-1][1].new is State.BACKUP


def test_unhealthy_backup_lets_a_healthy_peer_take_over_a_bow_out_first() -> None:
    cluster = Cluster({
        "a": params("10.0.0.1", advskew=0),
        "b": params("10.0.0.2", advskew=100),  # unhealthy, but the preferred one
        "c": params("10.0.0.3", advskew=200),  # healthy
    }, delay=1 / 1024)
    cluster.start("a", "b", "c")
    cluster.run_for(5.0)
    cluster.set_health("b", False)
    cluster.stop("a")  # bows out
    cluster.run_for(10.0)
    assert cluster.masters() == ["c"]
    assert cluster.became_master_at("b") == []


def test_both_unhealthy_one_node_still_holds_the_vip_as_a_last_resort() -> None:
    cluster = pair()
    cluster.set_health("b", False)
    cluster.set_health("a", False)  # a bows out; nobody healthy is left
    cluster.run_for(0.5)
    gap_start = cluster.now
    cluster.run_for(20.0)
    assert len(cluster.masters()) == 1
    master = cluster.masters()[0]
    assert cluster[master].last_resort
    # it took over within one advert interval of the bow-out, and has kept it since
    assert max(cluster.became_master_at(master)) < gap_start + 1.0
    late = [a for t, a in cluster.adverts(master) if t > gap_start + 2]
    assert late and all(a.advskew == LAST_RESORT_ADVSKEW for a in late)


def test_lone_unhealthy_node_takes_the_vip_when_master_down_expires() -> None:
    cluster = Cluster({"a": params("10.0.0.1")})
    cluster.start("a")
    cluster.set_health("a", False)
    cluster.run_for(10.0)
    assert cluster.masters() == ["a"]
    # one advert interval later than a healthy node would (3 s)
    assert cluster.became_master_at("a") == [4.0]


def test_healthy_backup_takes_over_from_a_last_resort_master_without_preempt() -> None:
    cluster = pair(preempt=False)
    cluster.set_health("b", False)
    cluster.set_health("a", False)
    cluster.run_for(10.0)
    holder = cluster.masters()[0]
    other = "b" if holder == "a" else "a"
    cluster.set_health(other, True)
    cluster.run_for(5.0)
    assert cluster.masters() == [other]


def test_recovered_node_without_preempt_stays_backup() -> None:
    cluster = pair(preempt=False)
    cluster.set_health("a", False)
    cluster.run_for(5.0)
    assert cluster.masters() == ["b"]
    cluster.set_health("a", True)
    cluster.run_for(30.0)
    assert cluster.masters() == ["b"]


def test_recovered_node_with_preempt_and_the_best_advskew_takes_the_vip_back() -> None:
    cluster = pair(preempt=True)
    cluster.set_health("a", False)
    cluster.run_for(5.0)
    assert cluster.masters() == ["b"]
    back = cluster.now
    cluster.set_health("a", True)
    cluster.run_for(5.0)
    assert cluster.masters() == ["a"]
    assert min(t for t in cluster.became_master_at("a") if t >= back) <= back + 1.0


def test_a_demoted_node_never_takes_over_even_as_last_resort() -> None:
    cluster = Cluster({"a": params("10.0.0.1")})
    cluster.start("a")
    cluster.demote("a")
    cluster.set_health("a", False)
    cluster.run_for(30.0)
    assert cluster.masters() == []


def test_health_change_of_a_backup_changes_no_state_and_sends_nothing() -> None:
    cluster = pair()
    before = cluster["b"].next_deadline()
    assert cluster["b"].set_health(False, cluster.now) == []
    after = cluster["b"].next_deadline()
    interval = cluster["b"].params.advert_interval  # its master-down is one interval longer
    assert before is not None and after is not None and after == before + interval
    assert cluster["b"].set_health(True, cluster.now) == []
    assert cluster["b"].next_deadline() == before


def test_same_health_twice_is_no_event() -> None:
    cluster = pair()
    assert cluster["a"].set_health(True, cluster.now) == []
    first = cluster["a"].set_health(False, cluster.now)
    assert any(isinstance(a, SendAdvert) for a in first)
    assert any(isinstance(a, Transition) for a in first)
    assert cluster["a"].set_health(False, cluster.now) == []


def test_unhealthy_master_loses_to_an_equal_healthy_master_after_a_partition() -> None:
    cluster = Cluster({
        "a": params("10.0.0.1", advskew=0),
        "b": params("10.0.0.2", advskew=0),
    }, delay=1 / 1024)
    cluster.start("a", "b")
    cluster.run_for(5.0)
    loser = "b" if cluster.masters() == ["a"] else "a"
    cluster.isolate(loser)
    cluster.run_for(5.0)  # both MASTER now
    winner = "a" if loser == "b" else "b"
    cluster.set_health(winner, False)  # bows out, unheard by the isolated one
    cluster.run_for(5.0)
    cluster.rejoin(loser)
    cluster.run_for(5.0)
    assert cluster.masters() == [loser]


def test_lone_master_turning_unhealthy_never_leaves_the_vip_on_no_node() -> None:
    cluster = Cluster({"a": params("10.0.0.1", drain=2.0)})
    cluster.start("a")
    cluster.run_for(5.0)
    cluster.clear_logs()
    at = cluster.now
    cluster.set_health("a", False)
    cluster.run_for(10.0)
    assert cluster.masters() == ["a"]
    # back as MASTER two intervals after the bow-out, the VIP kept all along: no down script
    assert cluster.became_master_at("a") == [at + 2.0]
    assert Script.DOWN not in [s for _, s in cluster.scripts("a")]


def test_an_unhealthy_peer_takes_the_vip_before_the_one_that_bowed_out_retakes_it() -> None:
    cluster = pair(drain=2.0)
    cluster.set_health("b", False)
    at = cluster.now
    cluster.set_health("a", False)
    cluster.run_for(10.0)
    assert cluster.masters() == ["b"]
    assert [t for t in cluster.became_master_at("a") if t > at] == []
    assert min(cluster.became_master_at("b")) <= at + 1.0 + 100 / 256 + 0.01
