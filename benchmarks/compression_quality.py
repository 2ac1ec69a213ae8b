"""Retrieval quality of compressed vectors: bytes per document against nDCG@10, on both domains.

Each collection is encoded once with the model; every variant indexes those same float32 embeddings the way
``llara index`` would (``IndexSpec``) and is searched the way ``llara search`` would (``search_queries``):

  fp32-flat            exact inner product over the float32 vectors (the reference)
  int8                 one byte per dimension (sentence-transformers' int8 codes), float32 queries
  binary               one bit per dimension, Hamming distance
  binary+rescore-xN    binary, then the top k x N candidates ranked again with the float32 vectors
  truncate-D           the first D dimensions, renormalized (Matryoshka prefix), float32

Bytes per document: ``vector`` is the code of one vector (4 x dim for float32, dim for int8, dim / 8 for binary),
``index`` the serialized FAISS index over the number of documents; the float32 vectors that rescoring reads
(``llara index --keep-embeddings``) are reported apart. Target: binary + rescoring (x4) keeps >= 0.98 of fp32 flat
nDCG@10 at 1/32 of the vector bytes.

    python benchmarks/compression_quality.py --model outputs/pipeline/models/finetuned \\
        --debian outputs/pipeline/data/test --pydocs outputs/paper_comparison/data/pydocs

A ``--pydocs`` folder that does not exist yet is written first (the held-out stdlib-docstring collection,
``--pydocs-queries`` x ``--pydocs-corpus``, as ``benchmarks/paper_comparison.py`` makes it). Writes
``benchmarks/results/compression_quality.json`` and ``.md`` atomically.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REFERENCE = "fp32-flat"
TARGET_VARIANT = "binary+rescore-x4"
TARGET_NDCG_RATIO = 0.98


def variants(source_dim: int, truncate_dims: list[int], oversamples: list[int]) -> list[tuple[str, dict, int | None]]:
    """(name, IndexSpec fields, rescoring oversample or None) of each variant; prefixes as wide as the model are
    left out (they would be the reference again)."""
    rows = [(REFERENCE, {}, None), ("int8", {"quantize": "int8"}, None), ("binary", {"quantize": "binary"}, None)]
    rows += [(f"binary+rescore-x{factor}", {"quantize": "binary"}, factor) for factor in oversamples]
    rows += [(f"truncate-{dim}", {"truncate_dim": dim}, None) for dim in truncate_dims if dim < source_dim]
    return rows


def evaluate_domain(model, name: str, beir_dir: Path, args) -> dict:
    import faiss
    from tqdm.auto import tqdm

    from trainers.io import path_for_record
    from trainers.retrieval.beir import load_beir
    from trainers.retrieval.encoding import document_encoder, encode_texts, query_encoder
    from trainers.retrieval.evaluation import compute_metrics, hits_to_run
    from trainers.retrieval.faiss_index import (
        IndexSpec,
        build_index,
        bytes_per_vector,
        hits_from_search,
        search_queries,
    )

    dataset = load_beir(beir_dir, split="test")
    doc_ids, doc_texts = dataset.passages()
    query_ids, query_texts = list(dataset.eval_queries), list(dataset.eval_queries.values())
    # One encoding per collection: every variant indexes and searches these same float32 vectors.
    started = time.perf_counter()
    with tqdm(total=len(doc_texts), desc=f"{name}: encoding corpus", unit="doc") as progress:
        docs = encode_texts(document_encoder(model, args.batch_size), doc_texts, batch_size=args.batch_size,
                            progress=progress)
    with tqdm(total=len(query_texts), desc=f"{name}: encoding queries", unit="query") as progress:
        queries = encode_texts(query_encoder(model, args.batch_size), query_texts, batch_size=args.batch_size,
                               progress=progress)
    encode_seconds = time.perf_counter() - started
    source_dim = docs.shape[1]
    rows = []
    for variant, fields, oversample in variants(source_dim, args.truncate_dims, args.oversample):
        spec = IndexSpec(**fields)
        index = build_index(docs, spec)
        serialize = faiss.serialize_index_binary if spec.quantize == "binary" else faiss.serialize_index
        started = time.perf_counter()
        scores, found = search_queries(index, queries, args.top_k, spec=spec, oversample=oversample or 1,
                                       rescore_vectors=docs if oversample else None)
        search_seconds = time.perf_counter() - started
        run = hits_to_run(hits_from_search(query_ids, doc_ids, scores, found))
        result = compute_metrics(dataset.qrels, run, depth=args.top_k)
        rows.append({
            "variant": variant,
            "index_spec": dict(fields),
            "rescore_oversample": oversample,
            "vector_bytes_per_document": bytes_per_vector(index),
            "index_bytes_per_document": round(len(serialize(index)) / len(doc_ids), 2),
            "rescore_bytes_per_document": 4 * source_dim if oversample else 0,
            "metrics": result.metrics,
            "search_ms_per_query": round(1000 * search_seconds / len(query_ids), 3),
        })
    reference = next(row for row in rows if row["variant"] == REFERENCE)
    for row in rows:
        row["ndcg@10_ratio"] = row["metrics"]["ndcg@10"] / reference["metrics"]["ndcg@10"]
        row["vector_bytes_ratio"] = row["vector_bytes_per_document"] / reference["vector_bytes_per_document"]
    target = next((row for row in rows if row["variant"] == TARGET_VARIANT), None)
    return {
        "beir": path_for_record(beir_dir, ROOT),
        "documents": len(doc_ids),
        "queries": len(query_ids),
        "dim": source_dim,
        "encode_seconds": round(encode_seconds, 1),
        "rows": rows,
        "target_met": None if target is None else bool(
            target["ndcg@10_ratio"] >= TARGET_NDCG_RATIO and target["vector_bytes_ratio"] <= 1 / 32
        ),
    }


def markdown(report: dict) -> str:
    lines = [
        "# Compressed vectors: bytes per document and nDCG@10",
        "",
        f"Model `{report['model']}` (dtype {report['dtype']}); every search returns the top {report['top_k']}, "
        f"rescoring ranks the top {report['top_k']} x oversample candidates again with the float32 vectors. "
        f"Target: {TARGET_VARIANT} keeps >= {TARGET_NDCG_RATIO} of {REFERENCE} nDCG@10 at 1/32 of the vector bytes.",
        "Written by `benchmarks/compression_quality.py`.",
    ]
    for domain, result in report["domains"].items():
        lines += [
            "",
            f"## {domain}: {result['queries']} queries, {result['documents']} documents, {result['dim']} dimensions",
            "",
            "| variant | vector bytes / doc | index bytes / doc | + float32 for rescoring / doc | nDCG@10 | "
            "vs fp32 flat | vector bytes vs fp32 flat |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in result["rows"]:
            lines.append(
                f"| {row['variant']} | {row['vector_bytes_per_document']} | {row['index_bytes_per_document']:.1f} | "
                f"{row['rescore_bytes_per_document'] or '-'} | {row['metrics']['ndcg@10']:.4f} | "
                f"{row['ndcg@10_ratio']:.3f} | 1/{1 / row['vector_bytes_ratio']:.0f} |"
            )
        if result["target_met"] is not None:
            lines += ["", f"Target {'met' if result['target_met'] else 'NOT met'} on {domain}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="LLaRA model folder (the main job's fine-tuned model)")
    parser.add_argument("--debian", type=Path, help="held-out Debian collection (<pipeline out>/data/test)")
    parser.add_argument("--pydocs", type=Path, help="stdlib-docstring collection in BEIR layout (written if missing)")
    parser.add_argument("--pydocs-queries", type=int, default=300, help="queries of a new --pydocs (default 300)")
    parser.add_argument("--pydocs-corpus", type=int, default=1500, help="documents of a new --pydocs (default 1500)")
    parser.add_argument("--truncate-dims", type=int, nargs="+", default=[256, 128],
                        help="prefix widths (default 256 128)")
    parser.add_argument("--oversample", type=int, nargs="+", default=[4, 10], help="rescoring factors (default 4 10)")
    parser.add_argument("--top-k", type=int, default=10, help="hits per query (default 10: nDCG@10 and MRR@10)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto", help="compute dtype of the encoder (as `llara evaluate --dtype`)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compression_quality.json")
    args = parser.parse_args(argv)
    if not (args.debian or args.pydocs):
        parser.error("give --debian DIR and/or --pydocs DIR")
    if min(args.oversample) < 1 or min(args.truncate_dims) < 1 or args.top_k < 1:
        parser.error("--oversample, --truncate-dims and --top-k must be >= 1")

    from trainers.io import atomic_write_json, atomic_write_text, path_for_record
    from trainers.retrieval.encoding import load_encoder

    if args.pydocs and not args.pydocs.exists():
        from trainers.pydocs_data import write_test_collection

        write_test_collection(args.pydocs, n_queries=args.pydocs_queries, n_corpus=args.pydocs_corpus, seed=0)
    model = load_encoder(args.model, device=args.device, dtype=args.dtype)
    report = {"model": path_for_record(args.model, ROOT), "dtype": args.dtype, "top_k": args.top_k, "domains": {}}
    for domain, beir_dir in (("debian", args.debian), ("pydocs", args.pydocs)):
        if beir_dir is None:
            continue
        result = evaluate_domain(model, domain, beir_dir, args)
        report["domains"][domain] = result
        for row in result["rows"]:
            print(f"{domain:7s} {row['variant']:20s} {row['vector_bytes_per_document']:6d} B/doc "
                  f"(1/{1 / row['vector_bytes_ratio']:.0f})  nDCG@10 {row['metrics']['ndcg@10']:.4f}  "
                  f"ratio to fp32 flat {row['ndcg@10_ratio']:.3f}", flush=True)
    atomic_write_json(args.out, report)
    atomic_write_text(args.out.with_suffix(".md"), markdown(report))
    print(f"saved {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
