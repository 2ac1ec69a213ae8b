"""A short real LLaRA stage-2 run: SmolLM2-135M (LLaRA-initialized) on Debian package descriptions.

1. split the Debian snapshot (``trainers.debian_data``): training pairs (short description -> long
   description) and a held-out test collection (queries + corpus with distractors), disjoint;
2. mine hard negatives for the training queries (BM25 by default, or ``--mine dense`` with the
   starting model) from the training documents, rank window ``--range``;
3. evaluate the starting model on the held-out queries (exact FAISS search; nDCG@10, MRR@10,
   Recall@100 via ``trainers.retrieval.evaluation.compute_metrics``);
4. fine-tune with ``trainers.finetuning.finetune`` (LoRA r64/alpha16/dropout 0.1, special-token rows
   trainable, InfoNCE temperature 0.01, GradCache) for ``--max-steps`` steps; merge; save;
5. evaluate the merged model; plot the loss curve; write everything under ``--out``.

    python benchmarks/finetune_real_run.py --max-steps 20 --quick     # a few minutes on 2 CPU cores
    python benchmarks/finetune_real_run.py --max-steps 300            # a longer run (GPU)

Results: ``<out>/results.json``, ``<out>/loss.png``, the model in ``<out>/final``; a copy of the
summary goes to ``benchmarks/results/finetune_real_run.json`` (loss curve: ``finetune_real_run_loss.png``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainers.io import atomic_write_json  # noqa: E402


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="LLaRA-initialized model folder (llara init) (default: the embedded SmolLM2, converted once into outputs/cache/smollm2-llara)")
    parser.add_argument("--out", default="runs/finetune_real_run", help="output folder")
    parser.add_argument("--max-steps", type=int, default=40, help="training steps (default 40)")
    parser.add_argument("--batch-size", type=int, default=8, help="queries per step (default 8)")
    parser.add_argument("--group-size", type=int, default=4, help="1 positive + group-1 mined negatives (default 4)")
    parser.add_argument("--gradcache-chunk", type=int, default=16, help="GradCache chunk rows, 0 = off (default 16)")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (released: 3e-4)")
    parser.add_argument("--temperature", type=float, default=0.01)
    parser.add_argument("--passage-max-length", type=int, default=160)
    parser.add_argument("--query-max-length", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=2000, help="training pairs (default 2000)")
    parser.add_argument("--n-test-queries", type=int, default=300, help="held-out queries (default 300)")
    parser.add_argument("--n-test-corpus", type=int, default=3000, help="held-out corpus incl. positives (default 3000)")
    parser.add_argument("--mine", choices=["bm25", "dense"], default="bm25", help="negative miner (default bm25)")
    parser.add_argument("--range", default="3-50", help="rank window for negatives, start-end (default 3-50)")
    parser.add_argument("--batch-size-eval", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke size: 200 train pairs, 50 held-out queries / 300 docs, passages <= 128 tokens")
    return parser


def evaluate(model, builder, collection, args, desc: str) -> dict:
    import faiss

    from trainers.retrieval.evaluation import compute_metrics
    from trainers.finetuning.mining import encode_texts

    doc_ids, doc_texts = list(collection.corpus), list(collection.corpus.values())
    query_ids, query_texts = list(collection.queries), list(collection.queries.values())
    started = time.perf_counter()
    docs = encode_texts(model, builder, doc_texts, "document", args.passage_max_length, args.batch_size_eval,
                        f"{desc}: corpus")
    queries = encode_texts(model, builder, query_texts, "query", args.query_max_length, args.batch_size_eval,
                           f"{desc}: queries")
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs)
    scores, rows = index.search(queries, min(100, len(doc_ids)))
    run = {qid: {doc_ids[r]: float(s) for r, s in zip(row, score) if r >= 0}
           for qid, row, score in zip(query_ids, rows, scores)}
    result = compute_metrics(collection.qrels, run)
    return {**{k: round(v, 4) for k, v in result.metrics.items()}, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.model is None:
        from trainers.convert import cached_default_llara

        args.model = str(cached_default_llara())
    if args.quick:
        args.n_train, args.n_test_queries, args.n_test_corpus = 200, 50, 300
        args.passage_max_length = min(args.passage_max_length, 128)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch
    from transformers import AutoTokenizer

    from modeling_llara import LlaraInputBuilder, LlaraModel
    from trainers.debian_data import load_pairs, make_splits
    from trainers.finetuning.data import ContrastiveExample
    from trainers.finetuning.mining import MiningConfig, mine_hard_negatives, write_training_jsonl
    from trainers.finetuning.trainer import LlaraFinetuneConfig, finetune

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, end = (int(x) for x in args.range.split("-"))
    timings = {}

    # 1. data
    splits = make_splits(load_pairs(), seed=args.seed, n_test_queries=args.n_test_queries,
                         n_test_corpus=args.n_test_corpus, n_train_pairs=args.n_train, n_pretrain_docs=0)
    examples = [ContrastiveExample(p["query"], [p["document"]], [], p["id"]) for p in splits.train_pairs]
    train_corpus = [p["document"] for p in splits.train_pairs]

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    base = LlaraModel.from_pretrained(args.model).to(device).eval()
    builder = LlaraInputBuilder(tokenizer, base.config)

    # 2. mining
    t = time.perf_counter()
    config = MiningConfig(method=args.mine, range_start=start, range_end=end, num_negatives=args.group_size - 1,
                          seed=args.seed, query_max_length=args.query_max_length,
                          passage_max_length=args.passage_max_length, batch_size=args.batch_size_eval)
    mined, mining_report = mine_hard_negatives(examples, train_corpus, config, model=base, builder=builder)
    train_path = write_training_jsonl(out / "train_mined.jsonl", mined, overwrite=True)
    timings["mining_s"] = round(time.perf_counter() - t, 1)

    # 3. before
    before = evaluate(base, builder, splits.test, args, "before")
    del base

    # 4. train
    t = time.perf_counter()
    training_args = LlaraFinetuneConfig(
        output_dir=str(out / "checkpoints"), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        group_size=args.group_size, temperature=args.temperature, learning_rate=args.lr,
        query_max_length=args.query_max_length, passage_max_length=args.passage_max_length,
        gradcache_chunk_size=args.gradcache_chunk, logging_steps=1, save_strategy="no", seed=args.seed,
        use_cpu=device == "cpu", bf16=device == "cuda", disable_tqdm=False,
    )
    result = finetune(args.model, str(train_path), training_args, final_dir=out / "final")
    timings["training_s"] = round(time.perf_counter() - t, 1)
    losses = [(h["step"], h["loss"]) for h in result.log_history if "loss" in h]

    # 5. after
    tuned = LlaraModel.from_pretrained(out / "final").to(device).eval()
    after = evaluate(tuned, LlaraInputBuilder(tokenizer, tuned.config), splits.test, args, "after")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in losses], [v for _, v in losses], marker=".", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title(f"LLaRA stage 2, {Path(args.model).name}: {args.batch_size} q x {args.group_size} p, T={args.temperature}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    fig.savefig(ROOT / "benchmarks" / "results" / "finetune_real_run_loss.png", dpi=120)

    summary = {
        "model": args.model,
        "device": device,
        "args": vars(args),
        "data": {"train_pairs": len(examples), "test_queries": len(splits.test.queries),
                 "test_corpus": len(splits.test.corpus), "training_data": result.data_report},
        "mining": {"summary": mining_report.summary(), "seconds_ranking": mining_report.seconds_ranking},
        "before": before,
        "after": after,
        "losses": losses,
        "timings": timings,
        "train_metrics": result.train_metrics,
    }
    for path in (out / "results.json", ROOT / "benchmarks" / "results" / "finetune_real_run.json"):
        atomic_write_json(path, summary, default=str)
    print(f"\n{'metric':<12} {'before':>8} {'after':>8}")
    for metric in ("ndcg@10", "mrr@10", "recall@100"):
        print(f"{metric:<12} {before[metric]:>8.4f} {after[metric]:>8.4f}")
    print(f"loss: first {losses[0][1]:.4f} -> last {losses[-1][1]:.4f} over {len(losses)} steps")
    print(f"mining: {mining_report.summary()}")
    print(f"wrote {out / 'results.json'} and {out / 'loss.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
