"""Property: whatever happened before, once the link is quiet the cluster ends with one MASTER.

Thousands of random scenarios (fixed seed, so a failure replays): 2..5 nodes with random advbase,
advskew, deadratio, preempt, neutral, drain and link delay; random crashes, restarts, orderly
stops, carrier losses, silent partitions, demotions.  Then everything is plugged back in and
promoted, and within a bounded time exactly one node is MASTER and stays so.
"""

from __future__ import annotations

import random

from cluster import Cluster, Node, params

from carpd.core.election import Params, RunScript, Script, State, Transition, tie_break_key

SEED = 4242
SCENARIOS = 2000
CHAOS_SECONDS = 15.0
# Longest master-down below (advbase 2 x deadratio 3 + 255/256) + longest interval + slack.
SETTLE_SECONDS = 15.0
STABLE_SECONDS = 8.0


def loses_to(b: Params, a: Params) -> bool:
    """Whether ``b`` stays BACKUP to ``a`` as MASTER (a has the lower interval, or wins the tie)."""
    return (b.interval_ticks, tie_break_key(b.source)) > (a.interval_ticks, tie_break_key(a.source))


def stable(nodes: dict[str, Params], delay: float) -> bool:
    """No node times out between the adverts of a master it loses to.

    A backup whose master-down interval is not longer than a preferred master's advert interval
    (plus the link delay) takes over at every advert and is sent back at once: that flaps by
    design, in ucarp too (deadratio 1, or advbase 0, with equal intervals).  Such clusters are
    left out of the convergence property.
    """
    return all(b.master_down_interval > a.advert_interval + delay
               for a in nodes.values() for b in nodes.values() if loses_to(b, a))


def random_params(rng: random.Random, n: int) -> dict[str, Params]:
    addresses: set[str] = set()
    while len(addresses) < n:
        addresses.add(f"10.{rng.randint(0, 2)}.{rng.randint(0, 2)}.{rng.randint(1, 3)}")
    nodes = {}
    for i, address in enumerate(sorted(addresses)):
        advbase = rng.choice((0, 1, 1, 1, 2))
        nodes[f"n{i}"] = params(
            address,
            advbase=advbase,
            # Few distinct values, so that equal intervals (the tie-break) are common.
            advskew=rng.choice((128, 200, 255) if advbase == 0 else (0, 0, 100, 255)),
            deadratio=rng.randint(1, 3),
            preempt=rng.random() < 0.5,
            neutral=rng.random() < 0.3,
            drain=rng.choice((0.0, 0.0, 0.0, 0.5)),
            reannounce=rng.choice((0.0, 0.0, 2.0)),
        )
    return nodes


def on_tick(seconds: float) -> float:
    """Event times on a 1/1024 s grid, as every interval is: the fake clock stays exact."""
    return round(seconds * 1024) / 1024


def disturb(rng: random.Random, cluster: Cluster, name: str) -> None:
    node = cluster.nodes[name]
    if not node.alive:
        cluster.restart(name)
        return
    event = rng.randrange(8)
    if event == 0:
        cluster.crash(name)
    elif event == 1:
        cluster.stop(name)
    elif event == 2:
        (cluster.unplug if node.carrier else cluster.plug)(name)
    elif event == 3:
        (cluster.rejoin if not node.attached else cluster.isolate)(name)
    elif event == 4:
        cluster.demote(name, until=cluster.now + rng.choice((1.0, 5.0, float("inf"))))
    elif event == 5:
        cluster.promote(name)
    # 6, 7: leave it alone this time


def quieten(rng: random.Random, cluster: Cluster) -> None:
    """Everything back on the link, nobody demoted; a crashed node may stay down."""
    for name, node in cluster.nodes.items():
        if not node.alive and rng.random() < 0.7:
            cluster.restart(name)
        if not node.carrier:
            cluster.plug(name)
        cluster.rejoin(name)
        if node.alive:
            cluster.promote(name)


def scripts_alternate(node: Node) -> bool:
    """UP only when the VIP is not held, in every life of the process."""
    holding = False
    for _, action in node.log:
        if isinstance(action, Transition) and action.reason == "started":
            holding = False
        elif isinstance(action, RunScript):
            if action.script is Script.UP and holding:
                return False
            holding = action.script is Script.UP
    return True


def run_scenario(seed: int) -> Cluster:
    rng = random.Random(seed)
    while True:
        nodes = random_params(rng, rng.randint(2, 5))
        delay = rng.choice((0.0, 1 / 1024, 1 / 256, 1 / 64))
        if stable(nodes, delay):
            break
    cluster = Cluster(nodes, delay=delay, seed=seed)
    for name in cluster.nodes:
        cluster.run_until(on_tick(rng.uniform(0, 3)))
        cluster.start(name)
    while cluster.now < CHAOS_SECONDS:
        cluster.run_for(on_tick(rng.expovariate(1.0)))
        disturb(rng, cluster, rng.choice(list(cluster.nodes)))
    quieten(rng, cluster)
    quiet_since = cluster.now
    cluster.run_until(quiet_since + SETTLE_SECONDS)
    return cluster


def test_random_scenarios_converge_to_exactly_one_master_once_the_link_is_quiet() -> None:
    failures = []
    for i in range(SCENARIOS):
        seed = SEED + i
        cluster = run_scenario(seed)
        alive = [n for n in cluster.nodes.values() if n.alive]
        masters = cluster.masters()
        settled_at = cluster.now
        cluster.run_for(STABLE_SECONDS)
        changes = [(n.name, t) for n in alive for t, _ in cluster.transitions(n.name)
                   if t > settled_at]
        if alive and (len(masters) != 1 or cluster.masters() != masters or changes):
            failures.append((seed, cluster.states(), changes))
        assert all(n.state in (State.MASTER, State.BACKUP) for n in alive), seed
    assert failures == [], f"{len(failures)} scenarios did not settle, e.g. {failures[:3]}"


def test_random_scenarios_never_run_the_up_script_twice_without_down() -> None:
    offenders = []
    for i in range(SCENARIOS // 4):
        cluster = run_scenario(SEED + i)
        offenders += [(SEED + i, n.name) for n in cluster.nodes.values()
                      if n.params.drain == 0 and not scripts_alternate(n)]
    assert offenders == []
