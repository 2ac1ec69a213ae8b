"""``build_corpus_index``: encode a corpus in resumable shards, build a FAISS index and save it atomically.

The shards live in ``<out>.partial/`` next to the index until the index directory is in place; a rerun after
an interruption encodes only the shards that are not finished.

Data parallel: under ``torchrun --nproc_per_node N`` or ``accelerate launch`` every rank encodes its share of the
shards (shard ``i`` on rank ``i % N``) into the same ``<out>.partial/shards``; rank 0 waits for all of them, builds
the index and saves it, the other ranks return ``None``. Shards do not depend on which rank encoded them, so the
index is the one a single process builds, and a run that lost a rank resumes with any number of processes.

``index_corpus_file`` reads a corpus.jsonl as a stream (``trainers.retrieval.beir.scan_corpus``): memory holds the
ids and one byte offset per document, and each rank reads only the texts of its own shards.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainers.retrieval.beir import CorpusFile, scan_corpus
from trainers.retrieval.encoding import (
    EncodeFn,
    TextSource,
    corpus_fingerprint,
    distributed_context,
    encode_in_shards,
    file_fingerprint,
    shard_rows,
    wait_for_shards,
)
from trainers.retrieval.faiss_index import IndexSpec, build_index, checked_encoder, compression_record, save_index


def work_dir_for(out_dir: str | os.PathLike[str]) -> Path:
    """Where the resumable shards of an index build live: ``<out>.partial`` next to it."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.partial"


def build_corpus_index(
    encode_fn: EncodeFn,
    ids: Sequence[str],
    texts: Sequence[str] | TextSource,
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
    fingerprint: str | None = None,
) -> Path | None:
    """Encode a corpus in resumable shards, build the index and save it atomically.

    ``model_id`` identifies the encoder (see ``model_identity``) for the resume check and meta.json. ``texts`` is a
    list or a ``TextSource`` read shard by shard; with a ``TextSource`` give the ``fingerprint`` of its content
    (``file_fingerprint``), since hashing it here would read every text. In a data-parallel run (see the module
    docstring) ranks other than 0 return ``None`` once their shards are written.
    """
    spec = spec or IndexSpec()
    out_dir = Path(out_dir)
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (use --overwrite to replace it)")
    spec.check_size(len(ids))
    if fingerprint is None:
        if isinstance(texts, TextSource):
            raise ValueError("texts read from a TextSource need the fingerprint of their content")
        fingerprint = corpus_fingerprint(ids, texts, model_id)
    context = distributed_context()
    work_dir = work_dir_for(out_dir)
    if context.is_main and overwrite and work_dir.exists():
        shutil.rmtree(work_dir)  # --overwrite builds afresh: no shard of an earlier build is trusted
    context.barrier()  # no rank writes a shard before rank 0 has cleared the folder
    started = time.perf_counter()
    shards = encode_in_shards(
        checked_encoder(encode_fn, spec),  # a bad --truncate-dim / --quantize fails on the first batch
        texts,
        work_dir / "shards",
        fingerprint=fingerprint,
        shard_size=shard_size,
        batch_size=batch_size,
        show_progress=show_progress and context.is_main,  # one bar (rank 0's share), not one per rank
        rank=context.rank,
        world_size=context.world_size,
    )
    if not context.is_main:
        return None
    # Polling the files, not a barrier: it gives a clear error naming what is missing, and the other ranks do not
    # have to stay in a collective for as long as rank 0 builds the index.
    wait_for_shards(shards, shard_rows(len(ids), shard_size))
    for leftover in (work_dir / "shards").glob(".shard_*.tmp"):  # half-written by a process that was killed
        leftover.unlink(missing_ok=True)
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
        **compression_record(spec, shards),
        encode_processes=context.world_size,
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


def index_corpus_file(
    encode_fn: EncodeFn,
    corpus: CorpusFile | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model_id: str,
    show_progress: bool = True,
    **options: Any,
) -> Path | None:
    """``build_corpus_index`` over a BEIR corpus.jsonl (a path, or one already read by ``scan_corpus``) read as a
    stream (see the module docstring).

    ``options``: the keyword options of ``build_corpus_index`` (``spec``, ``shard_size``, ``batch_size``,
    ``keep_embeddings``, ``overwrite``, ``extra_meta``). The resume fingerprint hashes the file's bytes and the model.
    """
    if not isinstance(corpus, CorpusFile):
        corpus = scan_corpus(corpus, show_progress=show_progress and distributed_context().is_main)
    return build_corpus_index(
        encode_fn,
        corpus.ids,
        corpus,
        out_dir,
        model_id=model_id,
        fingerprint=file_fingerprint(corpus.sha256, model_id),
        show_progress=show_progress,
        **options,
    )
