"""Local training files read through 🤗 ``datasets``' packaged builders, with file-and-line locations.

Both training stages read their files here: ``datasets.load_dataset(<builder>, data_files=[path], split="train",
streaming=<flag>)``. Without streaming, ``datasets`` builds its Arrow cache (memory-mapped, reused while the
file is unchanged); with it, rows are read lazily and nothing is cached or held.

* text (``.txt``, ``.text``, no suffix; ``.gz`` too): the ``"text"`` builder, one row per line;
* JSON lines (``.jsonl``; ``.json`` holding one value per line; ``.gz`` too): the ``"text"`` builder too, each
  line parsed by :func:`json.loads` here (see :func:`iter_json_lines` for why not the ``"json"`` builder);
* a ``.json`` file holding one JSON array (``[{...}, {...}]`` or ``["text", ...]``): the ``"json"`` builder;
* parquet (``.parquet``): the ``"parquet"`` builder.

Readers yield locations (line number, or row number for arrays and parquet) so that a bad record can be
named as ``file:line``; a line that is not UTF-8 or not JSON comes as a :class:`BadLine` in place of its
value, and the caller decides whether that is an error or a counted skip.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_BATCH = 1024  # rows per Arrow batch turned into Python objects
_QUIET_BYTES = 64 << 20
TEXT_SUFFIXES = (".txt", ".text", "")
JSON_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class BadLine:
    """A line that has no value: ``reason`` is ``"invalid_utf8"`` or ``"malformed_json"``, ``error`` the cause."""

    reason: str
    error: UnicodeDecodeError | json.JSONDecodeError


def file_suffix(path: str | os.PathLike) -> str:
    """The lower-case suffix that names the format, ``.gz`` passed over (``"a.jsonl.gz"`` -> ``".jsonl"``)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _is_json_array(path: Path) -> bool:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def file_format(path: str | os.PathLike) -> str | None:
    """``"text"``, ``"jsonl"``, ``"json"`` (one JSON array), ``"parquet"`` or None (unknown) for an existing file."""
    path = Path(path)
    suffix = file_suffix(path)
    if suffix == ".parquet":
        return "parquet"
    if suffix in JSON_SUFFIXES:
        return "json" if suffix == ".json" and _is_json_array(path) else "jsonl"
    if suffix in TEXT_SUFFIXES:
        return "text"
    return None


@contextlib.contextmanager
def _bars_off_when_small(paths: list[str | os.PathLike]):
    """No "Generating train split" bar for files read in a blink (the readers before ``datasets`` printed
    nothing); large files keep it. ``HF_DATASETS_DISABLE_PROGRESS_BARS``, when set, decides alone."""
    import datasets as bars
    from datasets import config

    small = sum(os.path.getsize(p) for p in paths) < _QUIET_BYTES
    if not small or config.HF_DATASETS_DISABLE_PROGRESS_BARS is not None or bars.are_progress_bars_disabled():
        yield
        return
    bars.disable_progress_bars()
    try:
        yield
    finally:
        bars.enable_progress_bars()


def load_files(paths: list[str | os.PathLike], builder: str, *, streaming: bool = False, **config):
    """``datasets.load_dataset(builder, data_files=paths, split="train", streaming=streaming, **config)``.

    A ``datasets.Dataset`` (built into ``datasets``' Arrow cache, memory-mapped) or, with ``streaming``, a
    ``datasets.IterableDataset`` (read lazily at every pass, nothing cached).
    """
    import datasets

    with _bars_off_when_small(paths):
        return datasets.load_dataset(
            builder, data_files=[str(p) for p in paths], split="train", streaming=streaming, **config
        )


def _batches(dataset) -> Iterator[dict[str, list]]:
    return dataset.iter(batch_size=_BATCH)


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    # map-style loading wraps the reader's error in a DatasetGenerationError; streaming raises it as is
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _empty(error: BaseException) -> bool:
    # map-style loading of a file without rows fails: Arrow cannot infer the schema of nothing (an empty text
    # file), or the split has no data (an empty JSON array)
    from datasets.arrow_writer import SchemaInferenceError

    return _caused_by(error, SchemaInferenceError) or "corresponds to no data" in str(error)


