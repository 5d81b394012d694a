"""This source tree as the lab installs it in a node or a root: where it is, and its commands.

The commands are pyproject.toml's ``[project.scripts]`` table, the one list of them (the
package's debian/ installs the same entry points).
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


@cache
def console_scripts() -> dict[str, str]:
    """command -> ``module:function``, as pyproject.toml's ``[project.scripts]`` says."""
    with (REPO / "pyproject.toml").open("rb") as file:
        scripts: dict[str, str] = tomllib.load(file)["project"]["scripts"]
    return dict(scripts)


def write_command(path: Path, command: str, python: str, src: Path | None = None) -> None:
    """An executable ``path`` that runs ``command``'s entry point with ``python``; with ``src``,
    from those sources first, for it and for the programs it starts (``PYTHONPATH``: ifupdown
    gives hooks a clean environment, so nothing else would bring them)."""
    module, function = console_scripts()[command].split(":")
    lines = [f"#!{python}", "import os, sys"]
    if src is not None:
        lines += [f"sys.path.insert(0, {str(src)!r})", f"os.environ['PYTHONPATH'] = {str(src)!r}"]
    lines += [f"from {module} import {function}", f"sys.exit({function}())", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    path.chmod(0o755)
