"""Build, search, save and load FAISS indexes over L2-normalized embeddings (inner product = cosine).

An index directory holds::

    index.faiss     the FAISS index
    ids.json        the corpus id of each row, in row order
    meta.json       what built it, the index parameters, and the size of each file;
                    written last, so a directory without it is an unfinished build
    embeddings/     optional: the float32 embedding shards (``--keep-embeddings``)

The directory is assembled under a hidden staging name and renamed into place, so readers see either
no index or a complete one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from trainers.io import atomic_write_json, atomic_write_text, staged_dir

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
META_FILE = "meta.json"
EMBEDDINGS_DIR = "embeddings"
FORMAT_VERSION = 1

PQ_TRAIN_POINTS_PER_CODE = 64
# Exact search of a flat index by matrix products: queries from which it pays (faiss' own BLAS threshold) and
# the score elements one block of it may hold (64M fp32 = 256 MiB).
FLAT_GEMM_MIN_QUERIES = 20
FLAT_GEMM_BLOCK_ELEMENTS = 2**26

INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq", "sq8", "sq4", "sqfp16")


class IncompleteIndexError(RuntimeError):
    """An index directory is missing, half-written or inconsistent."""


# ---------------------------------------------------------------------------------------------
# Index construction


@dataclass
class IndexSpec:
    """Which FAISS index to build and its parameters. All indexes use inner product.

    Types: ``flat`` exact search; ``hnsw`` graph (``hnsw_m`` links per node, ``ef_construction``,
    ``ef_search``); ``ivf`` inverted lists over ``nlist`` k-means cells, ``nprobe`` visited per query;
    ``ivfpq`` the same with product-quantized codes of ``pq_m`` sub-vectors x ``pq_nbits`` bits;
    ``sq8``/``sq4``/``sqfp16`` scalar quantization to 8 bits, 4 bits or float16 per dimension.
    """

    index_type: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int = 16
    pq_m: int | None = None
    pq_nbits: int = 8
    train_size: int | None = None
    kmeans_iters: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe", "pq_nbits", "kmeans_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"nlist must be >= 1, got {self.nlist}")
        if self.pq_m is not None and self.pq_m < 1:
            raise ValueError(f"pq_m must be >= 1, got {self.pq_m}")

    def check_size(self, num_vectors: int) -> None:
        """Refuse, before anything is encoded, an index that ``num_vectors`` vectors cannot train."""
        if num_vectors < 1:
            raise ValueError("the corpus is empty: nothing to index")
        if self.index_type in ("ivf", "ivfpq") and self.nlist is not None and self.nlist > num_vectors:
            raise ValueError(
                f"--nlist {self.nlist} needs at least {self.nlist} vectors to train its cells, but the corpus has "
                f"{num_vectors}: lower --nlist (or leave it out: about 4 * sqrt(n) cells), or use a flat index"
            )

    def resolved_nlist(self, num_vectors: int) -> int:
        """``nlist``, or about 4 * sqrt(n) cells, capped so each cell gets >= 39 training points."""
        if self.nlist is not None:
            return self.nlist
        # faiss' k-means wants >= 39 points per centroid; 4 * sqrt(n) is the usual starting point.
        return max(1, min(int(4 * math.sqrt(num_vectors)), num_vectors // 39))

    def resolved_pq_m(self, dim: int) -> int:
        """``pq_m``, or dim / 8 sub-vectors (8 dimensions per byte-sized code)."""
        pq_m = self.pq_m if self.pq_m is not None else max(1, dim // 8)
        if dim % pq_m:
            raise ValueError(f"pq_m={pq_m} must divide the embedding dimension {dim}")
        return pq_m

    def factory_string(self, dim: int, num_vectors: int) -> str:
        """The ``faiss.index_factory`` description of this index."""
        if self.index_type == "flat":
            return "Flat"
        if self.index_type == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if self.index_type == "ivf":
            return f"IVF{self.resolved_nlist(num_vectors)},Flat"
        if self.index_type == "ivfpq":
            return f"IVF{self.resolved_nlist(num_vectors)},PQ{self.resolved_pq_m(dim)}x{self.pq_nbits}"
        return {"sq8": "SQ8", "sq4": "SQ4", "sqfp16": "SQfp16"}[self.index_type]

    def resolved_train_size(self, num_vectors: int, dim: int) -> int:
        """How many vectors train the index: ``train_size``, or enough for k-means and PQ codebooks."""
        if self.train_size is not None:
            return min(self.train_size, num_vectors)
        wanted = 0
        if self.index_type in {"ivf", "ivfpq"}:
            wanted = 64 * self.resolved_nlist(num_vectors)
        if self.index_type == "ivfpq":
            wanted = max(wanted, 64 * 2**self.pq_nbits)
        if self.index_type.startswith("sq"):
            wanted = 50_000
        return min(num_vectors, max(wanted, 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def set_search_params(index: faiss.Index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set the query-time knobs of an IVF (``nprobe``) or HNSW (``ef_search``) index; others ignore them."""
    import faiss

    if nprobe is not None:
        with contextlib.suppress(RuntimeError):
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = min(nprobe, ivf.nlist)
    if ef_search is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search