def iter_lines(path: str | os.PathLike, *, streaming: bool = False) -> Iterator[tuple[int, str | BadLine]]:
    """``(line number, text)`` of every line of a text file (blank ones too), line ends stripped; ``\\n``,
    ``\\r\\n`` and a lone ``\\r`` end a line (the ``"text"`` builder reads with universal newlines).

    A line that is not valid UTF-8 comes as a :class:`BadLine` (``invalid_utf8``) with the byte offset of the
    first bad byte in ``error.start``; the other lines of the file are still read.
    """
    done = 0
    try:
        for batch in _batches(load_files([path], "text", streaming=streaming)):
            for text in batch["text"]:
                done += 1
                yield done, text
        return
    except Exception as err:
        if done == 0 and _empty(err):
            return
        if not _caused_by(err, UnicodeDecodeError):
            raise
    # The "text" builder decodes whole chunks, so one bad byte fails a chunk, not a line. Read the file again
    # as Latin-1, which maps every byte to one character, and decode each line's bytes as UTF-8 here: the good
    # lines come back exactly, the bad ones are named. Lines split the same way in both encodings (bytes of a
    # multi-byte UTF-8 character are all >= 0x80, never a line end), so a stream that failed midway resumes at
    # the first line it did not yield.
    rows = load_files([path], "text", streaming=streaming, encoding="latin-1")
    number = 0
    for batch in _batches(rows):
        for raw in batch["text"]:
            number += 1
            if number <= done:
                continue
            try:
                yield number, raw.encode("latin-1").decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, BadLine("invalid_utf8", err)


def iter_json_lines(path: str | os.PathLike, *, streaming: bool = False) -> Iterator[tuple[int, Any | BadLine]]:
    """``(line number, value)`` of every non-blank line of a JSON-lines file (any JSON value, not only objects).

    A line that is not UTF-8 or not JSON comes as a :class:`BadLine` (``invalid_utf8`` / ``malformed_json``).

    Lines are read by the ``"text"`` builder and parsed here rather than by the ``"json"`` builder, whose
    rows do not tell their line (it skips blank lines), whose errors stop the whole file (a skipped bad line
    could not be counted and passed over) and whose Arrow schema fills absent keys with nulls (an explicit
    ``null`` and a missing field would look the same). A per-line parse keeps all three as the training
    data rules need them, at the cost of one :func:`json.loads` a line.
    """
    for number, line in iter_lines(path, streaming=streaming):
        if isinstance(line, BadLine):
            yield number, line
            continue
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            yield number, BadLine("malformed_json", err)


def iter_rows(path: str | os.PathLike, builder: str, *, streaming: bool = False) -> Iterator[tuple[int, dict]]:
    """``(row number, row)`` (1-based) of a parquet file (``"parquet"``) or a JSON-array file (``"json"``).

    Null fields are dropped: a table gives every row every column, null where the row has no value (the
    ``"json"`` builder fills the keys a row lacks with nulls), so a key is present only where the row set it.
    """
    config = {"parse_agent_traces": False} if builder == "json" else {}
    number = 0
    try:
        for batch in _batches(load_files([path], builder, streaming=streaming, **config)):
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys)):
                number += 1
                yield number, {k: v for k, v in zip(keys, values) if v is not None}
    except Exception as err:
        if number == 0 and _empty(err):
            return
        # datasets' own message rarely names the file; a bad array or parquet file has no line to point at
        cause = err.__cause__ or err
        detail = f"{type(cause).__name__}: {cause}"
        raise ValueError(f"{path}: not a readable {builder} file after row {number} ({detail})") from err


__all__ = ["BadLine", "file_format", "file_suffix", "iter_json_lines", "iter_lines", "iter_rows", "load_files"]
