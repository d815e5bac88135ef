"""Keeping freed memory for reuse while a model trains or predicts (glibc, i.e. Linux).

glibc hands every allocation over 32 MiB its own ``mmap`` and gives it back to the system when
it is freed, so each large activation or gradient (300 MB at the paper's crop) is paged in and
zeroed afresh by the kernel: at the paper's crop that took a third of a training step (20.3 s
against 13.4 s per step with the memory kept, ``benchmarks/train.py``). Inside
:func:`reuse_freed_memory` glibc serves large blocks from its heap and keeps what is freed for
the next one; on leaving, its defaults come back and the heap's free memory is returned to the
system. The price is memory: freed blocks of other sizes stay in the heap, so the peak resident
memory grows (at the paper's crop 11.2 GB against 5.6 GB; none at the demo's).
``LVTL_REUSE_MEMORY=0`` in the environment turns it off; elsewhere (another C library) it does
nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Iterator

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: glibc's defaults for the two settings (mallopt(3))
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
#: free memory at the top of the heap kept (the largest value mallopt takes)
_KEEP = 2**31 - 1

_lock = threading.Lock()
_users = 0


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(None)  # the C library this process already runs on
        lib.gnu_get_libc_version  # noqa: B018 - only glibc has it
        lib.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        lib.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):
        return None
    return lib


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Within the block, large freed memory stays in the process for reuse; yields whether the
    C library took the settings. Nested and concurrent blocks share one setting: the defaults
    come back when the last one leaves."""
    global _users
    lib = _glibc() if os.environ.get("LVTL_REUSE_MEMORY", "1") != "0" else None
    with _lock:
        if lib is not None and _users == 0:
            ok = bool(lib.mallopt(_M_MMAP_MAX, 0)) and bool(lib.mallopt(_M_TRIM_THRESHOLD, _KEEP))
        else:
            ok = lib is not None
        _users += 1
    try:
        yield ok
    finally:
        with _lock:
            _users -= 1
            if lib is not None and _users == 0:
                lib.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                lib.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                lib.malloc_trim(0)
