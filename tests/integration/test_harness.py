"""The harness itself, checked against the reference peer: two ucarps elect exactly one master."""

from __future__ import annotations

import time

import pytest

from lab.netns import PASSWORD, Network, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.ucarp]


def test_two_ucarps_elect_one_master_that_the_wire_shows(net: Network) -> None:
    a = net.add_node("10.9.1.2")
    b = net.add_node("10.9.1.3")
    daemons = [a.start("ucarp"), b.start("ucarp")]

    wait_for(lambda: len(net.holders()) == 1, timeout=10)
    time.sleep(2.5)  # two more intervals: still one, and the same one
    (holder,) = net.holders()
    master = next(d for d in daemons if d.node is holder)
    assert master.is_master()
    assert [d for d in daemons if d.is_master()] == [master]

    since = time.time() - 1.5
    recent = net.capture.frames(since=since)
    assert recent, "no CARP frames captured on the bridge"
    assert {f.source for f in recent} == {holder.address}
    assert all(f.valid_for(1, PASSWORD) and f.ttl == 255 for f in recent)
    assert all(d.alive() for d in daemons)
