"""Read and validate a retrieval collection in the BEIR layout.

A BEIR folder holds::

    corpus.jsonl        {"_id": str, "title": str, "text": str} per line
    queries.jsonl       {"_id": str, "text": str} per line
    qrels/<split>.tsv   query-id <TAB> corpus-id <TAB> score, after a header line

Everything here is plain Python (no torch, no faiss) so that a malformed file is reported before a
model is loaded. Errors name the file and the 1-based line number; problems that do not stop an
evaluation (qrels naming ids that are not in the corpus or the queries) are logged as one warning
with counts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import numpy as np
from tqdm.auto import tqdm

from trainers.io import iter_jsonl

logger = logging.getLogger(__name__)

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"


class BeirFormatError(ValueError):
    """A BEIR-layout file is missing or does not follow the layout."""


def passage_text(title: str, text: str) -> str:
    """The text a model reads for one corpus entry.

    Same rule as mteb's retrieval loader (title, a space, then the body; the body alone when there is
    no title), so that ``llara evaluate`` and the mteb custom task encode identical strings.
    """
    return f"{title} {text}".strip() if title else text.strip()


def _require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise BeirFormatError(f"{what} not found: {path}")
    if not path.is_file():
        raise BeirFormatError(f"{what} is not a file: {path}")
    return path


def _string_field(record: dict, key: str, path: Path, line_number: int, *, required: bool) -> str:
    if key not in record or record[key] is None:
        if required:
            raise BeirFormatError(f"{path}:{line_number}: missing field {key!r}")
        return ""
    value = record[key]
    # BEIR ids are strings, but some collections store numeric ids; accept integers as ids only.
    if key == "_id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise BeirFormatError(
            f"{path}:{line_number}: field {key!r} must be a string, got {type(value).__name__}"
        )
    return value


def _corpus_fields(record: dict, path: Path, line_number: int) -> tuple[str, str, str]:
    """``(doc_id, title, text)`` of one corpus.jsonl record, validated."""
    doc_id = _string_field(record, "_id", path, line_number, required=True)
    if not doc_id:
        raise BeirFormatError(f"{path}:{line_number}: empty '_id'")
    text = _string_field(record, "text", path, line_number, required=True)
    title = _string_field(record, "title", path, line_number, required=False)
    return doc_id, title, text


def load_corpus(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """Read ``corpus.jsonl`` into ``{doc_id: {"title": ..., "text": ...}}`` in file order.

    Holds every text in memory: fine for an evaluation collection; ``scan_corpus`` reads a large corpus as a stream.

    Raises:
        BeirFormatError: missing file, malformed line, missing ``_id``/``text``, duplicate id,
            or an empty corpus.
    """
    path = Path(path)
    corpus: dict[str, dict[str, str]] = {}
    first_seen: dict[str, int] = {}
    empty = 0
    for line_number, record in iter_jsonl(path, error=BeirFormatError):
        doc_id, title, text = _corpus_fields(record, path, line_number)
        if doc_id in corpus:
            raise BeirFormatError(
                f"{path}:{line_number}: duplicate document id {doc_id!r} (first seen on line {first_seen[doc_id]})"
            )
        if not passage_text(title, text):
            empty += 1
        corpus[doc_id] = {"title": title, "text": text}
        first_seen[doc_id] = line_number
    if not corpus:
        raise BeirFormatError(f"{path}: the corpus is empty")
    if empty:
        logger.warning("%s: %d of %d documents have neither title nor text", path, empty, len(corpus))
    return corpus


# ---------------------------------------------------------------------------------------------
# A corpus read as a stream


class PackedStrings(Sequence[str]):
    """An immutable list of strings packed into one UTF-8 buffer plus an int64 array of end offsets.

    A million short ids take ~16 bytes each here against ~65 as a list of Python strings.
    """

    def __init__(self, buffer: bytes, ends: np.ndarray):
        self._buffer = buffer
        self._ends = np.asarray(ends, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} strings")
        start = int(self._ends[index - 1]) if index else 0
        return self._buffer[start : int(self._ends[index])].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        start = 0
        for end in self._ends.tolist():
            yield self._buffer[start:end].decode("utf-8")
            start = end

    @property
    def nbytes(self) -> int:
        return len(self._buffer) + self._ends.nbytes


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")  # noqa: SIM115 - caller closes


def _parse_line(line: bytes, path: Path, line_number: int) -> dict:
    # The same messages as trainers.io.iter_jsonl, which reads text mode and so cannot tell byte offsets.
    try:
        record = json.loads(line)
    except UnicodeDecodeError:
        raise BeirFormatError(f"{path}:{line_number}: not valid UTF-8") from None
    except json.JSONDecodeError as err:
        raise BeirFormatError(f"{path}:{line_number}: not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise BeirFormatError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
    return record


@dataclass
class CorpusFile:
    """A validated corpus.jsonl whose texts stay on disk: ids and byte offsets in memory, texts read on demand.

    ``offsets[i]`` is where document ``i``'s line starts, so a reader (one rank, one shard) seeks straight to its
    documents and never holds the others. ``sha256`` hashes the file's bytes (the resume fingerprint's corpus part).
    """

    path: Path
    ids: PackedStrings
    offsets: np.ndarray  # (num_docs,) int64
    sha256: str

    def __len__(self) -> int:
        return len(self.ids)

    def read_texts(self, start: int, stop: int) -> list[str]:
        """The passage texts (``passage_text``: title and body) of documents ``[start, stop)``."""
        stop = min(stop, len(self))
        if not 0 <= start <= stop:
            raise IndexError(f"documents [{start}, {stop}) are outside a corpus of {len(self)}")
        texts: list[str] = []
        if start == stop:
            return texts
        with _open_binary(self.path) as handle:
            handle.seek(int(self.offsets[start]))
            for line in handle:
                if not line.strip():
                    continue
                record = _parse_line(line, self.path, 0)
                texts.append(passage_text(record.get("title") or "", record["text"]))
                if len(texts) == stop - start:
                    break
        if len(texts) != stop - start:
            raise BeirFormatError(f"{self.path} changed while it was being read (it has fewer documents now)")
        return texts


def scan_corpus(path: str | os.PathLike[str], *, show_progress: bool = False) -> CorpusFile:
    """Read ``corpus.jsonl`` once as a stream: validate every line, keep ids and line offsets, hash the bytes.

    Memory holds the ids (packed) and 8 bytes of offset per document, not the texts.

    Raises:
        BeirFormatError: the same errors as ``load_corpus`` (missing file, malformed line, missing field,
            duplicate id naming both lines, empty corpus).
    """
    path = _require_file(Path(path), "corpus")
    digest = hashlib.sha256()
    ids = bytearray()
    id_ends = array("q")
    offsets = array("q")
    id_hashes = array("q")  # to find duplicate ids by sorting, without a set of every id
    empty = 0
    offset = 0
    with _open_binary(path) as handle, tqdm(
        desc="Reading corpus", unit="B", unit_scale=True, disable=not show_progress
    ) as progress:
        for line_number, line in enumerate(handle, start=1):
            digest.update(line)
            progress.update(len(line))
            if line.strip():
                doc_id, title, text = _corpus_fields(_parse_line(line, path, line_number), path, line_number)
                if not passage_text(title, text):
                    empty += 1
                ids += doc_id.encode("utf-8")
                id_ends.append(len(ids))
                offsets.append(offset)
                id_hashes.append(hash(doc_id))
            offset += len(line)
    if not offsets:
        raise BeirFormatError(f"{path}: the corpus is empty")
    corpus = CorpusFile(
        path=path,
        ids=PackedStrings(bytes(ids), np.frombuffer(id_ends, dtype=np.int64)),
        offsets=np.frombuffer(offsets, dtype=np.int64),
        sha256=digest.hexdigest(),
    )
    _refuse_duplicate_ids(corpus, np.frombuffer(id_hashes, dtype=np.int64))
    if empty:
        logger.warning("%s: %d of %d documents have neither title nor text", path, empty, len(corpus))
    return corpus


def _line_number_at(path: Path, offset: int) -> int:
    """The 1-based line number of the line starting at byte ``offset`` (counted in 1 MiB blocks)."""
    newlines = 0
    with _open_binary(path) as handle:
        while offset > 0:
            block = handle.read(min(offset, 1 << 20))
            if not block:
                break
            newlines += block.count(b"\n")
            offset -= len(block)
    return newlines + 1


def first_repeat(strings: Sequence[str], hashes: np.ndarray | None = None) -> tuple[int, int] | None:
    """``(earlier, later)``: the first position (in order) whose string an earlier one already has, or None.

    Sorts 8-byte hashes (``hashes``, else computed) instead of building a set: a million ids cost ~16 MB here
    against ~140 MB as a set of strings.
    """
    if hashes is None:
        hashes = np.fromiter((hash(text) for text in strings), dtype=np.int64, count=len(strings))
    order = np.argsort(hashes, kind="stable")  # equal hashes stay in order
    same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
    found: tuple[int, int] | None = None
    for position in same.tolist():
        # walk back over the run of equal hashes: a hash collision is not a repeat
        later = int(order[position + 1])
        for back in range(position, -1, -1):
            if hashes[order[back]] != hashes[later]:
                break
            earlier = int(order[back])
            if strings[earlier] == strings[later] and (found is None or later <= found[1]):
                found = (earlier, later)
    return found


def _refuse_duplicate_ids(corpus: CorpusFile, id_hashes: np.ndarray) -> None:
    """Raise on the first document (in file order) whose id an earlier one already has."""
    repeat = first_repeat(corpus.ids, id_hashes)
    if repeat is not None:
        earlier, later = repeat
        line = _line_number_at(corpus.path, int(corpus.offsets[later]))
        first_line = _line_number_at(corpus.path, int(corpus.offsets[earlier]))
        raise BeirFormatError(
            f"{corpus.path}:{line}: duplicate document id {corpus.ids[later]!r} (first seen on line {first_line})"
        )


def load_queries(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read ``queries.jsonl`` into ``{query_id: text}`` in file order.

    Raises:
        BeirFormatError: missing file, malformed line, missing field, duplicate id, empty query text.
    """
    path = Path(path)
    queries: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for line_number, record in iter_jsonl(path, error=BeirFormatError):
        query_id = _string_field(record, "_id", path, line_number, required=True)
        if not query_id:
            raise BeirFormatError(f"{path}:{line_number}: empty '_id'")
        text = _string_field(record, "text", path, line_number, required=True)
        if query_id in queries:
            raise BeirFormatError(
                f"{path}:{line_number}: duplicate query id {query_id!r} (first seen on line {first_seen[query_id]})"
            )
        if not text.strip():
            raise BeirFormatError(f"{path}:{line_number}: query {query_id!r} has empty text")
        queries[query_id] = text
        first_seen[query_id] = line_number
    if not queries:
        raise BeirFormatError(f"{path}: there are no queries")
    return queries


