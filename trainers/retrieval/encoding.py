"""Turn texts into L2-normalized float32 embeddings: load an encoder, batch by length, encode in resumable shards.

``encode_in_shards`` writes one ``.npy`` shard at a time into a work folder (each shard atomically); a rerun
after an interruption reuses the finished shards, provided the corpus, model and shard size are the same
(checked with a fingerprint kept in the folder's ``manifest.json``).

Data parallel: under ``torchrun``/``accelerate launch`` (``RANK``/``WORLD_SIZE`` in the environment) shard ``i`` is
encoded by rank ``i % world_size`` into the same folder, and rank 0 waits for every shard file. In one Python
process, ``encode_corpus_multi_process`` spreads a list of texts over devices with sentence-transformers' own
multi-process pool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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
# How long rank 0 waits for the other ranks' shards, and the process group's collective timeout: long, because a
# rank's share of a large corpus can take hours; a rank that dies makes torchrun stop the others long before.
SHARD_WAIT_SECONDS = 24 * 3600
SHARD_POLL_SECONDS = 2.0


@runtime_checkable
class TextSource(Protocol):
    """Texts read on demand by position (``trainers.retrieval.beir.CorpusFile``): a shard reads only its own."""

    def __len__(self) -> int: ...

    def read_texts(self, start: int, stop: int) -> list[str]: ...


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a data-parallel run: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> str:
        """``cuda:<local rank>`` when CUDA is available (one process per GPU), else ``cpu``.

        Raises:
            ValueError: this node runs more processes than it has visible GPUs.
        """
        import torch

        if not torch.cuda.is_available():
            return "cpu"
        if self.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {self.local_rank} has no GPU: {torch.cuda.device_count()} visible on this node; start at "
                "most one process per GPU (--nproc_per_node)"
            )
        return f"cuda:{self.local_rank}"

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


def distributed_context() -> DistributedContext:
    """Rank and world size of this process, joining a process group when launched with several processes.

    torchrun and ``accelerate launch`` both set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. A process group that is
    already initialized is used as it is; otherwise one is started on gloo (it carries only barriers, so no GPU
    backend is needed) with a timeout of ``SHARD_WAIT_SECONDS``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=SHARD_WAIT_SECONDS))
    return DistributedContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )


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


def file_fingerprint(corpus_sha256: str, model_id: str) -> str:
    """The resume fingerprint of a corpus read as a stream: its bytes' hash and the model identity."""
    return hashlib.sha256(f"{model_id}\x00{corpus_sha256}".encode()).hexdigest()


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


def _read_shard(texts: Sequence[str] | TextSource, start: int, stop: int) -> list[str]:
    if isinstance(texts, TextSource):
        return texts.read_texts(start, stop)
    return list(texts[start:stop])


