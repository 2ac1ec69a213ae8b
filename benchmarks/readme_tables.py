"""Regenerate the README's result tables from committed result files, so that no number is typed by hand.

Each table sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers in README.md and is
rendered from one JSON file under ``benchmarks/results/``::

    python benchmarks/readme_tables.py            # rewrite the tables in README.md
    python benchmarks/readme_tables.py --check    # exit 1 if a table differs from its result file

``benchmarks/results/pipeline_main_job.json`` is a committed copy of a ``make run``'s ``outputs/pipeline/results.json``
(the ``main-job`` table); ``benchmarks/paper_comparison.py`` writes the files of the comparison tables.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"

# Labels of the pipeline's result records, as the README names them.
MAIN_JOB_ROWS = {
    "llara-init": "SmolLM2-135M + LLaRA prompts, untrained (`llara init`)",
    "llara-pretrained": "+ EBAE/EBAR pretraining (unsupervised)",
    "llara-finetuned": "+ contrastive fine-tuning",
    "bm25": "BM25 (bm25s)",
    "all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
}
METRICS = (("ndcg@10", "nDCG@10"), ("mrr@10", "MRR@10"), ("recall@100", "Recall@100"), ("map", "MAP"))


def main_job_table(path: Path = RESULTS / "pipeline_main_job.json") -> str:
    """The main job's table: one row per evaluated model, from ``llara pipeline``'s results.json."""
    data = json.loads(path.read_text(encoding="utf-8"))
    config = data["config"]
    lines = [
        f"Budget: {config['pretrain_steps']} pretraining steps x {config['pretrain_batch_size']} texts "
        f"(lr {config['pretrain_lr']:g}, `{config['loss_mode']}` loss, {config['pretrain_max_length']} tokens per row), "
        f"then {config['finetune_steps']} fine-tuning steps x {config['finetune_batch_size']} queries x group "
        f"{config['group_size']} (LoRA, lr {config['finetune_lr']:g}, temperature {config['temperature']:g}, "
        f"{config['mine_with']} negatives from ranks {config['mine_range'][0]}-{config['mine_range'][1]}); "
        f"compute dtype `{config.get('dtype', 'float32')}`"
        + (" (bf16 on CPUs with AMX-BF16/AVX512-BF16, fp32 elsewhere)" if config.get("dtype") == "auto" else "")
        + f"; {config['n_test_queries']} held-out queries, {config['n_test_corpus']} documents; "
        f"{data['seconds'] / 60:.0f} min wall time.",
        "",
        "| model | " + " | ".join(name for _, name in METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for record in data["results"]:
        name = MAIN_JOB_ROWS.get(record["label"], record["label"])
        lines.append(f"| {name} | " + " | ".join(f"{record['metrics'][key]:.4f}" for key, _ in METRICS) + " |")
    return "\n".join(lines)


def comparison_table(path: Path) -> str:
    """A table written by ``benchmarks/paper_comparison.py`` (its markdown file, next to its JSON).

    Its headings are nested under the README's own: the title becomes a bold line, the per-domain ``###``
    headings become ``####``.
    """
    lines = path.read_text(encoding="utf-8").strip().split("\n")
    out = []
    for line in lines:
        if line.startswith("## "):
            line = f"**{line[3:]}**"
        elif line.startswith("### "):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def tables() -> dict[str, str]:
    out = {"main-job": main_job_table()}
    for path in sorted(RESULTS.glob("paper_comparison*/paper_comparison*.md")):
        out[f"{path.parent.name}/{path.stem}"] = comparison_table(path)
    budgets = RESULTS / "paper_comparison_budgets.md"  # a copy of the comparison's <out>/budgets.md
    if budgets.is_file():
        out[budgets.stem] = comparison_table(budgets)
    return out


def render(readme: str, rendered: dict[str, str]) -> str:
    """``readme`` with every marked block replaced by its rendering; unknown markers are left as they are."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in rendered:
            return match.group(0)
        return f"<!-- BEGIN {name} -->\n{rendered[name]}\n<!-- END {name} -->"

    return re.sub(r"<!-- BEGIN (\S+) -->\n(?:.*?\n)?<!-- END \1 -->", replace, readme, flags=re.S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a README table differs from its result file")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    updated = render(current, tables())
    if args.check:
        if updated != current:
            print("README.md tables differ from benchmarks/results: run python benchmarks/readme_tables.py", file=sys.stderr)
            return 1
        print("README.md tables match benchmarks/results")
        return 0
    if updated != current:
        from trainers.io import atomic_write_text

        atomic_write_text(README, updated)
        print("README.md tables regenerated")
    else:
        print("README.md tables already up to date")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
