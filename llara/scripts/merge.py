"""``llara merge``: fold LoRA adapters into a full LLaRA model folder."""

from __future__ import annotations

import argparse


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llara merge",
        description=(
            "Merge a LoRA adapter (a peft adapter folder or a Trainer checkpoint of `llara finetune` / "
            "`llara pretrain --use_lora`) into its base LLaRA model, trained special-token rows included, and "
            "write a full model folder that loads with AutoModel.from_pretrained(DIR, trust_remote_code=True) "
            "and SentenceTransformer(DIR, trust_remote_code=True), without peft."
        ),
    )
    parser.add_argument("--base", required=True, help="the LLaRA model folder the adapter was trained on")
    parser.add_argument("--adapter", required=True, help="folder with adapter_config.json + adapter_model.safetensors")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--with-lm-head",
        action="store_true",
        help="keep the LM head (LlaraForPretraining, e.g. to continue stage-1 pretraining); default: the embedder",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)

    from trainers.lora import merge_and_save

    # The tokenizer of the run (saved with each checkpoint) when the adapter folder has one, else the base's.
    saved = merge_and_save(
        args.adapter, args.out, base=args.base, with_lm_head=args.with_lm_head, overwrite=args.overwrite
    )
    print(f"merged model written to {saved}")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("merge", main)
