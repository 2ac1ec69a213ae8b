"""Two runs of ``paper_comparison.py`` side by side, seed by seed: what a rerun on newer code changed.

For every variant and seed that both work folders hold (``<folder>/results/<variant>-s<seed>-<domain>.json``):
nDCG@10 of each run, the difference (second - first), a paired two-sided sign-flip permutation test over the
queries' nDCG@10, and, for scale, the first run's standard deviation over seeds (from its
``paper_comparison.json``): a rerun that draws other random numbers (dropout masks, say) should move a variant by
about that much, not more. Writes JSON and a markdown table (both atomically) and prints the table.

Example: the 1x comparison against its rerun on newer code (``paper_comparison.py --tag rerun``)::

    python benchmarks/compare_reruns.py benchmarks/results/paper_comparison_budget1x \\
        benchmarks/results/paper_comparison_budget1x-rerun --out benchmarks/results/paper_comparison_rerun_1x.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from paper_comparison import DOMAIN_TITLES, DOMAINS, paired_permutation_test  # noqa: E402

from trainers.io import atomic_write_json, atomic_write_text, path_for_record  # noqa: E402

RESULT_NAME = re.compile(r"^(?P<key>.+)-s(?P<seed>\d+)-(?P<domain>[a-z]+)\.json$")


def trained_results(folder: Path) -> dict[tuple[str, int, str], dict]:
    """(variant, seed, domain) -> result record of every trained variant in ``folder/results``."""
    results_dir = folder / "results"
    if not results_dir.is_dir():
        raise SystemExit(f"{folder} has no results/ folder: pass a paper_comparison work folder (<out>/budget<K>x)")
    found = {}
    for path in sorted(results_dir.glob("*.json")):
        match = RESULT_NAME.match(path.name)
        if match and match["domain"] in DOMAINS:
            found[(match["key"], int(match["seed"]), match["domain"])] = json.loads(path.read_text())
    return found


def seed_std(folder: Path) -> dict[str, dict[str, float | None]]:
    """domain -> variant -> nDCG@10 std over seeds of the folder's own report (empty without a report)."""
    report = folder / "paper_comparison.json"
    if not report.is_file():
        return {}
    summary = json.loads(report.read_text())["summary"]
    return {d: {k: row.get("ndcg@10_std") for k, row in rows.items()} for d, rows in summary.items()}


def compare(first: Path, second: Path, permutations: int = 10000) -> dict:
    a, b = trained_results(first), trained_results(second)
    common = sorted(set(a) & set(b), key=lambda k: (DOMAINS.index(k[2]), k[1], k[0]))
    if not common:
        raise SystemExit(f"{first} and {second} share no trained variant and seed")
    spread = seed_std(first)
    rows = []
    for key, seed, domain in common:
        ra, rb = a[(key, seed, domain)], b[(key, seed, domain)]
        qa, qb = ra["per_query"], rb["per_query"]
        if sorted(qa) != sorted(qb):
            raise SystemExit(f"{key} seed {seed} ({domain}) was scored on different queries in the two runs")
        queries = sorted(qa)
        x = [qb[q]["ndcg@10"] for q in queries]
        y = [qa[q]["ndcg@10"] for q in queries]
        test = paired_permutation_test(x, y, permutations)
        rows.append({
            "variant": key, "seed": seed, "domain": domain,
            "first": ra["metrics"]["ndcg@10"], "second": rb["metrics"]["ndcg@10"],
            "diff": rb["metrics"]["ndcg@10"] - ra["metrics"]["ndcg@10"],
            "p_value": test["p_value"], "wins": test["wins"], "losses": test["losses"],
            "identical_per_query": x == y,
            "first_seed_std": spread.get(domain, {}).get(key),
        })
    return {"first": path_for_record(first, REPO), "second": path_for_record(second, REPO),
            "permutations": permutations, "rows": rows}


def markdown(report: dict) -> str:
    lines = [f"nDCG@10, first run `{report['first']}`, second run `{report['second']}`; p: paired sign-flip test "
             f"over queries ({report['permutations']} flips); seed std: the first run's spread over its seeds", ""]
    for domain in DOMAINS:
        rows = [r for r in report["rows"] if r["domain"] == domain]
        if not rows:
            continue
        lines += [f"#### {DOMAIN_TITLES[domain]}", "",
                  "| variant | seed | first | second | second - first | p | wins / losses | first run's seed std |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            std = "n/a" if r["first_seed_std"] is None else f"{r['first_seed_std']:.4f}"
            same = " (identical)" if r["identical_per_query"] else ""
            lines.append(f"| {r['variant']} | {r['seed']} | {r['first']:.4f} | {r['second']:.4f} | {r['diff']:+.4f}{same}"
                         f" | {r['p_value']:.4f} | {r['wins']} / {r['losses']} | {std} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("first", type=Path, help="work folder of the first run (holds results/)")
    parser.add_argument("second", type=Path, help="work folder of the second run (holds results/)")
    parser.add_argument("--out", type=Path, default=None, help="JSON to write; the markdown goes next to it (.md)")
    parser.add_argument("--permutations", type=int, default=10000, help="sign flips per test (default: %(default)s)")
    args = parser.parse_args(argv)
    report = compare(args.first, args.second, args.permutations)
    report["markdown"] = markdown(report)
    print(report["markdown"])
    if args.out:
        atomic_write_json(args.out, report)
        atomic_write_text(args.out.with_suffix(".md"), report["markdown"] + "\n")
        print(f"saved {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
