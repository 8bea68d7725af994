"""Keep freed CPU memory in the process, so pure steps do not re-fault fresh pages.

A pure step allocates new tensors every time it runs (new params, new optimizer
state, new activations) and frees the previous ones. On the CPU, PyTorch takes
that memory from the C library's ``malloc``, and glibc's default policy hands
freed blocks back to the operating system: large blocks at once (``munmap``),
the top of the heap as soon as more than a trim threshold is free. The next
step's allocations then fault the pages in again, and the kernel zeroes every
one. On the 2-core machine of ``docs/benchmarks.md`` that made writing a fresh
40 MB result about 4× slower than writing into memory already held (14 ms
against 3.5 ms for one ``torch._foreach_mul`` over a 10M-parameter list).

GPU users never see this: PyTorch's CUDA caching allocator keeps freed blocks.
:func:`keep_freed_memory` gives the CPU the same behaviour through glibc's own
``mallopt`` settings: no ``mmap`` for large blocks (they come from the heap and
return to it) and no trimming of the heap's top. Freed memory stays mapped and
is reused by the next allocation of that size, so the process's resident size
stays at its peak instead of shrinking between steps.

``import fdl`` turns this on (glibc only; elsewhere it does nothing). Set the
environment variable ``FDL_KEEP_FREED_MEMORY=0`` before importing fdl to leave
the C library's defaults alone, or call ``keep_freed_memory(False)`` at any
time to restore them and return unused memory to the system.

Example:
    >>> import fdl
    >>> fdl.allocator.keep_freed_memory(False)  # glibc defaults, memory trimmed
    False
    >>> fdl.allocator.keep_freed_memory()  # fdl's default: keep freed blocks
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["is_keeping_freed_memory", "keep_freed_memory"]

# mallopt parameters (glibc's <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

# glibc's documented defaults, restored by keep_freed_memory(False)
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536

# "never trim": the largest value mallopt accepts (an int)
_NO_TRIM = 2**31 - 1

_keeping = False


def _glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None on any other C library or platform."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version  # present in glibc only
        version.restype = ctypes.c_char_p
        version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def keep_freed_memory(enable: bool = True) -> bool:
    """Keep freed CPU memory mapped for reuse (``True``), or restore glibc's defaults.

    Enabling sets ``M_MMAP_MAX = 0`` (large blocks come from the heap instead of
    fresh ``mmap`` calls) and ``M_TRIM_THRESHOLD`` to its maximum (the heap never
    shrinks). Disabling restores glibc's default values and calls
    ``malloc_trim(0)`` so memory the process no longer uses goes back to the
    system. Process-wide and idempotent; it changes no tensor and no result,
    only where freed memory goes.

    Args:
        enable: keep freed memory (fdl's default) or return it (glibc's).

    Returns:
        Whether freed memory is now kept; always ``False`` where the C library
        is not glibc (the call then does nothing).

    Note:
        glibc adapts its mmap threshold to the program until it is set
        explicitly; after ``keep_freed_memory(False)`` it stays at the fixed
        default of 128 KiB.
    """
    global _keeping
    if _LIBC is None:
        _keeping = False
        return False
    if enable:
        ok = _LIBC.mallopt(_M_MMAP_MAX, 0) and _LIBC.mallopt(_M_TRIM_THRESHOLD, _NO_TRIM)
        _keeping = bool(ok)
    else:
        _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        _LIBC.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_MMAP_THRESHOLD)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        _LIBC.malloc_trim(0)
        _keeping = False
    return _keeping


def is_keeping_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` is in effect."""
    return _keeping


def _apply_default() -> None:
    """Called by ``import fdl``: keep freed memory unless ``FDL_KEEP_FREED_MEMORY=0``."""
    if os.environ.get("FDL_KEEP_FREED_MEMORY", "1").strip().lower() not in ("0", "false", "no"):
        keep_freed_memory(True)
