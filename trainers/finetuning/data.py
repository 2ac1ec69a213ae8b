"""Training data for LLaRA stage 2: (query, positives, negatives) examples and group sampling.

Sources (:func:`load_examples`):

* the released jsonl layout, one ``{"query": str, "pos": [str], "neg": [str]}`` per line (``.jsonl`` or
  ``.jsonl.gz``; ``neg`` optional; an optional ``"id"`` must be unique); the same rows as a ``.json`` array
  or a ``.parquet`` file; all read through ``datasets.load_dataset`` (:mod:`trainers.data_files`), streamed
  with ``streaming=True``;
* a BEIR-layout folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``): every judged query
  becomes one example, documents with score > 0 its positives and judged score-0 documents its
  negatives; passages read ``title + " " + text`` (the MS MARCO convention of the released data);
* a ``datasets.Dataset`` (or a folder written by ``Dataset.save_to_disk``) with columns ``query``,
  ``pos``, ``neg`` (aliases ``anchor``, ``positive``, ``negative``).

Bad input is handled in one place, :func:`clean_example`: a malformed line or a wrong type raises
with file and line; empty queries, queries without a positive, empty passages, negatives that are
also positives and repeated negatives are skipped or dropped and counted in a :class:`DataReport`,
whose ``summary()`` the fine-tuning run logs and writes next to the model.

:class:`ContrastiveDataset` samples one group per query as the released code does: a random positive
and ``group_size - 1`` negatives sampled without replacement, the list repeated when too short; queries
without negatives get random corpus passages (``no_negatives="random"``), are dropped (``"skip"``) or
rejected (``"error"``). Draws depend on ``(seed, epoch, index)`` only, so a resumed run sees the same
groups as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainers.data_files import BadLine, file_format, iter_json_lines, iter_rows
from trainers.io import JsonlFormatError

logger = logging.getLogger(__name__)

NO_NEGATIVE_POLICIES = ("random", "skip", "error")
_QUERY_KEYS = ("query", "anchor")
_POS_KEYS = ("pos", "positive", "positives")
_NEG_KEYS = ("neg", "negative", "negatives")


@dataclass
class ContrastiveExample:
    query: str
    pos: list[str]
    neg: list[str] = field(default_factory=list)
    query_id: str | None = None


@dataclass
class DataReport:
    """Counts of what loading and cleaning kept, skipped and dropped."""

    source: str = ""
    records: int = 0
    kept: int = 0
    skipped_empty_query: int = 0
    skipped_no_positive: int = 0
    skipped_no_negative: int = 0
    dropped_empty_passages: int = 0
    dropped_negatives_also_positive: int = 0
    dropped_duplicate_passages: int = 0
    repeated_queries: int = 0
    without_negatives: int = 0
    qrels_unknown_documents: int = 0
    examples_with_skips: list[str] = field(default_factory=list)

    def note(self, where: str) -> None:
        # keep a few locations so the summary can point at real lines
        if len(self.examples_with_skips) < 5:
            self.examples_with_skips.append(where)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{self.source}: {self.records} records, {self.kept} examples kept"]
        counts = {
            "skipped (empty query)": self.skipped_empty_query,
            "skipped (no positive)": self.skipped_no_positive,
            "skipped (no negative)": self.skipped_no_negative,
            "empty passages dropped": self.dropped_empty_passages,
            "negatives that are also positives dropped": self.dropped_negatives_also_positive,
            "duplicate passages dropped": self.dropped_duplicate_passages,
            "repeated query texts (kept)": self.repeated_queries,
            "examples without negatives": self.without_negatives,
            "qrels rows naming unknown documents (ignored)": self.qrels_unknown_documents,
        }
        parts += [f"{name}: {count}" for name, count in counts.items() if count]
        if self.examples_with_skips:
            parts.append("first affected: " + ", ".join(self.examples_with_skips))
        return "; ".join(parts)


# ---- validation --------------------------------------------------------------------------------
def _as_text_list(value: Any, key: str, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{where}: '{key}' must be a string or a list of strings, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise TypeError(f"{where}: '{key}'[{index}] is {type(item).__name__}, expected str")
    return list(value)


def _first_key(record: Mapping, keys: Sequence[str]) -> str | None:
    return next((k for k in keys if k in record), None)


def clean_example(record: Mapping, where: str, report: DataReport) -> ContrastiveExample | None:
    """Validate one raw record; returns None (and counts why) when it cannot train anything."""
    if not isinstance(record, Mapping):
        raise TypeError(f"{where}: expected a JSON object with query/pos/neg, got {type(record).__name__}")
    report.records += 1
    query_key = _first_key(record, _QUERY_KEYS)
    pos_key = _first_key(record, _POS_KEYS)
    if query_key is None or pos_key is None:
        raise ValueError(f"{where}: a record needs 'query' and 'pos' fields (found {sorted(record)})")
    query = record[query_key]
    if not isinstance(query, str):
        raise TypeError(f"{where}: 'query' is {type(query).__name__}, expected str")
    positives = _as_text_list(record[pos_key], pos_key, where)
    neg_key = _first_key(record, _NEG_KEYS)
    negatives = _as_text_list(record[neg_key], neg_key, where) if neg_key else []
    if not query.strip():
        report.skipped_empty_query += 1
        report.note(where)
        return None
    kept_pos: list[str] = []
    for text in positives:
        if not text.strip():
            report.dropped_empty_passages += 1
        elif text in kept_pos:
            report.dropped_duplicate_passages += 1
        else:
            kept_pos.append(text)
    if not kept_pos:
        report.skipped_no_positive += 1
        report.note(where)
        return None
    positive_set = set(kept_pos)
    kept_neg: list[str] = []
    seen: set[str] = set()
    for text in negatives:
        if not text.strip():
            report.dropped_empty_passages += 1
        elif text in positive_set:
            # A "negative" identical to a positive would teach the model to push the answer away.
            report.dropped_negatives_also_positive += 1
            report.note(where)
        elif text in seen:
            report.dropped_duplicate_passages += 1
        else:
            seen.add(text)
            kept_neg.append(text)
    raw_id = record.get("id", record.get("query_id", record.get("_id")))
    query_id = None if raw_id is None else str(raw_id)
    return ContrastiveExample(query=query, pos=kept_pos, neg=kept_neg, query_id=query_id)


def _finish(examples: list[ContrastiveExample], report: DataReport) -> list[ContrastiveExample]:
    seen: set[str] = set()
    for example in examples:
        if example.query in seen:
            report.repeated_queries += 1
        seen.add(example.query)
        if not example.neg:
            report.without_negatives += 1
    report.kept = len(examples)
    return examples


# ---- sources -----------------------------------------------------------------------------------
# Files are read by datasets' builders (trainers.data_files); what is left here is naming each record by file
# and line (or row) and refusing lines that are not JSON objects, with the messages the project has always given.
_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


def iter_jsonl_records(path: str | os.PathLike, *, streaming: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a missing file or a malformed line raises naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"training file not found: {path}")
    return _json_objects(path, streaming)


def _json_objects(path: str | os.PathLike, streaming: bool) -> Iterator[tuple[int, dict]]:
    for line_number, value in iter_json_lines(path, streaming=streaming):
        where = f"{path}:{line_number}"
        if isinstance(value, BadLine):
            if value.reason == "invalid_utf8":
                raise JsonlFormatError(f"{where}: invalid UTF-8 at byte {value.error.start} of the line")
            raise JsonlFormatError(f"{where}: not valid JSON ({value.error.msg})")
        if not isinstance(value, dict):
            raise JsonlFormatError(f"{where}: expected a JSON object, got {type(value).__name__}")
        yield line_number, value


def iter_file_records(path: str | os.PathLike, *, streaming: bool = False) -> Iterator[tuple[str, int, dict]]:
    """``(where, position, record)`` of a training file: JSON lines (position: line), a JSON array or parquet
    (position: row); ``where`` is ``file:line`` or ``file:row N``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"training file not found: {path}")
    kind = file_format(path)
    if kind in ("json", "parquet"):
        for row, record in iter_rows(path, kind, streaming=streaming):
            yield f"{path}:row {row}", row, record
    else:
        for line_number, record in _json_objects(path, streaming):
            yield f"{path}:{line_number}", line_number, record


