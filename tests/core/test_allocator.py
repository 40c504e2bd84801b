"""glibc's malloc set for a run: the long run's memory growth was memory freed but kept in per-thread arenas."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")

PRELUDE = r"""
import ctypes, os, sys, threading
from alps_client.runs.allocator import cap_malloc_arenas, release_freed_memory
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def in_threads(work, n):
    barrier = threading.Barrier(n)
    threads = [threading.Thread(target=lambda: (barrier.wait(), work())) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
"""

# Eight threads malloc and free blocks of 64 KiB (arena memory, under the mmap threshold) at once; then glibc's
# malloc_info says how many heaps (the main one and the threads' arenas) the process has.
ARENAS = PRELUDE + r"""
print("capped" if cap_malloc_arenas() else "not-capped")
def churn():
    for _ in range(50):
        for block in [libc.malloc(64 * 1024) for _ in range(16)]:
            libc.free(block)
in_threads(churn, 8)
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
info = libc.fopen(sys.argv[1].encode(), b"w")
libc.malloc_info(0, info)
libc.fclose(info)
print(open(sys.argv[1]).read().count("<heap nr="))
"""

# Four threads fill 50 MiB each in 64 KiB blocks, a small block kept after every 16, and free the large ones: the
# memory stays in the arenas, held between the small blocks, until it is released.
FREED = PRELUDE + r"""
kept = []
def fill_and_free():
    blocks = []
    for i in range(800):
        blocks.append(libc.malloc(64 * 1024))
        libc.memset(blocks[-1], 1, 64 * 1024)
        if i % 16 == 15:
            kept.append(libc.malloc(64))
    for block in blocks:
        libc.free(block)
in_threads(fill_and_free, 4)
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = rss_mib()
print("released" if release_freed_memory() else "kept", before, rss_mib())
"""


def run_python(script: str, tmp_path: Path, **env: str) -> list[str]:
    """What ``script`` prints, split into words, run in a fresh process without the tests' MALLOC_ settings."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("MALLOC_", "ALPS_GLIBC_MALLOC"))} | env
    return subprocess.run([sys.executable, "-c", script, str(tmp_path / "malloc_info.xml")], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=120, check=True).stdout.split()


def test_the_arenas_are_capped_unless_the_user_set_malloc_arena_max(tmp_path):
    assert run_python(ARENAS, tmp_path) == ["capped", "2"]
    said, heaps = run_python(ARENAS, tmp_path, MALLOC_ARENA_MAX="3")
    assert said == "not-capped" and 2 < int(heaps) <= 3
    said, heaps = run_python(ARENAS, tmp_path, ALPS_GLIBC_MALLOC="1")  # each thread takes an arena of its own
    assert said == "not-capped" and int(heaps) > 3


def test_freed_memory_goes_back_to_the_system_unless_the_user_keeps_glibcs_malloc(tmp_path):
    said, before, after = run_python(FREED, tmp_path)
    assert said == "released" and float(after) < float(before) - 30
    said, before, after = run_python(FREED, tmp_path, ALPS_GLIBC_MALLOC="1")
    assert said == "kept" and float(after) >= float(before) - 5
