"""Benchmark the FAISS index types of ``trainers.retrieval.faiss_index`` on clustered vectors of dimension 576.

For each size (default 100k and 1M vectors, same run) and each index type it measures build time
(training + adding), search time per query, memory per vector (serialized index size / vectors) and
recall@10 / recall@100 against exact inner-product search. IVF and HNSW are also swept over their
query-time knob (nprobe, efSearch); IVF-PQ is also scored after re-ranking its top 100 with exact
scores from stored vectors (on disk at MS MARCO scale). Then it derives the plan for MS MARCO
(8.8M passages x 4096-d, 144 GB as float32): which index fits in 24 GB, with the recall loss
measured here.

    python benchmarks/bench_faiss.py            # 100k and 1M, every index type, ~19 min on 2 cores
    python benchmarks/bench_faiss.py --quick    # 20k and 100k, no sweeps, ~5 min (IVF-PQ training dominates)

Prints a table and writes benchmarks/results/faiss.json (faiss_quick.json with --quick).

Data: unit vectors from a mixture of 1024 Gaussian clusters living in a random 24-dimensional
subspace, plus isotropic noise (25% of the signal norm) in all 576 dimensions: the shape of real
embedding sets, whose intrinsic dimension is in the tens. The first version of this benchmark used
clusters with full 576-d isotropic noise; at 1M vectors that made each point's neighbours near-ties
among ~1000 cluster mates (HNSW recall@10 0.61) and made IVF1024's cells coincide with the generator's
1024 clusters (recall 1.0 at nprobe 4), artifacts of the data, not properties of the indexes
(``benchmarks/results/faiss_isotropic.json`` at commit 019fea0). Queries are fresh points from the same
mixture. Fewer queries are used at 1M (the scans of flat and SQ indexes cost O(N) per query): see
``queries_for``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.io import atomic_write_json  # noqa: E402
from trainers.retrieval.faiss_index import IndexSpec, build_index, search_index, set_search_params  # noqa: E402

DIM = 576
NUM_CLUSTERS = 1024
LATENT_DIM = 24  # intrinsic dimension of the generated set
SPREAD = 0.6  # within-cluster spread relative to the spread of the cluster centres (latent space)
NOISE = 0.25  # isotropic ambient noise norm relative to the signal norm
TOP_K = 100
MSMARCO_PASSAGES = 8_841_823
MSMARCO_DIM = 4096
BUDGET_BYTES = 24 * 1024**3


@dataclass(frozen=True)
class Mixture:
    """A Gaussian mixture in a ``LATENT_DIM``-dimensional subspace of R^DIM, plus isotropic noise."""

    centres: np.ndarray  # (clusters, latent)
    basis: np.ndarray  # (dim, latent), orthonormal columns

    @classmethod
    def make(cls, rng: np.random.Generator, dim: int = DIM) -> Mixture:
        centres = rng.standard_normal((NUM_CLUSTERS, LATENT_DIM)).astype(np.float32)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, LATENT_DIM)))
        return cls(centres=centres, basis=basis.astype(np.float32))


def clustered_vectors(n: int, mixture: Mixture, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """``n`` unit vectors from ``mixture``, generated in chunks to bound memory."""
    dim = mixture.basis.shape[0]
    out = np.empty((n, dim), dtype=np.float32)  # (n, dim)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        latent = mixture.centres[rng.integers(0, len(mixture.centres), rows)]  # (rows, latent)
        latent = latent + SPREAD * rng.standard_normal(latent.shape, dtype=np.float32)
        block = latent @ mixture.basis.T  # (rows, dim)
        scale = NOISE * np.linalg.norm(block, axis=1, keepdims=True) / math.sqrt(dim)  # (rows, 1)
        block += rng.standard_normal((rows, dim), dtype=np.float32) * scale
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + rows] = block
    return out


def queries_for(n: int, requested: int) -> int:
    """Queries used at size ``n``: ``requested`` up to 100k vectors, then fewer, at least 200."""
    return max(200, min(requested, int(requested * 100_000 / n)))


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean |top-k found ∩ top-k exact| / k."""
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth))


