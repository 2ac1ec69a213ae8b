"""Rank a BEIR-layout collection with a model or BM25, read and write TREC runs, and score runs.

Every metric comes from ``pytrec_eval`` (no hand-written IR metrics):

===============  =======================================================================
``ndcg@10``      ``ndcg_cut_10``
``mrr@10``       ``recip_rank`` on each query's top 10 (ordered as trec_eval orders:
                 score descending, then document id descending)
``recall@100``   ``recall_100``
``recall@1000``  ``recall_1000``
``map``          ``map`` over the whole run (the top-k retrieved, 1000 by default)
===============  =======================================================================

Each metric is averaged over every query that has judgements; a judged query missing from the run
counts as zero (like ``trec_eval -c``). mteb averages over the same queries, so a run covering all
of them gives mteb's ``ndcg_at_10``, ``mrr_at_10``, ``recall_at_100``, ``recall_at_1000`` and
``map_at_1000``.

Dense models are any sentence-transformers model, LLaRA ones included; they encode passages with
``encode_document`` and queries with ``encode_query`` and are searched with FAISS. ``bm25`` ranks
with bm25s.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainers.io import atomic_write_text
from trainers.retrieval.beir import BeirDataset, BeirFormatError
from trainers.retrieval.encoding import (
    corpus_fingerprint,
    document_encoder,
    encode_across_ranks,
    encode_texts,
    load_encoder,
    model_identity,
    query_encoder,
)
from trainers.retrieval.faiss_index import (
    DEFAULT_OVERSAMPLE,
    IndexSpec,
    build_index,
    checked_encoder,
    hits_from_search,
    search_queries,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

BM25 = "bm25"
METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000", "map")
_PYTREC_MEASURES = {"ndcg_cut.10", "recall.100,1000", "map"}
_MRR_DEPTH = 10

Hits = dict[str, list[tuple[str, float]]]  # query id -> [(doc id, score)], best first
Run = dict[str, dict[str, float]]  # query id -> {doc id: score}, as pytrec_eval takes it


# ---------------------------------------------------------------------------------------------
# TREC run files


def _trec_order(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    # trec_eval ranks by score, ties by document id, both descending; follow it so that the ranks
    # written to a run file are the ranks every metric sees.
    return sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)


def hits_to_run(hits: Mapping[str, Sequence[tuple[str, float]]]) -> Run:
    """``{query: [(doc, score)]}`` to pytrec_eval's ``{query: {doc: score}}``."""
    return {query_id: {doc_id: float(score) for doc_id, score in ranked} for query_id, ranked in hits.items()}


def format_trec_run(run: Mapping[str, Mapping[str, float]], tag: str = "llara") -> str:
    """A run in the six-column TREC format ``qid Q0 docid rank score tag``.

    Scores are written as Python's shortest round-trip repr, so a run read back from the file is the
    run in memory, bit for bit, and gives the same metrics.
    """
    if not tag or any(ch.isspace() for ch in tag):
        raise ValueError(f"run tag must be one word, got {tag!r}")
    lines = []
    for query_id, scores in run.items():
        for rank, (doc_id, score) in enumerate(_trec_order(scores), start=1):
            if any(ch.isspace() for ch in query_id + doc_id):
                raise ValueError(f"ids in a TREC run cannot contain whitespace: {query_id!r}, {doc_id!r}")
            lines.append(f"{query_id} Q0 {doc_id} {rank} {float(score)!r} {tag}\n")
    return "".join(lines)


def write_trec_run(path: str | os.PathLike[str], run: Mapping[str, Mapping[str, float]], tag: str = "llara") -> Path:
    """Write a TREC run file atomically."""
    atomic_write_text(path, format_trec_run(run, tag))
    return Path(path)


