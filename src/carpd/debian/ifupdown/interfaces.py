"""/etc/network/interfaces, read the way ifupdown 0.8 reads it.

One keyword dispatch table (``iface``, ``mapping``, ``auto``, ``allow-*``, ``source``,
``source-directory``, ``no-auto-down``, ``no-scripts``, ``rename``); any other first word is an
option of the stanza being read.  Options keep their order (an inheriting stanza starts with a copy
of its parent's).  ifupdown stops at the first error; this parser records each one as a
:class:`carpd.config.problems.Problem` at its file and line and carries on, so ``carpctl check``
reports them all at once.

The line rules are ifupdown's: a line whose first non-blank character is ``#`` is a comment (there
are no end-of-line comments: ``#`` later on a line is part of the value); a trailing backslash joins
the next line; leading and trailing blanks go.  A joined line keeps the number of its first line.

Unlike ifupdown, what ``source`` and ``source-directory`` name is read with limits, each breach an
error at the including line: only regular files (a FIFO would block, ``/dev/zero`` never ends),
at most :data:`MAX_FILE_BYTES` of each, no file that is already being read (a cycle, such as a
file sourcing itself) and no deeper than :data:`MAX_SOURCE_DEPTH` files.  A file reached twice
without a cycle is read once.  Reading is linear in the size of the files.
"""

from __future__ import annotations

import gc
import glob
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from carpd.config.problems import Problem

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
MAX_SOURCE_DEPTH = 64
"""How many files deep ``source`` may nest below the file given (which is depth 0)."""
MAX_FILE_BYTES = 16 * 1024 * 1024
"""The most of one file that is read; a longer one is an error."""
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


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
    problems: list[Problem] = field(default_factory=list)
    """What was wrong, each at its file and line (the file alone if it could not be read)."""
    _index: _Index | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def errors(self) -> list[str]:
        """:attr:`problems` as ``file:line: message`` lines."""
        return [p.located for p in self.problems]

    def find(self, name: str, family: str | None = None) -> list[Iface]:
        found = self._lookup().by_name.get(name, [])
        return [i for i in found if family is None or i.family == family]

    def is_template(self, iface: Iface) -> bool:
        """Only there to be inherited from: others inherit it and no allow-* line names it."""
        index = self._lookup()
        return iface.name not in index.named and iface.name in index.parents

    def _lookup(self) -> _Index:
        # rebuilt when stanzas or allow-* names were added since: lookups stay O(1) per call
        # instead of a scan of every stanza, which made checking n stanzas O(n^2)
        key = (len(self.ifaces), sum(len(names) for names in self.allow.values()))
        if self._index is None or self._index.key != key:
            self._index = _Index.of(self, key)
        return self._index


@dataclass(frozen=True)
class _Index:
    key: tuple[int, int]
    by_name: dict[str, list[Iface]]
    named: frozenset[str]
    """Every name an ``auto`` or ``allow-*`` line gives."""
    parents: frozenset[str]
    """Every name a stanza inherits from."""

    @classmethod
    def of(cls, parsed: Interfaces, key: tuple[int, int]) -> _Index:
        by_name: dict[str, list[Iface]] = {}
        for iface in parsed.ifaces:
            by_name.setdefault(iface.name, []).append(iface)
        named = frozenset(n for names in parsed.allow.values() for n in names)
        parents = frozenset(i.inherits for i in parsed.ifaces if i.inherits is not None)
        return cls(key, by_name, named, parents)


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
        # the pieces are joined once: adding each to the line so far is quadratic in their number
        pieces = []
        while line.endswith("\\"):
            pieces.append(line[:-1])
            line = physical[index] if index < len(physical) else ""
            index += 1
        pieces.append(line)
        line = "".join(pieces).rstrip()
        if line:
            parts = line.split(None, 1)
            keyword = parts[0]
            rest = parts[1].strip() if len(parts) > 1 else ""
            yield Line(Where(filename, first), keyword, rest)


class ReadError(Exception):
    """A file that is not read; the message says why."""


