"""``llara mteb``: mteb's own command line, plus local LLaRA (and sentence-transformers) model folders.

Examples::

    llara mteb run -m runs/llara -t NFCorpus SciFact --output-folder results/mteb
    llara mteb run -m runs/llara --beir data/scifact --beir-split test --output-folder results/mteb
    llara mteb mock-run -m runs/llara
    llara mteb available-tasks --task-types Retrieval

Every mteb sub-command and flag passes through. What is added: ``-m`` may name a local model folder
(mteb alone refuses those: "No model implementation is available"); a LLaRA folder is loaded with
trust_remote_code and LLaRA's query/passage suffixes. ``run --beir DIR`` evaluates a BEIR-layout
folder as an mteb retrieval task instead of mteb's task selection. ``mock-run`` exits with status 1
when a compatible mock task fails.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def make_parser() -> argparse.ArgumentParser:
    # mteb's parser is the source of truth for its flags, so building it imports mteb.
    from mteb.cli.build_cli import build_cli

    parser = build_cli()
    parser.prog = "llara mteb"
    parser.description = (__doc__ or "").split("Examples::", 1)[0].strip()
    subparsers = _subparsers(parser)
    run = subparsers.get("run")
    if run is not None:
        run.prog = "llara mteb run"
        run.add_argument(
            "--beir",
            default=None,
            help="Evaluate this BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) as an mteb "
            "retrieval task instead of the tasks selected with -t/-b.",
        )
        run.add_argument("--beir-split", default="test", help="qrels split of --beir to evaluate (default test).")
    mock = subparsers.get("mock-run")
    if mock is not None:
        mock.prog = "llara mteb mock-run"
        mock.add_argument(
            "--report", default="mteb_mock_run_results.md", help="Markdown report to write (default mteb_mock_run_results.md)."
        )
    return parser


def _resolve_model(name: str | None) -> str | None:
    from trainers.retrieval.mteb import register_local_model

    if name and Path(name).is_dir():
        return register_local_model(name)
    return name


def _device(args: argparse.Namespace) -> str:
    import torch

    if args.device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return f"cuda:{args.device}" if isinstance(args.device, int) else str(args.device)


def _run_beir(args: argparse.Namespace) -> int:
    import mteb
    from mteb.cache import ResultCache

    from trainers.retrieval.mteb import beir_retrieval_task

    model = mteb.get_model(args.model, args.model_revision, device=_device(args))
    task = beir_retrieval_task(args.beir, args.beir_split)
    encode_kwargs = {"batch_size": args.batch_size} if args.batch_size else {}
    results = mteb.evaluate(
        model,
        [task],
        cache=ResultCache(args.output_folder),
        encode_kwargs=encode_kwargs,
        overwrite_strategy=args.overwrite_strategy,
        prediction_folder=args.prediction_folder,
        num_proc=args.num_proc,
    )
    for task_result in results.task_results:
        for split, per_subset in task_result.scores.items():
            for scores in per_subset:
                keys = ("ndcg_at_10", "mrr_at_10", "recall_at_100", "recall_at_1000", "map_at_1000")
                print(f"{task_result.task_name} [{split}] " + "  ".join(f"{k}={scores[k]:.4f}" for k in keys))
    print(f"results in {args.output_folder}")
    return 0


def _mock_run(args: argparse.Namespace) -> int:
    import mteb

    from trainers.io import atomic_write_text

    model = mteb.get_model(args.model, args.model_revision, device=_device(args))
    results = mteb.mock_run(model)
    report = results.to_markdown()
    atomic_write_text(args.report, report)
    summary = report.split("## Summary by Modality", 1)[-1].strip()
    status = "passed all expected checks" if results.all_passed else "did NOT pass all expected checks"
    print(f"{results.model_name} {status}\n\n{summary}\n\nreport: {Path(args.report).resolve()}")
    return 0 if results.all_passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    if getattr(args, "model", None):
        args.model = _resolve_model(args.model)
    if getattr(args, "beir", None):
        return _run_beir(args)
    if args.func.__name__ == "_mock_run":
        return _mock_run(args)
    args.func(args)
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("mteb", main)
