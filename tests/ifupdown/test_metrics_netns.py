"""carpctl metrics and status of a real pair: engines started by ifup from the nodes' stanzas,
in network namespaces, read back with prometheus_client's parser."""

from __future__ import annotations

import json
import os
import signal

import pytest
from ifnodes import VIP, Lab, Node, stanza, wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.netns

ELECTION = 15.0
GROUP = {"interface": "eth0", "vhid": "7", "vip": VIP}


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with ``labels`` (and the group's), if there is one."""
    wanted = {**GROUP, **labels}
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == wanted:
                return float(found.value)
    return None


def metrics_of(node: Node) -> str:
    result = node.sh("carpctl metrics")
    assert result.returncode == 0, result.stderr
    return result.stdout


def pair(lab: Lab) -> tuple[Node, Node]:
    """Two nodes of one group, both up: (the MASTER, the BACKUP)."""
    nodes = lab.node(), lab.node()
    for number, node in enumerate(nodes, 1):
        node.write_interfaces(stanza(number))
        assert node.ifup("eth0").returncode == 0, node.log()
    assert wait_for(lambda: any(n.holds_vip() for n in nodes), ELECTION), nodes[0].log()
    return (nodes[0], nodes[1]) if nodes[0].holds_vip() else (nodes[1], nodes[0])


def test_metrics_of_a_pair_show_the_master_the_adverts_it_sends_and_the_backup_hears(
        lab: Lab) -> None:
    master, backup = pair(lab)
    assert wait_for(lambda: (sample(metrics_of(backup), "carpd_adverts_received_total")
                             or 0) >= 2, 10.0), metrics_of(backup)
    on_master, on_backup = metrics_of(master), metrics_of(backup)
    assert [sample(on_master, "carpd_state", state=s) for s in ("INIT", "BACKUP", "MASTER")] == [
        0.0, 0.0, 1.0]
    assert [sample(on_backup, "carpd_state", state=s) for s in ("INIT", "BACKUP", "MASTER")] == [
        0.0, 1.0, 0.0]
    assert sample(on_master, "carpd_up") == sample(on_backup, "carpd_up") == 1.0
    assert (sample(on_master, "carpd_adverts_sent_total") or 0) >= 2
    assert sample(on_backup, "carpd_adverts_sent_total") == 0
    assert (sample(on_master, "carpd_transitions_total") or 0) >= 1
    assert sample(on_backup, "carpd_packets_dropped_total", reason="bad_hmac") == 0


def test_status_says_the_vip_is_on_the_masters_interface_and_not_the_backups(
        lab: Lab) -> None:
    master, backup = pair(lab)
    present = {}
    for node in (master, backup):
        result = node.sh("carpctl status eth0 --json")
        (reply,) = json.loads(result.stdout)
        present[reply["state"]] = reply["vip_present"]
    assert present == {"MASTER": True, "BACKUP": False}


def test_an_engine_configured_but_not_running_is_down_in_the_metrics(lab: Lab) -> None:
    master, backup = pair(lab)
    # nothing starts it again: the supervisor goes first (the processes ifup started here)
    for pid in backup.supervisors() + backup.engines():
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not backup.engines(), 5.0)
    text = metrics_of(backup)
    assert sample(text, "carpd_up") == 0.0
    assert sample(text, "carpd_state", state="BACKUP") is None
    assert sample(metrics_of(master), "carpd_up") == 1.0


def test_textfile_on_a_node_is_what_metrics_prints(lab: Lab) -> None:
    master, _backup = pair(lab)
    folder = master.home / "node-exporter"
    folder.mkdir()
    result = master.sh(f"carpctl metrics --textfile {folder}")
    assert result.returncode == 0, result.stderr
    text = (folder / "carpd.prom").read_text()
    assert sample(text, "carpd_state", state="MASTER") == 1.0
    assert [p.name for p in folder.iterdir()] == ["carpd.prom"]
