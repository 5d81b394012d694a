"""pyroute2's modules without its package ``__init__``.

``import pyroute2`` runs an ``__init__`` that imports every part of the library (NDB, IPDB,
nftables, wireless, the remote transport, ...): about 25 MB of a process, of which carpd needs
the synchronous ``IPRoute`` and ``IPRSocket`` only (some 15 MB).  :func:`load_package_lazily`
registers the package without running that ``__init__``, so ``pyroute2.iproute.linux`` and
``pyroute2.netlink.rtnl.iprsocket`` load alone.  The first time anything asks the package for
a name that is not one of its modules (``from pyroute2 import NDB`` elsewhere in the process),
the real ``__init__`` runs into the same module object, so other users of pyroute2 see the
whole library.  Works with pyroute2 0.7 and 0.8 (same layout of those modules).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

PACKAGE = "pyroute2"


def load_package_lazily() -> None:
    """Register ``pyroute2`` without running its ``__init__`` (no-op if it is imported)."""
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"no module named {PACKAGE!r}")
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    done: list[bool] = []

    def complete(name: str) -> Any:
        """The package's own ``__init__``, run once, on the first name it is asked for."""
        if name.startswith("__") or done:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")
        if f"{PACKAGE}.{name}" in sys.modules:
            return sys.modules[f"{PACKAGE}.{name}"]
        if importlib.util.find_spec(f"{PACKAGE}.{name}") is not None:
            return importlib.import_module(f"{PACKAGE}.{name}")  # ``from pyroute2 import config``
        done.append(True)
        del module.__dict__["__getattr__"]
        loader.exec_module(module)
        return getattr(module, name)

    module.__dict__["__getattr__"] = complete
    sys.modules[PACKAGE] = module
    module.__dict__["lab"] = sys.modules.setdefault(f"{PACKAGE}.lab", _lab())


def forget_package() -> None:
    """Undo :func:`load_package_lazily` (a pyroute2 whose modules are laid out otherwise), so
    that the next import runs the package's ``__init__`` as usual."""
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def _lab() -> ModuleType:
    """``pyroute2.lab`` as pyroute2 0.7 and 0.8 have it, but importing ``unittest.mock`` (and
    with it asyncio: some 9 MB) only when its mocking is switched on (pyroute2's own tests)."""
    lab = ModuleType(f"{PACKAGE}.lab", "pyroute2.lab, the mock imported when used (carpd)")
    registry: list[Any] = []

    class LAB_API:
        def __init__(self, *argv: Any, **kwarg: Any) -> None:
            super().__init__(*argv, **kwarg)
            if lab.use_mock:
                import inspect
                from unittest import mock

                registry.append(self)
                for name, method in inspect.getmembers(self, predicate=inspect.ismethod):
                    setattr(self, name, mock.MagicMock(name=name, wraps=method))

    lab.__dict__.update(registry=registry, use_mock=False, LAB_API=LAB_API)
    return lab


def is_complete(module: ModuleType) -> bool:
    """Whether the package's ``__init__`` has run (for tests)."""
    return "__getattr__" not in module.__dict__