def load_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """Read a qrels TSV (``query-id  corpus-id  score`` after a header line) into nested dicts.

    The header is recognised by a third column that is not an integer; a file without a header is
    accepted too. Scores must be integers (graded relevance; 0 = judged not relevant).

    Raises:
        BeirFormatError: missing file, wrong column count, non-integer score, conflicting duplicate
            judgements, or no judgements at all.
    """
    path = _require_file(Path(path), "qrels file")
    qrels: dict[str, dict[str, int]] = {}
    seen_at: dict[tuple[str, str], int] = {}
    repeated = 0
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            columns = line.split("\t")
            if len(columns) == 1:
                columns = line.split()
            if len(columns) == 4:
                # TREC qrels (query-id, iteration, corpus-id, score) are accepted as well.
                columns = [columns[0], columns[2], columns[3]]
            if len(columns) != 3:
                raise BeirFormatError(
                    f"{path}:{line_number}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                    f"got {len(columns)}"
                )
            query_id, doc_id, score_text = (column.strip() for column in columns)
            try:
                score = int(score_text)
            except ValueError:
                try:
                    as_float = float(score_text)
                except ValueError:
                    as_float = None
                if line_number == 1 and as_float is None:
                    continue  # the header line
                if as_float is not None and as_float.is_integer():
                    score = int(as_float)
                else:
                    raise BeirFormatError(
                        f"{path}:{line_number}: score {score_text!r} is not an integer"
                    ) from None
            if not query_id or not doc_id:
                raise BeirFormatError(f"{path}:{line_number}: empty query-id or corpus-id")
            key = (query_id, doc_id)
            if key in seen_at:
                previous = qrels[query_id][doc_id]
                if previous != score:
                    raise BeirFormatError(
                        f"{path}:{line_number}: ({query_id!r}, {doc_id!r}) judged {score} here but "
                        f"{previous} on line {seen_at[key]}"
                    )
                repeated += 1
                continue
            seen_at[key] = line_number
            qrels.setdefault(query_id, {})[doc_id] = score
    if not qrels:
        raise BeirFormatError(f"{path}: no relevance judgements")
    if repeated:
        logger.warning("%s: %d repeated judgement lines ignored", path, repeated)
    return qrels


