"""/etc/network/interfaces, read the way ifupdown 0.8 reads it.

One keyword dispatch table (``iface``, ``mapping``, ``auto``, ``allow-*``, ``source``,
``source-directory``, ``no-auto-down``, ``no-scripts``, ``rename``); any other first word is an
option of the stanza being read.  Options keep their order (an inheriting stanza starts with a copy
of its parent's).  ifupdown stops at the first error; this parser records each one as
``file:line: message`` and carries on, so ``carpctl check`` reports them all at once.

The line rules are ifupdown's: a line whose first non-blank character is ``#`` is a comment (there
are no end-of-line comments: ``#`` later on a line is part of the value); a trailing backslash joins
the next line; leading and trailing blanks go.  A joined line keeps the number of its first line.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_FILE = Path("/etc/network/interfaces")

METHODS: dict[str, frozenset[str]] = {
    "inet": frozenset({"loopback", "static", "manual", "dhcp", "bootp", "tunnel", "ppp",
                       "wvdial", "ipv4ll"}),
    "inet6": frozenset({"auto", "loopback", "static", "manual", "dhcp", "v4tunnel", "6to4"}),
    "link": frozenset({"none", "loopback"}),
    "ipx": frozenset({"static", "dynamic"}),
    "can": frozenset({"static"}),
}
# source-directory reads only files named like run-parts(8) would run them
_SOURCEABLE = re.compile(r"^[a-zA-Z0-9_-]+$")
# the options ifupdown lets a stanza repeat (it runs each); any other repeat is joined by newline
REPEATABLE = frozenset({"pre-up", "up", "post-up", "down", "pre-down", "post-down"})


@dataclass(frozen=True)
class Where:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Option:
    name: str
    value: str
    where: Where


@dataclass
class Iface:
    """One ``iface NAME FAMILY METHOD [inherits PARENT]`` stanza."""

    name: str
    family: str
    method: str
    where: Where
    options: list[Option] = field(default_factory=list)
    inherits: str | None = None

    def __str__(self) -> str:
        return f"iface {self.name} {self.family} {self.method}"


@dataclass
class Mapping:
    patterns: list[str]
    where: Where
    script: str | None = None
    maps: list[str] = field(default_factory=list)


@dataclass
class Interfaces:
    """Everything one interfaces file (with what it sources) defines, and what was wrong in it."""

    ifaces: list[Iface] = field(default_factory=list)
    mappings: list[Mapping] = field(default_factory=list)
    allow: dict[str, list[str]] = field(default_factory=dict)
    """``auto`` (and ``allow-auto``) under "auto", ``allow-hotplug`` under "hotplug", ..."""
    no_auto_down: list[str] = field(default_factory=list)
    no_scripts: list[str] = field(default_factory=list)
    renames: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def find(self, name: str, family: str | None = None) -> list[Iface]:
        return [i for i in self.ifaces
                if i.name == name and (family is None or i.family == family)]

    def is_template(self, iface: Iface) -> bool:
        """Only there to be inherited from: others inherit it and no allow-* line names it."""
        named = any(iface.name in names for names in self.allow.values())
        return not named and any(i.inherits == iface.name for i in self.ifaces)


@dataclass(frozen=True)
class Line:
    where: Where
    keyword: str
    rest: str
    """Everything after the first word, blanks around it removed."""

    def words(self) -> list[str]:
        return self.rest.split()


def logical_lines(text: str, filename: str) -> Iterator[Line]:
    """The non-blank, non-comment lines of ``text``, continuations joined."""
    physical = text.split("\n")
    if physical and physical[-1] == "":
        physical.pop()
    index = 0
    while index < len(physical):
        first = index + 1
        line = physical[index].lstrip()
        index += 1
        if line.startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1]
            if index < len(physical):
                line += physical[index]
                index += 1
            else:
                break
        line = line.rstrip()
        if line:
            parts = line.split(None, 1)
            keyword = parts[0]
            rest = parts[1].strip() if len(parts) > 1 else ""
            yield Line(Where(filename, first), keyword, rest)


class _Reader:
    """Reads one file after another into :class:`Interfaces`; the state between lines is
    the stanza that option lines belong to."""

    def __init__(self) -> None:
        self.result = Interfaces()
        self._current: Iface | Mapping | None = None
        self._seen: set[str] = set()
        self._keywords: dict[str, Callable[[Line], None]] = {
            "iface": self._iface,
            "mapping": self._mapping,
            "auto": self._auto,
            "source": self._source,
            "source-directory": self._source_directory,
            "source-dir": self._source_directory,
            "no-auto-down": self._no_auto_down,
            "no-scripts": self._no_scripts,
            "rename": self._rename,
        }

    def error(self, where: Where, message: str) -> None:
        self.result.errors.append(f"{where}: {message}")

    def read_file(self, path: str, included_from: Where | None = None) -> None:
        if path in self._seen:
            return
        self._seen.add(path)
        try:
            text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as error:
            place = f"{included_from}: " if included_from else ""
            self.result.errors.append(f"{place}cannot read {path}: {error.strerror}")
            return
        self.result.files.append(path)
        self._current = None
        for line in logical_lines(text, path):
            self._dispatch(line)
        self._current = None

    def _dispatch(self, line: Line) -> None:
        handler = self._keywords.get(line.keyword)
        if handler is None and line.keyword.startswith("allow-") and len(line.keyword) > 6:
            handler = self._allow
        if handler is not None:
            handler(line)
        else:
            self._option(line)

    def _iface(self, line: Line) -> None:
        self._current = None
        words = line.words()
        if not words:
            self.error(line.where, "iface: too few parameters (iface NAME FAMILY METHOD)")
            return
        name, rest = words[0], words[1:]
        parent: str | None = None
        if "inherits" in rest:
            at = rest.index("inherits")
            if at + 1 >= len(rest):
                self.error(line.where, "iface: 'inherits' keyword is missing a parameter")
                return
            parent, rest = rest[at + 1], rest[:at] + rest[at + 2:]
        family = rest[0] if rest else ""
        method = rest[1] if len(rest) > 1 else ""
        for extra in rest[2:]:
            self.error(line.where, f"iface {name}: extra parameter not understood: {extra}")
        stanza = Iface(name, family, method, line.where, inherits=parent)
        if parent is not None and not self._inherit(stanza, parent, line.where):
            return
        if stanza.family not in METHODS:
            self.error(line.where, f"iface {name}: unknown or no address family "
                       f"{stanza.family!r}: allowed: {', '.join(METHODS)}")
            return
        if stanza.method not in METHODS[stanza.family]:
            self.error(line.where, f"iface {name}: unknown or no method {stanza.method!r} for "
                       f"{stanza.family}: allowed: {', '.join(sorted(METHODS[stanza.family]))}")
            return
        self.result.ifaces.append(stanza)
        self._current = stanza

    def _inherit(self, stanza: Iface, parent: str, where: Where) -> bool:
        found = self.result.find(parent, stanza.family or None)
        if not found:
            self.error(where, f"iface {stanza.name}: unknown iface to inherit from: {parent}")
            return False
        stanza.family = stanza.family or found[0].family
        stanza.method = stanza.method or found[0].method
        stanza.options.extend(found[0].options)
        return True

    def _mapping(self, line: Line) -> None:
        mapping = Mapping(line.words(), line.where)
        if not mapping.patterns:
            self.error(line.where, "mapping: no interface pattern given")
        self.result.mappings.append(mapping)
        self._current = mapping

    def _auto(self, line: Line) -> None:
        self._add_allowed("auto", line)

    def _allow(self, line: Line) -> None:
        klass = line.keyword.removeprefix("allow-")
        self._add_allowed("auto" if klass == "auto" else klass, line)

    def _add_allowed(self, klass: str, line: Line) -> None:
        self._current = None
        names = self.result.allow.setdefault(klass, [])
        names.extend(n for n in line.words() if n not in names)

    def _no_auto_down(self, line: Line) -> None:
        self._current = None
        self.result.no_auto_down.extend(line.words())

    def _no_scripts(self, line: Line) -> None:
        self._current = None
        self.result.no_scripts.extend(line.words())

    def _rename(self, line: Line) -> None:
        self._current = None
        for pair in line.words():
            if "=" not in pair:
                self.error(line.where, f"rename: {pair!r}: expected CUR=NEW")
            self.result.renames.append(pair)

    def _expand(self, line: Line) -> list[str]:
        """``source`` arguments: relative to the including file's folder, shell wildcards."""
        base = os.path.dirname(line.where.file)
        paths: list[str] = []
        for word in line.words():
            pattern = word if word.startswith("/") else os.path.join(base, word)
            paths.extend(sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern])
        return paths

    def _source(self, line: Line) -> None:
        self._current = None
        if not line.rest:
            self.error(line.where, "source: no file given")
        for path in self._expand(line):
            if os.path.exists(path):  # like ifupdown, a missing file is skipped silently
                self.read_file(path, included_from=line.where)

    def _source_directory(self, line: Line) -> None:
        self._current = None
        if not line.rest:
            self.error(line.where, f"{line.keyword}: no folder given")
        for folder in self._expand(line):
            try:
                names = sorted(os.listdir(folder))
            except OSError as error:
                self.error(line.where, f"{line.keyword}: cannot read {folder}: {error.strerror}")
                continue
            for name in names:
                if _SOURCEABLE.match(name):
                    self.read_file(os.path.join(folder, name), included_from=line.where)

    def _option(self, line: Line) -> None:
        current = self._current
        if isinstance(current, Iface):
            if not line.rest:
                self.error(line.where, f"{current}: option with empty value: {line.keyword}")
                return
            current.options.append(Option(line.keyword, line.rest, line.where))
        elif isinstance(current, Mapping):
            self._mapping_option(current, line)
        else:
            self.error(line.where, f"misplaced option (outside any iface or mapping stanza): "
                       f"{line.keyword}")

    def _mapping_option(self, mapping: Mapping, line: Line) -> None:
        if line.keyword == "script":
            if mapping.script is not None:
                self.error(line.where, "mapping: duplicate script")
            mapping.script = line.rest
        elif line.keyword == "map":
            mapping.maps.append(line.rest)
        else:
            self.error(line.where, f"misplaced option in mapping stanza: {line.keyword}")


def parse(path: str | Path = DEFAULT_FILE) -> Interfaces:
    """Read ``path`` and everything it sources; problems end up in ``.errors``."""
    reader = _Reader()
    reader.read_file(str(path))
    for mapping in reader.result.mappings:
        if mapping.script is None:
            reader.error(mapping.where, "mapping: no script given")
    return reader.result
