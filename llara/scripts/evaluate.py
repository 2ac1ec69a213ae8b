"""``llara evaluate``: nDCG@10, MRR@10, Recall@100, Recall@1000 and MAP on a BEIR-layout collection.

Examples::

    llara evaluate --model runs/llara --beir data/scifact --split test
    llara evaluate --model runs/llara --model bm25 --model path/to/all-MiniLM-L6-v2 --beir data/scifact
    llara evaluate --run run.trec --qrels data/scifact/qrels/test.tsv
    llara evaluate --run run.trec --beir data/scifact --split test

Models, BM25 (``--model bm25``, bm25s) and sentence-transformers baselines go through the same code;
metrics come from pytrec_eval. The table is printed and the numbers are written as JSON.
"""

from __future__ import annotations

import argparse
import logging
import re

from llara.cli import command_parser
from llara.scripts.index import add_index_spec_args, index_spec_from_args
from llara.scripts.search import add_rescore_args


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.rstrip("/").split("/")[-1]) or "model"


def make_parser() -> argparse.ArgumentParser:
    from llara.options import add_dtype_argument

    parser = command_parser(
        "llara evaluate",
        "Evaluate models, BM25 or a TREC run on a BEIR-layout collection (corpus.jsonl, "
        "queries.jsonl, qrels/<split>.tsv) with pytrec_eval.",
        __doc__,
    )
    what = parser.add_argument_group("what to evaluate (one of --model or --run)")
    what.add_argument(
        "--model",
        action="append",
        default=[],
        help="A LLaRA model folder, a sentence-transformers path/name, or 'bm25'. Repeat to compare several.",
    )
    what.add_argument("--run", help="A TREC run file to score instead of ranking with a model.")
    data = parser.add_argument_group("judgements")
    data.add_argument("--beir", help="BEIR-layout folder (needed with --model; with --run it supplies the qrels).")
    data.add_argument("--split", default="test", help="qrels/<split>.tsv to use (default test).")
    data.add_argument("--qrels", help="A qrels TSV for --run (query-id, corpus-id, score, header line).")
    out = parser.add_argument_group("output")
    out.add_argument("--output", help="JSON file for the results (default results/<dataset>_<split>_<models>.json).")
    out.add_argument("--save-runs", metavar="DIR", help="Also write each model's TREC run to DIR/<model>.trec.")
    rank = parser.add_argument_group("ranking")
    rank.add_argument("--top-k", type=int, default=1000, help="Hits per query (default 1000, as Recall@1000 needs).")
    rank.add_argument("--batch-size", type=int, default=32, help="Texts per encoder batch (default 32).")
    rank.add_argument("--device", default=None, help="Torch device for the encoders (under torchrun / accelerate launch: "
                      "cuda:<LOCAL_RANK> when CUDA is available, else cpu).")
    rank.add_argument("--shard-size", type=int, default=10_000,
                      help="Under torchrun / accelerate launch: passages per embedding shard, the unit of work of a "
                           "rank and of resuming (default 10000).")
    add_dtype_argument(rank)
    rank.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    add_rescore_args(rank)
    add_index_spec_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.run):
        parser.error("give either --model (with --beir) or --run (with --qrels or --beir)")
    if args.model and not args.beir:
        parser.error("--model needs --beir DIR")
    if args.run and not (args.qrels or args.beir):
        parser.error("--run needs --qrels FILE or --beir DIR")
    if args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.oversample < 1:
        parser.error(f"--oversample must be >= 1, got {args.oversample}")
    if args.top_k < 1000:
        logging.getLogger("llara.evaluate").warning("--top-k %d < 1000: Recall@1000 and MAP see only %d hits", args.top_k, args.top_k)

    from pathlib import Path

    import pytrec_eval

    from trainers.io import atomic_write_json
    from trainers.retrieval.beir import load_beir, load_qrels, qrels_path
    from trainers.retrieval.encoding import distributed_context
    from trainers.retrieval.evaluation import (
        evaluate_model,
        evaluate_run_file,
        format_table,
        is_bm25,
        rank_collection,
        write_trec_run,
    )

    # Errors reach the CLI boundary (llara.cli_boundary): one line, exit status 1.
    spec = index_spec_from_args(args)
    rows, records = [], []
    if args.run:
        qrels_file = Path(args.qrels) if args.qrels else qrels_path(args.beir, args.split)
        if args.beir:
            qrels = load_beir(args.beir, args.split).qrels
        else:
            qrels = load_qrels(qrels_file)
        result = evaluate_run_file(args.run, qrels)
        rows.append((args.run, result.metrics))
        records.append({"run": str(args.run), **result.to_dict()})
        dataset_name, names = _slug(str(Path(qrels_file).parent.parent)), [_slug(args.run)]
    else:
        dataset = load_beir(args.beir, args.split)
        dataset_name, names = dataset.name, [_slug(m) for m in args.model]
        # Under torchrun / accelerate launch the ranks share each dense model's corpus encoding (resumable shards
        # next to the results); rank 0 searches, scores and writes, the other ranks stop after their shards.
        context = distributed_context()
        parallel = context.world_size > 1
        device = args.device or (context.device if parallel else None)
        results_dir = Path(args.output).parent if args.output else Path("results")
        for number, model in enumerate(args.model):
            work_dir = None
            if parallel and not is_bm25(model):
                work_dir = results_dir / f".{dataset_name}_{args.split}_{number}_{_slug(model)}.partial"
            if not context.is_main:
                if work_dir is not None:
                    rank_collection(model, dataset, batch_size=args.batch_size, device=device, dtype=args.dtype,
                                    spec=spec, show_progress=False, work_dir=work_dir, shard_size=args.shard_size)
                continue
            evaluation = evaluate_model(
                model,
                dataset,
                top_k=args.top_k,
                batch_size=args.batch_size,
                device=device,
                dtype=args.dtype,
                spec=spec,
                rescore=args.rescore,
                oversample=args.oversample,
                show_progress=not args.no_progress,
                work_dir=work_dir,
                shard_size=args.shard_size,
            )
            rows.append((model, evaluation.result.metrics))
            records.append(evaluation.to_dict())
            if args.save_runs:
                write_trec_run(Path(args.save_runs) / f"{_slug(model)}.trec", evaluation.run, tag=_slug(model))
        if not context.is_main:
            return 0
    output = Path(args.output or f"results/{dataset_name}_{args.split}_{'+'.join(names)}.json")
    atomic_write_json(
        output,
        {
            "dataset": dataset_name,
            "split": args.split,
            "top_k": args.top_k,
            "index_spec": spec.to_dict() if args.model else None,
            "rescore": {"oversample": args.oversample} if args.model and args.rescore else None,
            "metrics_by": f"pytrec_eval {getattr(pytrec_eval, '__version__', '')}".strip(),
            "results": records,
        },
    )
    print(format_table(rows))
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("evaluate", main)
