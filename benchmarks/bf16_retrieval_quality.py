"""Retrieval quality of bf16 against fp32 inference: the same models, the same held-out collection, both dtypes.

For each LLaRA model folder given, the BEIR collection is ranked with the backbone in fp32 and in bf16 (pooling
in fp32 either way) and scored with ``llara evaluate``'s code; the JSON keeps both metric sets and their
difference (target: nDCG@10 within 0.005).

    python benchmarks/bf16_retrieval_quality.py --beir outputs/pipeline/data/test \\
        --model outputs/pipeline/models/pretrained --model outputs/pipeline/models/finetuned
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beir", required=True, help="BEIR-layout test collection")
    parser.add_argument("--model", action="append", required=True, help="LLaRA model folder (repeatable)")
    parser.add_argument("--top-k", type=int, default=100, help="hits per query (default 100)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bf16_retrieval_quality.json"))
    args = parser.parse_args(argv)

    from trainers.io import atomic_write_json, path_for_record
    from trainers.retrieval.beir import load_beir
    from trainers.retrieval.evaluation import evaluate_model

    dataset = load_beir(args.beir, split="test")
    rows = []
    for model in args.model:
        row = {"model": path_for_record(model, ROOT)}
        for dtype in ("float32", "bfloat16"):
            started = time.perf_counter()
            result = evaluate_model(model, dataset, top_k=args.top_k, batch_size=args.batch_size, dtype=dtype)
            row[dtype] = {"metrics": result.result.metrics, "seconds": round(time.perf_counter() - started, 1)}
        row["ndcg@10_bf16_minus_fp32"] = row["bfloat16"]["metrics"]["ndcg@10"] - row["float32"]["metrics"]["ndcg@10"]
        row["speedup_bf16"] = row["float32"]["seconds"] / row["bfloat16"]["seconds"]
        rows.append(row)
        print(f"{model}: nDCG@10 fp32 {row['float32']['metrics']['ndcg@10']:.4f}, bf16 "
              f"{row['bfloat16']['metrics']['ndcg@10']:.4f} (diff {row['ndcg@10_bf16_minus_fp32']:+.4f}); "
              f"ranking time {row['float32']['seconds']:.0f} s vs {row['bfloat16']['seconds']:.0f} s", flush=True)
    atomic_write_json(args.out, {"beir": path_for_record(args.beir, ROOT), "queries": len(dataset.eval_queries),
                                 "documents": len(dataset.corpus), "top_k": args.top_k, "rows": rows,
                                 "target_abs_ndcg@10_diff": 0.005})
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
