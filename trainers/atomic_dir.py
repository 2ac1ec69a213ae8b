"""Write a folder atomically: build it in a hidden sibling, then move it into place.

A process killed half-way (SIGKILL, out of memory, a lost node) leaves only the hidden sibling, never a
half-written folder under the real name. The sibling's name records the writer's process id,
``.<name>.tmp-<pid>-<random>``, so the next writer of the same folder removes the siblings of writers
that are gone (a model-sized folder must not pile up on disk) and leaves a live writer's alone.

Replacing an existing folder renames it aside first (``.<name>.old-<pid>-<random>``), moves the new one in,
then deletes the old one: no moment shows a folder that is partly deleted under the real name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_staging_dirs(out: str | os.PathLike) -> list[Path]:
    """Hidden staging siblings of ``out`` left by writers that no longer run."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    stale = []
    for path in out.parent.iterdir():
        match = _STAGING.match(path.name)
        if match and match["name"] == out.name and not _pid_alive(int(match["pid"])):
            stale.append(path)
    return sorted(stale)


def remove_stale_staging_dirs(out: str | os.PathLike) -> list[Path]:
    """Delete the leftovers of killed writers of ``out``; returns what was removed."""
    removed = []
    for path in stale_staging_dirs(out):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            removed.append(path)
            logger.info("removed %s, left by an interrupted run", path)
    return removed


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, overwrite: bool = False, mode: int = 0o755) -> Iterator[Path]:
    """Yield an empty hidden folder next to ``out``; on success it becomes ``out``, on any error it is deleted.

    ``overwrite`` allows replacing an existing ``out`` (checked before and after the work).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging_dirs(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    tmp.chmod(mode)  # mkdtemp makes it private; a model folder is meant to be shared
    try:
        yield tmp
        if out.exists() or out.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{out} appeared while it was being written; not replacing it")
            # mkdtemp reserves a unique name; renaming a folder onto an empty folder replaces it.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
            if not out.is_dir() or out.is_symlink():
                old.rmdir()
            os.replace(out, old)
            os.replace(tmp, out)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["remove_stale_staging_dirs", "stale_staging_dirs", "staged_dir"]
