"""Turn texts into L2-normalized float32 embeddings: load an encoder, batch by length, encode in resumable shards.

``encode_in_shards`` writes one ``.npy`` shard at a time into a work folder (each shard atomically); a rerun
after an interruption reuses the finished shards, provided the corpus, model and shard size are the same
(checked with a fingerprint kept in the folder's ``manifest.json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from trainers.io import atomic_save_npy, atomic_write_json
from trainers.model_folders import is_llara_folder, read_model_config

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"

# A list of texts in, a float32 (len(texts), dim) array of L2-normalized embeddings out.
EncodeFn = Callable[[list[str]], np.ndarray]


def load_encoder(name_or_path: str, *, device: str | None = None, dtype: str = "auto") -> SentenceTransformer:
    """Load any encoder as a sentence-transformers model.

    LLaRA folders get ``trust_remote_code=True`` (their pooling lives in the folder's own code) and run in
    ``dtype``: ``auto`` is bf16 on hardware that runs it natively (a CPU with AMX-BF16/AVX512-BF16, a CUDA
    device with bf16) and fp32 elsewhere, pooling and normalization staying fp32. Other sentence-transformers
    models load as they are, in the dtype given only when it is not ``auto``.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    from modeling_llara import resolve_dtype

    path = Path(name_or_path)
    if path.exists() and not path.is_dir():
        raise FileNotFoundError(f"model path is a file, expected a model folder: {path}")
    trust = is_llara_folder(path)
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_kwargs = None
    if trust or dtype != "auto":
        config = read_model_config(path) if trust else None  # a stage-1 export pins `auto` to fp32
        model_kwargs = {"dtype": resolve_dtype(dtype, target, config=config)}
    return SentenceTransformer(str(name_or_path), device=device, trust_remote_code=trust, model_kwargs=model_kwargs)


def _normalized(encode_side: Callable[..., Any], batch_size: int) -> EncodeFn:
    def encode(texts: list[str]) -> np.ndarray:
        embeddings = encode_side(
            texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(embeddings, dtype=np.float32)

    return encode


def document_encoder(model: SentenceTransformer, batch_size: int = 32) -> EncodeFn:
    """Passage side: ``encode_document`` (the LLaRA summarize suffix is applied inside the model)."""
    return _normalized(model.encode_document, batch_size)


def query_encoder(model: SentenceTransformer, batch_size: int = 32) -> EncodeFn:
    """Query side: ``encode_query`` (the LLaRA predict suffix is applied inside the model)."""
    return _normalized(model.encode_query, batch_size)


def length_sorted_batches(texts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    """Positions of ``texts`` grouped into batches of similar length, longest first.

    Similar lengths keep padding (wasted compute) small; longest first makes an out-of-memory
    error show up on the first batch rather than at the end.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def encode_texts(
    encode_fn: EncodeFn,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    progress: tqdm | None = None,
) -> np.ndarray:
    """Encode ``texts`` in length-sorted batches and return float32 rows in the input order."""
    rows: np.ndarray | None = None
    for positions in length_sorted_batches(texts, batch_size):
        embeddings = np.asarray(encode_fn([texts[i] for i in positions]), dtype=np.float32)  # (batch, dim)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(positions):
            raise ValueError(
                f"the encoder returned shape {embeddings.shape} for a batch of {len(positions)} texts"
            )
        if rows is None:
            rows = np.empty((len(texts), embeddings.shape[1]), dtype=np.float32)  # (n, dim)
        rows[positions] = embeddings
        if progress is not None:
            progress.update(len(positions))
    if rows is None:
        raise ValueError("nothing to encode: the list of texts is empty")
    return rows


def corpus_fingerprint(ids: Sequence[str], texts: Sequence[str], model_id: str) -> str:
    """A hash of the model identity and the corpus, to refuse resuming shards of another run."""
    digest = hashlib.sha256()
    digest.update(model_id.encode("utf-8"))
    for doc_id, text in zip(ids, texts, strict=True):
        digest.update(b"\x00")
        digest.update(doc_id.encode("utf-8"))
        digest.update(b"\x01")
        digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def model_identity(name_or_path: str) -> str:
    """A model's name plus, for a local folder, the size and mtime of its weight files.

    Part of the resume fingerprint: retraining a model in place must not resume old shards.
    """
    path = Path(name_or_path)
    if not path.is_dir():
        return name_or_path
    parts = [str(path.resolve())]
    for weights in sorted(path.rglob("*")):
        if weights.suffix in {".safetensors", ".bin", ".pt", ".gguf"} and weights.is_file():
            stat = weights.stat()
            parts.append(f"{weights.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def _shard_path(work_dir: Path, shard: int) -> Path:
    return work_dir / f"shard_{shard:06d}.npy"


def _finished_shard(path: Path, rows: int) -> bool:
    if not path.is_file():
        return False
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError):
        logger.warning("%s is unreadable; encoding that shard again", path)
        return False
    return array.ndim == 2 and array.shape[0] == rows and array.dtype == np.float32


def encode_in_shards(
    encode_fn: EncodeFn,
    texts: Sequence[str],
    work_dir: str | os.PathLike[str],
    *,
    fingerprint: str,
    shard_size: int = 10_000,
    batch_size: int = 32,
    show_progress: bool = True,
) -> list[Path]:
    """Encode ``texts`` into ``work_dir/shard_XXXXXX.npy`` files, skipping shards already finished.

    Shard ``i`` holds rows ``[i * shard_size, (i + 1) * shard_size)`` in corpus order. Each shard
    is written atomically, so an interruption loses at most the shard being encoded.

    Raises:
        ValueError: ``work_dir`` holds shards of another corpus, model or shard size.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not texts:
        raise ValueError("nothing to encode: the corpus is empty")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    num_shards = math.ceil(len(texts) / shard_size)
    manifest = {
        "fingerprint": fingerprint,
        "num_texts": len(texts),
        "shard_size": shard_size,
        "num_shards": num_shards,
    }
    manifest_path = work_dir / MANIFEST_FILE
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        if previous != manifest:
            raise ValueError(
                f"{work_dir} holds embedding shards of a different run (corpus, model or shard size "
                "changed); delete it to start over"
            )
    else:
        atomic_write_json(manifest_path, manifest)

    paths = [_shard_path(work_dir, shard) for shard in range(num_shards)]
    rows_of = [min(shard_size, len(texts) - shard * shard_size) for shard in range(num_shards)]
    done = [_finished_shard(path, rows) for path, rows in zip(paths, rows_of, strict=True)]
    already = sum(rows for rows, finished in zip(rows_of, done, strict=True) if finished)
    if already:
        logger.info("resuming: %d of %d shards already encoded", sum(done), num_shards)
    with tqdm(
        total=len(texts), initial=already, desc="Encoding corpus", unit="doc", disable=not show_progress
    ) as progress:
        for shard, (path, finished) in enumerate(zip(paths, done, strict=True)):
            if finished:
                continue
            start = shard * shard_size
            chunk = list(texts[start : start + rows_of[shard]])
            atomic_save_npy(path, encode_texts(encode_fn, chunk, batch_size=batch_size, progress=progress))
    return paths


def load_shards(paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """Concatenate embedding shards into one float32 array."""
    return np.concatenate([np.load(path) for path in paths], axis=0)
