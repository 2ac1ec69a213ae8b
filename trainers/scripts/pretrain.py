"""``llara pretrain``: LLaRA stage 1, EBAE/EBAR pretraining on plain text.

Every option of the three argument dataclasses is a flag (``llara pretrain --help``); a YAML recipe
passed with ``--config recipe.yaml`` supplies defaults that flags on the command line override, e.g.::

    llara pretrain --config recipes/pretrain_smollm2.yaml --max_steps 20 --output_dir runs/try

Distributed runs go through torchrun (``torchrun --nproc_per_node 8 -m trainers.scripts.pretrain ...``),
with DeepSpeed or FSDP set through the usual TrainingArguments (``--deepspeed``, ``--fsdp``).
"""

from __future__ import annotations

import sys


def make_parser():
    from transformers import HfArgumentParser

    from trainers.pretraining.data import PretrainingDataArguments
    from trainers.pretraining.run import PretrainingModelArguments
    from trainers.pretraining.trainer import PretrainingArguments

    parser = HfArgumentParser(
        (PretrainingModelArguments, PretrainingDataArguments, PretrainingArguments),
        prog="llara pretrain",
        description=(
            "LLaRA stage 1: EBAE/EBAR pretraining. Plain text (txt, jsonl, parquet or a datasets folder) is cut into "
            "consecutive chunks; each chunk is embedded with both suffixes in one forward pass and trained to predict "
            "its own words (EBAE) and the next chunk's words (EBAR) through the LM head. Writes a LLaRA model folder "
            "(<output_dir>/final unless --export_dir) that loads with AutoModel/SentenceTransformer(trust_remote_code=True)."
        ),
    )
    parser.add_argument("--config", default=None, help="YAML recipe with defaults for any of the options below")
    return parser


def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    rest, config = [], None
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            config = next(it, None)
            if config is None:
                raise SystemExit("llara pretrain: --config needs a file")
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return config, rest


def main(argv: list[str] | None = None) -> int:
    import json
    import logging
    from pathlib import Path

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    config, rest = _split_config(argv)
    if config is not None:
        import yaml

        path = Path(config)
        if not path.is_file():
            parser.error(f"--config {config}: file not found")
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(recipe, dict):
            parser.error(f"--config {config}: expected a mapping of option: value")
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(recipe) - known)
        if unknown:
            parser.error(f"--config {config}: unknown options {unknown}")
        parser.set_defaults(**recipe)
        # A value from the recipe satisfies an option that would otherwise be required.
        for action in parser._actions:
            if action.dest in recipe:
                action.required = False
    model_args, data_args, training_args, *_ = parser.parse_args_into_dataclasses(args=rest)

    from transformers.trainer_utils import get_last_checkpoint

    from trainers.pretraining.run import build_pretrainer, export_pretrained

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    trainer, tokenizer = build_pretrainer(model_args, data_args, training_args)
    resume = training_args.resume_from_checkpoint
    if resume in ("auto", "last", "latest"):
        resume = get_last_checkpoint(training_args.output_dir)
    trainer.train(resume_from_checkpoint=resume)
    from trainers.run_records import save_run_records

    save_run_records(trainer, objective=f"ebae/ebar ({training_args.loss_mode})", datasets=data_args.train_files)
    out = export_pretrained(trainer, tokenizer, model_args)
    if out is not None:
        stats = getattr(trainer.train_dataset, "stats", None)
        if stats is not None:
            (Path(training_args.output_dir) / "data_stats.json").write_text(json.dumps(stats.as_dict(), indent=2))
        print(f"LLaRA model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