@dataclass
class BeirDataset:
    """One split of a BEIR-layout collection, validated and cross-checked."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str = "test"
    name: str = "beir"
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def eval_queries(self) -> dict[str, str]:
        """The queries that have judgements in this split (the ones that are evaluated)."""
        return {query_id: self.queries[query_id] for query_id in self.qrels}

    def passages(self) -> tuple[list[str], list[str]]:
        """Corpus ids and the texts a model reads for them (title and body, see ``passage_text``)."""
        ids = list(self.corpus)
        return ids, [passage_text(self.corpus[i]["title"], self.corpus[i]["text"]) for i in ids]


def cross_check_qrels(
    qrels: dict[str, dict[str, int]],
    query_ids: set[str] | dict | None,
    doc_ids: set[str] | dict | None,
    *,
    source: str = "qrels",
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Drop judgements naming unknown queries or documents; warn once with counts.

    A judgement for an unknown document can never be retrieved and one for an unknown query can
    never be evaluated; both usually mean the qrels belong to another corpus or split.

    Returns:
        The kept qrels and counts ``{"unknown_queries", "unknown_docs", "judgements"}`` of what was dropped.
    """
    unknown_queries: set[str] = set()
    unknown_docs: set[str] = set()
    dropped_judgements = 0
    kept: dict[str, dict[str, int]] = {}
    for query_id, judged in qrels.items():
        if query_ids is not None and query_id not in query_ids:
            unknown_queries.add(query_id)
            dropped_judgements += len(judged)
            continue
        row = {}
        for doc_id, score in judged.items():
            if doc_ids is not None and doc_id not in doc_ids:
                unknown_docs.add(doc_id)
                dropped_judgements += 1
                continue
            row[doc_id] = score
        if row:
            kept[query_id] = row
    counts = {
        "unknown_queries": len(unknown_queries),
        "unknown_docs": len(unknown_docs),
        "judgements": dropped_judgements,
    }
    if dropped_judgements:
        logger.warning(
            "%s: dropped %d judgements naming %d unknown query ids and %d unknown corpus ids "
            "(e.g. %s); are the qrels from this collection?",
            source,
            dropped_judgements,
            counts["unknown_queries"],
            counts["unknown_docs"],
            ", ".join(repr(x) for x in sorted(unknown_queries | unknown_docs)[:3]),
        )
    if not kept:
        raise BeirFormatError(f"{source}: no judgement names a known query and a known document")
    return kept, counts


