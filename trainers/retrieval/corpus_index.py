"""``build_corpus_index``: encode a corpus in resumable shards, build a FAISS index and save it atomically.

The shards live in ``<out>.partial/`` next to the index until the index directory is in place; a rerun after
an interruption encodes only the shards that are not finished.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainers.retrieval.encoding import EncodeFn, corpus_fingerprint, encode_in_shards
from trainers.retrieval.faiss_index import IndexSpec, build_index, save_index


def work_dir_for(out_dir: str | os.PathLike[str]) -> Path:
    """Where the resumable shards of an index build live: ``<out>.partial`` next to it."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.partial"


def build_corpus_index(
    encode_fn: EncodeFn,
    ids: Sequence[str],
    texts: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    model_id: str,
    spec: IndexSpec | None = None,
    shard_size: int = 10_000,
    batch_size: int = 32,
    keep_embeddings: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Encode a corpus in resumable shards, build the index and save it atomically.

    ``model_id`` identifies the encoder (see ``model_identity``) for the resume check and meta.json.
    """
    spec = spec or IndexSpec()
    out_dir = Path(out_dir)
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (use --overwrite to replace it)")
    spec.check_size(len(ids))
    work_dir = work_dir_for(out_dir)
    if overwrite and work_dir.exists():
        shutil.rmtree(work_dir)  # --overwrite builds afresh: no shard of an earlier build is trusted
    fingerprint = corpus_fingerprint(ids, texts, model_id)
    started = time.perf_counter()
    shards = encode_in_shards(
        encode_fn,
        texts,
        work_dir / "shards",
        fingerprint=fingerprint,
        shard_size=shard_size,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    encode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    index = build_index(shards, spec, show_progress=show_progress)
    build_seconds = time.perf_counter() - started
    meta = dict(extra_meta or {})
    meta.update(
        index_type=spec.index_type,
        index_spec=spec.to_dict(),
        factory=spec.factory_string(index.d, index.ntotal),
        corpus_fingerprint=fingerprint,
        encode_seconds=round(encode_seconds, 3),
        build_seconds=round(build_seconds, 3),
        has_embeddings=keep_embeddings,
    )
    save_index(
        out_dir,
        index,
        ids,
        meta,
        embeddings_dir=work_dir / "shards" if keep_embeddings else None,
        overwrite=overwrite,
    )
    shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir
