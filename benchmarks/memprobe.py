"""Peak-memory measurement for the CPU benchmarks (Linux): the kernel's resident-set figures of this process.

``ru_maxrss`` cannot be reset, so a step that peaks below what model loading reached reads as 0. Instead
:func:`reset_peak` hands freed heap pages back to the system (``malloc_trim``) and resets the kernel's
peak mark (``/proc/self/clear_refs`` = 5); after the measured work, ``peak_mib() - rss before`` is its
peak extra memory.
"""

from __future__ import annotations

import ctypes
from pathlib import Path


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise RuntimeError(f"{key} not in /proc/self/status")


def rss_mib() -> float:
    """Resident memory now (MiB)."""
    return _status_mib("VmRSS")


def peak_mib() -> float:
    """Peak resident memory since the last :func:`reset_peak` (MiB)."""
    return _status_mib("VmHWM")


def reset_peak() -> float:
    """Trim the heap, reset the peak mark to the current RSS, and return that RSS (MiB)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: freed pages may be reused unseen, the figure is then a lower bound
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return rss_mib()
