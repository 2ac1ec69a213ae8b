"""trainers.allocator: a second large allocation reuses freed memory instead of faulting in fresh pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# malloc, touch and free 256 MiB, then count the page faults of a second block of the same size (straight
# malloc: numpy would advise huge pages, torch's CPU allocator does not).
PROBE = """
import ctypes, json, resource, sys
sys.path.insert(0, {repo!r})
from trainers.allocator import keep_freed_memory
applied = keep_freed_memory() if {apply} else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 256 * 2**20
a = libc.malloc(size); ctypes.memset(a, 1, size); libc.free(a)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = libc.malloc(size); ctypes.memset(b, 1, size)
print(json.dumps({{"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}}))
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")


def _probe(apply: bool, **env) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LLARA_KEEP_FREED_MEMORY"}}
    out = subprocess.run([sys.executable, "-c", PROBE.format(repo=str(REPO), apply=apply)], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_freed_memory_is_reused():
    pages = 256 * 2**20 // 4096
    default = _probe(apply=False)
    kept = _probe(apply=True)
    assert kept["applied"] is True
    assert default["faults"] > pages // 2, default  # glibc's default: the second array is fresh pages again
    assert kept["faults"] < pages // 20, kept  # reused: (almost) no new pages


def test_environment_settings_win():
    assert _probe(apply=True, MALLOC_MMAP_THRESHOLD_="65536")["applied"] is False
    assert _probe(apply=True, LLARA_KEEP_FREED_MEMORY="0")["applied"] is False
    # the user's small threshold is kept: the second array faults in again
    assert _probe(apply=True, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")["faults"] > 256 * 2**20 // 4096 // 2


def test_bad_threshold():
    from trainers.allocator import keep_freed_memory

    with pytest.raises(ValueError, match="positive"):
        keep_freed_memory(0)
