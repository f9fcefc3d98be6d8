"""Hand a worker's freed memory back to the operating system after each task.

A dask worker runs task after task in one long-lived process. glibc keeps the
memory a task freed (its slices, tiles and outputs) in its heaps for reuse, so
between tasks a worker's resident memory stays well above what it holds, and
dask's memory manager pauses, spills and restarts workers by that figure.
``malloc_trim`` returns the free pages, as dask's own documentation advises; it
costs milliseconds next to a task of seconds. Measured (BENCHMARKS.md, section
11): 64 blocks in one process ended at 490 MB without it, 354 MB with it; the
peak inside a block does not change."""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any, Callable

__all__ = ["release_free_memory", "trimmed"]


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return None


def release_free_memory() -> bool:
    """Return freed heap pages to the OS where the C library can (glibc); whether it did."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def trimmed(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, then :func:`release_free_memory` (for tasks submitted to workers)."""
    try:
        return fn(*args)
    finally:
        release_free_memory()
