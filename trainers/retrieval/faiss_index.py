"""Build, search, save and load FAISS indexes over L2-normalized embeddings (inner product = cosine).

An index directory holds::

    index.faiss     the FAISS index (a binary index for ``quantize="binary"``)
    ids.json        the corpus id of each row, in row order
    meta.json       what built it, the index parameters, and the size of each file;
                    written last, so a directory without it is an unfinished build
    embeddings/     optional: the float32 embedding shards (``--keep-embeddings``), the vectors that
                    rescoring reads

Compressed vectors (``IndexSpec.truncate_dim`` / ``IndexSpec.quantize``), applied alike to documents at build
time and to queries at search time:

* ``truncate_dim=D`` keeps the first D dimensions and L2-normalizes them again (Matryoshka prefixes).
* ``quantize="binary"``: one bit per dimension, set where the value is > 0, packed 8 per byte (the codes are
  sentence-transformers' ``quantize_embeddings(precision="ubinary")``), in a ``faiss.IndexBinaryFlat``
  searched by Hamming distance with queries binarized the same way. The score reported for a hit is
  ``dim - 2 * hamming``, the inner product of the two +-1 sign vectors (higher is better).
* ``quantize="int8"``: one byte per dimension, the codes of sentence-transformers'
  ``quantize_embeddings(precision="int8")`` calibrated on the per-dimension min/max of every indexed vector
  (stored offset by 128 as faiss' unsigned codes), in a ``faiss.IndexScalarQuantizer(QT_8bit)`` with those
  ranges. Queries stay float32 (asymmetric search): a query is scored against each decoded code, which ranks
  documents exactly as ``query @ dequantized.T`` does with sentence-transformers' dequantization (faiss
  decodes to the middle of each bucket, sentence-transformers to its lower edge: the scores differ by
  ``0.5 * sum(query * step)``, the same for every document of a query).
* Rescoring (``search_queries(..., rescore_vectors=...)``) takes the top ``k * oversample`` candidates of any
  index and ranks them again by the exact inner product of the full float32 query with the full float32
  vectors the encoder produced (before any truncation), keeping the best ``k``. It works with every index
  type; over an untruncated flat float32 index it changes nothing.

The directory is assembled under a hidden staging name and renamed into place, so readers see either
no index or a complete one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from trainers.io import atomic_open, atomic_write_json, staged_dir
from trainers.retrieval.beir import first_repeat

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
QUANTIZATIONS = ("int8", "binary")
DEFAULT_OVERSAMPLE = 4
INT8_LEVELS = 255  # sentence-transformers' int8: 256 buckets between each dimension's min and max
INT8_OFFSET = 128  # its signed codes are the bucket numbers minus 128; faiss stores the bucket numbers
# What a model signature reads (see model_signature): 64 samples of 4 KiB per weight file.
SIGNATURE_BLOCKS = 64
SIGNATURE_BLOCK_BYTES = 4096
SIGNATURE_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
SIGNATURE_CONFIG_FILES = frozenset({
    "config.json", "config_sentence_transformers.json", "modules.json", "sentence_bert_config.json",
    "adapter_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
})


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

    ``truncate_dim`` (any type) indexes the first D dimensions, L2-normalized again; ``quantize`` (``int8`` or
    ``binary``, flat only: each builds its own exact index) stores sentence-transformers' quantized codes (see
    the module docstring). The encoder's width is known only when vectors arrive: ``index_dim`` checks it.
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
    truncate_dim: int | None = None
    quantize: str | None = None

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {self.quantize!r}; choose one of {', '.join(QUANTIZATIONS)}")
        if self.quantize is not None and self.index_type != "flat":
            raise ValueError(
                f"--quantize {self.quantize} builds its own exact index and cannot be combined with --index-type "
                f"{self.index_type}; leave --index-type at flat (sq8 / sq4 are faiss' own scalar quantizers)"
            )
        if self.truncate_dim is not None and self.truncate_dim < 1:
            raise ValueError(f"--truncate-dim must be >= 1, got {self.truncate_dim}")
        if self.quantize == "binary" and self.truncate_dim is not None and self.truncate_dim % 8:
            raise ValueError(
                f"--quantize binary packs 8 dimensions per byte: --truncate-dim must be a multiple of 8, "
                f"got {self.truncate_dim}"
            )
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

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> IndexSpec:
        """The spec recorded in a meta.json (fields a newer or older version does not know are left out)."""
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{name: value for name, value in record.items() if name in known})

    @property
    def compressed(self) -> bool:
        return self.truncate_dim is not None or self.quantize is not None

    def index_dim(self, source_dim: int) -> int:
        """The width of the indexed vectors for encoder embeddings of ``source_dim`` dimensions.

        Raises:
            ValueError: ``truncate_dim`` exceeds ``source_dim``, or binary codes would not fill whole bytes.
        """
        if self.truncate_dim is not None and self.truncate_dim > source_dim:
            raise ValueError(
                f"--truncate-dim {self.truncate_dim} is larger than the model's {source_dim} dimensions"
            )
        dim = self.truncate_dim or source_dim
        if self.quantize == "binary" and dim % 8:
            raise ValueError(
                f"--quantize binary packs 8 dimensions per byte, but the model's embeddings have {dim} dimensions; "
                "pass --truncate-dim with a multiple of 8"
            )
        return dim

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Float32 vectors as this index holds them before quantization: truncated and L2-normalized again."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.truncate_dim is None:
            return np.ascontiguousarray(vectors)
        self.index_dim(vectors.shape[1])
        prefix = vectors[:, : self.truncate_dim]  # (n, truncate_dim)
        norms = np.linalg.norm(prefix, axis=1, keepdims=True)  # (n, 1)
        # An all-zero prefix stays zero rather than turning into NaNs that faiss would rank arbitrarily.
        return np.ascontiguousarray(prefix / np.maximum(norms, np.finfo(np.float32).tiny))

    def encode_queries(self, queries: np.ndarray) -> np.ndarray:
        """The encoder's float32 query embeddings as this index is searched with: prepared, and binarized for
        a binary index (int8 indexes take float32 queries)."""
        prepared = self.prepare(queries)
        return binary_codes(prepared) if self.quantize == "binary" else prepared


# binary_codes and int8_codes follow sentence-transformers' quantize_embeddings rather than call it: the codes
# an index holds on disk must not change with a library upgrade (its module has already moved once:
# sentence_transformers.quantization is deprecated), and tests/test_compression.py pins both to its output.
def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """Sign bits (value > 0) packed 8 per byte, first dimension in the high bit: sentence-transformers'
    ``quantize_embeddings(precision="ubinary")``."""
    return np.packbits(np.asarray(vectors) > 0, axis=-1)  # (n, dim / 8) uint8


def int8_ranges(blocks: Iterator[np.ndarray]) -> np.ndarray:
    """Per-dimension ``[min, max]`` (2, dim) over every vector of ``blocks``: the int8 calibration."""
    low = high = None
    for block in blocks:
        block_low, block_high = block.min(axis=0), block.max(axis=0)  # (dim,)
        low = block_low if low is None else np.minimum(low, block_low)
        high = block_high if high is None else np.maximum(high, block_high)
    if low is None:
        raise ValueError("no embeddings to calibrate int8 codes on")
    return np.stack([low, high]).astype(np.float32)  # (2, dim)


def int8_codes(vectors: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """sentence-transformers' int8 codes of ``vectors`` under ``ranges``: floor((x - min) / step) - 128, where
    step = (max - min) / 255 (1 for a constant dimension), clipped to [-128, 127]. Same float32 arithmetic, so
    the same codes bit for bit."""
    starts, steps = _int8_starts_and_steps(ranges)
    buckets = np.clip(np.floor((np.asarray(vectors, dtype=np.float32) - starts) / steps), 0, INT8_LEVELS)
    return (buckets - INT8_OFFSET).astype(np.int8)  # (n, dim)


def _int8_starts_and_steps(ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ranges = np.asarray(ranges, dtype=np.float32)
    steps = (ranges[1] - ranges[0]) / INT8_LEVELS
    return ranges[0], np.where(steps == 0, 1, steps).astype(np.float32)


def compression_record(spec: IndexSpec, sources: Sequence[np.ndarray | str | os.PathLike[str]]) -> dict[str, Any]:
    """What meta.json records of the compression: ``truncate_dim``, ``quantize`` and ``source_dim``, the width of
    the encoder's embeddings (that of the queries a search must bring, and of the kept vectors)."""
    first = next(_vector_blocks(sources[:1]))
    return {"truncate_dim": spec.truncate_dim, "quantize": spec.quantize, "source_dim": int(first.shape[1])}


