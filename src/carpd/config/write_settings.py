"""``python -m carpd.config.write_settings [--check]`` (``make settings``): the engine's side of
the option table, written from it.

The engine never loads pydantic (:mod:`carpd.engine.settings`), so it cannot read the table
(:class:`carpd.config.options.Options`) itself: this writes the table's fields, types and
defaults into carpd/engine/settings.py as the plain dataclass :class:`Settings`, and the
per-engine keys as ``PER_ENGINE_KEYS``, between the lines :data:`START` and :data:`END`.  Adding
an option is one field in the table; ``make settings`` then writes the engine's side, and
tests/unit/test_option_table.py fails until it has.  ``--check``: write nothing, exit 1 if the
file is not what this would write.
"""

from __future__ import annotations

import sys
import types
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel
from pydantic_core import PydanticUndefined

from carpd.config.options import PER_ENGINE, Options
from carpd.engine import settings
from carpd.engine.settings import Secret

START = ("# -- generated from the option table (carpd.config.options) by `make settings`: "
         "edit the table")
END = "# -- end of what `make settings` writes"
TARGET = Path(settings.__file__)
NAMES: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool", bytes: "bytes",
                         IPv4Address: "IPv4Address", Path: "Path", Secret: "Secret"}
"""The types a field may have, as carpd/engine/settings.py names them (a new one: import it
there, and teach its ``_from_plain`` how JSON carries it)."""
DOC = '"""'
SETTINGS_DOC = [f"    {DOC}One group's validated options: the option table's fields, types and "
                "defaults (see", f"    :class:`carpd.config.options.Options` for each).{DOC}"]
KEYS_DOC = [f"{DOC}Options with one value per engine (shared by all the groups it runs); every "
            "other is a", f"group's.{DOC}"]


class UnknownType(TypeError):
    """A field of a type the engine's settings do not know (see :data:`NAMES`)."""


def type_source(kind: Any) -> str:
    """``kind`` (a field's annotation, validators and constraints left out) as source text."""
    if get_origin(kind) is Annotated:
        return type_source(get_args(kind)[0])
    if get_origin(kind) in (Union, types.UnionType):
        arms = get_args(kind)
        return " | ".join([type_source(a) for a in arms if a is not type(None)]
                          + ["None"] * (type(None) in arms))
    if get_origin(kind) is tuple:
        return "tuple[" + ", ".join(
            "..." if a is Ellipsis else type_source(a) for a in get_args(kind)) + "]"
    if kind not in NAMES:
        raise UnknownType(f"{kind!r}: carpd/engine/settings.py knows no such type: "
                          f"known are {', '.join(NAMES.values())}")
    return NAMES[kind]


def value_source(value: Any) -> str:
    """A default as source text."""
    if isinstance(value, IPv4Address):
        return f'IPv4Address("{value}")'
    if isinstance(value, Path):
        return f'Path("{value}")'
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _engine_type(name: str, model: type[BaseModel]) -> str:
    """The type of the value the model makes: a validator that is a class (``Secret``) makes
    one of that class."""
    info = model.model_fields[name]
    made = [m.func for m in info.metadata
            if isinstance(m, AfterValidator) and isinstance(m.func, type)]
    return type_source(made[-1] if made else info.annotation)


def _field_line(name: str, model: type[BaseModel]) -> str:
    line = f"    {name}: {_engine_type(name, model)}"
    default = model.model_fields[name].default
    if default is PydanticUndefined:
        return line
    # a default made by a call (IPv4Address("224.0.0.18")) is immutable all the same
    called = "  # noqa: RUF009" if isinstance(default, IPv4Address) else ""
    return f"{line} = {value_source(default)}{called}"


def render(model: type[BaseModel] = Options) -> str:
    """What goes between :data:`START` and :data:`END`, for the table ``model``."""
    keys = [name for name, info in model.model_fields.items() if PER_ENGINE in info.metadata]
    return "\n".join([
        START, "", "", "@dataclass(frozen=True, kw_only=True)", "class Settings(Places):",
        *SETTINGS_DOC, "",
        *(_field_line(name, model) for name in model.model_fields), "", "",
        "PER_ENGINE_KEYS = (", *(f'    "{key}",' for key in keys), ")", *KEYS_DOC, "", END])


def replaced(text: str, start: str, end: str, new: str, where: Path) -> str:
    """``text`` with what lies from its line ``start`` to its line ``end`` replaced by ``new``
    (which holds both lines)."""
    head, found, rest = text.partition(start)
    _, ended, tail = rest.partition(end)
    if not (found and ended):
        raise ValueError(f"{where}: the lines {start!r} and {end!r} are gone")
    return head + new + tail


def rewritten(text: str, model: type[BaseModel] = Options) -> str:
    """``text`` (carpd/engine/settings.py) with what lies between its :data:`START` and
    :data:`END` lines written again."""
    return replaced(text, START, END, render(model), TARGET)


def refresh(path: Path, wanted: str, check: bool, target: str) -> int:
    """Write ``wanted`` to ``path`` if it holds something else; with ``check`` write nothing,
    but 1 if it does (``target``: the make target that writes it)."""
    if wanted == path.read_text():
        return 0
    if check:
        print(f"{path} is not what the option table makes: run `make {target}`", file=sys.stderr)
        return 1
    path.write_text(wanted)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return refresh(TARGET, rewritten(TARGET.read_text()), "--check" in args, "settings")


if __name__ == "__main__":
    sys.exit(main())
