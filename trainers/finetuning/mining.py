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

import hashlib
import logging
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from trainers.finetuning.data import ContrastiveExample
from trainers.io import write_training_jsonl  # re-exported: writes the mined examples (path, examples, overwrite)

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
    model, examples: Sequence[ContrastiveExample], texts: Sequence[str], config: MiningConfig, show_progress: bool = True,
    cache_folder: str | os.PathLike | None = None,
) -> list[list[str]]:
    """Negatives per example from sentence-transformers' ``mine_hard_negatives`` (FAISS, random in the window).

    ``model`` is a ``SentenceTransformer`` (a LLaRA folder loaded with ``trust_remote_code=True``). ``cache_folder``:
    the miner's embedding cache (see ``shared_corpus_embeddings``).
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
        cache_folder=str(cache_folder) if cache_folder is not None else None,
    )
    found: dict[str, list[str]] = {}
    for query, passage, label in zip(labeled["anchor"], labeled["positive"], labeled["label"]):
        if label == 0:
            found.setdefault(query, []).append(passage)
    return [found.get(e.query, []) for e in examples]


def _st_corpus_cache_file(model, corpus: Sequence[str]) -> str:
    """The file name under which ``sentence_transformers.util.mine_hard_negatives(cache_folder=...)`` looks for the
    corpus embeddings: its hash of the model's base-model name, the corpus prompt and prompt name (none here) and the
    corpus. Should the library change that name, its miner encodes the corpus itself: slower, never wrong."""
    model_name = model.model_card_data.base_model or ""
    digest = hashlib.sha256(repr((model_name, None, None, list(corpus))).encode()).hexdigest()
    return f"corpus_embeddings_{digest}.npy"


def shared_corpus_embeddings(
    model,
    examples: Sequence[ContrastiveExample],
    corpus: Sequence[str],
    config: MiningConfig,
    work_dir: str | os.PathLike,
    *,
    model_id: str = "",
    shard_size: int = 10_000,
    show_progress: bool = True,
) -> Path | None:
    """Dense mining in a data-parallel run (torchrun / accelerate launch): the ranks encode the passages together.

    Each rank encodes its share of resumable shards in ``work_dir/shards``; rank 0 gathers them into the cache folder
    of sentence-transformers' miner, which then skips encoding the corpus, and gets that folder back; the other ranks
    get None. ``model_id`` keys the resume check (``trainers.retrieval.encoding.model_identity``).
    """
    from trainers.io import atomic_save_npy
    from trainers.retrieval.encoding import corpus_fingerprint, document_encoder, encode_across_ranks

    texts = mining_texts(examples, corpus, config)
    # the corpus sentence-transformers' miner builds from these texts and the pairs' positives
    st_corpus = list(dict.fromkeys([*texts, *(p for e in examples for p in e.pos)]))
    work_dir = Path(work_dir)
    embeddings = encode_across_ranks(
        document_encoder(model, config.batch_size), st_corpus, work_dir / "shards",
        fingerprint=corpus_fingerprint([str(row) for row in range(len(st_corpus))], st_corpus, model_id),
        shard_size=shard_size, batch_size=config.batch_size, show_progress=show_progress,
    )
    if embeddings is None:
        return None
    cache = work_dir / "st_cache"
    cache.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(cache / _st_corpus_cache_file(model, st_corpus), embeddings)
    return cache


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


def mining_texts(examples: Sequence[ContrastiveExample], corpus: Sequence[str], config: MiningConfig) -> list[str]:
    """The passages ranked for mining: one row per distinct non-blank text of ``corpus`` and of the positives."""
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
    return texts


def mine_hard_negatives(
    examples: Sequence[ContrastiveExample],
    corpus: Sequence[str],
    config: MiningConfig,
    model=None,
    show_progress: bool = True,
    work_dir: str | os.PathLike | None = None,
    **sharding,
) -> tuple[list[ContrastiveExample], MiningReport]:
    """Examples with mined negatives, plus a report. ``model`` (a ``SentenceTransformer``) is needed for ``dense``.

    ``work_dir``: encode the passages in resumable shards there, shared by the ranks of a data-parallel run; this is
    rank 0's call, the other ranks call ``shared_corpus_embeddings`` alone. ``sharding``: its ``model_id`` and
    ``shard_size``. The folder is removed once the negatives are mined.
    """
    import time

    texts = mining_texts(examples, corpus, config)
    started = time.perf_counter()
    if config.method == "dense":
        if model is None:
            raise ValueError("dense mining needs a LLaRA model loaded as a SentenceTransformer")
        cache_folder = None
        if work_dir is not None:
            cache_folder = shared_corpus_embeddings(model, examples, corpus, config, work_dir, show_progress=show_progress,
                                                    **sharding)
        found = dense_negatives(model, examples, texts, config, show_progress, cache_folder=cache_folder)
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
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


__all__ = [
    "MiningConfig",
    "MiningReport",
    "bm25_negatives",
    "dense_negatives",
    "mine_hard_negatives",
    "mining_texts",
    "select_negatives",
    "shared_corpus_embeddings",
    "write_training_jsonl",
]