def checked_encoder(
    encode_fn: Callable[[list[str]], np.ndarray], spec: IndexSpec
) -> Callable[[list[str]], np.ndarray]:
    """``encode_fn`` that checks the width of what it returns against ``spec`` (``IndexSpec.index_dim``), so a
    ``truncate_dim`` wider than the model or binary codes of a width not divisible by 8 fail on the first batch
    rather than after the whole corpus is encoded."""
    if not spec.compressed:
        return encode_fn

    def encode(texts: list[str]) -> np.ndarray:
        embeddings = encode_fn(texts)
        spec.index_dim(np.asarray(embeddings).shape[-1])
        return embeddings

    return encode


def set_search_params(index: faiss.Index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set the query-time knobs of an IVF (``nprobe``) or HNSW (``ef_search``) index; others ignore them."""
    import faiss

    if isinstance(index, faiss.IndexBinary):
        return  # a binary flat index has no search-time knobs
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
) -> faiss.Index | faiss.IndexBinary:
    """Build an inner-product FAISS index from one array or a sequence of arrays / ``.npy`` shards.

    Shards are memory-mapped and added one at a time, truncated (``spec.truncate_dim``) block by block;
    training (IVF, PQ, SQ) uses a seeded uniform sample over all rows, the int8 calibration every row.
    ``spec.quantize="binary"`` returns a ``faiss.IndexBinaryFlat``.
    """
    import faiss

    spec = spec or IndexSpec()
    if isinstance(sources, np.ndarray):
        sources = [sources]
    sizes, source_dim = [], None
    for block in _vector_blocks(sources):
        if block.ndim != 2:
            raise ValueError(f"embeddings must be 2-D, got shape {block.shape}")
        if source_dim is not None and block.shape[1] != source_dim:
            raise ValueError(f"embedding blocks disagree on dimension: {source_dim} vs {block.shape[1]}")
        source_dim = block.shape[1]
        sizes.append(block.shape[0])
    num_vectors = sum(sizes)
    if not num_vectors or source_dim is None:
        raise ValueError("no embeddings to index")
    dim = spec.index_dim(source_dim)
    ranges = None
    if spec.quantize == "binary":
        index = faiss.IndexBinaryFlat(dim)
    elif spec.quantize == "int8":
        ranges = int8_ranges(spec.prepare(block) for block in _vector_blocks(sources))
        index = _int8_index(dim, ranges)
    else:
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
        sample = spec.prepare(_training_sample(sources, sizes, spec.resolved_train_size(num_vectors, dim), spec.seed))
        started = time.perf_counter()
        index.train(sample)
        logger.info("trained %s on %d vectors in %.1fs", spec.index_type, len(sample), time.perf_counter() - started)
    with tqdm(total=num_vectors, desc="Adding to index", unit="vec", disable=not show_progress) as progress:
        for block in _vector_blocks(sources):
            _add_vectors(index, spec.prepare(block), spec, ranges)
            progress.update(block.shape[0])
    set_search_params(index, nprobe=spec.nprobe, ef_search=spec.ef_search)
    return index


def _int8_index(dim: int, ranges: np.ndarray) -> faiss.Index:
    """faiss' 8-bit scalar quantizer with per-dimension buckets over ``ranges``: sentence-transformers' int8."""
    import faiss

    index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    # faiss keeps [min (dim), max - min (dim)] and decodes bucket c of a dimension to min + (c + 0.5) * step.
    faiss.copy_array_to_vector(np.concatenate([ranges[0], ranges[1] - ranges[0]]).astype(np.float32), index.sq.trained)
    index.is_trained = True
    return index


def _add_vectors(index: faiss.Index, vectors: np.ndarray, spec: IndexSpec, ranges: np.ndarray | None) -> None:
    if spec.quantize == "binary":
        index.add(binary_codes(vectors))
    elif spec.quantize == "int8":
        # The codes are computed here, not by faiss' encoder: its float rounding puts about one value in a
        # thousand into the neighbouring bucket, and the index is to hold sentence-transformers' codes exactly.
        buckets = int8_codes(vectors, ranges).astype(np.int16) + INT8_OFFSET  # (n, dim) in [0, 255]
        index.add_sa_codes(buckets.astype(np.uint8))
    else:
        index.add(vectors)


def search_index(
    index: faiss.Index | faiss.IndexBinary, queries: np.ndarray, top_k: int, *, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` inner-product search in query batches.

    ``queries`` are what the index holds: float32 rows of its width, or for a binary index packed uint8
    codes (``binary_codes``), scored ``dim - 2 * hamming``. ``search_queries`` prepares encoder output.

    Returns:
        ``(scores, rows)``, each ``(num_queries, k)`` with ``k = min(top_k, index.ntotal)``; an
        approximate index may fill missing hits with row ``-1``.
    """
    import faiss

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    k = min(top_k, index.ntotal)
    binary = isinstance(index, faiss.IndexBinary)
    if binary:
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        width, what = index.code_size, f"binary codes of {index.d} bits packed in {index.code_size} bytes"
    else:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        width, what = index.d, f"{index.d}-d vectors"
    if queries.ndim != 2 or queries.shape[1] != width:
        raise ValueError(
            f"queries must be (num_queries, {width}) to search this index of {what}, got shape {queries.shape}"
        )
    scores = np.empty((len(queries), k), dtype=np.float32)  # (queries, k)
    rows = np.empty((len(queries), k), dtype=np.int64)  # (queries, k)
    flat = not binary and _is_flat_inner_product(index)
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        if binary:
            distances, found = index.search(batch, k)  # Hamming distances, ascending
            scores[start : start + batch_size], rows[start : start + batch_size] = index.d - 2 * distances, found
            continue
        search = _flat_search_by_matmul if flat and len(batch) >= FLAT_GEMM_MIN_QUERIES else _faiss_search
        scores[start : start + batch_size], rows[start : start + batch_size] = search(index, batch, k)
    return scores, rows


def search_queries(
    index: faiss.Index | faiss.IndexBinary,
    queries: np.ndarray,
    top_k: int,
    *,
    spec: IndexSpec | None = None,
    rescore_vectors: np.ndarray | StoredVectors | None = None,
    oversample: int = DEFAULT_OVERSAMPLE,
    batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Search with the encoder's float32 query embeddings, compressed as ``spec`` compressed the documents.

    With ``rescore_vectors`` (the documents' full float32 vectors, row for row with the index), the top
    ``top_k * oversample`` candidates are ranked again by their exact inner product with the full queries.

    Returns:
        ``(scores, rows)`` as ``search_index`` returns them.
    """
    spec = spec or IndexSpec()
    queries = np.asarray(queries, dtype=np.float32)
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    if rescore_vectors is None:
        return search_index(index, spec.encode_queries(queries), top_k, batch_size=batch_size)
    if rescore_vectors.shape[0] != index.ntotal:
        raise ValueError(f"{rescore_vectors.shape[0]} vectors to rescore with, but the index holds {index.ntotal}")
    if rescore_vectors.shape[1] != queries.shape[1]:
        raise ValueError(
            f"the vectors to rescore with have {rescore_vectors.shape[1]} dimensions but the queries "
            f"{queries.shape[1]}"
        )
    _, candidates = search_index(index, spec.encode_queries(queries), top_k * oversample, batch_size=batch_size)
    return rescore(queries, candidates, rescore_vectors, top_k)


def rescore(
    queries: np.ndarray,
    candidates: np.ndarray,
    vectors: np.ndarray | StoredVectors,
    top_k: int,
    *,
    block_elements: int = FLAT_GEMM_BLOCK_ELEMENTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank each query's candidate rows by the inner product of the query with ``vectors[row]``; keep ``top_k``.

    Queries go in groups whose gathered candidate vectors hold at most ``block_elements`` floats, so that
    rescoring 1000 candidates of a 4096-d model never gathers every query's candidates at once. Rows ``-1``
    (ANN misses) stay last and come out as ``-1``.

    Returns:
        ``(scores, rows)``, each ``(num_queries, min(top_k, candidates per query))``.
    """
    num_queries, per_query = candidates.shape
    k = min(top_k, per_query)
    out_scores = np.full((num_queries, k), -np.inf, dtype=np.float32)  # (queries, k)
    out_rows = np.full((num_queries, k), -1, dtype=np.int64)  # (queries, k)
    group = max(1, block_elements // max(1, per_query * vectors.shape[1]))
    for start in range(0, num_queries, group):
        rows = candidates[start : start + group]  # (group, per_query)
        found = rows >= 0
        unique, position = np.unique(rows[found], return_inverse=True)  # sorted rows: sequential reads of a memmap
        gathered = _take_rows(vectors, unique)  # (unique, dim)
        exact = queries[start : start + group] @ gathered.T  # (group, unique)
        scores = np.full(rows.shape, -np.inf, dtype=np.float32)  # (group, per_query)
        scores[found] = exact[np.nonzero(found)[0], position]
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (group, k)
        out_scores[start : start + group] = np.take_along_axis(scores, order, axis=1)
        out_rows[start : start + group] = np.where(
            np.take_along_axis(found, order, axis=1), np.take_along_axis(rows, order, axis=1), -1
        )
    return out_scores, out_rows


def _take_rows(vectors: np.ndarray | StoredVectors, rows: np.ndarray) -> np.ndarray:
    if isinstance(vectors, StoredVectors):
        return vectors.take(rows)
    return np.asarray(vectors[rows], dtype=np.float32)


class StoredVectors:
    """The float32 vectors of an index's rows, read from its ``.npy`` shards (memory-mapped, in row order)."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]):
        if not paths:
            raise ValueError("no embedding shards given")
        self.shards = [np.load(path, mmap_mode="r") for path in paths]
        widths = {shard.shape[1] if shard.ndim == 2 else None for shard in self.shards}
        if len(widths) != 1 or None in widths:
            raise ValueError(f"the embedding shards are not 2-D arrays of one width: {sorted(map(str, widths))}")
        self.offsets = np.cumsum([0] + [shard.shape[0] for shard in self.shards])  # (shards + 1,)
        self.shape = (int(self.offsets[-1]), widths.pop())

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (any order), as a float32 ``(len(rows), dim)`` array."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)  # (rows, dim)
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1  # (rows,)
        for shard in np.unique(shard_of):
            mine = shard_of == shard
            out[mine] = self.shards[shard][rows[mine] - self.offsets[shard]]
        return out


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
    index: faiss.Index | faiss.IndexBinary
    ids: list[str]
    meta: dict[str, Any]
    path: Path

    @property
    def spec(self) -> IndexSpec:
        """The spec it was built with (a bare flat spec for a directory that records none)."""
        return IndexSpec.from_dict(self.meta.get("index_spec") or {})


def check_query_model(
    meta: dict[str, Any], model: str | os.PathLike[str], *, index_dir: str | os.PathLike[str]
) -> None:
    """Refuse a query encoder other than the one that built the index (``model_signature`` in meta.json).

    Indexes written before the signature was recorded are not checked (the query width still is, by the search).

    Raises:
        ValueError: the signatures differ, in one line that says which model built the index.
    """
    recorded = meta.get("model_signature")
    if recorded is None or model_signature(model) == recorded:
        return
    built_with = meta.get("model", "another model")
    if str(model) == str(built_with):
        raise ValueError(
            f"the model at {model} changed since {index_dir} was built (its configuration or weights differ): "
            "build the index again with it"
        )
    raise ValueError(
        f"{index_dir} was built with {built_with}, not {model}: queries of another model do not live in its "
        "vector space (search with the model that built it, or build an index with this one)"
    )


def check_query_width(meta: dict[str, Any], width: int, *, index_dir: str | os.PathLike[str]) -> None:
    """Refuse query embeddings whose width differs from the embeddings the index was built from."""
    expected = meta.get("source_dim")
    if expected is None and not IndexSpec.from_dict(meta.get("index_spec") or {}).compressed and not meta.get("binary"):
        expected = meta.get("dim")  # an index written before source_dim was recorded holds the encoder's vectors
    if expected is not None and width != expected:
        raise ValueError(
            f"the model embeds queries in {width} dimensions but {index_dir} was built from {expected}-dimensional "
            "embeddings"
        )


def stored_vectors(index_dir: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> StoredVectors:
    """The float32 vectors kept in ``<index_dir>/embeddings/`` (``--keep-embeddings``), for rescoring.

    Raises:
        IncompleteIndexError: the index keeps none, or they do not match its rows.
    """
    index_dir = Path(index_dir)
    meta = meta if meta is not None else read_index_meta(index_dir)
    paths = sorted((index_dir / EMBEDDINGS_DIR).glob("shard_*.npy"))
    if not paths:
        raise IncompleteIndexError(
            f"{index_dir} keeps no full-precision vectors to rescore with: build it with --keep-embeddings"
        )
    vectors = StoredVectors(paths)
    if vectors.shape[0] != meta["num_vectors"]:
        raise IncompleteIndexError(
            f"{index_dir}: {EMBEDDINGS_DIR}/ holds {vectors.shape[0]} vectors but the index {meta['num_vectors']}"
        )
    return vectors


def bytes_per_vector(index: faiss.Index | faiss.IndexBinary) -> int:
    """The bytes that encode one vector in ``index`` (its code; graph links and IVF ids not counted)."""
    import faiss

    if isinstance(index, faiss.IndexBinary):
        return int(index.code_size)
    if hasattr(index, "storage"):  # HNSW: the vectors live in its storage index
        return bytes_per_vector(faiss.downcast_index(index.storage))
    with contextlib.suppress(RuntimeError):
        return int(faiss.extract_index_ivf(index).code_size)
    return int(index.sa_code_size())


def model_signature(name_or_path: str | os.PathLike[str]) -> str:
    """A content hash of an encoder, to tell at search time whether queries come from the model that built an index.

    A local folder hashes the files that decide its embeddings, wherever they sit in it (sentence-transformers
    modules live in subfolders): ``SIGNATURE_CONFIG_FILES`` (configuration, prompts, pooling, tokenizer) whole,
    and per weight file its size and ``SIGNATURE_BLOCKS`` evenly spaced blocks of bytes. A copy of the folder keeps
    its signature (paths, times, model cards and result files are left out); another model or a retrained one
    (fine-tuning changes weights all through the file) does not. A hub name is its own signature.
    """
    path = Path(name_or_path)
    if not path.is_dir():
        return str(name_or_path)
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if not file.is_file() or any(part.startswith((".", "checkpoint-")) for part in relative.parts):
            continue
        if file.name in SIGNATURE_CONFIG_FILES:
            digest.update(f"{relative}\0".encode())
            digest.update(file.read_bytes())
        elif file.suffix in SIGNATURE_WEIGHT_SUFFIXES and file.name != "training_args.bin":
            size = file.stat().st_size
            digest.update(f"{relative}\0{size}\0".encode())
            with open(file, "rb") as handle:
                for block in range(SIGNATURE_BLOCKS):
                    handle.seek(size * block // SIGNATURE_BLOCKS)
                    digest.update(handle.read(SIGNATURE_BLOCK_BYTES))
    return digest.hexdigest()


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
    if first_repeat(ids) is not None:  # not a set: millions of ids fit in a few arrays
        raise ValueError("duplicate ids: every indexed row needs its own id")
    binary = isinstance(index, faiss.IndexBinary)
    with staged_dir(out_dir, overwrite=overwrite) as staging:
        (faiss.write_index_binary if binary else faiss.write_index)(index, str(staging / INDEX_FILE))
        with open(staging / INDEX_FILE, "rb+") as handle:
            os.fsync(handle.fileno())
        with atomic_open(staging / IDS_FILE, "w") as handle:
            # One id at a time, in json.dumps' list format: a corpus of millions of ids is never one string.
            handle.write("[")
            for row, doc_id in enumerate(ids):
                handle.write((", " if row else "") + json.dumps(doc_id, ensure_ascii=False))
            handle.write("]")
        if embeddings_dir is not None:
            shutil.move(str(embeddings_dir), str(staging / EMBEDDINGS_DIR))
        record = dict(meta or {})
        record.update(
            format_version=FORMAT_VERSION,
            num_vectors=int(index.ntotal),
            dim=int(index.d),
            metric="hamming" if binary else "inner_product",
            binary=binary,
            bytes_per_vector=bytes_per_vector(index),
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
    read = faiss.read_index_binary if meta.get("binary") else faiss.read_index
    index = read(str(index_dir / INDEX_FILE), flags)
    ids = json.loads((index_dir / IDS_FILE).read_text(encoding="utf-8"))
    if index.ntotal != len(ids) or index.ntotal != meta["num_vectors"]:
        raise IncompleteIndexError(
            f"{index_dir}: index has {index.ntotal} vectors, ids.json {len(ids)}, meta.json {meta['num_vectors']}"
        )
    spec = meta.get("index_spec") or {}
    set_search_params(index, nprobe=spec.get("nprobe"), ef_search=spec.get("ef_search"))
    return LoadedIndex(index=index, ids=ids, meta=meta, path=index_dir)
