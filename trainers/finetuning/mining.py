"""Hard-negative mining for LLaRA stage 2 (``llara mine``).

Rank the corpus for every training query with a LLaRA model (exact FAISS inner-product search over
the normalized embeddings) or with BM25, then sample the negatives of each query from a rank window
(``range_start`` to ``range_end``, 0-based, end excluded; the released LLARA-passage data used a
dense retriever's top 200). Passages equal to one of the query's positives (or to the query itself)
are never negatives. The top ranks are skipped on purpose: in real data many of them are unjudged
positives, and training on false negatives hurts.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainers.finetuning.data import ContrastiveExample

logger = logging.getLogger(__name__)


@dataclass
class MiningConfig:
    method: str = "dense"  # "dense" (a LLaRA model) or "bm25"
    range_start: int = 10
    range_end: int = 100
    num_negatives: int = 15
    seed: int = 42
    batch_size: int = 32
    query_max_length: int = 64
    passage_max_length: int = 160
    keep_existing_negatives: bool = False

    def __post_init__(self):
        if self.method not in ("dense", "bm25"):
            raise ValueError(f"method must be 'dense' or 'bm25', got {self.method!r}")
        if not 0 <= self.range_start < self.range_end:
            raise ValueError(f"need 0 <= range_start < range_end, got {self.range_start}..{self.range_end}")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")


@dataclass
class MiningReport:
    queries: int = 0
    corpus_size: int = 0
    negatives_written: int = 0
    queries_short_of_negatives: int = 0
    positives_in_window_excluded: int = 0
    queries_without_negatives: int = 0
    seconds_ranking: float = 0.0
    config: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.queries} queries, corpus {self.corpus_size}: {self.negatives_written} negatives written; "
            f"{self.queries_short_of_negatives} queries got fewer than {self.config.get('num_negatives')} "
            f"({self.queries_without_negatives} got none); {self.positives_in_window_excluded} positives "
            f"found inside the rank window were excluded"
        )


# ---- ranking -------------------------------------------------------------------------------------
@torch.inference_mode()
def encode_texts(
    model,
    builder,
    texts: Sequence[str],
    task: str,
    max_length: int | None = None,
    batch_size: int = 32,
    desc: str = "Encoding",
    show_progress: bool = True,
) -> np.ndarray:
    """(len(texts), dim) float32 LLaRA embeddings, length-sorted batches, with a progress bar."""
    from tqdm.auto import tqdm

    ids = builder.build_ids(list(texts), task=task, max_length=max_length)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.empty((len(ids), model.config.get_text_config().hidden_size), dtype=np.float32)
    try:
        with tqdm(total=len(ids), desc=desc, unit="text", disable=not show_progress) as progress:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = builder.pad([ids[i] for i in chunk])
                pooled = model(**{k: v.to(device) for k, v in batch.items()}).pooler_output
                out[chunk] = pooled.float().cpu().numpy()
                progress.update(len(chunk))
    finally:
        model.train(was_training)
    return out


def rank_dense(model, builder, queries: Sequence[str], corpus: Sequence[str], top_k: int, config: MiningConfig,
               show_progress: bool = True) -> list[list[int]]:
    """Top-``top_k`` corpus rows per query by exact inner product (FAISS ``IndexFlatIP``)."""
    import faiss

    passages = encode_texts(model, builder, corpus, "document", config.passage_max_length, config.batch_size,
                            "Encoding corpus", show_progress)
    query_vectors = encode_texts(model, builder, queries, "query", config.query_max_length, config.batch_size,
                                 "Encoding queries", show_progress)
    index = faiss.IndexFlatIP(passages.shape[1])
    index.add(passages)
    _, rows = index.search(query_vectors, min(top_k, len(corpus)))
    return [[int(r) for r in row if r >= 0] for row in rows]


def rank_bm25(queries: Sequence[str], corpus: Sequence[str], top_k: int, show_progress: bool = True) -> list[list[int]]:
    """Top-``top_k`` corpus rows per query by BM25 (documents sharing no term with the query are left out)."""
    from trainers.retrieval.evaluation import rank_bm25 as _rank

    doc_ids = [str(i) for i in range(len(corpus))]
    query_ids = [str(i) for i in range(len(queries))]
    hits = _rank(doc_ids, corpus, query_ids, queries, top_k=top_k, show_progress=show_progress)
    return [[int(doc) for doc, _ in hits.get(qid, [])] for qid in query_ids]


# ---- selection -----------------------------------------------------------------------------------
def select_negatives(
    ranked: Sequence[int],
    excluded: set[int],
    config: MiningConfig,
    rng: random.Random,
) -> tuple[list[int], int]:
    """Sample up to ``num_negatives`` rows from ``ranked[range_start:range_end]`` minus ``excluded``.

    Returns ``(rows, excluded_in_window)``; rows keep their rank order.
    """
    window = list(ranked[config.range_start : config.range_end])
    candidates = [row for row in window if row not in excluded]
    dropped = len(window) - len(candidates)
    if len(candidates) > config.num_negatives:
        chosen = set(rng.sample(range(len(candidates)), config.num_negatives))
        candidates = [row for i, row in enumerate(candidates) if i in chosen]
    return candidates, dropped


def mine_hard_negatives(
    examples: Sequence[ContrastiveExample],
    corpus: Sequence[str],
    config: MiningConfig,
    model=None,
    builder=None,
    show_progress: bool = True,
) -> tuple[list[ContrastiveExample], MiningReport]:
    """Examples with mined negatives, plus a report. ``model``/``builder`` are needed for ``dense``."""
    import time

    if not examples:
        raise ValueError("no examples to mine negatives for")
    # One row per distinct text; the positives join the corpus so that they are ranked (and excluded).
    texts = list(dict.fromkeys([*corpus, *(p for e in examples for p in e.pos)]))
    texts = [t for t in texts if t.strip()]
    if len(texts) <= config.range_start:
        raise ValueError(
            f"the corpus has {len(texts)} passages, not more than range_start={config.range_start}: "
            "lower --range-start or give a larger --corpus"
        )
    row_of = {text: row for row, text in enumerate(texts)}
    queries = [e.query for e in examples]
    top_k = config.range_end
    started = time.perf_counter()
    if config.method == "dense":
        if model is None or builder is None:
            raise ValueError("dense mining needs a LLaRA model and its LlaraInputBuilder")
        ranked = rank_dense(model, builder, queries, texts, top_k, config, show_progress)
    else:
        ranked = rank_bm25(queries, texts, top_k, show_progress)
    report = MiningReport(queries=len(examples), corpus_size=len(texts), config=asdict(config))
    report.seconds_ranking = round(time.perf_counter() - started, 3)
    from tqdm.auto import tqdm

    mined: list[ContrastiveExample] = []
    for index, (example, rows) in enumerate(tqdm(list(zip(examples, ranked)), desc="Sampling negatives",
                                                 disable=not show_progress)):
        excluded = {row_of[p] for p in example.pos if p in row_of}
        if example.query in row_of:
            excluded.add(row_of[example.query])
        # As the released miner: the window is over the retriever's ranks, positives removed from it.
        rng = random.Random(f"{config.seed}:{index}")
        chosen, dropped = select_negatives(rows, excluded, config, rng)
        report.positives_in_window_excluded += dropped
        negatives = [texts[r] for r in chosen]
        if config.keep_existing_negatives:
            negatives = list(dict.fromkeys([*example.neg, *negatives]))
        report.negatives_written += len(negatives)
        if len(chosen) < config.num_negatives:
            report.queries_short_of_negatives += 1
        if not negatives:
            report.queries_without_negatives += 1
        mined.append(ContrastiveExample(example.query, list(example.pos), negatives, example.query_id))
    return mined, report


def write_training_jsonl(path: str | os.PathLike, examples: Sequence[ContrastiveExample], overwrite: bool = False) -> Path:
    """Write ``{"query", "pos", "neg"}`` lines (plus ``id`` when known) atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for example in examples:
                record = {"query": example.query, "pos": example.pos, "neg": example.neg}
                if example.query_id is not None:
                    record = {"id": example.query_id, **record}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


__all__ = [
    "MiningConfig",
    "MiningReport",
    "encode_texts",
    "mine_hard_negatives",
    "rank_bm25",
    "rank_dense",
    "select_negatives",
    "write_training_jsonl",
]
