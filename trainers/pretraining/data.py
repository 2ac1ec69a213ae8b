"""Training data of LLaRA stage 1: documents -> (input, next) passage pairs.

Sources (``PretrainingDataArguments.train_files``, or a ``datasets`` object passed in code), read through
``datasets.load_dataset`` (:mod:`trainers.data_files`; ``streaming`` chooses its streaming mode):

* text files (``.txt``, optionally ``.gz``): one document per line, or per blank-line separated block
  (``text_unit="paragraph"``);
* jsonl (``.jsonl``/``.json``, optionally ``.gz``): a document ``{"<text_field>": str}`` per line, or an
  explicit pair ``{"input": str, "next": str | null}``, or the released format
  ``{"input": str, "output_summarize": str, "output_predict": str}``;
* a ``.json`` file holding one JSON array of such objects (or of document strings);
* parquet (``.parquet``) with the same columns;
* a folder written by ``datasets``' ``save_to_disk`` (split ``train`` of a ``DatasetDict``).

A document is cut into consecutive chunks of ``chunk_tokens`` tokens (counted with the model's tokenizer;
default: the text budget of one training row, so an input is exactly what the model sees). Chunk ``i`` is an
input whose EBAR target is chunk ``i + 1``. A tail shorter than ``min_chunk_tokens`` is merged into the
previous chunk; the last chunk has no next passage and ``no_next`` decides: ``mask`` (keep it, EBAE only,
its EBAR term is left out of the mean), ``drop``, or ``self`` (its own text as EBAR target).

Bad input (invalid UTF-8, malformed JSON, a missing or non-string field, an empty document or one shorter
than ``min_chunk_tokens``) raises ``ValueError`` naming file and line when ``on_error="error"``, or is
skipped and counted in :class:`DataStats` when ``on_error="skip"``. Map-style data is read completely
before training (through ``datasets``' Arrow cache); streaming data (``streaming=True``, for corpora larger
than memory or the cache's disk) is read lazily, nothing cached, and scanned once before training when
``on_error="error"``, so a bad line cannot stop a run midway and lose its progress.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset, IterableDataset

from trainers.data_files import BadLine, file_format, file_suffix, iter_json_lines, iter_lines, iter_rows

logger = logging.getLogger(__name__)

NO_NEXT_POLICIES = ("mask", "drop", "self")
ERROR_POLICIES = ("error", "skip")
TEXT_UNITS = ("line", "paragraph")
_WARN_LIMIT = 10


@dataclass
class PretrainingDataArguments:
    """Where the pretraining text comes from and how it becomes (input, next) pairs."""

    train_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Text (.txt), jsonl (.jsonl/.json, optionally .gz), JSON-array (.json) or parquet files, or "
                          "datasets save_to_disk folders; read with datasets.load_dataset."},
    )
    text_field: str = field(default="text", metadata={"help": "Field holding a document in jsonl/parquet/datasets rows."})
    text_unit: Literal["line", "paragraph"] = field(
        default="line", metadata={"help": "Text files: one document per 'line' or per blank-line separated 'paragraph'."}
    )
    chunk_tokens: int | None = field(
        default=None,
        metadata={"help": "Tokens per chunk of a document (default: the text budget of a row, max_length minus the prompts)."},
    )
    min_chunk_tokens: int = field(
        default=8,
        metadata={"help": "Documents with fewer tokens are 'too short' (skipped or an error); shorter tails merge into the previous chunk."},
    )
    no_next: Literal["mask", "drop", "self"] = field(
        default="mask",
        metadata={"help": "Last chunk of a document (no next passage): 'mask' (EBAE only), 'drop', or 'self' (own text as EBAR target)."},
    )
    on_error: Literal["error", "skip"] = field(
        default="error", metadata={"help": "Bad records: 'error' (ValueError naming file and line) or 'skip' (counted, logged)."}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the files (datasets.load_dataset(..., streaming=True)) and build pairs lazily at every "
                          "pass, for corpora larger than memory or disk cache; needs --max_steps. Default: load the "
                          "files through datasets' Arrow cache and hold the pairs in memory."},
    )
    max_documents: int | None = field(default=None, metadata={"help": "Use at most this many documents / records."})
    max_length: int = field(default=128, metadata={"help": "Tokens per training row in all: prompt + text + both suffixes."})
    max_target_tokens: int | None = field(
        default=None, metadata={"help": "Cap on bag-of-words target tokens (default: the text budget)."}
    )
    remove_stopwords: bool = field(
        default=True,
        metadata={"help": "Drop punctuation and English stopwords (shipped list) from EBAE/EBAR targets, as the released "
                          "run did (--remove_stopwords false keeps every target token)."},
    )

    def __post_init__(self):
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        for name, allowed in (("no_next", NO_NEXT_POLICIES), ("on_error", ERROR_POLICIES), ("text_unit", TEXT_UNITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")
        if self.min_chunk_tokens < 1:
            raise ValueError(f"min_chunk_tokens must be >= 1, got {self.min_chunk_tokens}")


@dataclass
class DataStats:
    """Counts of what the reader produced and skipped (by reason)."""

    documents: int = 0
    pairs: int = 0
    without_next: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "documents": self.documents,
            "pairs": self.pairs,
            "without_next": self.without_next,
            "skipped": dict(self.skipped),
        }


class BadRecord(ValueError):
    """A record that cannot be used; ``reason`` is the counter key used when skipping."""

    def __init__(self, where: str, reason: str, detail: str):
        super().__init__(f"{where}: {detail}")
        self.reason = reason


# ---- raw records ----------------------------------------------------------------------------
# Files are read by datasets' builders (trainers.data_files); what is left here is LLaRA's: naming each record
# by file and line, turning unreadable lines into BadRecords, and grouping text lines into paragraphs.
def _kind(path: Path) -> str:
    if path.is_dir():
        return "datasets"
    kind = file_format(path)
    if kind is None:
        raise ValueError(
            f"{path}: unknown file type {file_suffix(path)!r} (use .txt, .jsonl, .json, .parquet or a datasets folder)"
        )
    return kind


def _bad_line(where: str, line: BadLine) -> BadRecord:
    err = line.error
    if line.reason == "invalid_utf8":
        return BadRecord(where, "invalid_utf8", f"invalid UTF-8 at byte {err.start} of the line")
    return BadRecord(where, "malformed_json", f"malformed JSON ({err.msg} at column {err.colno})")


def _text_records(path: Path, unit: str, streaming: bool) -> Iterator[tuple[str, Any]]:
    """One record per line, or per block of non-blank lines (``unit="paragraph"``) named by its first line."""
    block: list[str] = []
    start = 0
    for number, line in iter_lines(path, streaming=streaming):
        where = f"{path}:{number}"
        if isinstance(line, BadLine):
            yield where, _bad_line(where, line)
        elif unit == "line":
            yield where, {"text": line}
        elif line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            yield f"{path}:{start}", {"text": "\n".join(block)}
            block = []
    if block:
        yield f"{path}:{start}", {"text": "\n".join(block)}


def _jsonl_records(path: Path, streaming: bool) -> Iterator[tuple[str, Any]]:
    for number, value in iter_json_lines(path, streaming=streaming):
        where = f"{path}:{number}"
        yield where, _bad_line(where, value) if isinstance(value, BadLine) else value


def _dataset_records(dataset, name: str) -> Iterator[tuple[str, Any]]:
    if hasattr(dataset, "keys") and not hasattr(dataset, "column_names"):  # DatasetDict
        if "train" not in dataset:
            raise ValueError(f"{name}: the DatasetDict has no 'train' split (splits: {list(dataset.keys())})")
        dataset = dataset["train"]
    for index, record in enumerate(dataset):
        # a table row has every column; null marks one this row does not have (as in parquet files)
        if isinstance(record, dict):
            record = {k: v for k, v in record.items() if v is not None}
        yield f"{name}:row {index + 1}", record


def iter_records(source, *, streaming: bool = False, text_unit: str = "line") -> Iterator[tuple[str, Any]]:
    """(location, raw record or BadRecord) of one source: a path or a ``datasets`` object.

    ``streaming``: read files with ``datasets``' streaming mode; ``text_unit``: ``"line"`` or ``"paragraph"``
    documents of text files.
    """
    if not isinstance(source, (str, os.PathLike)):
        yield from _dataset_records(source, type(source).__name__)
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"training file not found: {path}")
    kind = _kind(path)
    if kind == "datasets":
        import datasets

        yield from _dataset_records(datasets.load_from_disk(str(path)), str(path))
    elif kind == "jsonl":
        yield from _jsonl_records(path, streaming)
    elif kind in ("parquet", "json"):
        for number, record in iter_rows(path, kind, streaming=streaming):
            yield f"{path}:row {number}", record
    else:
        yield from _text_records(path, text_unit, streaming)


# ---- documents -> pairs ---------------------------------------------------------------------
class PairBuilder:
    """Turns raw records into ``{"input", "next", "summarize_target"?}`` pairs under the data policies."""

    def __init__(self, tokenizer, args: PretrainingDataArguments, text_budget: int):
        self.tokenizer = tokenizer
        self.args = args
        self.chunk_tokens = args.chunk_tokens or text_budget
        if self.chunk_tokens < args.min_chunk_tokens:
            raise ValueError(f"chunk_tokens={self.chunk_tokens} is below min_chunk_tokens={args.min_chunk_tokens}")
        self.stats = DataStats()

    def _fail(self, err: BadRecord) -> None:
        if self.args.on_error == "error":
            raise err
        self.stats.skipped[err.reason] += 1
        if sum(self.stats.skipped.values()) <= _WARN_LIMIT:
            logger.warning("skipping bad record: %s", err)

    def _explicit(self, where: str, record: dict) -> list[dict]:
        text = record.get("input")
        following = record.get("next", record.get("output_predict"))
        own = record.get("output_summarize")
        for key, value, optional in (("input", text, False), ("next", following, True), ("output_summarize", own, True)):
            if not (isinstance(value, str) or (optional and value is None)):
                raise BadRecord(where, "bad_field", f"field {key!r} must be a string, got {type(value).__name__}")
        if not text.strip():
            raise BadRecord(where, "empty", "empty 'input' text")
        pair = {"input": text, "next": following or None}
        if own is not None:
            pair["summarize_target"] = own
        return [pair]

    def _chunks(self, where: str, text: str) -> list[str]:
        if not text.strip():
            raise BadRecord(where, "empty", "empty document")
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
        offsets = encoded["offset_mapping"]
        count = len(offsets)
        if count < self.args.min_chunk_tokens:
            raise BadRecord(
                where, "too_short", f"document has {count} tokens, fewer than min_chunk_tokens={self.args.min_chunk_tokens}"
            )
        starts = list(range(0, count, self.chunk_tokens))
        if len(starts) > 1 and count - starts[-1] < self.args.min_chunk_tokens:
            starts.pop()  # a short tail joins the previous chunk
        bounds = [offsets[s][0] for s in starts] + [len(text)]
        return [text[a:b].strip() for a, b in zip(bounds[:-1], bounds[1:])]

    def pairs(self, where: str, record: Any) -> list[dict]:
        """Pairs of one raw record (empty when skipped)."""
        try:
            if isinstance(record, BadRecord):
                raise record
            if not isinstance(record, dict):
                raise BadRecord(where, "bad_record", f"expected a JSON object, got {type(record).__name__}")
            if "input" in record:
                out = self._explicit(where, record)
            else:
                if self.args.text_field not in record:
                    raise BadRecord(
                        where, "missing_field", f"no {self.args.text_field!r} field (keys: {sorted(record)[:10]}); "
                        "set --text_field or give explicit {'input', 'next'} records"
                    )
                text = record[self.args.text_field]
                if not isinstance(text, str):
                    raise BadRecord(where, "bad_field", f"field {self.args.text_field!r} must be a string, got {type(text).__name__}")
                chunks = self._chunks(where, text)
                out = [{"input": c, "next": n} for c, n in zip(chunks, chunks[1:] + [None])]
        except BadRecord as err:
            self._fail(err)
            return []
        self.stats.documents += 1
        kept = []
        for pair in out:
            if pair["next"] is None:
                self.stats.without_next += 1
                if self.args.no_next == "drop":
                    continue
                if self.args.no_next == "self":
                    pair["next"] = pair["input"]
            kept.append(pair)
        self.stats.pairs += len(kept)
        return kept

    def iter_pairs(self, sources: Iterable) -> Iterator[dict]:
        documents = 0
        for source in sources:
            records = iter_records(source, streaming=self.args.streaming, text_unit=self.args.text_unit)
            for where, record in records:
                if self.args.max_documents is not None and documents >= self.args.max_documents:
                    return
                documents += 1
                yield from self.pairs(where, record)


class PairDataset(Dataset):
    """Map-style list of pairs (the corpus fits in memory)."""

    def __init__(self, pairs: list[dict], stats: DataStats | None = None):
        self.pairs = pairs
        self.stats = stats or DataStats()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        return self.pairs[index]


class StreamingPairDataset(IterableDataset):
    """Pairs read lazily from the sources at every pass (for corpora larger than memory)."""

    def __init__(self, sources: list, tokenizer, args: PretrainingDataArguments, text_budget: int):
        self.sources = sources
        self.tokenizer = tokenizer
        self.args = args
        self.text_budget = text_budget
        self.stats = DataStats()

    def __iter__(self) -> Iterator[dict]:
        builder = PairBuilder(self.tokenizer, self.args, self.text_budget)
        self.stats = builder.stats
        yield from builder.iter_pairs(self.sources)


def load_pretraining_data(tokenizer, args: PretrainingDataArguments, text_budget: int, sources: list | None = None):
    """The training dataset (map-style or streaming) and, for map-style, its :class:`DataStats`."""
    sources = list(sources if sources is not None else args.train_files)
    if not sources:
        raise ValueError("no training data: pass --train_files (text, jsonl, parquet or a datasets folder)")
    for source in sources:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise FileNotFoundError(f"training file not found: {path}")
            _kind(path)
    if args.streaming:
        if args.on_error == "error":
            # Scan once up front: a bad line must stop the run before step 1, not after hours of training.
            scan = PairBuilder(tokenizer, args, text_budget)
            for _ in scan.iter_pairs(sources):
                pass
            if scan.stats.pairs == 0:
                raise ValueError(f"no training pairs in {sources} ({scan.stats.as_dict()})")
        return StreamingPairDataset(sources, tokenizer, args, text_budget)
    builder = PairBuilder(tokenizer, args, text_budget)
    pairs = list(builder.iter_pairs(sources))
    if not pairs:
        raise ValueError(f"no training pairs in {sources}: {builder.stats.as_dict()}")
    if builder.stats.skipped:
        logger.warning("skipped bad records: %s", dict(builder.stats.skipped))
    return PairDataset(pairs, builder.stats)


__all__ = [
    "BadRecord",
    "DataStats",
    "PairBuilder",
    "PairDataset",
    "PretrainingDataArguments",
    "StreamingPairDataset",
    "iter_records",
    "load_pretraining_data",
]