FileId = tuple[int, int]
"""(device, inode): the same file under any name."""


def identify(path: str) -> FileId:
    """Which regular file ``path`` is; ReadError if it is none."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise ReadError(str(error.strerror)) from None
    _regular(info)
    return info.st_dev, info.st_ino


def read_text(path: str) -> str:
    """The text of the regular file ``path``, never blocking on a FIFO nor reading forever."""
    identify(path)  # first: merely opening some devices does something (a watchdog starts)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise ReadError(str(error.strerror)) from None
    with os.fdopen(fd, "rb") as file:
        _regular(os.fstat(fd))  # it may have been replaced since the stat
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ReadError(f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB: not read")
    return data.decode("utf-8", errors="surrogateescape")


def _regular(info: os.stat_result) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "of an odd kind")
    raise ReadError(f"not a regular file ({kind})")


class _Reader:
    """Reads one file after another into :class:`Interfaces`; the state between lines is
    the stanza that option lines belong to."""

    def __init__(self) -> None:
        self.result = Interfaces()
        self._current: Iface | Mapping | None = None
        self._read: set[FileId] = set()
        self._reading: list[tuple[FileId, str]] = []
        """The files being read, each sourced by the one before."""
        self._by_name: dict[str, list[Iface]] = {}
        self._allowed: dict[str, set[str]] = {}
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
        self.result.problems.append(Problem(message, file=where.file, line=where.line))

    def read_file(self, path: str, via: Line | None = None) -> None:
        """Read ``path``, sourced by the line ``via`` (None for the file given)."""
        try:
            file_id = identify(path)
            refusal = self._refusal(file_id, path)
            text = read_text(path) if refusal is None else ""
        except ReadError as error:
            self.result.problems.append(Problem(
                f"cannot read {path}: {error}", file=via.where.file if via else None,
                line=via.where.line if via else None))
            return
        if refusal is not None:
            if refusal and via is not None:
                self.error(via.where, f"{via.keyword}: {refusal}")
            return
        self._read.add(file_id)
        self._reading.append((file_id, path))
        self.result.files.append(path)
        self._current = None
        try:
            for line in logical_lines(text, path):
                self._dispatch(line)
        finally:
            self._reading.pop()
        self._current = None

    def _refusal(self, file_id: FileId, path: str) -> str | None:
        """Why ``path`` is not read ("" when silently: it was read already), or None."""
        ids = [known for known, _name in self._reading]
        if file_id in ids:
            cycle = [name for _id, name in self._reading[ids.index(file_id):]]
            if len(cycle) == 1:
                return f"{path}: a cycle: the file sources itself: not read again"
            return f"{path}: a cycle: {' -> '.join([*cycle, path])}: not read again"
        if file_id in self._read:
            return ""
        if len(self._reading) > MAX_SOURCE_DEPTH:
            return (f"{path}: sourced files nest more than {MAX_SOURCE_DEPTH} deep below "
                    f"{self._reading[0][1]}: not read")
        return None

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
        self._by_name.setdefault(stanza.name, []).append(stanza)
        self._current = stanza

    def _inherit(self, stanza: Iface, parent: str, where: Where) -> bool:
        found = [i for i in self._by_name.get(parent, [])
                 if not stanza.family or i.family == stanza.family]
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
        known = self._allowed.setdefault(klass, set())
        for name in line.words():
            if name not in known:
                known.add(name)
                names.append(name)

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
                self.read_file(path, via=line)

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
                    self.read_file(os.path.join(folder, name), via=line)

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
    """Read ``path`` and everything it sources; problems end up in ``.problems``."""
    reader = _Reader()
    with _no_cyclic_gc():
        reader.read_file(str(path))
    for mapping in reader.result.mappings:
        if mapping.script is None:
            reader.error(mapping.where, "mapping: no script given")
    return reader.result


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    # Reading makes many small objects and no reference cycles, and keeps them all: each full
    # collection scans every one made so far, which made reading superlinear (a third of the
    # time at 20,000 stanzas).  Reference counting still frees everything as usual.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
