"""Atomic file and folder writes, and JSON-lines reading and writing (the fine-tuning data layout included:
:func:`write_training_jsonl`).

Every file the project writes goes through a temporary file next to its target that is flushed, fsynced and
renamed over the target, so a reader (or a rerun after a crash) sees the old file or the new one, never half
of one. Folders are assembled under a hidden sibling name and swapped into place the same way.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)


class JsonlFormatError(ValueError):
    """A JSON-lines file is missing or one of its lines is not a JSON object."""


# ---------------------------------------------------------------------------------------------
# Atomic writes


def path_for_record(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """``path`` as a result file records it: relative to ``root`` when inside it, else absolute (portable records)."""
    resolved, root = Path(path).resolve(), Path(root).resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry (a rename inside it) to disk, where the filesystem allows it."""
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """A handle on a temporary file next to ``path``; on a clean exit it is fsynced and renamed over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was. ``mode`` is ``"wb"`` or
    ``"w"`` (UTF-8 text with ``\\n`` line ends).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_open``)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, default: Any = None) -> None:
    """``atomic_write_bytes`` for an indented JSON document; ``default`` as in ``json.dumps``."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=default) + "\n")


def atomic_write_lines(path: str | os.PathLike[str], lines: Iterable[str]) -> Path:
    """Write text lines (each gets a ``\\n``) to ``path`` atomically, streaming them."""
    with atomic_open(path, "w") as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")
    return Path(path)


