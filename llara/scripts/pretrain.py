"""``llara pretrain``: LLaRA stage 1, EBAE/EBAR pretraining on plain text.

Every option of the three argument dataclasses is a flag (``llara pretrain --help``); a YAML recipe
passed with ``--config recipe.yaml`` supplies defaults that flags on the command line override, e.g.::

    llara pretrain --config recipes/pretrain_smollm2.yaml --max_steps 20 --output_dir runs/try

Distributed runs go through torchrun (``torchrun --nproc_per_node 8 -m llara.scripts.pretrain ...``),
with DeepSpeed or FSDP set through the usual TrainingArguments (``--deepspeed``, ``--fsdp``).
"""

from __future__ import annotations



def make_parser():
    from trainers.pretraining.data import PretrainingDataArguments
    from trainers.pretraining.run import PretrainingModelArguments
    from trainers.pretraining.trainer import PretrainingArguments
    from trainers.recipes import make_recipe_parser

    return make_recipe_parser(
        (PretrainingModelArguments, PretrainingDataArguments, PretrainingArguments),
        prog="llara pretrain",
        description=(
            "LLaRA stage 1: EBAE/EBAR pretraining. Plain text (txt, jsonl, parquet or a datasets folder) is cut into "
            "consecutive chunks; each chunk is embedded with both suffixes in one forward pass and trained to predict "
            "its own words (EBAE) and the next chunk's words (EBAR) through the LM head. Writes a LLaRA model folder "
            "(<output_dir>/final unless --export_dir) that loads with AutoModel/SentenceTransformer(trust_remote_code=True)."
        ),
    )


def main(argv: list[str] | None = None) -> int:
    from trainers.recipes import parse_recipe_args

    model_args, data_args, training_args = parse_recipe_args(make_parser(), argv, required=("train_files",))

    from trainers.pretraining.run import pretrain

    out = pretrain(model_args, data_args, training_args)
    if out is not None:
        print(f"LLaRA model written to {out}")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("pretrain", main)
