"""Keep freed memory in the process (glibc): the CPU cost of large fresh tensors.

glibc serves every allocation above its mmap threshold (at most 32 MiB by default) with a fresh ``mmap`` and
unmaps it on free, so each new large tensor is faulted in by the kernel page by page (a page fault and a zeroed
page per 4 KiB). On CPU that can cost more than the arithmetic: one EBAE/EBAR step of Gemma 3 270M (262k
vocabulary, tied 168M-parameter embedding) spent more time in the kernel than in user code, because every
vocabulary-sized product (a 0.3-0.7 GB buffer, several per step) was new memory
(``benchmarks/bench_pretrain_step.py --train-step`` measures it). Raising the mmap and trim thresholds lets
``malloc`` reuse freed blocks instead; the price is that resident memory stays near its peak rather than
falling back between steps.

The ``llara`` command applies :func:`keep_freed_memory` at start-up; a Python program that trains or encodes on
CPU can call it first thing. Environment variables win: when ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or a ``glibc.malloc`` tunable is set, nothing is changed, and
``LLARA_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

# mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 1 << 30  # 1 GiB: larger than any per-step buffer of a 7B model's vocabulary-sized products
_ENV_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def user_has_setting() -> str | None:
    """The environment variable that already decides the allocator's thresholds, if any."""
    for name in _ENV_SETTINGS:
        if name in os.environ:
            return name
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    if os.environ.get("LLARA_KEEP_FREED_MEMORY", "1").strip().lower() in {"0", "false", "no", "off"}:
        return "LLARA_KEEP_FREED_MEMORY"
    return None


def keep_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes; True when applied.

    A no-op (False) off Linux/glibc and when the environment already sets the thresholds (see the module
    docstring). Applies to allocations made after the call; safe to call more than once.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be a positive number of bytes, got {threshold}")
    if not sys.platform.startswith("linux") or user_has_setting():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(int(threshold), 2**31 - 1)
    applied = bool(mallopt(M_MMAP_THRESHOLD, value)) and bool(mallopt(M_TRIM_THRESHOLD, value))
    if applied:
        logger.debug("glibc mmap/trim thresholds raised to %d bytes", value)
    return applied
