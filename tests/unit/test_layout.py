"""The layout is the design: docs/HACKING.md's drawing agrees with src/carpd and the Makefile,
and the imports follow its arrows (the pure core imports nothing but itself and the standard
library; the long-running engine never loads pydantic or the Debian glue)."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "carpd"
HACKING = (ROOT / "docs" / "HACKING.md").read_text()
LAYOUT = HACKING[HACKING.index("Layout: the design"):HACKING.index("- lab/netns.py")]
PACKAGES = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file())

VALIDATION_ONLY = ("pydantic", "pydantic_core", "debian", "carpd.debian",
                   "carpd.config.options", "carpd.config.load", "carpd.config.validate",
                   "carpd.config.write_settings", "carpd.config.write_man")
"""What the engine's processes must never import (issue 9: memory; the glue is the hook's)."""
CONFIG_MAY_USE_FROM_ENGINE = ("carpd.engine.identity", "carpd.engine.settings")
"""config's defaults are the run folders of this namespace; it writes the engine's settings."""


def modules(package: str) -> Iterator[Path]:
    yield from sorted((SRC / package).rglob("*.py"))


def imported(path: Path) -> Iterator[str]:
    """Every module a file imports, at its top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_drawing_names_every_package_of_src_carpd_and_no_other() -> None:
    drawn = re.findall(r"^    src/carpd/(\w+)/", LAYOUT, re.M)
    assert drawn == ["core", "config", "engine", "debian"]
    assert sorted(drawn) == PACKAGES


@pytest.mark.parametrize("package", ["core", "config", "engine", "debian"])
def test_every_module_is_in_the_layout_and_every_module_it_names_exists(package: str) -> None:
    for path in modules(package):
        if path.name != "__init__.py" and not path.name.startswith("_"):
            where = path.relative_to(SRC)
            assert re.search(rf"\b{path.stem}\b", LAYOUT), f"{where} not in HACKING.md"
    for named in re.findall(rf"\b{package}/([\w/]+\.py)", LAYOUT):
        assert (SRC / package / named).is_file(), f"HACKING.md names {package}/{named}"


def test_the_make_targets_hacking_names_are_the_makefiles() -> None:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`?make ([\w-]+)", HACKING)) | set(re.findall(r"make ([\w-]+)", LAYOUT))
    assert named, "HACKING.md names no make target"
    assert named <= targets, named - targets


def test_the_core_imports_only_itself_and_the_standard_library() -> None:
    for path in modules("core"):
        for name in imported(path):
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top == "__future__" or \
                within(name, ("carpd.core",)), f"{path.relative_to(SRC)} imports {name}"


def test_the_engine_never_imports_pydantic_or_the_debian_glue() -> None:
    for path in modules("engine"):
        for name in imported(path):
            assert not within(name, VALIDATION_ONLY), f"{path.relative_to(SRC)} imports {name}"


def test_only_the_debian_glue_imports_it_and_config_uses_only_the_engines_folders() -> None:
    for package in ("core", "config", "engine"):
        for path in modules(package):
            for name in imported(path):
                assert not within(name, ("carpd.debian", "debian")), \
                    f"{path.relative_to(SRC)} imports {name}"
                if package == "config" and within(name, ("carpd.engine",)):
                    assert within(name, CONFIG_MAY_USE_FROM_ENGINE) or \
                        name == "carpd.engine", f"{path.relative_to(SRC)} imports {name}"
