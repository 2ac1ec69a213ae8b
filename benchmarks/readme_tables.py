"""Regenerate the result tables of README.md and docs/benchmarks.md from committed result files, so that no
number is typed by hand.

Each table sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers and is rendered from one file
under ``benchmarks/results/``; :data:`TARGETS` lists every (document, block, renderer)::

    python benchmarks/readme_tables.py            # rewrite the tables in README.md and docs/benchmarks.md
    python benchmarks/readme_tables.py --check    # exit 1 if a table differs from its result file, a listed
                                                  # block is missing or a document holds a block not listed

``benchmarks/results/pipeline_main_job.json`` is a committed copy of a ``make run``'s ``outputs/pipeline/results.json``
(the ``main-job`` table); ``benchmarks/paper_comparison.py`` writes the files of the comparison tables.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BENCHMARKS_DOC = ROOT / "docs" / "benchmarks.md"

# Labels of the pipeline's result records, as the README names them.
MAIN_JOB_ROWS = {
    "llara-init": "SmolLM2-135M + LLaRA prompts, untrained (`llara init`)",
    "llara-pretrained": "+ EBAE/EBAR pretraining (unsupervised)",
    "llara-finetuned": "+ contrastive fine-tuning",
    "bm25": "BM25 (bm25s)",
    "all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
}
METRICS = (("ndcg@10", "nDCG@10"), ("mrr@10", "MRR@10"), ("recall@100", "Recall@100"), ("map", "MAP"))

# The comparison's answer in the README: which start of fine-tuning is best, next to the two references.
ANSWER_ROWS = (
    ("bm25", "BM25"),
    ("minilm", "all-MiniLM-L6-v2"),
    ("c", "(c) fine-tuning only"),
    ("d-lm", "(d-lm) LM-only stage 1 + fine-tuning"),
    ("d", "(d) LLaRA stage 1 + fine-tuning"),
    ("d-best", "(d-best) stage 1 chosen on validation + fine-tuning"),
)
# Rows and tests a report does not hold are left out (reports written before --select have no (d-best)).
ANSWER_TESTS = (("d", "c"), ("d", "d-lm"), ("d-best", "d"))
DOMAINS = (("debian", "held-out Debian"), ("pydocs", "Python docstrings (zero-shot)"))


# results.json written before `llara pipeline` took its stages' option names: old name -> current name
_OLD_PIPELINE_NAMES = {
    "pretrain_steps": "pretrain_max_steps", "pretrain_batch_size": "pretrain_per_device_train_batch_size",
    "pretrain_lr": "pretrain_learning_rate", "pretrain_max_length": "max_length", "finetune_steps": "finetune_max_steps",
    "finetune_batch_size": "finetune_per_device_train_batch_size", "finetune_lr": "finetune_learning_rate",
    "use_lora": "finetune_use_lora",
}


def pipeline_config(config: dict) -> dict:
    """A ``llara pipeline`` config (results.json's ``config``) under the current option names."""
    config = {_OLD_PIPELINE_NAMES.get(key, key): value for key, value in config.items()}
    if "mine_range" in config:
        config["range_start"], config["range_end"] = config.pop("mine_range")
    return config


def main_job_table(path: Path = RESULTS / "pipeline_main_job.json") -> str:
    """The main job's table: one row per evaluated model, from ``llara pipeline``'s results.json."""
    data = json.loads(path.read_text(encoding="utf-8"))
    config = pipeline_config(data["config"])
    lines = [
        f"Budget: {config['pretrain_max_steps']} pretraining steps x {config['pretrain_per_device_train_batch_size']} "
        f"texts (lr {config['pretrain_learning_rate']:g}, `{config['loss_mode']}` loss, {config['max_length']} tokens "
        f"per row), then {config['finetune_max_steps']} fine-tuning steps x "
        f"{config['finetune_per_device_train_batch_size']} queries x group {config['group_size']} (LoRA, lr "
        f"{config['finetune_learning_rate']:g}, temperature {config['temperature']:g}, "
        f"{config['mine_with']} negatives from ranks {config['range_start']}-{config['range_end']}); "
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


def comparison_answer_table(path: Path) -> str:
    """The comparison's answer from a ``paper_comparison.json``: nDCG@10 of the fine-tuned variants and the two
    references on both domains (mean ± std over seeds; a variant with fewer seeds than the report says how many),
    then (d) against (c) and (d-lm), and (d-best) against (d), with their query-level p-values (paired sign-flip
    test on seed-averaged per-query nDCG@10) and seed-level ones, Holm over the report's primary comparisons.
    Variants and tests the report does not hold are left out; the CPU kind is named when ``timings.json`` next to
    the report gives one.
    """
    report = json.loads(path.read_text(encoding="utf-8"))
    settings, summary = report["settings"], report["summary"]
    seeds = ", ".join(str(seed) for seed in settings["seeds"])
    lines = [
        f"nDCG@10, mean ± std over seeds {seeds}{_trained_on(path.parent / 'timings.json', settings['seeds'])}, at "
        f"{settings['budget_scale']:g}x the main job's budget "
        f"({settings['pretrain_steps_run']} stage-1 steps, {settings['finetune_steps_run']} fine-tuning steps); "
        f"Debian {settings['test_queries']} queries / {settings['test_corpus']} documents, docstrings "
        f"{settings['pydocs_queries']} / {settings['pydocs_corpus']}; p over queries: paired sign-flip test "
        f"({settings['permutations']} flips); p with seeds as the unit: two-level bootstrap over seeds, then queries; "
        "both Holm-adjusted over the report's primary comparisons of both domains.",
        "",
        "| model | " + " | ".join(title for _, title in DOMAINS) + " |",
        "|---" * (len(DOMAINS) + 1) + "|",
    ]
    for key, name in ANSWER_ROWS:
        if not all(key in summary[domain] for domain, _ in DOMAINS):
            continue
        cells = []
        for domain, _ in DOMAINS:
            row = summary[domain][key]
            std, runs = row["ndcg@10_std"], len(row.get("per_seed_ndcg@10") or {})
            fewer = f" ({runs} seeds)" if 0 < runs < len(settings["seeds"]) else ""  # still running
            cells.append(f"{row['ndcg@10']:.4f}" + (f" ± {std:.4f}" if std is not None else "") + fewer)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for x, y in ANSWER_TESTS:
        found = {domain: [t for t in report["tests"][domain]["primary"] if (t["x"], t["y"]) == (x, y)]
                 for domain, _ in DOMAINS}
        if not all(found.values()):
            continue
        cells = []
        for domain, _ in DOMAINS:
            (test,) = found[domain]
            check = test["seed_check"]
            seed_level = test.get("seed_level")  # reports written before the seed-level tests have none
            if seed_level and seed_level["bootstrap"]["p_value"] is not None:  # None: one seed
                boot = (f"; seeds as the unit (bootstrap) p {seed_level['bootstrap']['p_value']:.4f}, Holm "
                        f"{test['p_holm_bootstrap']:.4f}")
            else:
                boot = ""
            cells.append(
                f"{test['mean_diff']:+.4f}; queries p {test['p_value']:.4f}, Holm {test['p_holm']:.4f}{boot}; "
                f"{test['wins']} queries better / {test['losses']} worse; "
                f"positive in {check['positive']} of {check['seeds']} seeds"
            )
        lines.append(f"| ({x}) minus ({y}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _trained_on(timings_path: Path, seeds: list[int]) -> str:
    """Where a comparison's models were trained, for its caption: ``, trained on <cpu> (<bf16 flags>)`` when every
    timed run names the same CPU kind, ``, trained on <cpu> (<flags>) for seeds 0, 1, 2 and <cpu> (<flags>) for
    seed 3`` when each seed's runs share one kind; empty when one seed's runs differ or a run names none (timings
    written before runs recorded their CPU). Runs of seeds outside ``seeds`` (a seed still running, not in the
    report) are left out."""
    if not timings_path.is_file():
        return ""
    by_seed: dict[int, set] = {}
    for label, run in json.loads(timings_path.read_text(encoding="utf-8")).items():
        if isinstance(run, dict):
            match = re.search(r"-s(\d+)$", label)
            seed = int(match.group(1)) if match else -1
            if match and seed not in seeds:
                continue
            kind = (run.get("cpu"), tuple(run.get("bf16_cpu_flags") or ()) if "bf16_cpu_flags" in run else None)
            by_seed.setdefault(seed, set()).add(kind)
    if not by_seed or any(len(kinds) != 1 or None in next(iter(kinds)) for kinds in by_seed.values()):
        return ""
    groups: dict[tuple, list[int]] = {}
    for seed in sorted(by_seed):
        groups.setdefault(next(iter(by_seed[seed])), []).append(seed)
    if len(groups) == 1:
        ((cpu, flags),) = groups
        return f", trained on {cpu} ({_bf16_flags(flags)})"
    parts = [f"{cpu} ({_bf16_flags(flags)}) for seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
             for (cpu, flags), seeds in groups.items()]
    return ", trained on " + ", ".join(parts[:-1]) + " and " + parts[-1]


def _bf16_flags(flags) -> str:
    return "/".join(flag.upper().replace("_", "-") for flag in flags) or "no bf16"


def comparison_table(path: Path) -> str:
    """A table written by ``benchmarks/paper_comparison.py`` (its markdown file, next to its JSON).

    Its headings are nested under the document's own: the title becomes a bold line, the per-domain ``###``
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


def backbone_table(path: Path) -> str:
    """The main job on each backbone family (``benchmarks/backbone_comparison.py``): nDCG@10 of the untrained,
    stage-1 and fine-tuned model on both domains, next to BM25 and all-MiniLM-L6-v2, with each run's cost."""
    report = json.loads(path.read_text(encoding="utf-8"))
    lines = [
        "nDCG@10 on held-out Debian / Python docstrings (zero-shot); the main job's data and budget on each backbone.",
        "",
        "| backbone | untrained | after stage 1 | fine-tuned | wall time, peak memory |",
        "|---|---|---|---|---|",
    ]
    for name, backbone in report["backbones"].items():
        rows = backbone["rows"]
        cells = [f"{rows[key]['debian']['ndcg@10']:.4f} / {rows[key]['pydocs']['ndcg@10']:.4f}"
                 for key in ("llara-init", "llara-pretrained", "llara-finetuned")]
        env = backbone["environment"]
        flags = _bf16_flags(env.get("bf16_cpu_flags", []))
        memory = backbone["peak_rss_bytes"]
        cost = f"{backbone['seconds'] / 60:.0f} min" + (f", {memory / 2**30:.1f} GiB" if memory else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {cost} ({env['cpu']}, {flags}) |")
    for reference in report["references"].values():
        score = f"{reference['debian']['ndcg@10']:.4f} / {reference['pydocs']['ndcg@10']:.4f}"
        lines.append(f"| {reference['title']} | | | {score} | |")
    return "\n".join(lines)


def _comparison_block(folder: str) -> tuple[Path, str, Callable[[], str]]:
    return (BENCHMARKS_DOC, f"{folder}/paper_comparison",
            partial(comparison_table, RESULTS / folder / "paper_comparison.md"))


# Every generated block: the document it sits in, its marker name, and the function that renders it.
TARGETS: tuple[tuple[Path, str, Callable[[], str]], ...] = (
    (README, "main-job", main_job_table),
    (README, "comparison-answer",
     partial(comparison_answer_table, RESULTS / "paper_comparison_budget5x-validation" / "paper_comparison.json")),
    (README, "backbones", partial(backbone_table, RESULTS / "backbones.json")),
    _comparison_block("paper_comparison_budget5x-validation"),
    _comparison_block("paper_comparison_budget5x"),
    _comparison_block("paper_comparison_budget1x-rerun"),
    _comparison_block("paper_comparison_budget1x"),
    # a copy of the comparison's <out>/budgets.md: every variant under each budget, side by side
    (BENCHMARKS_DOC, "paper_comparison_budgets", partial(comparison_table, RESULTS / "paper_comparison_budgets.md")),
)

_BLOCK = re.compile(r"<!-- BEGIN (\S+) -->\n(?:.*?\n)?<!-- END \1 -->", flags=re.S)


def render(text: str, rendered: dict[str, str]) -> str:
    """``text`` with every marked block replaced by its rendering; unknown markers are left as they are."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in rendered:
            return match.group(0)
        return f"<!-- BEGIN {name} -->\n{rendered[name]}\n<!-- END {name} -->"

    return _BLOCK.sub(replace, text)


def block_names(text: str) -> list[str]:
    """Names of the marked blocks in ``text``, in order."""
    return [match.group(1) for match in _BLOCK.finditer(text)]


def documents(targets=TARGETS) -> dict[Path, dict[str, Callable[[], str]]]:
    """The renderers of each document's blocks, by document; README.md and every docs/*.md page are included
    (with no blocks to render when none is listed), so that a block nothing generates cannot hide there."""
    out: dict[Path, dict[str, Callable[[], str]]] = {path: {} for path in (README, *sorted((ROOT / "docs").glob("*.md")))}
    for path, name, renderer in targets:
        out.setdefault(path, {})[name] = renderer
    return out


def check_blocks(text: str, expected: dict[str, Callable[[], str]]) -> list[str]:
    """What is wrong with one document's blocks: listed blocks it lacks, blocks nothing renders, stale tables."""
    names = block_names(text)
    problems = [f"block {name!r} is missing" for name in expected if name not in names]
    problems += [f"block {name!r} is not generated by benchmarks/readme_tables.py" for name in names if name not in expected]
    problems += [f"block {name!r} is listed twice" for name in set(names) if names.count(name) > 1]
    if not problems and render(text, {name: renderer() for name, renderer in expected.items()}) != text:
        problems.append("a table differs from its result file: run python benchmarks/readme_tables.py")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a table differs from its result file or the blocks differ from TARGETS")
    args = parser.parse_args(argv)
    failed = False
    for path, expected in documents().items():
        where = path.relative_to(ROOT)
        current = path.read_text(encoding="utf-8")
        if args.check:
            for problem in check_blocks(current, expected):
                print(f"{where}: {problem}", file=sys.stderr)
                failed = True
            continue
        if not expected:
            continue
        updated = render(current, {name: renderer() for name, renderer in expected.items()})
        if updated != current:
            from trainers.io import atomic_write_text

            atomic_write_text(path, updated)
            print(f"{where}: tables regenerated")
        else:
            print(f"{where}: tables already up to date")
        missing = [name for name in expected if name not in block_names(updated)]
        if missing:
            print(f"{where}: no markers for {', '.join(missing)}", file=sys.stderr)
            failed = True
    if args.check and not failed:
        print("tables match benchmarks/results")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