def read_trec_run(path: str | os.PathLike[str]) -> Run:
    """Read a six-column TREC run file.

    Raises:
        BeirFormatError: missing file, wrong column count, non-numeric score, or a document listed
            twice for one query (each with its line number).
    """
    path = Path(path)
    if not path.is_file():
        raise BeirFormatError(f"run file not found: {path}")
    run: Run = {}
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            columns = line.split()
            if len(columns) != 6:
                raise BeirFormatError(
                    f"{path}:{line_number}: expected 6 columns (qid Q0 docid rank score tag), got {len(columns)}"
                )
            query_id, _, doc_id, _, score_text, _ = columns
            try:
                score = float(score_text)
            except ValueError:
                raise BeirFormatError(f"{path}:{line_number}: score {score_text!r} is not a number") from None
            if not math.isfinite(score):
                raise BeirFormatError(f"{path}:{line_number}: score {score_text!r} is not finite")
            scores = run.setdefault(query_id, {})
            if doc_id in scores:
                raise BeirFormatError(f"{path}:{line_number}: document {doc_id!r} listed twice for query {query_id!r}")
            scores[doc_id] = score
    if not run:
        raise BeirFormatError(f"{path}: the run is empty")
    return run


# ---------------------------------------------------------------------------------------------
# Metrics


@dataclass
class EvaluationResult:
    """Mean metrics over the judged queries, plus per-query values."""

    metrics: dict[str, float]
    num_queries: int
    missing_queries: int = 0
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "num_queries": self.num_queries, "missing_queries": self.missing_queries}


def compute_metrics(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], *, depth: int | None = None
) -> EvaluationResult:
    """nDCG@10, MRR@10, Recall@100, Recall@1000 and MAP of ``run`` against ``qrels`` with pytrec_eval.

    ``depth``: how many documents per query the run was cut to, when known. A recall cut deeper than that
    (Recall@1000 of a top-100 run) would only repeat the shallower one, so it is left out.
    """
    import pytrec_eval

    qrels = {query_id: dict(judged) for query_id, judged in qrels.items() if judged}
    if not qrels:
        raise ValueError("no judged queries to evaluate")
    run = {query_id: dict(scores) for query_id, scores in run.items() if query_id in qrels and scores}
    missing = len(qrels) - len(run)
    if missing:
        logger.warning("%d of %d judged queries have no results in the run; they count as 0", missing, len(qrels))
    per_query: dict[str, dict[str, float]] = {query_id: dict.fromkeys(METRICS, 0.0) for query_id in qrels}
    if run:
        full = pytrec_eval.RelevanceEvaluator(qrels, _PYTREC_MEASURES).evaluate(run)
        top = {query_id: dict(_trec_order(scores)[:_MRR_DEPTH]) for query_id, scores in run.items()}
        reciprocal = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top)
        for query_id, values in full.items():
            per_query[query_id] = {
                "ndcg@10": values["ndcg_cut_10"],
                "mrr@10": reciprocal[query_id]["recip_rank"],
                "recall@100": values["recall_100"],
                "recall@1000": values["recall_1000"],
                "map": values["map"],
            }
    names = [name for name in METRICS if depth is None or _cutoff(name) is None or _cutoff(name) <= depth]
    per_query = {query_id: {name: values[name] for name in names} for query_id, values in per_query.items()}
    metrics = {name: sum(values[name] for values in per_query.values()) / len(per_query) for name in names}
    return EvaluationResult(metrics=metrics, num_queries=len(qrels), missing_queries=missing, per_query=per_query)


def _cutoff(metric: str) -> int | None:
    """The rank cut-off of a metric name (``recall@100`` -> 100), None for uncut ones (``map``)."""
    return int(metric.split("@")[1]) if "@" in metric else None


def evaluate_run_file(run_path: str | os.PathLike[str], qrels: Mapping[str, Mapping[str, int]]) -> EvaluationResult:
    """Score a TREC run file; judged queries absent from the run count as 0."""
    run = read_trec_run(run_path)
    check_run_overlap(qrels, run, source=str(run_path))
    return compute_metrics(qrels, run)


# ---------------------------------------------------------------------------------------------
# Ranking


