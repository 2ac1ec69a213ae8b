"""``llara mine``: mine hard negatives for LLaRA fine-tuning with a LLaRA model (FAISS) or BM25."""

from __future__ import annotations

import argparse


def make_parser() -> argparse.ArgumentParser:
    from llara.options import add_dtype_argument

    parser = argparse.ArgumentParser(
        prog="llara mine",
        description=(
            "For every training query, rank a corpus with a LLaRA model (exact FAISS inner product) or BM25 and "
            "sample hard negatives from a rank window that excludes the query's positives; write a jsonl of "
            '{"query", "pos", "neg"} lines for `llara finetune`.'
        ),
    )
    parser.add_argument("--data", required=True,
                        help="training queries with positives: jsonl(.gz) {query, pos[, neg]}, a BEIR folder or a saved datasets folder")
    parser.add_argument("--split", default="train", help="qrels / dataset split (default: train)")
    parser.add_argument("--corpus", default=None,
                        help="passages to mine from: a BEIR corpus.jsonl, a BEIR folder, or a jsonl/text file (one "
                        "passage per line, or {'text': ...}); default: the BEIR corpus or all passages of --data")
    parser.add_argument("--model", required=True, help="a LLaRA model folder, or 'bm25'")
    add_dtype_argument(parser)
    parser.add_argument("--out", required=True, help="output jsonl (written atomically)")
    parser.add_argument("--range-start", type=int, default=10, help="first rank of the window, 0-based (default 10)")
    parser.add_argument("--range-end", type=int, default=100, help="rank after the window's last (default 100)")
    parser.add_argument("--num-negatives", type=int, default=15, help="negatives per query (default 15 = group 16)")
    parser.add_argument("--keep-existing-negatives", action="store_true", help="add to the negatives of --data instead of replacing them")
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default 32)")
    parser.add_argument("--max-text-tokens", type=int, default=None,
                        help="dense: text tokens per query/passage, prompt excluded (default: the model's own budget)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu; under torchrun / "
                        "accelerate launch cuda:<LOCAL_RANK>)")
    parser.add_argument("--shard-size", type=int, default=10_000,
                        help="under torchrun / accelerate launch: passages per embedding shard, the unit of work of a "
                        "rank and of resuming (default 10000)")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed (default 42)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _read_corpus(path: str) -> list[str]:
    from pathlib import Path

    from trainers.retrieval.beir import load_corpus, passage_text
    from trainers.finetuning.data import iter_jsonl_records

    source = Path(path)
    if source.is_dir():
        source = source / "corpus.jsonl"
    if not source.is_file():
        raise FileNotFoundError(f"corpus not found: {source}")
    if source.name == "corpus.jsonl":
        return [passage_text(d["title"], d["text"]) for d in load_corpus(source).values()]
    if source.name.endswith((".jsonl", ".jsonl.gz")):
        texts = []
        for line_number, record in iter_jsonl_records(source):
            text = record.get("text") if isinstance(record, dict) else record
            if not isinstance(text, str):
                raise TypeError(f"{source}:{line_number}: expected a string or an object with a 'text' string")
            texts.append(passage_text(record.get("title", ""), text) if isinstance(record, dict) else text)
        return texts
    return [line.rstrip("\n") for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    import os
    from pathlib import Path

    if args.model.lower() == "bm25" and int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")):
        # BM25 has nothing to share across processes: rank 0 mines and writes, the others stop here
        print(f"llara mine: BM25 runs on rank 0 only (this is rank {os.environ['RANK']})")
        return 0
    if Path(args.out).exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")

    from trainers.finetuning.data import load_examples
    from trainers.finetuning.mining import MiningConfig, mine_hard_negatives, write_training_jsonl

    method = "bm25" if args.model.lower() == "bm25" else "dense"
    config = MiningConfig(
        method=method,
        range_start=args.range_start,
        range_end=args.range_end,
        num_negatives=args.num_negatives,
        seed=args.seed,
        batch_size=args.batch_size,
        keep_existing_negatives=args.keep_existing_negatives,
    )
    examples, pool, data_report = load_examples(args.data, split=args.split)
    corpus = _read_corpus(args.corpus) if args.corpus else pool
    model, sharding = None, {}
    if method == "dense":
        from trainers.finetuning.mining import shared_corpus_embeddings
        from trainers.model_folders import require_llara_folder
        from trainers.retrieval.encoding import distributed_context, load_encoder, model_identity

        require_llara_folder(args.model, what="--model")
        # Under torchrun / accelerate launch the ranks encode the passages together (resumable shards next to
        # --out); rank 0 mines and writes, the other ranks stop after their shards.
        context = distributed_context()
        parallel = context.world_size > 1
        model = load_encoder(args.model, device=args.device or (context.device if parallel else None), dtype=args.dtype)
        if args.max_text_tokens is not None:
            model.max_seq_length = args.max_text_tokens
        if parallel:
            out = Path(args.out)
            sharding = {"work_dir": out.parent / f".{out.name}.partial", "shard_size": args.shard_size,
                        "model_id": f"{model_identity(args.model)}|dtype={args.dtype}|max={args.max_text_tokens}"}
            if not context.is_main:
                shared_corpus_embeddings(model, examples, corpus, config, show_progress=False, **sharding)
                return 0
    mined, report = mine_hard_negatives(examples, corpus, config, model=model, show_progress=not args.quiet, **sharding)
    out = write_training_jsonl(args.out, mined, overwrite=args.overwrite)
    print("data:", data_report.summary())
    print("mining:", report.summary())
    print(f"wrote {len(mined)} examples to {out}")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("mine", main)