def _vector_blocks(sources: Sequence[np.ndarray | str | os.PathLike[str]]) -> Iterator[np.ndarray]:
    for source in sources:
        yield source if isinstance(source, np.ndarray) else np.load(source, mmap_mode="r")


def _training_sample(
    sources: Sequence[np.ndarray | str | os.PathLike[str]], sizes: list[int], count: int, seed: int
) -> np.ndarray:
    total = sum(sizes)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))
    parts, offset = [], 0
    for block, size in zip(_vector_blocks(sources), sizes, strict=True):
        local = chosen[(chosen >= offset) & (chosen < offset + size)] - offset
        if len(local):
            parts.append(np.asarray(block[local], dtype=np.float32))
        offset += size
    return np.ascontiguousarray(np.concatenate(parts, axis=0))


def build_index(
    sources: np.ndarray | Sequence[np.ndarray | str | os.PathLike[str]],
    spec: IndexSpec | None = None,
    *,
    show_progress: bool = False,
) -> faiss.Index:
    """Build an inner-product FAISS index from one array or a sequence of arrays / ``.npy`` shards.

    Shards are memory-mapped and added one at a time; training (IVF, PQ, SQ) uses a seeded uniform
    sample over all rows.
    """
    import faiss

    spec = spec or IndexSpec()
    if isinstance(sources, np.ndarray):
        sources = [sources]
    sizes, dim = [], None
    for block in _vector_blocks(sources):
        if block.ndim != 2:
            raise ValueError(f"embeddings must be 2-D, got shape {block.shape}")
        if dim is not None and block.shape[1] != dim:
            raise ValueError(f"embedding blocks disagree on dimension: {dim} vs {block.shape[1]}")
        dim = block.shape[1]
        sizes.append(block.shape[0])
    num_vectors = sum(sizes)
    if not num_vectors or dim is None:
        raise ValueError("no embeddings to index")
    index = faiss.index_factory(dim, spec.factory_string(dim, num_vectors), faiss.METRIC_INNER_PRODUCT)
    if spec.index_type == "hnsw":
        index.hnsw.efConstruction = spec.ef_construction
    if spec.index_type in {"ivf", "ivfpq"}:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = spec.seed
        ivf.cp.niter = spec.kmeans_iters
        if hasattr(index, "pq"):
            index.pq.cp.seed = spec.seed
            index.pq.cp.niter = spec.kmeans_iters
            # One k-means per sub-vector: 64 points per code (faiss' default is 256) keeps PQ training
            # from dominating the build while staying well above faiss' minimum of 39.
            index.pq.cp.max_points_per_centroid = PQ_TRAIN_POINTS_PER_CODE
    if not index.is_trained:
        sample = _training_sample(sources, sizes, spec.resolved_train_size(num_vectors, dim), spec.seed)
        started = time.perf_counter()
        index.train(sample)
        logger.info("trained %s on %d vectors in %.1fs", spec.index_type, len(sample), time.perf_counter() - started)
    with tqdm(total=num_vectors, desc="Adding to index", unit="vec", disable=not show_progress) as progress:
        for block in _vector_blocks(sources):
            index.add(np.ascontiguousarray(block, dtype=np.float32))
            progress.update(block.shape[0])
    set_search_params(index, nprobe=spec.nprobe, ef_search=spec.ef_search)
    return index