def encode_in_shards(
    encode_fn: EncodeFn,
    texts: Sequence[str] | TextSource,
    work_dir: str | os.PathLike[str],
    *,
    fingerprint: str,
    shard_size: int = 10_000,
    batch_size: int = 32,
    show_progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> list[Path]:
    """Encode ``texts`` into ``work_dir/shard_XXXXXX.npy`` files, skipping shards already finished.

    Shard ``i`` holds rows ``[i * shard_size, (i + 1) * shard_size)`` in corpus order and is encoded by the process
    of rank ``i % world_size``; length-sorted batching stays within a shard, so a shard's vectors do not depend on
    which process or how many encoded it. Each shard is written atomically, so an interruption loses at most the
    shard being encoded. ``texts`` is a list or a ``TextSource`` (a corpus on disk: only the shards of this rank
    are read). Returns the paths of every shard; with several ranks, other ranks' shards may not exist yet
    (``wait_for_shards``).

    Raises:
        ValueError: ``work_dir`` holds shards of another corpus, model or shard size.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
    num_texts = len(texts)
    if not num_texts:
        raise ValueError("nothing to encode: the corpus is empty")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    num_shards = math.ceil(num_texts / shard_size)
    manifest = {
        "fingerprint": fingerprint,
        "num_texts": num_texts,
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
        # Every rank writes the same manifest atomically: whichever rename lands last, the file is the same.
        atomic_write_json(manifest_path, manifest)

    paths = [_shard_path(work_dir, shard) for shard in range(num_shards)]
    rows_of = [min(shard_size, num_texts - shard * shard_size) for shard in range(num_shards)]
    mine = [shard for shard in range(num_shards) if shard % world_size == rank]
    todo = [shard for shard in mine if not _finished_shard(paths[shard], rows_of[shard])]
    total = sum(rows_of[shard] for shard in mine)
    already = total - sum(rows_of[shard] for shard in todo)
    if already:
        logger.info("resuming: %d of %d shards already encoded", len(mine) - len(todo), len(mine))
    description = "Encoding corpus" if world_size == 1 else f"Encoding corpus (rank {rank}/{world_size})"
    with tqdm(total=total, initial=already, desc=description, unit="doc", disable=not show_progress) as progress:
        for shard in todo:
            start = shard * shard_size
            chunk = _read_shard(texts, start, start + rows_of[shard])
            atomic_save_npy(paths[shard], encode_texts(encode_fn, chunk, batch_size=batch_size, progress=progress))
    return paths


def wait_for_shards(
    paths: Sequence[Path],
    rows: Sequence[int],
    *,
    timeout: float = SHARD_WAIT_SECONDS,
    poll_seconds: float = SHARD_POLL_SECONDS,
) -> None:
    """Block until every shard file is finished (written by other ranks), or raise after ``timeout`` seconds.

    Raises:
        TimeoutError: shards are still missing; the message names them and says how to resume.
    """
    deadline = time.monotonic() + timeout
    missing = list(range(len(paths)))
    while True:
        missing = [shard for shard in missing if not _finished_shard(paths[shard], rows[shard])]
        if not missing:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(paths[shard].name for shard in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise TimeoutError(
                f"waited {timeout:.0f}s for {len(missing)} embedding shards of other ranks ({names}) in "
                f"{paths[0].parent}; a rank may have failed: run the same command again to encode only the missing shards"
            )
        time.sleep(poll_seconds)


def encode_across_ranks(
    encode_fn: EncodeFn,
    texts: Sequence[str] | TextSource,
    work_dir: str | os.PathLike[str],
    *,
    fingerprint: str,
    shard_size: int = 10_000,
    batch_size: int = 32,
    show_progress: bool = True,
) -> np.ndarray | None:
    """Encode ``texts`` in shards shared by the ranks of a data-parallel run; rank 0 gets every row.

    Each rank encodes its shards into ``work_dir`` (see ``encode_in_shards``); rank 0 waits for the others' and
    returns the ``(len(texts), dim)`` float32 embeddings, the other ranks return None. In one process this is
    ``encode_in_shards`` plus loading. The folder stays, so a rerun resumes; remove it once the result is safe.
    """
    context = distributed_context()
    paths = encode_in_shards(
        encode_fn,
        texts,
        work_dir,
        fingerprint=fingerprint,
        shard_size=shard_size,
        batch_size=batch_size,
        show_progress=show_progress and context.is_main,
        rank=context.rank,
        world_size=context.world_size,
    )
    if not context.is_main:
        return None
    wait_for_shards(paths, shard_rows(len(texts), shard_size))
    return load_shards(paths)


def shard_rows(num_texts: int, shard_size: int) -> list[int]:
    """Rows of each shard of ``num_texts`` texts cut into shards of ``shard_size``."""
    return [min(shard_size, num_texts - start) for start in range(0, num_texts, shard_size)]


def encode_corpus_multi_process(
    model: SentenceTransformer,
    texts: Sequence[str],
    *,
    devices: Sequence[str] | None = None,
    pool: dict[str, Any] | None = None,
    batch_size: int = 32,
    chunk_size: int | None = None,
    show_progress: bool = False,
) -> np.ndarray:
    """Passage embeddings of ``texts`` computed by one worker process per device: float32, L2-normalized, in order.

    sentence-transformers' own multi-process encoding does the work: ``devices`` (``["cuda:0", "cuda:1"]`` or
    ``["cpu", "cpu"]``) starts a pool for this call; ``pool`` (from ``model.start_multi_process_pool``) reuses one
    across calls. ``encode_document`` gives LLaRA passages their summarize suffix in every worker.
    """
    if (devices is None) == (pool is None):
        raise ValueError("give either devices (a list of torch devices) or pool (a started multi-process pool)")
    if devices is not None and not devices:
        raise ValueError("devices is empty: name at least one torch device")
    if not texts:
        raise ValueError("nothing to encode: the list of texts is empty")
    embeddings = model.encode_document(
        list(texts),
        batch_size=batch_size,
        device=list(devices) if devices is not None else None,
        pool=pool,
        chunk_size=chunk_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=show_progress,
    )
    return np.asarray(embeddings, dtype=np.float32)  # (len(texts), dim)


def load_shards(paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """Concatenate embedding shards into one float32 array."""
    return np.concatenate([np.load(path) for path in paths], axis=0)
