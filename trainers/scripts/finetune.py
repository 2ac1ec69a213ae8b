"""``llara finetune``: LLaRA stage 2, contrastive fine-tuning on (query, pos, neg) data.

Every option of :class:`~trainers.finetuning.trainer.LlaraFinetuneConfig` (and of
``transformers.TrainingArguments``) is a flag; ``--config recipe.yaml`` sets defaults from a YAML file
(keys = flag names without dashes) that explicit flags override.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FinetuneScriptArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "LLaRA model folder to fine-tune (from `llara init` or `llara pretrain`)."}
    )
    train_data: str | None = field(
        default=None,
        metadata={"help": "Training data: a jsonl(.gz) of {query, pos, neg}, a BEIR folder, or a saved `datasets` folder."},
    )
    split: str = field(default="train", metadata={"help": "qrels split (BEIR folders) or dataset split to train on."})
    final_dir: str | None = field(
        default=None, metadata={"help": "Where the merged full model goes (default: <output_dir>/final)."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Resume from the last checkpoint in --output_dir when there is one."}
    )


def make_parser():
    from transformers import HfArgumentParser

    from trainers.finetuning.trainer import LlaraFinetuneConfig

    parser = HfArgumentParser((FinetuneScriptArguments, LlaraFinetuneConfig))
    parser.prog = "llara finetune"
    parser.description = (
        "LLaRA stage 2: InfoNCE fine-tuning (in-batch + hard negatives, temperature 0.01, group size 16, "
        "LoRA r64/alpha16 on q,k,v,o,gate,up,down with the special-token rows trainable, lr 3e-4: the released "
        "recipe), optional GradCache (--gradcache_chunk_size) and cross-device negatives. Writes checkpoints "
        "to --output_dir and the merged full model to <output_dir>/final. --config FILE.yaml sets defaults."
    )
    parser.add_argument("--config", default=None, help="YAML recipe; its keys are flag names, explicit flags win")
    return parser


def parse_args(argv: list[str] | None = None):
    """``(script_args, training_args)`` from flags and an optional ``--config`` YAML recipe."""
    import argparse

    import yaml

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    parser = make_parser()
    if known.config:
        with open(known.config, encoding="utf-8") as handle:
            recipe = yaml.safe_load(handle) or {}
        if not isinstance(recipe, dict):
            raise ValueError(f"{known.config}: a recipe is a mapping of option names to values")
        valid = {action.dest for action in parser._actions}
        unknown = sorted(set(recipe) - valid)
        if unknown:
            raise ValueError(f"{known.config}: unknown options {unknown}")
        parser.set_defaults(**recipe)
    script_args, training_args, _ = parser.parse_args_into_dataclasses(args=argv)
    if not script_args.model_name_or_path or not script_args.train_data:
        parser.error("--model_name_or_path and --train_data are required (as flags or in --config)")
    return script_args, training_args


def main(argv: list[str] | None = None) -> int:
    import logging

    script_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    from trainers.finetuning.trainer import finetune

    result = finetune(
        script_args.model_name_or_path,
        script_args.train_data,
        training_args,
        split=script_args.split,
        final_dir=script_args.final_dir,
        resume_from_checkpoint=True if script_args.resume else None,
    )
    from trainers.finetuning.data import DataReport

    print("data:", DataReport(**result.data_report).summary())
    if result.model_dir is not None:
        print(f"fine-tuned model written to {result.model_dir}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
