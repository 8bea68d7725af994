"""Keep freed CPU memory in the process, so pure steps do not re-fault fresh pages (opt-in).

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

``import fdl`` changes nothing: the setting is process-wide, so it is an
explicit opt-in. :func:`keep_freed_memory` returns a handle; its
:meth:`~KeptFreedMemory.restore` (or leaving it as a context manager) writes back
the values that were in force before. On other C libraries and platforms it
does nothing.

glibc has no getter for these parameters. The values "in force before" are
therefore the ones fdl last set, or, before fdl's first call, glibc's defaults
as the environment adjusts them (``GLIBC_TUNABLES=glibc.malloc.mmap_max=...``,
``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``). Two things no glibc call can
restore: values another library set with its own ``mallopt`` call (fdl cannot
see them), and glibc's adaptive mmap threshold, which raises the mmap and trim
thresholds as large blocks are freed until the first ``mallopt`` call of any
kind fixes them for good. fdl never writes the mmap threshold, so it keeps the
value it had; after :meth:`~KeptFreedMemory.restore` the thresholds are fixed
instead of adaptive.

Example:
    >>> import fdl
    >>> fdl.allocator.is_keeping_freed_memory()  # import fdl changed nothing
    False
    >>> with fdl.allocator.keep_freed_memory() as kept:  # a training loop would run here
    ...     kept.active == (fdl.allocator.settings() is not None)  # True on glibc
    True
    >>> fdl.allocator.is_keeping_freed_memory()  # restored
    False
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass
from types import TracebackType

__all__ = [
    "KeptFreedMemory",
    "MallocSettings",
    "is_keeping_freed_memory",
    "keep_freed_memory",
    "settings",
]

# mallopt parameters (glibc's <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

# glibc's documented defaults (mallopt(3))
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536

# "never trim": the largest value mallopt accepts (an int)
_NO_TRIM = 2**31 - 1


@dataclass(frozen=True)
class MallocSettings:
    """The glibc ``mallopt`` parameters fdl changes, as fdl knows them.

    Attributes:
        mmap_max: ``M_MMAP_MAX``, the most blocks served by ``mmap`` at once (0: none).
        trim_threshold: ``M_TRIM_THRESHOLD``, free bytes at the heap's top before it shrinks.
        source: where the values come from: ``"glibc defaults"``, ``"environment"``
            or ``"fdl"`` (set by :func:`keep_freed_memory` or a restore).
    """

    mmap_max: int
    trim_threshold: int
    source: str

    def describe(self) -> str:
        """One line, e.g. for a benchmark report."""
        return f"M_MMAP_MAX={self.mmap_max}, M_TRIM_THRESHOLD={self.trim_threshold} ({self.source})"


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


def _env_int(*values: str | None) -> int | None:
    for value in values:
        if value is not None:
            try:
                return int(value, 0)
            except ValueError:
                continue
    return None


def _initial_settings(environ: dict[str, str] | os._Environ[str] = os.environ) -> MallocSettings:
    """glibc's defaults as the environment (tunables, then the legacy variables) adjusts them."""
    tunables = {}
    for item in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = item.partition("=")
        tunables[name.strip()] = value.strip()
    mmap_max = _env_int(tunables.get("glibc.malloc.mmap_max"), environ.get("MALLOC_MMAP_MAX_"))
    trim = _env_int(
        tunables.get("glibc.malloc.trim_threshold"), environ.get("MALLOC_TRIM_THRESHOLD_")
    )
    from_env = mmap_max is not None or trim is not None
    return MallocSettings(
        mmap_max=_DEFAULT_MMAP_MAX if mmap_max is None else mmap_max,
        trim_threshold=_DEFAULT_TRIM_THRESHOLD if trim is None else trim,
        source="environment" if from_env else "glibc defaults",
    )


# fdl's record of the values in force: None until fdl first calls mallopt
_current: MallocSettings | None = None
# handles not yet restored, innermost last
_active: list[KeptFreedMemory] = []


def _apply(values: MallocSettings) -> bool:
    assert _LIBC is not None
    ok = bool(_LIBC.mallopt(_M_MMAP_MAX, values.mmap_max))
    ok = bool(_LIBC.mallopt(_M_TRIM_THRESHOLD, values.trim_threshold)) and ok
    return ok


class KeptFreedMemory:
    """Handle returned by :func:`keep_freed_memory`; :meth:`restore` undoes it.

    Usable as a context manager. Handles nest: restore them in reverse order
    (innermost first); restoring one twice does nothing.

    Attributes:
        previous: the settings in force before, written back by :meth:`restore`
            (``None`` where the C library is not glibc).
        active: whether this handle's setting is in force (not yet restored, and glibc).
    """

    def __init__(self, previous: MallocSettings | None) -> None:
        self.previous = previous
        self.active = previous is not None

    def restore(self) -> None:
        """Write back the settings in force before, and return unused memory to the system."""
        global _current
        if not self.active:
            return
        if _active[-1] is not self:
            raise RuntimeError(
                "keep_freed_memory() handles must be restored innermost first; "
                f"{len(_active) - 1 - _active.index(self)} later handle(s) are still active"
            )
        assert self.previous is not None and _LIBC is not None
        _apply(self.previous)
        _LIBC.malloc_trim(0)
        _current = self.previous
        _active.pop()
        self.active = False

    def __enter__(self) -> KeptFreedMemory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self.active else "restored" if self.previous else "no-op (not glibc)"
        return f"KeptFreedMemory({state}, previous={self.previous})"


def keep_freed_memory() -> KeptFreedMemory:
    """Keep freed CPU memory mapped for reuse, until the returned handle is restored.

    Sets ``M_MMAP_MAX = 0`` (large blocks come from the heap instead of fresh
    ``mmap`` calls) and ``M_TRIM_THRESHOLD`` to its maximum (the heap never
    shrinks). Process-wide: every library in the process (PyTorch, JAX, Opacus)
    allocates under it. It changes no tensor and no result, only where freed
    memory goes.

    Returns:
        A :class:`KeptFreedMemory` handle. Its ``restore()`` (or the end of a
        ``with`` block) writes back the settings recorded as in force before and
        calls ``malloc_trim(0)``. Where the C library is not glibc nothing is
        changed and the handle's ``active`` is ``False``.

    Note:
        glibc has no getter for these parameters: the values restored are the
        ones fdl last set or, before fdl's first call, glibc's defaults as the
        environment adjusts them. glibc's adaptive mmap threshold is fixed at its
        current value by the first ``mallopt`` call and stays fixed after
        ``restore()`` (no glibc call turns it back on); see the module docstring.
    """
    global _current
    if _LIBC is None:
        return KeptFreedMemory(None)
    previous = _current if _current is not None else _initial_settings()
    keep = MallocSettings(mmap_max=0, trim_threshold=_NO_TRIM, source="fdl")
    handle = KeptFreedMemory(previous)
    _current = keep  # recorded before the call: a partial failure is still undone by restore
    _active.append(handle)
    if not _apply(keep):
        handle.restore()
        return handle
    return handle


def is_keeping_freed_memory() -> bool:
    """Whether a :func:`keep_freed_memory` handle is in force."""
    return bool(_active)


def settings() -> MallocSettings | None:
    """The settings fdl knows are in force (``None`` where the C library is not glibc).

    Before fdl's first :func:`keep_freed_memory` call these are glibc's
    defaults as the environment adjusts them; fdl cannot see values set by
    another library's own ``mallopt`` call.
    """
    if _LIBC is None:
        return None
    return _current if _current is not None else _initial_settings()
