"""Debian package-description retrieval data: loading, splitting, exporting.

Why: LLaRA needs an offline, real-text retrieval task for its two stages
(unsupervised pretraining on documents, then contrastive fine-tuning on
query/positive pairs) and a held-out collection to evaluate on.  The snapshot
``data/debian/descriptions.jsonl.gz`` (see ``data/debian/README.md``) gives
~37k (short description -> long description) pairs; this module cuts it into
parts that share no package and no text, and writes them in the formats the
rest of the project consumes (BEIR for evaluation, LLaRA/FlagEmbedding JSONL
for training: ``write_training_jsonl(path, splits.train_pairs)``, from
:mod:`trainers.io`).

This is a library module: it never prints and never parses argv.
"""

from __future__ import annotations

import os
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

# write_training_jsonl is re-exported: it writes make_splits' training pairs (query + document -> pos).
from trainers.io import atomic_write_lines, iter_jsonl, staged_dir, write_jsonl, write_training_jsonl

ENV_VAR = "LLARA_DEBIAN_DATA"
DEFAULT_SNAPSHOT = Path(__file__).resolve().parent.parent / "data" / "debian" / "descriptions.jsonl.gz"
REBUILD_HINT = "rebuild it with `python data/debian/build_snapshot.py` (see data/debian/README.md)"

__all__ = [
    "ENV_VAR",
    "DEFAULT_SNAPSHOT",
    "TestCollection",
    "DebianSplits",
    "default_snapshot_path",
    "load_pairs",
    "make_splits",
    "write_beir",
    "write_training_jsonl",
    "write_pretraining_text",
]


def default_snapshot_path() -> Path:
    """Snapshot location: ``$LLARA_DEBIAN_DATA`` if set, else the committed file.

    The environment override lets experiments point at a rebuilt or smaller
    snapshot without code changes.
    """
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_SNAPSHOT


def load_pairs(path: str | os.PathLike | None = None) -> list[dict]:
    """Read the snapshot into ``[{"id", "query", "document"}, ...]`` sorted by id.

    Validation is strict (missing keys, empty text, duplicate ids, corrupt gzip
    or JSON all raise) because a silently truncated dataset would make every
    downstream number meaningless.

    Raises:
        FileNotFoundError: the snapshot file does not exist.
        ValueError: the file is not a valid snapshot (message names file and line).
    """
    p = Path(path) if path is not None else default_snapshot_path()
    if not p.is_file():
        origin = f" (from ${ENV_VAR})" if path is None and os.environ.get(ENV_VAR) else ""
        raise FileNotFoundError(f"Debian snapshot not found: {p}{origin}; {REBUILD_HINT}")
    pairs: list[dict] = []
    seen: set[str] = set()
    try:
        for lineno, rec in iter_jsonl(p):
            for key in ("id", "query", "document"):
                if not isinstance(rec.get(key), str) or not rec[key].strip():
                    raise ValueError(f"{p}:{lineno}: field {key!r} missing or not a non-empty string")
            if rec["id"] in seen:
                raise ValueError(f"{p}:{lineno}: duplicate id {rec['id']!r}")
            seen.add(rec["id"])
            pairs.append({"id": rec["id"], "query": rec["query"], "document": rec["document"]})
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        # gzip.BadGzipFile is an OSError subclass; truncated streams raise EOFError.
        raise ValueError(f"{p}: cannot read Debian snapshot ({exc}); {REBUILD_HINT}") from exc
    if not pairs:
        raise ValueError(f"{p}: Debian snapshot is empty; {REBUILD_HINT}")
    pairs.sort(key=lambda r: r["id"])
    return pairs


@dataclass
class TestCollection:
    """A BEIR-style evaluation collection.

    ``corpus`` maps doc id -> text, ``queries`` maps query id -> text and
    ``qrels`` maps query id -> {doc id: relevance}.  Ids are Debian package
    names; a query and its positive document share the package name as id.
    """

    __test__ = False  # not a pytest test class despite the name

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


