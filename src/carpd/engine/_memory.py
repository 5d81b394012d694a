"""An engine's memory once it has started: what start-up made stays, what it freed goes back."""

from __future__ import annotations

import contextlib
import ctypes
import gc


def settle() -> None:
    """Called once the groups run.

    The modules, models and groups made at start-up live as long as the engine: frozen out of
    the collector's sight, a full collection no longer walks them (~10 ms with 255 groups, a
    pause in the middle of a burst of adverts).  The heap that importing and validating used
    and freed (pydantic's schemas, ...: some 1.5 MB) is handed back to the kernel (glibc's
    ``malloc_trim``; elsewhere nothing happens)."""
    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