def configs(n: int, quick: bool) -> list[tuple[str, IndexSpec, list[tuple[str, dict]]]]:
    """(label, spec, query-time sweeps) per index type at size ``n``."""
    # nlist ~ sqrt(n) rounded to a power of two keeps k-means affordable on 2 cores; 40 training
    # points per cell is just above faiss' minimum of 39.
    nlist = 2 ** round(math.log2(math.sqrt(n)))
    train = 40 * nlist
    ivf_sweep = [] if quick else [(f"nprobe={p}", {"nprobe": p}) for p in (4, 64)]
    hnsw_sweep = [] if quick else [(f"efSearch={e}", {"ef_search": e}) for e in (32, 512)]
    return [
        ("flat", IndexSpec("flat"), []),
        ("hnsw M16", IndexSpec("hnsw", hnsw_m=16, ef_construction=40, ef_search=128), hnsw_sweep),
        (f"ivf{nlist}", IndexSpec("ivf", nlist=nlist, nprobe=16, train_size=train), ivf_sweep),
        (f"ivf{nlist},pq72", IndexSpec("ivfpq", nlist=nlist, nprobe=16, pq_m=72, train_size=max(train, 20_000)), ivf_sweep),
        *(
            []
            if quick
            else [(f"ivf{nlist},pq144", IndexSpec("ivfpq", nlist=nlist, nprobe=16, pq_m=144, train_size=max(train, 20_000)), [])]
        ),
        ("sqfp16", IndexSpec("sqfp16"), []),
        ("sq8", IndexSpec("sq8", train_size=50_000), []),
        ("sq4", IndexSpec("sq4", train_size=50_000), []),
    ]


def search_params(spec: IndexSpec) -> str:
    if spec.index_type == "hnsw":
        return f"efSearch={spec.ef_search}"
    if spec.index_type in {"ivf", "ivfpq"}:
        return f"nprobe={spec.nprobe}"
    return ""


def bench_size(n: int, num_queries: int, quick: bool, seed: int, hnsw_max: int, hnsw_seconds: dict[int, float]) -> list[dict]:
    import faiss

    rng = np.random.default_rng(seed)
    mixture = Mixture.make(rng)
    started = time.perf_counter()
    base = clustered_vectors(n, mixture, rng)
    queries = clustered_vectors(num_queries, mixture, rng)
    print(f"\n== {n:,} vectors x {DIM}, {num_queries} queries (generated in {time.perf_counter() - started:.1f}s)", flush=True)

    rows: list[dict] = []
    truth = None
    for label, spec, sweep in configs(n, quick):
        if spec.index_type == "hnsw" and n > hnsw_max:
            rows.append(_skipped_hnsw(n, label, hnsw_seconds))
            print(f"{n:>9,}  {label:<22} skipped: {rows[-1]['note']}", flush=True)
            continue
        started = time.perf_counter()
        index = build_index(base, spec)
        build_s = time.perf_counter() - started
        bytes_per_vector = faiss.serialize_index(index).nbytes / n
        if spec.index_type == "hnsw":
            hnsw_seconds[n] = build_s
        settings = [(search_params(spec), {})] + sweep
        for setting_label, knobs in settings:
            if knobs:
                set_search_params(index, **knobs)
            started = time.perf_counter()
            _, found = search_index(index, queries, TOP_K)
            search_s = time.perf_counter() - started
            if truth is None:  # the first config is exact search: it is the ground truth
                truth = found
            row = {
                "n": n,
                "index": label,
                "factory": spec.factory_string(DIM, n),
                "search_params": setting_label,
                "build_s": round(build_s, 2),
                "search_ms_per_query": round(1000 * search_s / num_queries, 3),
                "bytes_per_vector": round(bytes_per_vector, 1),
                "recall@10": round(recall(found, truth, 10), 4),
                "recall@100": round(recall(found, truth, 100), 4),
                "num_queries": num_queries,
            }
            rows.append(row)
            print(_format_row(row), flush=True)
            if spec.index_type == "ivfpq" and not knobs:
                rows.append(_reranked(row, base, queries, found, truth))
                print(_format_row(rows[-1]), flush=True)
        del index
    return rows