def rank_bm25(
    doc_ids: Sequence[str],
    doc_texts: Sequence[str],
    query_ids: Sequence[str],
    query_texts: Sequence[str],
    *,
    top_k: int = 1000,
    k1: float = 1.5,
    b: float = 0.75,
    show_progress: bool = False,
) -> Hits:
    """BM25 (bm25s, Lucene variant, English stopwords, no stemming) top-``top_k`` per query.

    Documents with score 0 share no term with the query and are left out rather than ranked by chance.
    """
    import bm25s
    from bm25s.tokenization import Tokenizer

    tokenizer = Tokenizer(stopwords="en")
    corpus_tokens = tokenizer.tokenize(list(doc_texts), update_vocab=True, return_as="ids", show_progress=show_progress)
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(corpus_tokens, show_progress=show_progress)
    query_tokens = tokenizer.tokenize(
        list(query_texts), update_vocab=False, return_as="ids", show_progress=show_progress
    )
    rows, scores = retriever.retrieve(query_tokens, k=min(top_k, len(doc_ids)), show_progress=show_progress)
    hits: Hits = {}
    for query_id, query_rows, query_scores in zip(query_ids, rows.tolist(), scores.tolist(), strict=True):
        hits[query_id] = [(doc_ids[row], score) for row, score in zip(query_rows, query_scores, strict=True) if score > 0]
    return hits


def rank_dense(
    model: SentenceTransformer,
    doc_ids: Sequence[str],
    doc_texts: Sequence[str],
    query_ids: Sequence[str],
    query_texts: Sequence[str],
    *,
    top_k: int = 1000,
    batch_size: int = 32,
    spec: IndexSpec | None = None,
    rescore: bool = False,
    oversample: int = DEFAULT_OVERSAMPLE,
    show_progress: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    model_id: str = "",
    shard_size: int = 10_000,
) -> Hits:
    """Encode passages and queries with a sentence-transformers model and search a FAISS index.

    ``spec`` may compress the vectors (``truncate_dim``, ``quantize``); ``rescore`` ranks the top
    ``top_k * oversample`` hits again with the full float32 passage vectors (see ``search_queries``).
    ``work_dir``: encode the passages in resumable shards there, shared by the ranks of a data-parallel run
    (torchrun / accelerate launch; ``model_id`` keys the resume check, ``shard_size`` texts per shard): rank 0
    searches and returns the hits, the other ranks return none once their shards are written.
    """
    from tqdm.auto import tqdm

    spec = spec or IndexSpec()
    encode_documents = checked_encoder(document_encoder(model, batch_size), spec)  # a bad spec fails on batch one
    if work_dir is None:
        # Batches form within shards of `shard_size`, as in the data-parallel path: one process and several encode
        # the same batches, so they rank alike to the last bit.
        with tqdm(total=len(doc_texts), desc="Encoding corpus", unit="doc", disable=not show_progress) as progress:
            doc_embeddings = np.concatenate([
                encode_texts(encode_documents, doc_texts[start : start + shard_size], batch_size=batch_size, progress=progress)
                for start in range(0, len(doc_texts), shard_size)
            ])  # (docs, dim)
    else:
        doc_embeddings = encode_across_ranks(
            encode_documents, doc_texts, work_dir, fingerprint=corpus_fingerprint(doc_ids, doc_texts, model_id),
            shard_size=shard_size, batch_size=batch_size, show_progress=show_progress,
        )
        if doc_embeddings is None:  # not rank 0: its share is encoded
            return {}
    with tqdm(total=len(query_texts), desc="Encoding queries", unit="query", disable=not show_progress) as progress:
        query_embeddings = encode_texts(query_encoder(model, batch_size), query_texts, batch_size=batch_size, progress=progress)
    index = build_index(doc_embeddings, spec)
    rescore_vectors = doc_embeddings if rescore else None
    scores, rows = search_queries(
        index, query_embeddings, top_k, spec=spec, rescore_vectors=rescore_vectors, oversample=oversample
    )
    if work_dir is not None:
        shutil.rmtree(work_dir, ignore_errors=True)
    return hits_from_search(query_ids, doc_ids, scores, rows)


