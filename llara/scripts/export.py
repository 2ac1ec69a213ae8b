"""``llara export``: write a complete Hub model repository (weights, code, tokenizer, card) for a LLaRA model."""

from __future__ import annotations

import argparse
import sys


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llara export",
        description=(
            "Export a LLaRA model folder (from `llara init`, pretraining or fine-tuning) or a LoRA adapter folder "
            "over one (adapters are merged) into a folder that is a complete Hugging Face model repository: "
            "safetensors weights, the shipped modeling code with auto_map, the tokenizer, the sentence-transformers "
            "files and a README.md model card generated from the model, the training logs and result files. "
            "The folder is written to a temporary sibling and moved into place when complete."
        ),
    )
    parser.add_argument("--model", required=True, help="LLaRA model folder, or a peft LoRA adapter folder whose "
                        "adapter_config.json points at a LLaRA model folder")
    parser.add_argument("--out", required=True, help="output folder (the Hub repository to push)")
    parser.add_argument("--results", nargs="+", action="extend", default=[], metavar="FILE",
                        help="evaluation results: `llara evaluate` JSON or mteb result JSON files, or folders of "
                        "them (an mteb cache folder works); they fill the model-index and the evaluation tables")
    parser.add_argument("--training-dir", default=None,
                        help="Trainer output folder with trainer_state.json (or checkpoint-*/); default: look in --model")
    parser.add_argument("--name", default=None, help="model name in the card and model-index (default: --out's name)")
    parser.add_argument("--repo-id", default=None, help="'org/name' used in the card's usage snippets (default: --name)")
    parser.add_argument("--base-model", default=None,
                        help="Hub id of the base LLM for the card's base_model field, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--dataset", action="append", default=[], dest="datasets", metavar="HUB_ID",
                        help="Hub id of a training dataset (repeatable)")
    parser.add_argument("--language", action="append", default=None, dest="languages",
                        help="language code of the card (repeatable; default en)")
    parser.add_argument("--license", default="apache-2.0", help="license id of the card (default apache-2.0)")
    parser.add_argument("--tag", action="append", default=[], dest="tags", help="extra card tag (repeatable)")
    parser.add_argument("--keep-lm-head", action="store_true",
                        help="keep the LM head of a pretraining checkpoint (default: export the embedder only)")
    parser.add_argument("--no-mteb-lookup", action="store_true",
                        help="do not import mteb to look up task types and dataset ids of mteb result files")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip re-loading the written weights and comparing probe embeddings")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)

    from hub_card.export import export_model
    from llara.cli_boundary import describe

    try:
        out = export_model(
            args.model,
            args.out,
            results=args.results,
            training_dir=args.training_dir,
            model_name=args.name,
            repo_id=args.repo_id,
            base_model=args.base_model,
            datasets=args.datasets,
            language=args.languages or ["en"],
            license=args.license,
            extra_tags=args.tags,
            keep_lm_head=args.keep_lm_head,
            lookup_mteb_tasks=not args.no_mteb_lookup,
            verify=not args.no_verify,
            overwrite=args.overwrite,
        )
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as error:
        print(f"llara export: error: {describe(error)}", file=sys.stderr)
        return 1
    print(f"exported {args.model} to {out}")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("export", main)