def search_index(
    index: faiss.Index, queries: np.ndarray, top_k: int, *, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` inner-product search in query batches.

    Returns:
        ``(scores, rows)``, each ``(num_queries, k)`` with ``k = min(top_k, index.ntotal)``; an
        approximate index may fill missing hits with row ``-1``.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    k = min(top_k, index.ntotal)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise ValueError(f"queries must be (num_queries, {index.d}) to search this index, got shape {queries.shape}")
    scores = np.empty((len(queries), k), dtype=np.float32)  # (queries, k)
    rows = np.empty((len(queries), k), dtype=np.int64)  # (queries, k)
    flat = _is_flat_inner_product(index)
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        search = _flat_search_by_matmul if flat and len(batch) >= FLAT_GEMM_MIN_QUERIES else _faiss_search
        scores[start : start + batch_size], rows[start : start + batch_size] = search(index, batch, k)
    return scores, rows


def _faiss_search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return index.search(queries, k)


def _is_flat_inner_product(index: faiss.Index) -> bool:
    import faiss

    return isinstance(index, faiss.IndexFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT and index.ntotal > 0


def _flat_search_by_matmul(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search of a flat index: blocked matrix products and a running top-k.

    The same result as ``index.search`` (up to the order of exact ties), computed from a view of the index's
    own vectors (no copy). faiss-cpu 1.15's flat search ran at the speed of one scan per query on this project's
    CPU, BLAS threshold or not: 100 ms/query at 1M x 576 against 16 ms here (benchmarks/bench_flat_search.py).
    """
    import faiss
    import torch

    num, dim = index.ntotal, index.d
    base = faiss.rev_swig_ptr(index.get_xb(), num * dim).reshape(num, dim)  # (num, dim) view, valid while index lives
    query = torch.from_numpy(queries)  # (queries, dim)
    block = max(1024, FLAT_GEMM_BLOCK_ELEMENTS // len(queries))
    best_scores = best_rows = None
    for start in range(0, num, block):
        scores = query @ torch.from_numpy(base[start : start + block]).T  # (queries, block)
        top_scores, top_rows = scores.topk(min(k, scores.shape[1]), dim=1)
        top_rows += start
        if best_scores is not None:
            top_scores, top_rows = torch.cat([best_scores, top_scores], 1), torch.cat([best_rows, top_rows], 1)
            top_scores, pick = top_scores.topk(min(k, top_scores.shape[1]), dim=1)
            top_rows = top_rows.gather(1, pick)
        best_scores, best_rows = top_scores, top_rows
    return best_scores.numpy(), best_rows.numpy()


def hits_from_search(
    query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, rows: np.ndarray
) -> dict[str, list[tuple[str, float]]]:
    """``{query_id: [(doc_id, score), ...]}`` best first, dropping the ``-1`` rows of ANN misses."""
    hits: dict[str, list[tuple[str, float]]] = {}
    for query_id, query_scores, query_rows in zip(query_ids, scores.tolist(), rows.tolist(), strict=True):
        hits[query_id] = [
            (doc_ids[row], score) for score, row in zip(query_scores, query_rows, strict=True) if row >= 0
        ]
    return hits


# ---------------------------------------------------------------------------------------------
# Index directories


@dataclass
class LoadedIndex:
    index: faiss.Index
    ids: list[str]
    meta: dict[str, Any]
    path: Path


def save_index(
    out_dir: str | os.PathLike[str],
    index: faiss.Index,
    ids: Sequence[str],
    meta: dict[str, Any] | None = None,
    *,
    embeddings_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an index directory atomically (see the module docstring for its layout).

    ``embeddings_dir``, when given, is moved into the index directory as ``embeddings/``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
    """
    import faiss

    out_dir = Path(out_dir)
    if index.ntotal != len(ids):
        raise ValueError(f"the index holds {index.ntotal} vectors but {len(ids)} ids were given")
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate ids: every indexed row needs its own id")
    with staged_dir(out_dir, overwrite=overwrite) as staging:
        faiss.write_index(index, str(staging / INDEX_FILE))
        with open(staging / INDEX_FILE, "rb+") as handle:
            os.fsync(handle.fileno())
        atomic_write_text(staging / IDS_FILE, json.dumps(list(ids), ensure_ascii=False))
        if embeddings_dir is not None:
            shutil.move(str(embeddings_dir), str(staging / EMBEDDINGS_DIR))
        record = dict(meta or {})
        record.update(
            format_version=FORMAT_VERSION,
            num_vectors=int(index.ntotal),
            dim=int(index.d),
            metric="inner_product",
            faiss_version=faiss.__version__,
            files={name: (staging / name).stat().st_size for name in (INDEX_FILE, IDS_FILE)},
            complete=True,
        )
        # meta.json goes last: its presence is what marks the directory as complete.
        atomic_write_json(staging / META_FILE, record)
    return out_dir


def read_index_meta(index_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``meta.json`` of a finished index directory, after checking the files it lists.

    Raises:
        IncompleteIndexError: the directory is missing, unfinished, or its files do not match.
    """
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise IncompleteIndexError(f"index directory not found: {index_dir}")
    meta_path = index_dir / META_FILE
    if not meta_path.is_file():
        raise IncompleteIndexError(
            f"{index_dir} has no {META_FILE}: the index was not completely written (interrupted build?); "
            "build it again"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise IncompleteIndexError(f"{meta_path} is not valid JSON: {error.msg}") from None
    if meta.get("complete") is not True or meta.get("format_version") != FORMAT_VERSION:
        raise IncompleteIndexError(f"{meta_path} does not describe a complete index of format {FORMAT_VERSION}")
    for name, size in meta.get("files", {}).items():
        path = index_dir / name
        if not path.is_file():
            raise IncompleteIndexError(f"{index_dir}: {name} is missing")
        if path.stat().st_size != size:
            raise IncompleteIndexError(
                f"{index_dir}: {name} has {path.stat().st_size} bytes but {size} were written (truncated or replaced)"
            )
    return meta


def load_index(index_dir: str | os.PathLike[str], *, mmap: bool = False) -> LoadedIndex:
    """Load an index directory written by ``save_index``, refusing unfinished or inconsistent ones.

    ``mmap=True`` memory-maps the index file instead of reading it (for indexes larger than RAM).
    """
    import faiss

    index_dir = Path(index_dir)
    meta = read_index_meta(index_dir)
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    index = faiss.read_index(str(index_dir / INDEX_FILE), flags)
    ids = json.loads((index_dir / IDS_FILE).read_text(encoding="utf-8"))
    if index.ntotal != len(ids) or index.ntotal != meta["num_vectors"]:
        raise IncompleteIndexError(
            f"{index_dir}: index has {index.ntotal} vectors, ids.json {len(ids)}, meta.json {meta['num_vectors']}"
        )
    spec = meta.get("index_spec") or {}
    set_search_params(index, nprobe=spec.get("nprobe"), ef_search=spec.get("ef_search"))
    return LoadedIndex(index=index, ids=ids, meta=meta, path=index_dir)
