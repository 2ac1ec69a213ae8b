"""Exact (flat) inner-product search: faiss' ``IndexFlat.search`` vs ``search_index``'s matrix-product path.

Same index, same queries, same run: random Gaussian vectors (exact search does not care about their
distribution), ``--queries`` queries in one batch, top-10 and top-100. Reports ms per query, and checks that
both return the same rows (the share of identical (query, rank) entries; two BLAS implementations may swap
rows whose scores differ by float rounding). Writes benchmarks/results/flat_search.json.

    python benchmarks/bench_flat_search.py                   # 1M x 576 (SmolLM2's width), 200 queries
    python benchmarks/bench_flat_search.py --vectors 100000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainers.io import atomic_write_json  # noqa: E402
from trainers.retrieval.faiss_index import build_index, search_index  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=576)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "flat_search.json"))
    args = p.parse_args(argv)

    import faiss
    import torch

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.vectors, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    index = build_index(vectors)
    del vectors
    rows = []
    for k in (10, 100):
        started = time.perf_counter()
        faiss_scores, faiss_rows = index.search(queries, k)
        faiss_s = time.perf_counter() - started
        started = time.perf_counter()
        scores, found = search_index(index, queries, k)
        ours_s = time.perf_counter() - started
        rows.append({
            "k": k,
            "faiss_ms_per_query": round(1000 * faiss_s / args.queries, 2),
            "matmul_ms_per_query": round(1000 * ours_s / args.queries, 2),
            "speedup": round(faiss_s / ours_s, 2),
            "same_rows": float((found == faiss_rows).mean()),
            "max_score_difference": float(np.abs(scores - faiss_scores).max()),
        })
        print(f"k={k:<4} faiss {rows[-1]['faiss_ms_per_query']:8.2f} ms/query   search_index {rows[-1]['matmul_ms_per_query']:8.2f} "
              f"ms/query   x{rows[-1]['speedup']}   same rows {rows[-1]['same_rows']:.4f}")
    result = {"vectors": args.vectors, "dim": args.dim, "queries": args.queries, "faiss": faiss.__version__,
              "torch": torch.__version__, "faiss_threads": faiss.omp_get_max_threads(),
              "torch_threads": torch.get_num_threads(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
