"""`carpctl metrics`: the engines' status as Prometheus text, read back by prometheus_client's
parser; and `--textfile DIR`, the atomic write node-exporter's textfile collector reads.

Each engine here is a real :class:`carpd.engine.control.ControlServer` on a unix socket, served from
a thread, answering with a status reply as docs/HACKING.md documents it."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from ctlserver import Served
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from carpd.core import wire
from carpd.debian import carpctl
from carpd.engine import control, metrics

# a check's name is its command line: quotes, a backslash and a line break must survive
ODD_CHECK = '/usr/local/bin/check "a b" c\\d\ne'
SINCE = 1_700_000_000.25


def status_reply(vhid: int, **changes: Any) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "ok": True, "interface": "eth0", "vhid": vhid, "vip": f"10.0.0.{vhid}",
        "srcip": "10.0.0.100", "state": "MASTER", "since": SINCE, "demoted": False,
        "master": None, "master_since": None, "pid": 4242, "sent": 120, "accepted": 3,
        "transitions": 2, "rejected": {"bad_hmac": 5, "other_vhid": 1}, "demotion": None,
        "healthy": True, "why": None, "health": [
            {"kind": "script", "name": ODD_CHECK, "healthy": True, "since": SINCE - 60,
             "rc": 0, "output": ""},
            {"kind": "interface", "name": "eth1", "healthy": True, "since": SINCE - 30,
             "rc": None, "output": ""}]}
    reply.update(changes)
    return reply


class Engine(Served):
    """The control side of one engine, answering every request with ``reply``."""

    def __init__(self, state_dir: Path, reply: dict[str, Any]) -> None:
        self.reply = reply
        super().__init__(control.socket_path(state_dir, reply["interface"], reply["vhid"]),
                         lambda _request: self.reply)


def carpctl_metrics(state_dir: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert carpctl.main(["--state-dir", str(state_dir), "metrics", *argv]) == 0
    return capsys.readouterr().out


def parse(text: str) -> dict[str, Metric]:
    families = list(text_string_to_metric_families(text))
    assert len({f.name for f in families}) == len(families), "a family given twice"
    return {f.name: f for f in families}


def values(family: Metric, **match: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of ``family`` whose labels include ``match``, by their other labels."""
    return {tuple(sorted((k, v) for k, v in s.labels.items() if k not in match)): s.value
            for s in family.samples if all(s.labels.get(k) == v for k, v in match.items())}


def group(interface: str, vhid: int | str, vip: str) -> dict[str, str]:
    return {"interface": interface, "vhid": str(vhid), "vip": vip}


@pytest.fixture
def two_groups_and_a_stopped_one(state_dir: Path, engines: list[Engine]) -> None:
    engines.append(Engine(state_dir, status_reply(7)))
    engines.append(Engine(state_dir, status_reply(
        8, state="BACKUP", demoted=True, healthy=False, transitions=0, sent=0, rejected={},
        health=[{"kind": "script", "name": "/bin/false", "healthy": False, "since": SINCE,
                 "rc": 1, "output": ""}])))
    conf = state_dir / "eth9.conf"  # the hook configured eth9, but its engine is not running
    conf.write_text(json.dumps({"interface": "eth9", "vhid": 3, "addr": "10.0.9.3"}))


