"""A short real EBAE/EBAR run: SmolLM2-135M on Debian package descriptions, with loss curves and the
retrieval quality on held-out real queries before and after.

Data (``trainers.debian_data``): unlabeled long descriptions for pretraining; a disjoint test collection
(short description = query, its long description = the relevant document, plus distractors). Retrieval:
the collection is written in the BEIR layout and scored by ``llara evaluate``'s code (exact FAISS
search of LLaRA embeddings, queries with the predict suffix, documents with the summarize suffix;
pytrec_eval nDCG@10, MRR@10, Recall@100/1000, MAP).

Writes ``benchmarks/results/pretrain_real_run.json`` (metrics, settings, log history) and
``benchmarks/results/pretrain_real_run.png`` (loss, ebae, ebar, lm per logging step).

    python benchmarks/pretrain_real_run.py --max-steps 5 --queries 50 --corpus 500     # smoke run
    python benchmarks/pretrain_real_run.py --max-steps 300                              # the real run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainers.io import atomic_open, atomic_write_json  # noqa: E402
RESULTS = REPO / "benchmarks" / "results"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="LLaRA folder with LM head (default: the embedded SmolLM2, converted once into outputs/cache/smollm2-llara)")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--loss-mode", default="reference", choices=["reference", "paper"])
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--pretrain-docs", type=int, default=5000)
    p.add_argument("--queries", type=int, default=200, help="held-out test queries")
    p.add_argument("--corpus", type=int, default=2000, help="test corpus size (relevant documents + distractors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="run folder (default: a temp folder)")
    p.add_argument("--bf16", action="store_true")
    return p


def retrieval_metrics(model_dir: str, beir_dir: Path) -> dict:
    """pytrec_eval metrics of ``model_dir`` on the held-out collection, through ``llara evaluate``'s code."""
    from trainers.retrieval.beir import load_beir
    from trainers.retrieval.evaluation import evaluate_model

    evaluation = evaluate_model(str(model_dir), load_beir(beir_dir, split="test"), top_k=1000, show_progress=True)
    return {**evaluation.result.metrics, "queries": evaluation.result.num_queries, "seconds": round(evaluation.seconds, 1)}


def plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "ebae", "ebar", "lm"):
        points = [(h["step"], h[key]) for h in history if key in h and "step" in h]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("LLaRA EBAE/EBAR pretraining (SmolLM2-135M, Debian descriptions)")
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from trainers.debian_data import load_pairs, make_splits, write_beir, write_pretraining_text
    from trainers.pretraining.data import PretrainingDataArguments
    from trainers.pretraining.run import PretrainingModelArguments, build_pretrainer, export_pretrained
    from trainers.pretraining.trainer import PretrainingArguments

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="llara-pretrain-real-"))
    work.mkdir(parents=True, exist_ok=True)
    splits = make_splits(load_pairs(), seed=args.seed, n_test_queries=args.queries, n_test_corpus=args.corpus,
                         n_pretrain_docs=args.pretrain_docs)
    corpus_file = write_pretraining_text(splits.pretrain_docs, work / "pretrain.jsonl")
    beir_dir = write_beir(splits.test, work / "beir", overwrite=True)
    source = args.model or str(__import__("trainers.convert", fromlist=["cached_default_llara"]).cached_default_llara())
    model_args = PretrainingModelArguments(model_name_or_path=source, export_dir=str(work / "final"))
    data_args = PretrainingDataArguments(train_files=[str(corpus_file)], max_length=args.max_length, on_error="skip",
                                         remove_stopwords=True)
    training_args = PretrainingArguments(
        output_dir=str(work / "run"), max_steps=args.max_steps, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, loss_mode=args.loss_mode,
        logging_steps=max(1, args.max_steps // 50), save_strategy="no", report_to="none", bf16=args.bf16,
        dataloader_pin_memory=False, seed=args.seed, disable_tqdm=True,
    )
    trainer, tokenizer = build_pretrainer(model_args, data_args, training_args)
    # "before": the starting weights exported exactly as the trained ones will be
    from trainers.convert import save_llara

    before_dir = save_llara(trainer.model, tokenizer, work / "before", overwrite=True)
    before = retrieval_metrics(str(before_dir), beir_dir)
    trainer.train()
    after_dir = export_pretrained(trainer, tokenizer, model_args)
    after = retrieval_metrics(str(after_dir), beir_dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    history = trainer.state.log_history
    plot(history, RESULTS / "pretrain_real_run.png")
    report = {"before": before, "after": after, "settings": vars(args), "data": trainer.train_dataset.stats.as_dict(),
              "log_history": history}
    out = RESULTS / "pretrain_real_run.json"
    atomic_write_json(out, report, default=str)
    print(f"{'':8} {'nDCG@10':>8} {'MRR@10':>8}")
    for name, m in (("before", before), ("after", after)):
        print(f"{name:8} {m['ndcg@10']:8.4f} {m['mrr@10']:8.4f}")
    print(f"curves: {RESULTS / 'pretrain_real_run.png'}  report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
