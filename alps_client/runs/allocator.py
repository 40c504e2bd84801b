"""glibc's malloc, set for a long run: the memory its images free goes back to use, and to the system.

glibc gives each thread that allocates an arena of its own (up to eight per core); the run's image threads and
onnxruntime's spread the images' buffers over them, and memory freed in an arena stays there, fragmented. A long
run's RSS grew by 223 MiB per 1,000 images while its live heap stayed flat, by 9 with both settings here (1,500
images, the long-run benchmark's entry; bench/README.md).

``ALPS_GLIBC_MALLOC=1`` leaves glibc's malloc as it is (no cap, no trim); a user's own ``MALLOC_ARENA_MAX`` is kept.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

M_ARENA_MAX = -8  # mallopt's parameter number (glibc's malloc.h)
RUN_ARENAS = 2
RELEASE_EVERY = 10  # images; malloc_trim takes milliseconds, an image at least tens of them


def _glibc_function(name: str) -> Any:
    """The glibc function ``name``; None under another C library, or where ``ALPS_GLIBC_MALLOC`` sets it aside."""
    if os.environ.get("ALPS_GLIBC_MALLOC", "") not in ("", "0"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # macOS, Windows
        return None


def cap_malloc_arenas(arenas: int = RUN_ARENAS) -> bool:
    """Cap this process's malloc arenas at ``arenas`` (``mallopt(M_ARENA_MAX)``), as ``MALLOC_ARENA_MAX`` does.

    Threads started after it share the capped arenas; the arenas of threads before it stay.

    Returns:
        Whether the cap was set: False where ``MALLOC_ARENA_MAX`` or ``ALPS_GLIBC_MALLOC`` is set, or the C
        library is not glibc.
    """
    mallopt = None if "MALLOC_ARENA_MAX" in os.environ else _glibc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_ARENA_MAX, arenas) == 1


def release_freed_memory() -> bool:
    """Hand the memory freed in every arena back to the system (``malloc_trim(0)``).

    Returns:
        Whether any was released: False also where ``ALPS_GLIBC_MALLOC`` is set or the C library is not glibc.
    """
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim(0) == 1
