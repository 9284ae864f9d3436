"""Giving memory back: glibc's malloc arenas, trimmed, and the server's resident size.

Why this exists: a freed tensor or a dropped session's state goes back to the C allocator, not to
the operating system. glibc's malloc keeps freed memory in *arenas* (up to 8 per core, one per
thread that allocates while another holds the first) and returns it only when the top of a heap
is free. Gradio runs handlers on up to 40 worker threads, so a server that ran a few long
forward passes (the Compare tab's latency chart, 2,048 tokens) or served many visitors holds
gigabytes that nothing uses. Two calls fix that on glibc:

* ``limit_arenas(n)``: ``mallopt(M_ARENA_MAX, n)``, so that threads share a few arenas instead of
  growing one each (call it at start-up, before the worker threads allocate);
* ``trim()``: ``malloc_trim(0)``, which hands every arena's free pages back to the system
  (the server calls it every few seconds and after the latency chart).

Elsewhere (macOS, musl, Windows) both are no-ops that return False. ``rss_bytes`` reads the resident
size from /proc (None where there is none).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import platform
import threading

M_ARENA_MAX = -8  # glibc <malloc.h>: the most arenas malloc creates
# The main arena and one that every other thread shares. Measured (8 visitors' Runs, a cap of 2, then
# evicted and trimmed): the server stayed 81-93 MB above its baseline with the trim alone, 22-37 MB
# with the trim and 2 arenas, 90-164 MB with neither.
ARENAS = 2

_libc = None
_libc_lock = threading.Lock()


def _glibc():
    """The C library when it is glibc with ``mallopt`` and ``malloc_trim``, else None (loaded once)."""
    global _libc
    with _libc_lock:
        if _libc is None:
            _libc = False
            if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
                try:
                    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                    lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                    lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
                    _libc = lib
                except (OSError, AttributeError):
                    _libc = False
        return _libc or None


def available() -> bool:
    """Whether arenas can be limited and trimmed here (Linux with glibc)."""
    return _glibc() is not None


def limit_arenas(n: int = ARENAS) -> bool:
    """Let malloc create at most ``n`` arenas from now on (threads then share them); True when set.

    Arenas already created stay; call it early. Setting ``MALLOC_ARENA_MAX`` in the environment
    before the process starts does the same.
    """
    if n < 1:
        raise ValueError(f"limit_arenas takes at least 1 arena, got {n}")
    lib = _glibc()
    return bool(lib is not None and lib.mallopt(M_ARENA_MAX, int(n)) == 1)


def trim(collect: bool = False) -> bool:
    """Return the free memory of every malloc arena to the system; True when some was returned.

    ``collect`` first runs Python's cycle collector (objects kept only by reference cycles are freed
    late otherwise); it holds the interpreter for a moment, so the periodic call leaves it off.
    ctypes releases the GIL during ``malloc_trim``: other threads keep running.
    """
    if collect:
        gc.collect()
    lib = _glibc()
    return bool(lib is not None and lib.malloc_trim(0) == 1)


def rss_bytes(pid: int | None = None) -> int | None:
    """The resident set size of process ``pid`` (this one by default) in bytes, from /proc; None where
    /proc is not there or the process is gone."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
