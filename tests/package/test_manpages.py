"""The man pages in debian/ document every option and command the commands really have."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from carpd.config import load
from carpd.debian import carpctl
from carpd.debian.ifupdown import main as ifupdown_main
from carpd.debian.ifupdown import stanza as ucarp
from carpd.engine import daemon, metrics

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
    ("carpd.8", load.parser()),
    ("carpctl.8", carpctl._parser()),
    ("carpd-ifupdown.8", ifupdown_main._parser()),
])
def test_man_page_documents_every_option_and_command(page: str,
                                                     parser: argparse.ArgumentParser) -> None:
    text = page_text(page)
    missing = sorted(w for w in words(parser)
                     if not re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text))
    assert missing == [], f"{page} does not mention {missing}"


PAGES = ["carpd.8", "carpctl.8", "carpd-ifupdown.8", "carpd-interfaces.5"]


@pytest.mark.parametrize("page", PAGES)
def test_man_page_names_its_command_and_section(page: str) -> None:
    name, number = page.rsplit(".", 1)
    header = page_text(page).splitlines()[0]
    assert header.startswith(f".TH {name.upper()} {number} ")


def entries(page: str, name: str) -> list[str]:
    """The tags of a section's entries: the first word of each line after a .TP."""
    lines = section(page, name).splitlines()
    return [lines[n + 1].split()[1] for n, line in enumerate(lines[:-1])
            if line == ".TP" and len(lines[n + 1].split()) > 1]


def test_interfaces_page_has_an_entry_for_every_stanza_option() -> None:
    documented = entries("carpd-interfaces.5", "OPTIONS")
    missing = [o for o in ucarp.KNOWN if o not in documented]
    assert missing == [], f"carpd-interfaces.5 has no entry for {missing}"
    assert sorted(documented) == sorted(ucarp.KNOWN), "an entry for an option that is not"


def test_the_other_pages_send_stanza_options_to_the_interfaces_page() -> None:
    for page in ("carpd-ifupdown.8", "carpd.8", "carpctl.8"):
        assert "carpd-interfaces (5)" in page_text(page), page


def test_carpd_page_documents_every_signal_the_engine_handles() -> None:
    handled = {s.name for s in (*daemon.EXIT_SIGNALS, signal.SIGUSR1, signal.SIGUSR2)}
    body = section("carpd.8", "SIGNALS").split("\n", 1)[1]  # after the heading
    documented = set(re.findall(r"\bSIG[A-Z0-9]+\b", body))
    assert documented == handled


@pytest.mark.parametrize("page", ["carpd.8", "carpctl.8", "carpd-interfaces.5"])
def test_page_has_examples(page: str) -> None:
    assert ".EX\n" in section(page, "EXAMPLES")


def test_carpctl_page_documents_every_metric() -> None:
    families = [f.name for f in metrics._families().values()]
    text = section("carpctl.8", "COMMANDS")
    assert [f for f in families if not re.search(rf"(?<![\w-]){f}(?![\w-])", text)] == []


@pytest.mark.parametrize("page", PAGES)
def test_man_has_no_warning_about_the_page(page: str) -> None:
    if shutil.which("man") is None:
        pytest.skip("needs man(1) (man-db) to format the page")
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}
    result = subprocess.run(["man", "--warnings", "-l", "-Tutf8", str(DEBIAN / page)],
                            capture_output=True, text=True, env=env, check=False)
    assert (result.returncode, result.stderr) == (0, "")


def test_every_page_is_installed() -> None:
    listed = (DEBIAN / "carpd.manpages").read_text().split()
    assert [p for p in PAGES if f"debian/{p}" not in listed] == []


def section(page: str, name: str) -> str:
    text = page_text(page)
    start = text.index(f".SH {name}\n")
    return text[start:text.index("\n.SH ", start + 1)]


def test_carpd_page_lists_every_ready_made_check_under_checks() -> None:
    shipped = sorted(p.name for p in (DEBIAN.parent / "share" / "checks").iterdir())
    listed = section("carpd.8", "CHECKS")
    assert shipped, "no ready-made checks in share/checks"
    assert [name for name in shipped if f".BI {name} " not in listed] == []