def qrels_path(beir_dir: str | os.PathLike[str], split: str) -> Path:
    """``<beir_dir>/qrels/<split>.tsv``, with a message listing the splits that do exist."""
    path = Path(beir_dir) / QRELS_DIR / f"{split}.tsv"
    if not path.is_file():
        available = sorted(p.stem for p in (Path(beir_dir) / QRELS_DIR).glob("*.tsv"))
        hint = f"; available splits: {', '.join(available)}" if available else ""
        raise BeirFormatError(f"qrels for split {split!r} not found: {path}{hint}")
    return path


def load_beir(beir_dir: str | os.PathLike[str], split: str = "test") -> BeirDataset:
    """Load and cross-check one split of a BEIR-layout folder.

    Raises:
        BeirFormatError: the folder or one of its files is missing or malformed.
    """
    root = Path(beir_dir)
    if not root.is_dir():
        raise BeirFormatError(f"BEIR folder not found: {root}")
    corpus_file = _require_file(root / CORPUS_FILE, "corpus")
    queries_file = _require_file(root / QUERIES_FILE, "queries")
    qrels_file = qrels_path(root, split)
    corpus = load_corpus(corpus_file)
    queries = load_queries(queries_file)
    qrels, dropped = cross_check_qrels(load_qrels(qrels_file), queries, corpus, source=str(qrels_file))
    return BeirDataset(
        corpus=corpus, queries=queries, qrels=qrels, split=split, name=root.resolve().name, dropped=dropped
    )
