"""Peak-memory measurement for the CPU benchmarks (Linux): the kernel's resident-set figures of this process.

``ru_maxrss`` cannot be reset, so a step that peaks below what model loading reached reads as 0. Instead
:func:`reset_peak` hands freed heap pages back to the system (``malloc_trim``) and starts a new peak window
(:func:`trainers.run_records.reset_peak_rss`); after the measured work, ``peak_mib() - rss before`` is its
peak extra memory.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainers.run_records import peak_rss_bytes, reset_peak_rss, resident_bytes  # noqa: E402


def _mib(value: int | None, what: str) -> float:
    if value is None:
        raise RuntimeError(f"{what} is not in /proc/self/status (the CPU memory benchmarks need Linux)")
    return value / 2**20


def rss_mib() -> float:
    """Resident memory now (MiB)."""
    return _mib(resident_bytes(), "VmRSS")


def peak_mib() -> float:
    """Peak resident memory since the last :func:`reset_peak` (MiB)."""
    return _mib(peak_rss_bytes(), "VmHWM")


def reset_peak() -> float:
    """Trim the heap, reset the peak mark to the current RSS, and return that RSS (MiB)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: freed pages may be reused unseen, the figure is then a lower bound
        pass
    if not reset_peak_rss():
        raise RuntimeError("cannot reset the peak mark (/proc/self/clear_refs): the CPU memory benchmarks need Linux")
    return rss_mib()
