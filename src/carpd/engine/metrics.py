"""The engines' status replies as Prometheus text (``carpctl metrics``).

The text exposition format (version 0.0.4), as node-exporter's textfile collector reads it: a
``# HELP`` and a ``# TYPE`` line per family, then its samples, each family once.  Every group's
series carry the labels ``interface``, ``vhid`` and ``vip``; ``carpd_up`` is also given for an
engine that is configured (its ``IFACE.conf``) but does not run or does not answer, with what is
known of it.  Counters start again from zero when an engine restarts, as Prometheus expects.

No I/O here: :func:`exposition` takes the replies, :func:`write_textfile` is the one writer.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carpd.core import wire

TEXTFILE_DIR = Path("/var/lib/prometheus/node-exporter")
TEXTFILE_NAME = "carpd.prom"
STATES = ("INIT", "BACKUP", "MASTER")
REASONS = tuple(reason.name.lower() for reason in wire.Reject)
"""Every drop reason, so that a counter exists (at 0) before the first drop."""

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class GroupStatus:
    """One group as carpctl found it: its engine's status reply, or None if the engine did not
    answer (then ``vhid`` and ``vip`` are what its conf says, if known)."""

    interface: str
    vhid: int | None = None
    vip: str | None = None
    status: Mapping[str, Any] | None = None


@dataclass
class Family:
    name: str
    kind: str
    """"gauge" or "counter"."""
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, labels: Labels, value: float) -> None:
        self.samples.append((labels, value))

    def lines(self) -> list[str]:
        return [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}",
                *(f"{self.name}{format_labels(labels)} {format_value(value)}"
                  for labels, value in self.samples)]


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{escape_label(value)}"' for name, value in labels) + "}"


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(value)


def _families() -> dict[str, Family]:
    specs = [
        ("up", "gauge", "Whether the engine of a configured group answers on its control socket "
                        "(0: not running or not answering)."),
        ("state", "gauge", "The group's state: 1 for the state it is in, 0 for the others."),
        ("state_since_timestamp_seconds", "gauge",
         "Unix time of the group's last state transition (or of the engine's start)."),
        ("transitions_total", "counter", "State transitions since the engine started."),
        ("adverts_sent_total", "counter", "Advertisements sent."),
        ("adverts_received_total", "counter",
         "Advertisements received and accepted for the group."),
        ("packets_dropped_total", "counter", "Packets received and dropped, by reason."),
        ("healthy", "gauge", "Whether every health check of the group passes (1) or not (0)."),
        ("demoted", "gauge", "Whether the group is demoted (carpctl demote, or stepping down)."),
        ("health_check_healthy", "gauge", "Whether one health check passes (1) or not (0)."),
        ("health_check_since_timestamp_seconds", "gauge",
         "Unix time at which one health check's verdict last changed."),
    ]
    return {name: Family(f"carpd_{name}", kind, text) for name, kind, text in specs}


def _answered(group: GroupStatus) -> bool:
    return group.status is not None and "error" not in group.status


def _group_labels(group: GroupStatus) -> Labels:
    status = group.status if group.status is not None and _answered(group) else {}
    vhid = status.get("vhid", group.vhid)
    vip = status.get("vip", group.vip)
    return (("interface", str(status.get("interface", group.interface))),
            ("vhid", "" if vhid is None else str(vhid)), ("vip", "" if vip is None else str(vip)))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _add_group(families: dict[str, Family], labels: Labels, status: Mapping[str, Any]) -> None:
    state = status.get("state")
    for name in STATES:
        families["state"].add((*labels, ("state", name)), 1.0 if state == name else 0.0)
    counters = (("since", "state_since_timestamp_seconds"), ("transitions", "transitions_total"),
                ("sent", "adverts_sent_total"), ("accepted", "adverts_received_total"))
    for key, family in counters:
        value = _number(status.get(key))
        if value is not None:
            families[family].add(labels, value)
    rejected = status.get("rejected")
    dropped: Mapping[str, Any] = rejected if isinstance(rejected, Mapping) else {}
    for reason in (*REASONS, *sorted(set(dropped) - set(REASONS))):
        families["packets_dropped_total"].add((*labels, ("reason", str(reason))),
                                              _number(dropped.get(reason)) or 0.0)
    families["healthy"].add(labels, 0.0 if status.get("healthy") is False else 1.0)
    families["demoted"].add(labels, 1.0 if status.get("demoted") else 0.0)
    checks = status.get("health")
    for check in checks if isinstance(checks, list) else []:
        if isinstance(check, Mapping):
            _add_check(families, labels, check)


def _add_check(families: dict[str, Family], labels: Labels, check: Mapping[str, Any]) -> None:
    check_labels = (*labels, ("kind", str(check.get("kind", ""))),
                    ("check", str(check.get("name", ""))))
    families["health_check_healthy"].add(check_labels, 1.0 if check.get("healthy") else 0.0)
    since = _number(check.get("since"))
    if since is not None:
        families["health_check_since_timestamp_seconds"].add(check_labels, since)


def exposition(groups: Iterable[GroupStatus]) -> str:
    """The text exposition of ``groups``: every family, its samples in the groups' order."""
    families = _families()
    for group in groups:
        labels = _group_labels(group)
        families["up"].add(labels, 1.0 if _answered(group) else 0.0)
        if group.status is not None and _answered(group):
            _add_group(families, labels, group.status)
    return "".join(line + "\n" for family in families.values() for line in family.lines())


def write_textfile(directory: Path, text: str, name: str = TEXTFILE_NAME) -> Path:
    """Write ``text`` to ``directory/name`` at once: the collector, reading at any moment,
    sees the old file or the new one, never a part.  The temporary file's name does not end
    in ``.prom``, so the collector never reads it."""
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), 0o644)  # node-exporter reads it as its own user
            os.fsync(out.fileno())
        target = directory / name
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return target