def _skipped_hnsw(n: int, label: str, hnsw_seconds: dict[int, float]) -> dict:
    """A row for an HNSW build left out for time, with its build time extrapolated (n log n)."""
    note = "not built: n > --hnsw-max"
    estimate = None
    if hnsw_seconds:
        measured_n = max(hnsw_seconds)
        estimate = hnsw_seconds[measured_n] * (n * math.log(n)) / (measured_n * math.log(measured_n))
        note += f"; build estimated at {estimate:.0f}s on this machine (from {measured_n:,})"
    return {"n": n, "index": label, "skipped": True, "estimated_build_s": estimate and round(estimate), "note": note}


def _reranked(row: dict, base: np.ndarray, queries: np.ndarray, found: np.ndarray, truth: np.ndarray) -> dict:
    """Re-rank the ANN top 100 with exact scores from the stored vectors (memory-mapped at scale)."""
    started = time.perf_counter()
    safe = np.where(found >= 0, found, 0)
    exact = np.einsum("qd,qkd->qk", queries, base[safe])  # (queries, k)
    exact[found < 0] = -np.inf
    order = np.argsort(-exact, axis=1)
    reranked = np.take_along_axis(found, order, axis=1)
    rerank_ms = 1000 * (time.perf_counter() - started) / len(queries)
    return {
        **row,
        "index": row["index"] + "+rerank",
        "search_ms_per_query": round(row["search_ms_per_query"] + rerank_ms, 3),
        "recall@10": round(recall(reranked, truth, 10), 4),
        "recall@100": round(recall(reranked, truth, 100), 4),
        "note": "top-100 re-scored exactly; the float vectors stay on disk, not in RAM",
    }


def _format_row(row: dict) -> str:
    return (
        f"{row['n']:>9,}  {row['index']:<22} {row['search_params']:<13} {row['build_s']:>8.1f}s "
        f"{row['search_ms_per_query']:>9.3f}ms {row['bytes_per_vector']:>8.1f}B "
        f"{row['recall@10']:>7.4f} {row['recall@100']:>7.4f}"
    )


HEADER = (
    f"{'vectors':>9}  {'index':<22} {'search':<13} {'build':>9} {'search/q':>11} {'mem/vec':>9} "
    f"{'R@10':>7} {'R@100':>7}"
)


