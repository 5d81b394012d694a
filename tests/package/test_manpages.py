"""The man pages in debian/ document every option and command the commands really have."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from carpd import carpctl, config
from carpd.ifupdown import main as ifupdown_main
from carpd.ifupdown import stanza as ucarp

DEBIAN = Path(__file__).resolve().parents[2] / "debian"


def page_text(name: str) -> str:
    """The page's source with roff's escaped hyphens made plain, font changes and quotes
    dropped."""
    text = (DEBIAN / name).read_text().replace("\\-", "-")
    return re.sub(r'\\f[BIRP]|"', " ", text)


def words(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string and sub-command of parser, recursively."""
    found: set[str] = set()
    for action in parser._actions:
        if action.help != argparse.SUPPRESS:  # hidden options are for tests only
            found.update(s for s in action.option_strings if s not in ("-h", "--help"))
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                found.add(command)
                found |= words(sub)
    return found


@pytest.mark.parametrize(("page", "parser"), [
    ("carpd.8", config.parser()),
    ("carpctl.8", carpctl._parser()),
    ("carpd-ifupdown.8", ifupdown_main._parser()),
])
def test_man_page_documents_every_option_and_command(page: str,
                                                     parser: argparse.ArgumentParser) -> None:
    text = page_text(page)
    missing = sorted(w for w in words(parser)
                     if not re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text))
    assert missing == [], f"{page} does not mention {missing}"


@pytest.mark.parametrize("page", ["carpd.8", "carpctl.8", "carpd-ifupdown.8"])
def test_man_page_names_its_command_and_section(page: str) -> None:
    name = page.removesuffix(".8")
    header = page_text(page).splitlines()[0]
    assert header.startswith(f".TH {name.upper()} 8 ")


def test_ifupdown_page_documents_every_stanza_option() -> None:
    text = page_text("carpd-ifupdown.8")
    missing = [o for o in ucarp.KNOWN if not re.search(rf"(?<![\w-]){o}(?![\w-])", text)]
    assert missing == [], f"carpd-ifupdown.8 does not mention {missing}"


def section(page: str, name: str) -> str:
    text = page_text(page)
    start = text.index(f".SH {name}\n")
    return text[start:text.index("\n.SH ", start + 1)]


def test_carpd_page_lists_every_ready_made_check_under_checks() -> None:
    shipped = sorted(p.name for p in (DEBIAN.parent / "share" / "checks").iterdir())
    listed = section("carpd.8", "CHECKS")
    assert shipped, "no ready-made checks in share/checks"
    assert [name for name in shipped if f".BI {name} " not in listed] == []
