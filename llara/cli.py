"""The ``llara`` command: one sub-command per job, each a thin ``main(argv)`` in ``llara/scripts``.

Heavy imports (torch, transformers, faiss, ...) happen inside each script's ``main`` so that
``llara --help`` answers instantly. Every sub-command runs inside one error boundary
(:mod:`llara.cli_boundary`): a user error is one line ``llara <verb>: error: ...`` on stderr, exit status 2
for usage errors and 1 otherwise; ``llara --debug <verb> ...`` (or ``LLARA_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> (module under llara.scripts, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("init", "Turn a decoder causal LM (folder, Hub id or GGUF) into a LLaRA model folder."),
    "demo": ("demo", "Build a LLaRA model from the embedded SmolLM2 and search a small real corpus."),
    "pretrain": ("pretrain", "Stage 1: EBAE/EBAR pretraining on plain text."),
    "finetune": ("finetune", "Stage 2: contrastive fine-tuning on (query, pos, neg) data."),
    "mine": ("mine", "Mine hard negatives with a LLaRA model or BM25 and FAISS."),
    "merge": ("merge", "Merge LoRA adapters into a full LLaRA model."),
    "index": ("index", "Encode a corpus and write a FAISS index."),
    "search": ("search", "Search a FAISS index with queries and write a TREC run."),
    "evaluate": ("evaluate", "Evaluate a model, BM25 or a run file on a BEIR-layout collection."),
    "mteb": ("mteb", "Run mteb on LLaRA models (mteb's flags pass through)."),
    "export": ("export", "Export a Hub-ready folder with a generated model card."),
    "push": ("push", "Upload an exported folder to the Hugging Face Hub."),
    "pipeline": ("pipeline", "The whole LLaRA pipeline on the embedded default (SmolLM2 + Debian data)."),
}


def command_parser(prog: str, description: str, doc: str | None) -> argparse.ArgumentParser:
    """A sub-command's parser whose ``--help`` ends with the ``Examples::`` part of its module docstring."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc.split("Examples::", 1)[1] if doc else None,
    )


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: llara [--debug] <command> [options]", "", "LLaRA: LLM adapted for retrieval.", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'llara <command> --help' for the options of one command.",
              "--debug (before the command) or LLARA_DEBUG=1 shows the traceback of an error."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from llara.cli_boundary import USAGE_EXIT, debug_requested, run_verb

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested()
    # Global options come before the command (after it, `--debug` belongs to the command: the Trainer's
    # TrainingArguments has a --debug option of its own).
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        hint = f"; commands: {', '.join(COMMANDS)}" if not name.startswith("-") else "; options go after the command"
        print(f"llara: error: unknown command {name!r}{hint}", file=sys.stderr)
        return USAGE_EXIT
    module = importlib.import_module(f"llara.scripts.{COMMANDS[name][0]}")
    return run_verb(name, module.main, rest, debug=debug)


def console_main() -> None:
    """The ``llara`` console script and ``python -m llara``: ``main`` and a clean exit (also under torchrun)."""
    from llara.cli_boundary import exit_process
    from trainers.allocator import keep_freed_memory

    keep_freed_memory()  # large CPU tensors reuse freed memory instead of faulting in fresh pages (trainers.allocator)
    exit_process(main())


if __name__ == "__main__":
    console_main()
