"""A problem with what a person wrote, as data: where, which option, which value, why.

Validation (:mod:`carpd.config`, :mod:`carpd.debian.ifupdown.stanza`, the interfaces parser) returns
these; whoever shows them (``carpd``, the ifupdown hook, ``carpctl check``) formats and sorts
them, so nothing reads an option name or a line number back out of a message.  Stdlib only: the
interfaces parser is on ``ifdown``'s path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

HIDDEN = "<hidden>"
"""How a secret value is shown."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong.  Its :attr:`message` reads ``OPTION: VALUE: REASON`` (the parts
    known); :attr:`located` puts ``FILE:LINE: STANZA:`` in front."""

    reason: str
    """Why it is wrong, and what is allowed."""
    option: str | None = None
    """The option at fault, as the person wrote it (``ucarp-vid``, ``-v/--vhid``, a --config
    key); None when it is the whole (a stanza, the options together)."""
    value: str | None = None
    """The value as shown (``repr()`` of it, :data:`HIDDEN` for a secret); None: not shown."""
    label: str | None = None
    """How the message names what is at fault when that is more than :attr:`option`
    (``ucarp-password and ucarp-passfile``)."""
    file: str | None = None
    line: int | None = None
    stanza: str | None = None
    """The stanza, as ``iface NAME FAMILY METHOD``."""
    field: str | None = None
    """The :class:`carpd.config.options.Options` field at fault, if any."""
    index: int | None = None
    """Which of several values of the option (a second ``--track-script``)."""
    warning: bool = False
    """Only a warning: it does not keep anything from running."""

    @property
    def message(self) -> str:
        """What is wrong, without the place."""
        named = self.label or self.option
        return ": ".join(p for p in (named, self.value, self.reason) if p is not None)

    @property
    def where(self) -> str | None:
        """``FILE:LINE``, ``FILE`` or None."""
        if self.file is None:
            return None
        return self.file if self.line is None else f"{self.file}:{self.line}"

    @property
    def located(self) -> str:
        """``FILE:LINE: STANZA: [warning: ]message`` (the parts known)."""
        kind = "warning" if self.warning else None
        return ": ".join(p for p in (self.where, self.stanza, kind, self.message)
                         if p is not None)

    def at(self, file: str | None, line: int | None = None,
           stanza: str | None = None) -> Problem:
        return dataclasses.replace(self, file=file, line=line, stanza=stanza)

    def named(self, option: str | None) -> Problem:
        return dataclasses.replace(self, option=option)

    def __str__(self) -> str:
        return self.located


class Problems(ValueError):
    """Raised with every problem found, so all are reported at once."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(p.located for p in problems))
        self.problems = problems


class ConfigError(ValueError):
    """Values a person gave are not allowed; :attr:`problems` says which, and what is."""

    def __init__(self, problems: str | Problem | list[Problem]) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        super().__init__("\n".join(p.located for p in problems))
        self.problems = problems


def in_order(problems: list[Problem], files: list[str]) -> list[Problem]:
    """``problems`` by file (in the order ``files`` were read), then line; a problem without a
    place first, and the order found kept among equals."""

    order = {name: n for n, name in enumerate(files)}

    def key(problem: Problem) -> tuple[int, int]:
        if problem.file is None:
            return (-1, 0)
        return (order.get(problem.file, len(order)), problem.line or 0)

    return sorted(problems, key=key)
