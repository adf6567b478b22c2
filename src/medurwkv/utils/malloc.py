"""Keep large freed tensors' memory in the process instead of handing it back to the OS after every free.

glibc's ``malloc`` serves a block above its mmap threshold (at most 32 MiB, raised dynamically from 128 KiB)
with a fresh ``mmap`` and unmaps it on ``free``; it also trims the heap top above its trim threshold. So every
activation of that size is page-faulted and zero-filled by the kernel again on each forward. At 1024² a
Med-URWKV-T forward allocates dozens of 16-67 MB buffers (the stem's (1, 64, 512, 512) maps) and took 1.45× as
long as with the thresholds raised; a training step at 256², batch 8, 1.3× (docs/results_decoder.md, "The
memory allocator"). :func:`tune_malloc` raises both thresholds with ``mallopt``, so such blocks are reused from
the heap, much as an allocator like tcmalloc or jemalloc would do.

The ``medurwkv`` command calls it once at start-up (forked DataLoader workers inherit it); Python code calls it
itself. It changes nothing where the C library is not glibc, when ``MEDURWKV_MALLOC=default`` is set, or when
the user already tunes glibc (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``).
"""

from __future__ import annotations

import ctypes
import os
import platform

from ..errors import UserError

__all__ = ["MALLOC_ENV", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "is_glibc", "tune_malloc"]

MALLOC_ENV = "MEDURWKV_MALLOC"
# Blocks up to 1 GiB come from the heap; up to 1 GiB of free heap top is kept. A training step at 256², batch
# 8, holds (8, 64, 128, 128) float maps of 32 MiB; a 1024² forward, 67 MB ones: both far below the threshold.
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 1 << 30
# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_USER_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def is_glibc() -> bool:
    """Whether this process runs on Linux with glibc, the only C library whose ``mallopt`` is tuned here."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds (bytes) for this process; True when it was applied.

    False, with nothing changed: not glibc (macOS, Windows, musl), ``MEDURWKV_MALLOC=default``, or one of
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``GLIBC_TUNABLES`` set (the user's choice wins).
    Calling it again is harmless. Freed memory up to ``trim_threshold`` stays in the process, so its resident
    size after a peak does not shrink back; the peak itself is unchanged (measured in docs/results_decoder.md).
    """
    mode = os.environ.get(MALLOC_ENV, "tuned")
    if mode not in ("tuned", "default"):
        raise UserError(f"expected {MALLOC_ENV}=tuned or default, got {mode!r}; unset it or set one of them")
    if mode == "default" or any(k in os.environ for k in _USER_TUNING):
        return False
    if not is_glibc():
        return False
    for value in (mmap_threshold, trim_threshold):
        if not 0 < value < 2**31:  # mallopt takes a C int
            raise ValueError(f"expected a threshold in 1..2**31-1 bytes, got {value}")
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; setting M_MMAP_THRESHOLD also stops glibc's dynamic adjustment of both.
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    return mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok_mmap