def msmarco_plan(rows: list[dict]) -> dict:
    """Scale the measured bytes per vector to 8.8M x 4096-d and pick what fits in 24 GB.

    Flat and SQ indexes scale with the dimension; PQ codes keep their dimensions per sub-vector
    (pq72 at 576-d = 8 dims per byte = pq512 at 4096-d; pq144 = pq1024), plus 8-byte ids in the
    inverted lists; HNSW keeps full float vectors plus its graph.
    """
    measured = [row for row in rows if not row.get("skipped")]
    largest = max(row["n"] for row in measured)
    at_largest = [row for row in measured if row["n"] == largest]
    scale = MSMARCO_DIM / DIM
    options = []
    seen = set()
    for row in at_largest:
        key = (row["index"], row["search_params"])
        if key in seen:
            continue
        seen.add(key)
        name = row["index"]
        if name.startswith("hnsw"):
            graph = row["bytes_per_vector"] - 4 * DIM
            per_vector = 4 * MSMARCO_DIM + graph
        elif ",pq" in name:
            per_vector = row["bytes_per_vector"]  # same code bytes per vector at the same dims per code
            per_vector = per_vector * scale - 8 * (scale - 1)  # codes scale, the 8-byte id does not
        else:
            per_vector = row["bytes_per_vector"] * scale
        total = per_vector * MSMARCO_PASSAGES
        options.append(
            {
                "index": name,
                "search_params": row["search_params"],
                "bytes_per_vector_4096d": round(per_vector, 1),
                "total_gb": round(total / 1024**3, 1),
                "fits_24gb": total < BUDGET_BYTES,
                f"recall@10_measured_at_{largest}": row["recall@10"],
                f"recall@100_measured_at_{largest}": row["recall@100"],
            }
        )
    fitting = [o for o in options if o["fits_24gb"]]
    best = max(fitting, key=lambda o: o[f"recall@10_measured_at_{largest}"]) if fitting else None
    return {
        "corpus": f"MS MARCO passages: {MSMARCO_PASSAGES:,} x {MSMARCO_DIM}-d float32 = "
        f"{MSMARCO_PASSAGES * MSMARCO_DIM * 4 / 1e9:.0f} GB",
        "budget_gb": 24,
        "measured_at": largest,
        "options": options,
        "recommended": best,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k and 100k vectors, no query-time sweeps (~5 min).")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="Corpus sizes (default 100000 1000000).")
    parser.add_argument("--queries", type=int, default=1000, help="Queries at <= 100k vectors (default 1000).")
    parser.add_argument(
        "--hnsw-max",
        type=int,
        default=1_000_000,
        help="Largest size at which HNSW is built (default 1000000: ~3 min for 1M 576-d vectors on 2 cores); "
        "above it the build time is extrapolated (n log n) instead.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/faiss[_quick].json).")
    args = parser.parse_args(argv)

    import faiss

    sizes = args.sizes or ([20_000, 100_000] if args.quick else [100_000, 1_000_000])
    out = Path(args.out or Path(__file__).parent / "results" / ("faiss_quick.json" if args.quick else "faiss.json"))
    started = time.perf_counter()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} cpus")
    print(HEADER)
    rows: list[dict] = []
    hnsw_seconds: dict[int, float] = {}
    for n in sizes:
        rows += bench_size(n, queries_for(n, args.queries), args.quick, args.seed, args.hnsw_max, hnsw_seconds)
    plan = msmarco_plan(rows)
    total_s = time.perf_counter() - started

    print(f"\n== Plan: {plan['corpus']}, RAM budget {plan['budget_gb']} GB (recall measured at {plan['measured_at']:,})")
    key10 = f"recall@10_measured_at_{plan['measured_at']}"
    key100 = f"recall@100_measured_at_{plan['measured_at']}"
    for option in plan["options"]:
        verdict = "fits" if option["fits_24gb"] else "too big"
        print(
            f"  {option['index']:<22} {option['search_params']:<13} {option['bytes_per_vector_4096d']:>8.0f} B/vec "
            f"{option['total_gb']:>7.1f} GB  {verdict:<8} R@10 {option[key10]:.4f}  R@100 {option[key100]:.4f}"
        )
    if plan["recommended"]:
        best = plan["recommended"]
        print(
            f"  -> best recall that fits: {best['index']} {best['search_params']} "
            f"({best['total_gb']} GB, recall@10 loss {1 - best[key10]:.4f} vs exact)"
        )
    print(f"\ntotal {total_s:.0f}s")
    atomic_write_json(
        out,
        {
            "faiss_version": faiss.__version__,
            "threads": faiss.omp_get_max_threads(),
            "machine": platform.machine(),
            "dim": DIM,
            "data": {"clusters": NUM_CLUSTERS, "latent_dim": LATENT_DIM, "spread": SPREAD, "noise": NOISE},
            "top_k": TOP_K,
            "total_seconds": round(total_s, 1),
            "rows": rows,
            "msmarco_plan": plan,
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
