"""Python standard-library docstring retrieval data: a held-out evaluation domain.

Why: numbers on one domain (Debian package descriptions, which also supply the
training data) say little about generalisation.  The snapshot
``data/pydocs/docstrings.jsonl.gz`` (see ``data/pydocs/README.md``) pairs the
summary sentence of each public stdlib docstring (query) with the rest of that
docstring (document).  It is API documentation rather than software blurbs and
is never used for training, only written out as a BEIR collection.

The split and the BEIR writer are the Debian ones (``trainers.debian_data``),
so both domains are cut and written by the same code.

This is a library module: it never prints and never parses argv.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Mapping, Sequence

from trainers.debian_data import TestCollection, make_splits, normalize_text, write_beir
from trainers.io import iter_jsonl

ENV_VAR = "LLARA_PYDOCS_DATA"
DEFAULT_SNAPSHOT = Path(__file__).resolve().parent.parent / "data" / "pydocs" / "docstrings.jsonl.gz"
REBUILD_HINT = "rebuild it with `python data/pydocs/build_snapshot.py` (see data/pydocs/README.md)"
FIELDS = ("id", "module", "qualname", "kind", "signature", "query", "document")

__all__ = [
    "ENV_VAR",
    "DEFAULT_SNAPSHOT",
    "FIELDS",
    "default_snapshot_path",
    "load_docstrings",
    "document_text",
    "make_test_collection",
    "write_test_collection",
]


def default_snapshot_path() -> Path:
    """Snapshot location: ``$LLARA_PYDOCS_DATA`` if set, else the committed file."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_SNAPSHOT


def load_docstrings(path: str | os.PathLike | None = None) -> list[dict]:
    """Read the snapshot into a list of records with the keys in ``FIELDS``, sorted by id.

    Validation is strict: a missing or empty field, a duplicate id, a query found
    verbatim in its document, or a corrupt file raises, naming file and line.

    Raises:
        FileNotFoundError: the snapshot file does not exist.
        ValueError: the file is not a valid snapshot.
    """
    p = Path(path) if path is not None else default_snapshot_path()
    if not p.is_file():
        origin = f" (from ${ENV_VAR})" if path is None and os.environ.get(ENV_VAR) else ""
        raise FileNotFoundError(f"pydocs snapshot not found: {p}{origin}; {REBUILD_HINT}")
    records: list[dict] = []
    seen: set[str] = set()
    try:
        for lineno, rec in iter_jsonl(p, error=ValueError):
            for key in FIELDS:
                if not isinstance(rec.get(key), str) or not rec[key].strip():
                    raise ValueError(f"{p}:{lineno}: field {key!r} missing or not a non-empty string")
            if rec["id"] in seen:
                raise ValueError(f"{p}:{lineno}: duplicate id {rec['id']!r}")
            if normalize_text(rec["query"]) in normalize_text(rec["document"]):
                raise ValueError(f"{p}:{lineno}: the query of {rec['id']!r} occurs verbatim in its document")
            seen.add(rec["id"])
            records.append({key: rec[key] for key in FIELDS})
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: cannot read pydocs snapshot ({exc}); {REBUILD_HINT}") from exc
    if not records:
        raise ValueError(f"{p}: pydocs snapshot is empty; {REBUILD_HINT}")
    records.sort(key=lambda r: r["id"])
    return records


def document_text(record: Mapping[str, str], *, with_signature: bool = True) -> str:
    """The text of a record's documentation page.

    With ``with_signature`` (the default) the page starts with the qualified name
    and signature on its own line, as rendered documentation does
    (``json.dumps(obj, *, skipkeys=False, ...)``), followed by the docstring body.
    """
    if with_signature:
        return f"{record['signature']}\n\n{record['document']}"
    return record["document"]


def make_test_collection(
    records: Sequence[Mapping[str, str]],
    *,
    n_queries: int = 300,
    n_corpus: int = 1500,
    seed: int = 0,
    with_signature: bool = True,
) -> TestCollection:
    """A held-out collection: ``n_queries`` queries, each with its own document, plus distractors.

    The records are sorted by id and shuffled with ``random.Random(seed)`` (the
    Debian split, ``debian_data.make_splits``): the first ``n_corpus`` become the
    corpus and the first ``n_queries`` of those give the queries.  Ids are the
    qualified names (``json.dumps``); query and positive document share the id.

    Raises:
        ValueError: bad sizes, more documents requested than records, duplicate ids.
    """
    pairs = [{"id": r["id"], "query": r["query"], "document": document_text(r, with_signature=with_signature)}
             for r in records]
    splits = make_splits(pairs, seed=seed, n_test_queries=n_queries, n_test_corpus=n_corpus,
                         n_train_pairs=0, n_pretrain_docs=0)
    return splits.test


def make_validation_collection(
    records: Sequence[Mapping[str, str]],
    *,
    test_queries: int = 300,
    test_corpus: int = 1500,
    n_queries: int = 150,
    n_corpus: int = 600,
    seed: int = 0,
    with_signature: bool = True,
) -> TestCollection:
    """A validation collection for choices, disjoint from the test collection of the same settings.

    The test collection (:func:`make_test_collection` with ``test_queries``, ``test_corpus`` and ``seed``) is
    rebuilt and its records left out (by id, and any record whose query or page text repeats one of its texts);
    the rest is split the same way. Records are disjoint, stdlib modules are not: the snapshot's modules that
    the test collection leaves untouched hold too few docstrings for a collection of this size.

    Raises:
        ValueError: fewer records left than ``n_corpus``, or bad sizes.
    """
    test = make_test_collection(records, n_queries=test_queries, n_corpus=test_corpus, seed=seed,
                                with_signature=with_signature)
    used = {normalize_text(t) for t in test.corpus.values()} | {normalize_text(t) for t in test.queries.values()}
    rest = [r for r in records if r["id"] not in test.corpus and normalize_text(r["query"]) not in used
            and normalize_text(document_text(r, with_signature=with_signature)) not in used]
    if len(rest) < n_corpus:
        raise ValueError(f"a validation collection of {n_corpus} documents needs that many records outside the "
                         f"test collection; {len(rest)} are left")
    return make_test_collection(rest, n_queries=n_queries, n_corpus=n_corpus, seed=seed, with_signature=with_signature)


def write_test_collection(
    out_dir: str | os.PathLike,
    *,
    n_queries: int = 300,
    n_corpus: int = 1500,
    seed: int = 0,
    with_signature: bool = True,
    snapshot: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Load the snapshot and write a held-out collection in BEIR layout to ``out_dir``.

    ``out_dir`` receives ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/test.tsv``
    (written atomically by ``debian_data.write_beir``); returns its path.
    """
    collection = make_test_collection(load_docstrings(snapshot), n_queries=n_queries, n_corpus=n_corpus,
                                      seed=seed, with_signature=with_signature)
    return write_beir(collection, out_dir, overwrite=overwrite)
