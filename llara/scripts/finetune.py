"""``llara finetune``: LLaRA stage 2, contrastive fine-tuning on (query, pos, neg) data.

Every option of :class:`~trainers.finetuning.trainer.LlaraFinetuneConfig` (a
``SentenceTransformerTrainingArguments``) is a flag; ``--config recipe.yaml`` sets defaults from a YAML file
(keys = option names) that flags override (``trl.TrlParser``), e.g.::

    llara finetune --config recipes/finetune_smollm2_cpu.yaml --model_name_or_path DIR --train_data mined.jsonl

``--resume_from_checkpoint last`` resumes from the last checkpoint in ``--output_dir`` (or give a folder).
Distributed runs: ``torchrun --nproc_per_node N -m llara.scripts.finetune ...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FinetuneScriptArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "LLaRA model folder to fine-tune (from `llara init` or `llara pretrain`). Required."}
    )
    train_data: str | None = field(
        default=None,
        metadata={"help": "Training data: a jsonl(.gz) of {query, pos, neg}, a BEIR folder, or a saved `datasets` folder. Required."},
    )
    split: str = field(default="train", metadata={"help": "qrels split (BEIR folders) or dataset split to train on."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Read a jsonl / JSON / parquet --train_data with datasets' streaming mode (row by row, "
                          "nothing written to the Arrow cache): for files larger than the cache's disk. The cleaned "
                          "examples are still kept in memory (groups are sampled from all of them)."},
    )
    final_dir: str | None = field(
        default=None, metadata={"help": "Where the merged full model goes (default: <output_dir>/final)."}
    )


def make_parser():
    from trainers.finetuning.trainer import LlaraFinetuneConfig
    from trainers.recipes import make_recipe_parser

    return make_recipe_parser(
        (FinetuneScriptArguments, LlaraFinetuneConfig),
        prog="llara finetune",
        description=(
            "LLaRA stage 2 on sentence-transformers' trainer: InfoNCE (MultipleNegativesRankingLoss, scale = "
            "1/temperature) over in-batch + hard negatives, temperature 0.01, group size 16, LoRA r64/alpha16 on "
            "q,k,v,o,gate,up,down, lr 3e-4 (the released recipe); GradCache with --gradcache_chunk_size "
            "(CachedMultipleNegativesRankingLoss), cross-device negatives, Matryoshka with --matryoshka_dims. Writes "
            "checkpoints to --output_dir and the merged full model to <output_dir>/final."
        ),
    )


def parse_args(argv: list[str] | None = None):
    """``(script_args, training_args)`` from flags and an optional ``--config`` YAML recipe."""
    from trainers.recipes import parse_recipe_args

    return parse_recipe_args(make_parser(), argv, required=("model_name_or_path", "train_data"))


def main(argv: list[str] | None = None) -> int:
    script_args, training_args = parse_args(argv)

    from trainers.finetuning.trainer import finetune

    result = finetune(
        script_args.model_name_or_path,
        script_args.train_data,
        training_args,
        split=script_args.split,
        final_dir=script_args.final_dir,
        streaming=script_args.streaming,
    )
    from trainers.finetuning.data import DataReport

    print("data:", DataReport(**result.data_report).summary())
    if result.model_dir is not None:
        print(f"fine-tuned model written to {result.model_dir}")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("finetune", main)