@dataclass
class DebianSplits:
    """Disjoint parts of the snapshot (no package id or text occurs in two parts).

    * ``pretrain_docs``: ``[{"id", "text"}]`` unlabeled long descriptions.
    * ``train_pairs``: ``[{"id", "query", "document"}]`` supervised pairs.
    * ``test``: held-out :class:`TestCollection`; its non-positive documents are
      distractors that appear nowhere else, and their short descriptions are
      unused.
    """

    pretrain_docs: list[dict]
    train_pairs: list[dict]
    test: TestCollection
    seed: int
    unused_ids: list[str] = field(default_factory=list)


def make_splits(
    pairs: Sequence[Mapping],
    *,
    seed: int = 0,
    n_test_queries: int = 1000,
    n_test_corpus: int = 10000,
    n_train_pairs: int | None = None,
    n_pretrain_docs: int | None = 10000,
) -> DebianSplits:
    """Split pairs by package id into test collection, pretraining docs, training pairs.

    The pairs are sorted by id and shuffled with ``random.Random(seed)``, so the
    result depends only on the data and the seed.  The shuffled order is consumed
    as: ``n_test_corpus`` test documents (the first ``n_test_queries`` of them
    also give the test queries), then ``n_pretrain_docs`` pretraining documents,
    then ``n_train_pairs`` training pairs.  ``None`` for either of the last two
    means "everything left"; with defaults on the full snapshot that is 10k test
    docs, 10k pretraining docs and ~17k training pairs, i.e. all the data.  If
    both are ``None`` the remainder is halved between them.

    Raises:
        ValueError: negative or inconsistent sizes, more requested than available,
            or duplicate ids in ``pairs``.
    """
    sizes = {"n_test_queries": n_test_queries, "n_test_corpus": n_test_corpus,
             "n_train_pairs": n_train_pairs, "n_pretrain_docs": n_pretrain_docs}
    for name, value in sizes.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")
    if n_test_queries > n_test_corpus:
        raise ValueError(f"n_test_queries ({n_test_queries}) cannot exceed n_test_corpus ({n_test_corpus}): "
                         "every test query needs its positive in the test corpus")

    ordered = sorted(pairs, key=lambda r: r["id"])
    ids = [r["id"] for r in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError("pairs contain duplicate ids; splits would not be disjoint")
    total = len(ordered)
    remaining = total - n_test_corpus
    if remaining < 0:
        raise ValueError(f"n_test_corpus={n_test_corpus} exceeds the {total} available pairs")
    if n_pretrain_docs is None and n_train_pairs is None:
        n_pretrain_docs = remaining // 2
        n_train_pairs = remaining - n_pretrain_docs
    elif n_pretrain_docs is None:
        n_pretrain_docs = remaining - n_train_pairs
    elif n_train_pairs is None:
        n_train_pairs = remaining - n_pretrain_docs
    if n_pretrain_docs < 0 or n_train_pairs < 0 or n_pretrain_docs + n_train_pairs > remaining:
        raise ValueError(
            f"requested {n_test_corpus} test docs + {n_pretrain_docs} pretraining docs + "
            f"{n_train_pairs} training pairs, but only {total} pairs are available")

    rng = random.Random(seed)
    rng.shuffle(ordered)

    test_part = ordered[:n_test_corpus]
    pre_part = ordered[n_test_corpus:n_test_corpus + n_pretrain_docs]
    train_start = n_test_corpus + n_pretrain_docs
    train_part = ordered[train_start:train_start + n_train_pairs]
    unused = ordered[train_start + n_train_pairs:]

    positives = test_part[:n_test_queries]
    test = TestCollection(
        corpus={r["id"]: r["document"] for r in sorted(test_part, key=lambda r: r["id"])},
        queries={r["id"]: r["query"] for r in sorted(positives, key=lambda r: r["id"])},
        qrels={r["id"]: {r["id"]: 1} for r in sorted(positives, key=lambda r: r["id"])},
    )
    return DebianSplits(
        pretrain_docs=[{"id": r["id"], "text": r["document"]} for r in sorted(pre_part, key=lambda r: r["id"])],
        train_pairs=[{"id": r["id"], "query": r["query"], "document": r["document"]}
                     for r in sorted(train_part, key=lambda r: r["id"])],
        test=test,
        seed=seed,
        unused_ids=sorted(r["id"] for r in unused),
    )


def make_validation(
    pairs: Sequence[Mapping],
    splits: DebianSplits,
    *,
    n_queries: int = 150,
    n_corpus: int = 600,
    seed: int = 0,
) -> TestCollection:
    """A validation collection for choices (recipe, learning rate) from the packages no split of ``splits`` uses.

    Built like the test collection (:func:`make_splits` on the unused pairs, shuffled with ``seed``), so it is
    disjoint from the test collection, the training pairs and the pretraining text by package id, and no query or
    document of it repeats (whitespace and case aside) a text of those parts. The splits themselves are unchanged:
    data and models made from them stay valid.

    Raises:
        ValueError: fewer unused pairs than ``n_corpus``, or bad sizes.
    """
    used = [*splits.test.corpus.values(), *splits.test.queries.values(), *(r["text"] for r in splits.pretrain_docs),
            *(r[k] for r in splits.train_pairs for k in ("query", "document"))]
    used_texts = {normalize_text(t) for t in used}
    unused = set(splits.unused_ids)
    rest = [r for r in pairs if r["id"] in unused
            and normalize_text(r["query"]) not in used_texts and normalize_text(r["document"]) not in used_texts]
    if len(rest) < n_corpus:
        raise ValueError(f"a validation collection of {n_corpus} documents needs that many unused pairs; "
                         f"{len(rest)} are left after the splits")
    return make_splits(rest, seed=seed, n_test_queries=n_queries, n_test_corpus=n_corpus,
                       n_train_pairs=0, n_pretrain_docs=0).test


def normalize_text(text: str) -> str:
    """Whitespace runs to one space, case folded: the key under which two texts count as the same."""
    return " ".join(text.split()).casefold()


def write_beir(collection: TestCollection, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``collection`` in BEIR layout: corpus.jsonl, queries.jsonl, qrels/test.tsv.

    Titles are written as ``""``: the only natural title is the package name,
    which is also the id and often appears in the short description, so using it
    would leak the answer into the document text.

    The directory is assembled in a sibling temp dir and renamed into place, so an
    interrupted run never leaves a partial collection.  An existing ``out_dir``
    is an error unless ``overwrite=True``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
        ValueError: qrels mention a query or document id missing from the collection.
    """
    for qid, rels in collection.qrels.items():
        if qid not in collection.queries:
            raise ValueError(f"qrels query id {qid!r} is not in the queries")
        for did in rels:
            if did not in collection.corpus:
                raise ValueError(f"qrels document id {did!r} (query {qid!r}) is not in the corpus")
    target = Path(out_dir)
    if target.exists() and not overwrite:
        raise FileExistsError(f"BEIR output directory already exists: {target} (pass overwrite=True)")
    with staged_dir(target, overwrite=overwrite) as tmp:
        write_jsonl(tmp / "corpus.jsonl",
                    ({"_id": did, "title": "", "text": text} for did, text in collection.corpus.items()))
        write_jsonl(tmp / "queries.jsonl", ({"_id": qid, "text": text} for qid, text in collection.queries.items()))
        qrel_lines = ["query-id\tcorpus-id\tscore"]
        for qid, rels in collection.qrels.items():
            for did, score in rels.items():
                if any(c in s for s in (qid, did) for c in "\t\n"):
                    raise ValueError(f"id contains a tab or newline, cannot write TSV: {qid!r}/{did!r}")
                qrel_lines.append(f"{qid}\t{did}\t{int(score)}")
        atomic_write_lines(tmp / "qrels" / "test.tsv", qrel_lines)
    return target


def write_pretraining_text(docs: Iterable[Mapping | str], path: str | os.PathLike) -> Path:
    """Write unlabeled pretraining documents as ``{"text": ...}`` lines.

    Accepts plain strings or dicts with ``text`` (as in ``DebianSplits.pretrain_docs``)
    or ``document``.
    """
    def records():
        for i, doc in enumerate(docs):
            if isinstance(doc, str):
                text = doc
            elif isinstance(doc, Mapping):
                text = doc.get("text", doc.get("document"))
            else:
                text = None
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"pretraining document #{i} has no non-empty text")
            yield {"text": text}
    return write_jsonl(path, records())
