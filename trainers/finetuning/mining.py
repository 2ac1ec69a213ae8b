"""Hard-negative mining for LLaRA stage 2 (``llara mine``).

Rank the corpus for every training query and sample each query's negatives from a rank window
(``range_start`` to ``range_end``, 0-based, end excluded; the released LLARA-passage data used a dense
retriever's top 200, LLARA-beir BM25). The query's positives (and the query text itself) are taken out of the
ranking first, then the window is applied, so the window counts non-positive passages. The top ranks are
skipped on purpose: in real data many of them are unjudged positives, and training on false negatives hurts.

* dense: sentence-transformers' ``util.mine_hard_negatives`` with FAISS (``use_faiss=True``) and random
  sampling inside the window, on the LLaRA model loaded as a ``SentenceTransformer`` (queries through
  ``encode_query``, passages through ``encode_document``);
* BM25: ``bm25s`` ranks (:func:`trainers.retrieval.evaluation.rank_bm25`), the same window and sampling here,
  since sentence-transformers' miner needs an embedding model.

Queries for which the window holds fewer than ``num_negatives`` passages keep what was found; the
:class:`MiningReport` counts them.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from trainers.finetuning.data import ContrastiveExample

logger = logging.getLogger(__name__)


@dataclass
class MiningConfig:
    method: Literal["dense", "bm25"] = "dense"  # "dense" (a LLaRA model) or "bm25"
    range_start: int = 10
    range_end: int = 100
    num_negatives: int = 15
    seed: int = 42
    batch_size: int = 32
    keep_existing_negatives: bool = False

    def __post_init__(self):
        if self.method not in ("dense", "bm25"):
            raise ValueError(f"method must be 'dense' or 'bm25', got {self.method!r}")
        if not 0 <= self.range_start < self.range_end:
            raise ValueError(f"need 0 <= range_start < range_end, got {self.range_start}..{self.range_end}")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if self.num_negatives > self.range_end - self.range_start:
            raise ValueError(
                f"num_negatives={self.num_negatives} does not fit the rank window {self.range_start}..{self.range_end} "
                f"({self.range_end - self.range_start} ranks): widen the window or ask for fewer negatives"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class MiningReport:
    queries: int = 0
    corpus_size: int = 0
    negatives_written: int = 0
    queries_short_of_negatives: int = 0
    queries_without_negatives: int = 0
    seconds_ranking: float = 0.0
    config: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.queries} queries, corpus {self.corpus_size}: {self.negatives_written} negatives written; "
            f"{self.queries_short_of_negatives} queries got fewer than {self.config.get('num_negatives')} "
            f"({self.queries_without_negatives} got none)"
        )


# ---- ranking -------------------------------------------------------------------------------------
def dense_negatives(
    model, examples: Sequence[ContrastiveExample], texts: Sequence[str], config: MiningConfig, show_progress: bool = True
) -> list[list[str]]:
    """Negatives per example from sentence-transformers' ``mine_hard_negatives`` (FAISS, random in the window).

    ``model`` is a ``SentenceTransformer`` (a LLaRA folder loaded with ``trust_remote_code=True``).
    """
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives as st_mine

    pairs = Dataset.from_dict({
        "anchor": [e.query for e in examples for _ in e.pos],
        "positive": [p for e in examples for p in e.pos],
    })
    random.seed(config.seed)  # the window sampling uses Python's global RNG
    labeled = st_mine(
        pairs, model, corpus=list(texts), range_min=config.range_start, range_max=config.range_end,
        num_negatives=config.num_negatives, sampling_strategy="random", use_faiss=True, output_format="labeled-pair",
        batch_size=config.batch_size, verbose=show_progress,
    )
    found: dict[str, list[str]] = {}
    for query, passage, label in zip(labeled["anchor"], labeled["positive"], labeled["label"]):
        if label == 0:
            found.setdefault(query, []).append(passage)
    return [found.get(e.query, []) for e in examples]


def bm25_negatives(
    examples: Sequence[ContrastiveExample], texts: Sequence[str], config: MiningConfig, show_progress: bool = True
) -> list[list[str]]:
    """Negatives per example from BM25 ranks (bm25s): positives and the query removed, then the window sampled."""
    from trainers.retrieval.evaluation import rank_bm25 as _rank

    doc_ids = [str(i) for i in range(len(texts))]
    query_ids = [str(i) for i in range(len(examples))]
    most_positives = max(len(e.pos) for e in examples) + 1
    hits = _rank(doc_ids, list(texts), query_ids, [e.query for e in examples], top_k=config.range_end + most_positives,
                 show_progress=show_progress)
    out = []
    for index, example in enumerate(examples):
        excluded = {*example.pos, example.query}
        ranked = [int(doc) for doc, _ in hits.get(str(index), []) if texts[int(doc)] not in excluded]
        rows = select_negatives(ranked, config, random.Random(f"{config.seed}:{index}"))
        out.append([texts[row] for row in rows])
    return out


# ---- selection -----------------------------------------------------------------------------------
def select_negatives(ranked: Sequence[int], config: MiningConfig, rng: random.Random) -> list[int]:
    """Up to ``num_negatives`` rows sampled from ``ranked[range_start:range_end]``, kept in rank order.

    ``ranked`` holds candidate rows best first, positives already removed.
    """
    window = list(ranked[config.range_start : config.range_end])
    if len(window) <= config.num_negatives:
        return window
    chosen = set(rng.sample(range(len(window)), config.num_negatives))
    return [row for i, row in enumerate(window) if i in chosen]


def mine_hard_negatives(
    examples: Sequence[ContrastiveExample],
    corpus: Sequence[str],
    config: MiningConfig,
    model=None,
    show_progress: bool = True,
) -> tuple[list[ContrastiveExample], MiningReport]:
    """Examples with mined negatives, plus a report. ``model`` (a ``SentenceTransformer``) is needed for ``dense``."""
    import time

    if not examples:
        raise ValueError("no examples to mine negatives for")
    # One row per distinct text; the positives join the corpus so that they are ranked (and removed).
    texts = list(dict.fromkeys([*corpus, *(p for e in examples for p in e.pos)]))
    texts = [t for t in texts if t.strip()]
    if len(texts) <= config.range_start:
        raise ValueError(
            f"the corpus has {len(texts)} passages, not more than range_start={config.range_start}: "
            "lower --range-start or give a larger --corpus"
        )
    started = time.perf_counter()
    if config.method == "dense":
        if model is None:
            raise ValueError("dense mining needs a LLaRA model loaded as a SentenceTransformer")
        found = dense_negatives(model, examples, texts, config, show_progress)
    else:
        found = bm25_negatives(examples, texts, config, show_progress)
    report = MiningReport(queries=len(examples), corpus_size=len(texts), config=asdict(config))
    report.seconds_ranking = round(time.perf_counter() - started, 3)
    mined: list[ContrastiveExample] = []
    for example, negatives in zip(examples, found):
        report.queries_short_of_negatives += len(negatives) < config.num_negatives
        if config.keep_existing_negatives:
            negatives = list(dict.fromkeys([*example.neg, *negatives]))
        report.negatives_written += len(negatives)
        report.queries_without_negatives += not negatives
        mined.append(ContrastiveExample(example.query, list(example.pos), negatives, example.query_id))
    return mined, report


def write_training_jsonl(path: str | os.PathLike, examples: Sequence[ContrastiveExample], overwrite: bool = False) -> Path:
    """Write ``{"query", "pos", "neg"}`` lines (plus ``id`` when known) atomically."""
    from trainers.io import write_jsonl

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    records = (
        {**({"id": e.query_id} if e.query_id is not None else {}), "query": e.query, "pos": e.pos, "neg": e.neg}
        for e in examples
    )
    return write_jsonl(path, records)


__all__ = [
    "MiningConfig",
    "MiningReport",
    "bm25_negatives",
    "dense_negatives",
    "mine_hard_negatives",
    "select_negatives",
    "write_training_jsonl",
]
