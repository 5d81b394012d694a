"""``python -m carpd.config.write_man [--check]`` (``make man``): the man pages' option lists,
written from the option table.

debian/carpd.8 gets an entry for every option with flags (:class:`carpd.config.options.Cli`),
debian/carpd-interfaces.5 one for every stanza option (:class:`carpd.config.options.Stanza`),
each between the page's lines :data:`START` and :data:`END` (the rest of a page is written by
hand).  An entry's tag is made of the flags or the stanza name and the name of the value
(``man_arg``); its text is the marker's ``man`` (roff), else the command line's help.  The
entries come in the page's :attr:`Page.first` order, then every other option in the table's.
Run from the source tree (the pages are committed: the package's build never runs this);
``--check``: write nothing, exit 1 if a page is not what this would write.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from carpd.config.options import Cli, Kind, Options, Row, rows
from carpd.config.write_settings import refresh, replaced

START = ('.\\" -- generated from the option table (carpd.config.options) by `make man`: '
         "edit the table")
END = '.\\" -- end of what `make man` writes'
DEBIAN = Path(__file__).resolve().parents[3] / "debian"
SWITCHES = ("store_true", "store_false")
"""The actions of a flag that takes no value."""


def roff(text: str) -> str:
    """Plain text (a help, a name) as roff: its backslashes and hyphens escaped."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def prose(man: str | None, help: str) -> list[str]:
    """An entry's text: ``man`` (indented as in the table), else ``help`` as a sentence."""
    if man is not None:
        return inspect.cleandoc(man).splitlines()
    text = roff(help[:1].upper() + help[1:])
    return [("\\&" if text.startswith((".", "'")) else "") + text.removesuffix(".") + "."]


def cli_arg(cli: Cli, name: str) -> str:
    """How carpd(8) names the value of option ``name``: as --help does, in lower case."""
    return cli.man_arg or roff((cli.metavar or name.upper()).lower())


def cli_entry(row: Row) -> list[str] | None:
    if row.cli is None:
        return None
    flags = [roff(flag) for flag in row.cli.flags]
    if row.cli.action in SWITCHES:
        tag = f".B {flags[0]}" if len(flags) == 1 else ".BR " + ' ", " '.join(flags)
    else:
        arg = cli_arg(row.cli, row.name)
        last = f'"{arg}"' if " " in arg else arg
        tag = f'.BI {flags[0]} " {arg}"' + "".join(f' "\\fR, \\fP{f} " {last}' for f in flags[1:])
    return [".TP", tag, *prose(row.cli.man, row.cli.help)]


def stanza_entry(row: Row) -> list[str] | None:
    stanza = row.stanza
    if stanza is None:
        return None
    if stanza.man is None and row.cli is None:
        raise ValueError(f"{row.name}: give {stanza.name} its text (Stanza(man=...)): "
                         "it has no command-line help to fall back on")
    arg = stanza.man_arg or ("boolean" if stanza.kind is Kind.FLAG else
                             cli_arg(row.cli, row.name) if row.cli else roff(row.name))
    text = prose(stanza.man, row.cli.help if row.cli else "")
    return [".TP", f'.BI {roff(stanza.name)} " {arg}"', *text]


@dataclass(frozen=True)
class Page:
    """A man page whose option list this writes."""

    path: Path
    entry: Callable[[Row], list[str] | None]
    """An option's entry (None: it has none on this page)."""
    first: tuple[str, ...]
    """The options that come first, in this order (the rest follow in the table's)."""

    def render(self, model: type[BaseModel] = Options) -> str:
        """What goes between :data:`START` and :data:`END`, for the table ``model``."""
        table = rows(model)
        named = {row.name: row for row in table}
        unknown = [name for name in self.first if name not in named]
        if unknown:
            raise ValueError(f"{self.path.name}: no such option in the table: {unknown}")
        ordered = [named[name] for name in self.first] + \
            [row for row in table if row.name not in self.first]
        entries = [line for row in ordered for line in self.entry(row) or ()]
        return "\n".join([START, *entries, END])

    def rewritten(self, text: str, model: type[BaseModel] = Options) -> str:
        """``text`` (the page) with what lies between its :data:`START` and :data:`END` lines
        written again."""
        return replaced(text, START, END, self.render(model), self.path)


CARPD = Page(DEBIAN / "carpd.8", cli_entry, (
    # ucarp(8)'s order; carpd's own options follow
    "interface", "srcip", "vhid", "password", "passfile", "preempt", "neutral", "addr",
    "advbase", "advskew", "deadratio", "upscript", "downscript", "xparam", "shutdown",
    "daemonize", "facility", "debug", "ignoreifstate", "nomcast", "mcast"))
INTERFACES = Page(DEBIAN / "carpd-interfaces.5", stanza_entry, (
    # what a group needs, how it elects, where its VIP goes, then the rest
    "vhid", "addr", "password", "passfile", "upscript", "downscript", "preempt", "advbase",
    "advskew", "deadratio", "alias", "vip_interface", "srcip", "xparam", "facility", "mcast",
    "nomcast", "neutral", "ignoreifstate", "debug", "drain", "drain_connections", "reannounce",
    "replay_check", "track_script", "track_interface"))
PAGES = (CARPD, INTERFACES)


def main(argv: list[str] | None = None, debian: Path = DEBIAN) -> int:
    """Write the pages in ``debian`` (the source tree's); ``--check``: write nothing, exit 1
    if one is not what the table gives."""
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    paths = [debian / page.path.name for page in PAGES]
    return max([refresh(path, page.rewritten(path.read_text()), check, "man")
                for page, path in zip(PAGES, paths, strict=True)])


if __name__ == "__main__":
    sys.exit(main())