def read_jsonl_examples(
    path: str | os.PathLike, report: DataReport | None = None, *, streaming: bool = False
) -> tuple[list[ContrastiveExample], DataReport]:
    """Examples of a training file (``query``, ``pos``, ``neg``): JSON lines (the released layout), a JSON
    array or parquet, read through ``datasets.load_dataset`` (``streaming``: its streaming mode)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"training file not found: {path}")
    report = report or DataReport(source=str(path))
    position_word = "at row" if file_format(path) in ("json", "parquet") else "on line"
    located = iter_file_records(path, streaming=streaming)
    return _finish(_clean_unique(located, position_word, report), report), report


def _clean_unique(
    located: Iterable[tuple[str, int, Mapping]], position_word: str, report: DataReport
) -> list[ContrastiveExample]:
    """Clean every ``(where, position, record)``; a query id given twice raises naming both positions."""
    examples: list[ContrastiveExample] = []
    ids: dict[str, int] = {}
    for where, position, record in located:
        example = clean_example(record, where, report)
        if example is None:
            continue
        if example.query_id is not None:
            if example.query_id in ids:
                raise ValueError(
                    f"{where}: duplicate id {example.query_id!r} (first {position_word} {ids[example.query_id]})"
                )
            ids[example.query_id] = position
        examples.append(example)
    return examples


def read_beir_examples(
    folder: str | os.PathLike, split: str = "train", report: DataReport | None = None
) -> tuple[list[ContrastiveExample], list[str], DataReport]:
    """Examples from a BEIR-layout folder, plus the corpus passages (for random negatives)."""
    from trainers.retrieval.beir import load_corpus, load_qrels, load_queries, passage_text, qrels_path

    folder = Path(folder)
    report = report or DataReport(source=f"{folder} ({split})")
    corpus = load_corpus(folder / "corpus.jsonl")  # raises on duplicate ids, naming the line
    queries = load_queries(folder / "queries.jsonl")
    qrels = load_qrels(qrels_path(folder, split))
    texts = {doc_id: passage_text(doc["title"], doc["text"]) for doc_id, doc in corpus.items()}
    examples: list[ContrastiveExample] = []
    for query_id, judged in qrels.items():
        where = f"{qrels_path(folder, split)} query {query_id!r}"
        if query_id not in queries:
            raise ValueError(f"{where}: the query id is not in queries.jsonl")
        unknown = [doc_id for doc_id in judged if doc_id not in texts]
        report.qrels_unknown_documents += len(unknown)
        record = {
            "query": queries[query_id],
            "pos": [texts[d] for d, score in judged.items() if score > 0 and d in texts],
            "neg": [texts[d] for d, score in judged.items() if score <= 0 and d in texts],
            "id": query_id,
        }
        example = clean_example(record, where, report)
        if example is not None:
            examples.append(example)
    return _finish(examples, report), [t for t in texts.values() if t.strip()], report


def examples_from_records(
    records: Iterable[Mapping], source: str = "records", report: DataReport | None = None
) -> tuple[list[ContrastiveExample], DataReport]:
    """Examples from in-memory records (dicts or the rows of a ``datasets.Dataset``)."""
    report = report or DataReport(source=source)
    located = ((f"{source}[{index}]", index, record) for index, record in enumerate(records))
    return _finish(_clean_unique(located, "at row", report), report), report


def _passage_pool(examples: Sequence[ContrastiveExample]) -> list[str]:
    pool = dict.fromkeys(text for example in examples for text in (*example.pos, *example.neg))
    return list(pool)


def load_examples(
    source: Any, split: str = "train", streaming: bool = False
) -> tuple[list[ContrastiveExample], list[str], DataReport]:
    """Load ``(examples, corpus passages, report)`` from any supported source (see module docstring).

    The corpus is the BEIR corpus for BEIR folders, otherwise every distinct passage of the data.
    ``streaming``: read a jsonl / JSON / parquet file with ``datasets``' streaming mode (row by row, nothing
    written to the Arrow cache), for files larger than memory or the cache's disk; the cleaned examples are
    kept either way (groups are sampled from all of them).
    """
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency of the project
        datasets = None
    if datasets is not None and isinstance(source, datasets.Dataset):
        examples, report = examples_from_records(source, source="dataset")
        return examples, _passage_pool(examples), report
    if datasets is not None and isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise ValueError(f"the DatasetDict has no split {split!r} (splits: {list(source)})")
        examples, report = examples_from_records(source[split], source=f"dataset[{split}]")
        return examples, _passage_pool(examples), report
    if isinstance(source, (list, tuple)):
        examples, report = examples_from_records(source)
        return examples, _passage_pool(examples), report
    path = Path(source)
    if path.is_dir():
        if (path / "corpus.jsonl").is_file():
            return read_beir_examples(path, split)
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            if datasets is None:
                raise ImportError("reading a saved dataset needs the 'datasets' package")
            return load_examples(datasets.load_from_disk(str(path)), split=split)
        raise ValueError(
            f"{path} is a folder but neither a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) "
            "nor a saved `datasets` dataset"
        )
    if path.name.lower().endswith(_FILE_SUFFIXES):
        examples, report = read_jsonl_examples(path, streaming=streaming)
        return examples, _passage_pool(examples), report
    if not path.exists():
        raise FileNotFoundError(f"training data not found: {path}")
    raise ValueError(
        f"{path}: unsupported training data (use .jsonl/.jsonl.gz, .json, .parquet, a BEIR folder or a datasets folder)"
    )


# ---- sampling ----------------------------------------------------------------------------------
def sample_negatives(negatives: Sequence[str], count: int, rng: random.Random) -> list[str]:
    """``count`` negatives: a sample without replacement, from the list repeated when it is too short."""
    if count <= 0:
        return []
    pool = list(negatives)
    if len(pool) < count:
        pool = pool * math.ceil(count / len(pool))
    return rng.sample(pool, count)


class ContrastiveDataset(torch.utils.data.Dataset):
    """One ``{"query": str, "passages": [positive, negative, ...]}`` group per query.

    Args:
        examples: cleaned examples (see :func:`load_examples`).
        group_size: passages per query, 1 positive + ``group_size - 1`` negatives (released: 16).
        corpus: passages to draw random negatives from for queries without negatives.
        no_negatives: ``"random"`` (corpus passages that are not positives), ``"skip"`` or ``"error"``.
        seed: draws depend on ``(seed, epoch, index)`` only.
        report: a :class:`DataReport` to count skipped examples into.
    """

    def __init__(
        self,
        examples: Sequence[ContrastiveExample],
        group_size: int = 16,
        corpus: Sequence[str] | None = None,
        no_negatives: str = "random",
        seed: int = 42,
        report: DataReport | None = None,
    ):
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if no_negatives not in NO_NEGATIVE_POLICIES:
            raise ValueError(f"no_negatives must be one of {NO_NEGATIVE_POLICIES}, got {no_negatives!r}")
        self.group_size = group_size
        self.no_negatives = no_negatives
        self.seed = seed
        self.epoch = 0
        self.report = report
        kept = []
        for index, example in enumerate(examples):
            if example.neg or group_size == 1:
                kept.append(example)
            elif no_negatives == "error":
                raise ValueError(
                    f"example {index} (query {example.query[:60]!r}) has no negatives; mine some with "
                    "`llara mine`, or pass no_negatives='random' / 'skip'"
                )
            elif no_negatives == "skip":
                if report is not None:
                    report.skipped_no_negative += 1
            else:
                kept.append(example)
        if not kept:
            raise ValueError("no training example is left after cleaning: see the data report")
        self.examples = kept
        self.corpus = list(corpus) if corpus is not None else _passage_pool(kept)
        needs_random = no_negatives == "random" and group_size > 1 and any(not e.neg for e in kept)
        if needs_random and len(self.corpus) < 2:
            raise ValueError("random negatives need a corpus of at least 2 passages")
        if report is not None:
            report.kept = len(kept)

    def __len__(self) -> int:
        return len(self.examples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _random_negatives(self, example: ContrastiveExample, count: int, rng: random.Random) -> list[str]:
        positives = set(example.pos)
        out: list[str] = []
        # Rejection sampling: positives are a vanishing share of any real corpus; the attempt cap
        # keeps a degenerate corpus (all positives) from looping forever.
        for _ in range(50 * count + 100):
            if len(out) == count:
                break
            candidate = self.corpus[rng.randrange(len(self.corpus))]
            if candidate not in positives:
                out.append(candidate)
        if len(out) < count:
            raise ValueError(f"could not draw random negatives for query {example.query[:60]!r}: the corpus holds only its positives")
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        # A string seed is hashed deterministically (not with Python's salted hash()).
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        positive = rng.choice(example.pos)
        count = self.group_size - 1
        if example.neg:
            negatives = sample_negatives(example.neg, count, rng)
        else:
            negatives = self._random_negatives(example, count, rng)
        return {"query": example.query, "passages": [positive, *negatives]}

    def column_names(self) -> list[str]:
        """The sentence-transformers columns: ``anchor`` (query), ``positive``, ``negative_1`` ...

        Column order is what matters to the loss (the first column is the query, the second its positive,
        the rest its hard negatives); the names tell the collator which LLaRA prompt each column gets.
        """
        return ["anchor", "positive", *[f"negative_{i}" for i in range(1, self.group_size)]]

    def to_dataset(self, epoch: int = 0):
        """A ``datasets.Dataset`` with one row per query and the groups drawn for ``epoch``.

        sentence-transformers trains on a fixed table, so the groups are drawn once here; a multi-epoch run
        sees the same groups every epoch (the released code redraws them per epoch).
        """
        from datasets import Dataset

        self.set_epoch(epoch)
        names = self.column_names()
        columns: dict[str, list[str]] = {name: [] for name in names}
        for index in range(len(self)):
            group = self[index]
            for name, text in zip(names, [group["query"], *group["passages"]]):
                columns[name].append(text)
        return Dataset.from_dict(columns)


__all__ = [
    "ContrastiveDataset",
    "ContrastiveExample",
    "DataReport",
    "NO_NEGATIVE_POLICIES",
    "clean_example",
    "examples_from_records",
    "iter_file_records",
    "iter_jsonl_records",
    "load_examples",
    "read_beir_examples",
    "read_jsonl_examples",
    "sample_negatives",
]
