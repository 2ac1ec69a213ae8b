"""``llara merge``: fold LoRA adapters into a full LLaRA model folder."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    adapter = Path(args.adapter)
    from trainers.lora import require_adapter_dir

    require_adapter_dir(adapter)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")

    from transformers import AutoTokenizer

    from modeling_llara import LlaraForPretraining, LlaraModel
    from trainers.convert import save_llara
    from trainers.lora import load_lora, merge_lora

    cls = LlaraForPretraining if args.with_lm_head else LlaraModel
    model = cls.from_pretrained(args.base)
    # The tokenizer of the run (saved with each checkpoint) when there is one, else the base's.
    source = adapter if (adapter / "tokenizer_config.json").is_file() else Path(args.base)
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=True)
    merged = merge_lora(load_lora(model, adapter))
    saved = save_llara(merged, tokenizer, out, overwrite=args.overwrite)
    print(f"merged model written to {saved}")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("merge", main)