@pytest.mark.usefixtures("two_groups_and_a_stopped_one")
def test_up_is_one_per_answering_engine_and_zero_for_a_configured_one_not_running(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    up = parse(carpctl_metrics(state_dir, capsys))["carpd_up"]
    assert up.type == "gauge"
    assert {tuple(sorted(s.labels.items())): s.value for s in up.samples} == {
        tuple(sorted(group("eth0", 7, "10.0.0.7").items())): 1.0,
        tuple(sorted(group("eth0", 8, "10.0.0.8").items())): 1.0,
        tuple(sorted(group("eth9", 3, "10.0.9.3").items())): 0.0}


@pytest.mark.usefixtures("two_groups_and_a_stopped_one")
def test_state_is_one_gauge_per_state_with_one_set(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = parse(carpctl_metrics(state_dir, capsys))["carpd_state"]
    assert values(state, **group("eth0", 7, "10.0.0.7")) == {
        (("state", "INIT"),): 0.0, (("state", "BACKUP"),): 0.0, (("state", "MASTER"),): 1.0}
    assert values(state, **group("eth0", 8, "10.0.0.8")) == {
        (("state", "INIT"),): 0.0, (("state", "BACKUP"),): 1.0, (("state", "MASTER"),): 0.0}
    assert values(state, interface="eth9") == {}  # nothing is known of a stopped engine


@pytest.mark.usefixtures("two_groups_and_a_stopped_one")
def test_counters_and_times_of_a_group(state_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    families = parse(carpctl_metrics(state_dir, capsys))
    master = group("eth0", 7, "10.0.0.7")
    expected = {"carpd_transitions": ("counter", 2.0), "carpd_adverts_sent": ("counter", 120.0),
                "carpd_adverts_received": ("counter", 3.0),
                "carpd_state_since_timestamp_seconds": ("gauge", SINCE),
                "carpd_healthy": ("gauge", 1.0), "carpd_demoted": ("gauge", 0.0)}
    found = {name: (families[name].type, values(families[name], **master)[()])
             for name in expected}
    assert found == expected
    backup = group("eth0", 8, "10.0.0.8")
    assert values(families["carpd_healthy"], **backup)[()] == 0.0
    assert values(families["carpd_demoted"], **backup)[()] == 1.0


@pytest.mark.usefixtures("two_groups_and_a_stopped_one")
def test_drops_are_counted_by_reason_every_reason_from_zero(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dropped = parse(carpctl_metrics(state_dir, capsys))["carpd_packets_dropped"]
    assert dropped.type == "counter"
    by_reason = {labels[0][1]: value for labels, value in
                 values(dropped, **group("eth0", 7, "10.0.0.7")).items()}
    assert by_reason == {r.name.lower(): {"bad_hmac": 5.0, "other_vhid": 1.0}.get(
        r.name.lower(), 0.0) for r in wire.Reject}


@pytest.mark.usefixtures("two_groups_and_a_stopped_one")
def test_each_health_check_has_its_verdict_and_since_with_its_name_intact(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    families = parse(carpctl_metrics(state_dir, capsys))
    master = group("eth0", 7, "10.0.0.7")
    assert values(families["carpd_health_check_healthy"], **master) == {
        (("check", ODD_CHECK), ("kind", "script")): 1.0,
        (("check", "eth1"), ("kind", "interface")): 1.0}
    assert values(families["carpd_health_check_since_timestamp_seconds"], **master) == {
        (("check", ODD_CHECK), ("kind", "script")): SINCE - 60,
        (("check", "eth1"), ("kind", "interface")): SINCE - 30}
    assert values(families["carpd_health_check_healthy"], **group("eth0", 8, "10.0.0.8")) == {
        (("check", "/bin/false"), ("kind", "script")): 0.0}


@pytest.mark.usefixtures("two_groups_and_a_stopped_one")
def test_names_follow_prometheus_conventions_each_family_with_help_and_type(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = carpctl_metrics(state_dir, capsys)
    helps = re.findall(r"^# HELP (\S+) \S", text, re.M)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert helps == list(types)
    assert all(name.startswith("carpd_") for name in types)
    assert all(name.endswith("_total") == (kind == "counter") for name, kind in types.items())
    assert [n for n in types if "time" in n and not n.endswith("_timestamp_seconds")] == []
    sample_names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                    if line and not line.startswith("#")}
    assert sample_names <= set(types)


def test_a_socket_that_does_not_answer_is_an_engine_down_named_by_its_socket(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:  # bound, not listening
        dead.bind(str(control.socket_path(state_dir, "eth0.100", 4)))
        up = parse(carpctl_metrics(state_dir, capsys))["carpd_up"]
    assert [(s.labels, s.value) for s in up.samples] == [
        ({"interface": "eth0.100", "vhid": "4", "vip": ""}, 0.0)]


def test_a_killed_engine_left_its_socket_down_labelled_from_its_conf(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (state_dir / "eth0.conf").write_text(json.dumps({"interface": "eth0", "vhid": 7,
                                                     "addr": "10.0.0.7"}))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:  # bound, not listening
        dead.bind(str(control.socket_path(state_dir, "eth0", 7)))
        families = parse(carpctl_metrics(state_dir, capsys))
    assert [(s.labels, s.value) for s in families["carpd_up"].samples] == [
        (group("eth0", 7, "10.0.0.7"), 0.0)]
    assert families["carpd_state"].samples == []


def test_with_no_engine_the_text_is_still_valid_and_empty_of_samples(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    families = parse(carpctl_metrics(state_dir, capsys))
    assert "carpd_up" in families
    assert [s for f in families.values() for s in f.samples] == []


def test_only_the_interface_asked_for(state_dir: Path, engines: list[Engine],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    engines.append(Engine(state_dir, status_reply(7)))
    engines.append(Engine(state_dir, status_reply(8, interface="eth1")))
    up = parse(carpctl_metrics(state_dir, capsys, "eth1"))["carpd_up"]
    assert [s.labels["interface"] for s in up.samples] == ["eth1"]


@pytest.mark.usefixtures("two_groups_and_a_stopped_one")
def test_textfile_replaces_carpd_prom_at_once_readable_by_node_exporter(
        state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "carpd.prom"
    target.write_text("# the previous run's\n")
    with target.open() as reader:  # a collector in the middle of reading the previous file
        assert carpctl.main(["--state-dir", str(state_dir), "metrics", "--textfile",
                             str(tmp_path)]) == 0
        assert reader.read() == "# the previous run's\n"  # replaced, never rewritten in place
    printed = carpctl_metrics(state_dir, capsys)
    assert target.read_text() == printed
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carpd.prom"]  # no temporary left


def test_textfile_into_a_missing_directory_fails_saying_where(
        state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "node-exporter"
    assert carpctl.main(["--state-dir", str(state_dir), "metrics", "--textfile",
                         str(missing)]) == carpctl.EXIT_PROBLEMS
    assert f"cannot write {missing}/carpd.prom" in capsys.readouterr().err
    assert not missing.exists()


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "carpd.prom"
    target.write_text("# old\n")
    with pytest.raises(UnicodeEncodeError):
        metrics.write_textfile(tmp_path, "carpd_up 1\n\udcff")
    assert target.read_text() == "# old\n"
    assert sorted(os.listdir(tmp_path)) == ["carpd.prom"]


@pytest.mark.parametrize(("value", "text"), [(3.0, "3"), (0.25, "0.25"),
                                             (float("inf"), "+Inf"), (float("nan"), "NaN")])
def test_values_are_written_as_prometheus_reads_them(value: float, text: str) -> None:
    assert metrics.format_value(value) == text