def atomic_write_jsonl_gz(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> str:
    """Write JSON lines as gzip whose bytes depend on ``records`` alone (no time stamp, no file name, level 9),
    atomically and readable by everyone (a data file to commit); return the sha256 of the written bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as packed:
        for record in records:
            packed.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    data = buffer.getvalue()
    with atomic_open(path, "wb") as handle:
        os.fchmod(handle.fileno(), 0o644)  # mkstemp creates 0600
        handle.write(data)
    return hashlib.sha256(data).hexdigest()


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically."""
    import numpy as np

    with atomic_open(path, "wb") as handle:
        np.save(handle, array)


# A staged folder's name records its writer's process id, so a later writer of the same folder can remove the
# leftovers of writers that were killed (a model-sized folder must not pile up on disk) and leave a live one's.
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def staging_dir_for(target: str | os.PathLike[str], tag: str = "tmp") -> Path:
    """A fresh hidden sibling of ``target``'s name (not created), unique per process and call."""
    target = Path(target)
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


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


def stale_staging_dirs(target: str | os.PathLike[str]) -> list[Path]:
    """Hidden staging siblings of ``target`` left by writers that no longer run."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    stale = []
    for path in target.parent.iterdir():
        match = _STAGING.match(path.name)
        if match and match["name"] == target.name and not _pid_alive(int(match["pid"])):
            stale.append(path)
    return sorted(stale)


def remove_stale_staging_dirs(target: str | os.PathLike[str]) -> list[Path]:
    """Delete the leftovers of killed writers of ``target``; returns what was removed."""
    removed = []
    for path in stale_staging_dirs(target):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            removed.append(path)
            logger.info("removed %s, left by an interrupted run", path)
    return removed


def replace_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move a finished folder ``staging`` to ``target``, replacing what is there.

    An existing ``target`` is first renamed aside and removed only after the new folder is in place, so
    there is no moment without a complete ``target`` on a filesystem where rename is atomic.
    """
    staging, target = Path(staging), Path(target)
    fsync_dir(staging)
    if target.exists() or target.is_symlink():
        retired = staging_dir_for(target, "old")
        os.replace(target, retired)
        os.replace(staging, target)
        if retired.is_dir() and not retired.is_symlink():
            shutil.rmtree(retired, ignore_errors=True)
        else:
            retired.unlink(missing_ok=True)
    else:
        os.replace(staging, target)
    fsync_dir(target.parent)
    return target


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike[str], *, overwrite: bool = False, mode: int | None = None) -> Iterator[Path]:
    """A new folder to fill; on a clean exit it replaces ``target`` (``replace_dir``), on an error it is removed.

    ``mode``: permissions of the staged folder (``0o755`` for a folder meant to be shared).

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is false (checked before anything is written).
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=True / --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging_dirs(target)
    staging = staging_dir_for(target)
    staging.mkdir()
    if mode is not None:
        staging.chmod(mode)
    try:
        yield staging
        if (target.exists() or target.is_symlink()) and not overwrite:
            raise FileExistsError(f"{target} appeared while it was being written; not replacing it")
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# JSON lines


def iter_jsonl(
    path: str | os.PathLike[str], *, error: type[Exception] = JsonlFormatError
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` (1-based) for each non-blank line of a JSON-lines file (``.gz`` too).

    ``error``: the exception class raised for a missing file or a bad line (a caller's own format error).

    Raises:
        error: the file is missing, or a line is not valid JSON or not a JSON object; the message names the
            file and the line.
    """
    path = Path(path)
    if not path.exists():
        raise error(f"JSON-lines file not found: {path}")
    if not path.is_file():
        raise error(f"JSON-lines file is not a file: {path}")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{path}:{line_number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise error(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            yield line_number, record


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    """Write one compact JSON object per line (UTF-8, not ASCII-escaped) to ``path`` atomically."""
    return atomic_write_lines(path, (json.dumps(record, ensure_ascii=False) for record in records))


def _training_record(row: Any, index: int) -> dict[str, Any]:
    """One ``{"id"?, "query", "pos", "neg"}`` record from a mapping or a ``ContrastiveExample``-like object."""
    if isinstance(row, Mapping):
        query, positives = row.get("query"), row.get("pos", row.get("document"))
        negatives, query_id = row.get("neg"), row.get("id")
    else:
        query, positives = getattr(row, "query", None), getattr(row, "pos", None)
        negatives, query_id = getattr(row, "neg", None), getattr(row, "query_id", None)
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"training row #{index} has no non-empty 'query' string")
    if positives is None or (isinstance(positives, (list, tuple)) and not positives):
        raise ValueError(f"training row #{index} has no positive ('pos' texts or a 'document' string)")
    positives = [positives] if isinstance(positives, str) else positives
    negatives = [] if negatives is None else [negatives] if isinstance(negatives, str) else negatives
    for key, texts in (("pos", positives), ("neg", negatives)):
        if not isinstance(texts, (list, tuple)) or not all(isinstance(text, str) for text in texts):
            raise ValueError(f"training row #{index}: {key!r} must be a text or a list of texts, got {texts!r:.80}")
    record = {} if query_id is None else {"id": query_id}
    record.update(query=query, pos=list(positives), neg=list(negatives))
    return record


def write_training_jsonl(path: str | os.PathLike[str], rows: Iterable[Any], overwrite: bool = False) -> Path:
    """Write fine-tuning data as ``{"query": str, "pos": [str], "neg": [str]}`` lines (plus ``"id"`` when known),
    atomically: the layout of the released LLaRA / FlagEmbedding data, which ``load_examples`` reads back.

    ``rows``: ``ContrastiveExample`` objects (``query``, ``pos``, ``neg``, ``query_id``) or mappings with ``query``, the
    positives as ``pos`` (a list or one text) or ``document`` (a query/document pair, as
    ``trainers.debian_data.make_splits`` returns), and optional ``neg`` and ``id``. Missing negatives are written as
    ``[]``, so that hard-negative mining stays a separate, explicit step.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        ValueError: a row without a non-empty query or without a positive (nothing is written).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    return write_jsonl(path, (_training_record(row, index) for index, row in enumerate(rows)))


__all__ = [
    "JsonlFormatError",
    "atomic_open",
    "atomic_save_npy",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_jsonl_gz",
    "atomic_write_lines",
    "atomic_write_text",
    "fsync_dir",
    "remove_stale_staging_dirs",
    "stale_staging_dirs",
    "iter_jsonl",
    "replace_dir",
    "staged_dir",
    "staging_dir_for",
    "write_jsonl",
    "write_training_jsonl",
]
