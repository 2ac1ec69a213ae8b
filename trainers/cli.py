"""The ``llara`` command: one sub-command per job, each a thin ``main(argv)`` in ``trainers/scripts``.

Heavy imports (torch, transformers, faiss, ...) happen inside each script's ``main`` so that
``llara --help`` answers instantly.
"""

from __future__ import annotations

import importlib
import sys

# sub-command -> (module under trainers.scripts, one-line summary)
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


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: llara <command> [options]", "", "LLaRA: LLM adapted for retrieval.", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'llara <command> --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"llara: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"trainers.scripts.{COMMANDS[name][0]}")
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