def is_bm25(model_name: str) -> bool:
    return model_name.lower() == BM25


def rank_collection(
    model_name: str | SentenceTransformer,
    dataset: BeirDataset,
    *,
    top_k: int = 1000,
    batch_size: int = 32,
    device: str | None = None,
    dtype: str = "auto",
    spec: IndexSpec | None = None,
    rescore: bool = False,
    oversample: int = DEFAULT_OVERSAMPLE,
    show_progress: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    shard_size: int = 10_000,
) -> Hits:
    """Rank the judged queries of ``dataset`` with ``bm25``, a model path/name or a loaded model.

    ``work_dir``: a dense model encodes the corpus in shards of ``shard_size`` there, shared by the ranks of a
    data-parallel run (see ``rank_dense``).
    """
    doc_ids, doc_texts = dataset.passages()
    queries = dataset.eval_queries
    query_ids, query_texts = list(queries), list(queries.values())
    if isinstance(model_name, str) and is_bm25(model_name):
        return rank_bm25(doc_ids, doc_texts, query_ids, query_texts, top_k=top_k, show_progress=show_progress)
    model = load_encoder(model_name, device=device, dtype=dtype) if isinstance(model_name, str) else model_name
    return rank_dense(
        model,
        doc_ids,
        doc_texts,
        query_ids,
        query_texts,
        top_k=top_k,
        batch_size=batch_size,
        spec=spec,
        rescore=rescore,
        oversample=oversample,
        show_progress=show_progress,
        work_dir=work_dir,
        shard_size=shard_size,
        # bf16 and fp32 shards must not mix
        model_id=f"{model_identity(model_name)}|dtype={dtype}" if isinstance(model_name, str) else type(model).__name__,
    )


@dataclass
class ModelEvaluation:
    """One model (or BM25) on one split: metrics, the run, and timing."""

    model: str
    dataset: str
    split: str
    result: EvaluationResult
    run: Run
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "split": self.split,
            "seconds": round(self.seconds, 3),
            **self.result.to_dict(),
        }


def evaluate_model(model_name: str, dataset: BeirDataset, *, top_k: int = 1000, **ranking: Any) -> ModelEvaluation:
    """Rank ``dataset`` with one model or ``bm25`` and score the run.

    ``ranking``: the keyword options of :func:`rank_collection` (``batch_size``, ``device``, ``dtype``, ``spec``,
    ``rescore``, ``oversample``, ``show_progress``).
    """
    started = time.perf_counter()
    hits = rank_collection(model_name, dataset, top_k=top_k, **ranking)
    run = hits_to_run(hits)
    return ModelEvaluation(
        model=model_name,
        dataset=dataset.name,
        split=dataset.split,
        result=compute_metrics(dataset.qrels, run, depth=top_k),
        run=run,
        seconds=time.perf_counter() - started,
    )


def check_run_overlap(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], *, source: str
) -> None:
    """Refuse a run that shares no query with the qrels (almost surely the wrong file).

    Without the corpus, a document id in the run that the qrels do not know cannot be told apart from
    an unjudged one, so only the queries are checked; missing queries are counted by ``compute_metrics``.
    """
    if not any(query_id in run for query_id in qrels):
        raise BeirFormatError(
            f"{source}: none of the {len(qrels)} judged queries appears in the run "
            f"(run query ids look like {', '.join(repr(q) for q in list(run)[:3])})"
        )


def format_table(rows: Sequence[tuple[str, Mapping[str, float]]], *, metrics: Sequence[str] = METRICS) -> str:
    """A plain-text table, one row per model, metrics as percentages with two decimals (those every row has)."""
    metrics = [m for m in metrics if all(m in values for _, values in rows)]
    headers = ["model", *metrics]
    cells = [[name, *(f"{100 * values[m]:.2f}" for m in metrics)] for name, values in rows]
    widths = [max(len(str(row[i])) for row in [headers, *cells]) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i]) for i, cell in enumerate(row)
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in cells)])
