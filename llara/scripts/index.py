"""``llara index``: encode a corpus.jsonl with a model and write a FAISS index directory.

Examples::

    llara index --model runs/llara --corpus data/beir/corpus.jsonl --out indexes/llara-flat
    llara index --model runs/llara --corpus corpus.jsonl --out idx-hnsw --index-type hnsw --hnsw-m 32
    llara index --model runs/llara --corpus corpus.jsonl --out idx-ivfpq --index-type ivfpq \\
        --nlist 4096 --pq-m 64 --nprobe 32 --keep-embeddings
    llara index --model runs/llara --corpus corpus.jsonl --out idx-binary --quantize binary --keep-embeddings
    llara index --model runs/llara --corpus corpus.jsonl --out idx-256 --truncate-dim 256 --quantize int8

An interrupted run resumes from its finished shards in ``<out>.partial/`` when started again with
the same arguments. Several processes (one per GPU) encode the shards together under a launcher; rank 0
builds the index, identical to a one-process build::

    torchrun --nproc_per_node 4 -m llara.scripts.index --model runs/llara --corpus corpus.jsonl --out idx
"""

from __future__ import annotations

import argparse
import logging

from llara.cli import command_parser
from trainers.retrieval.faiss_index import INDEX_TYPES, QUANTIZATIONS

logger = logging.getLogger("llara.index")


def add_index_spec_args(parser: argparse.ArgumentParser) -> None:
    """The index type and its parameters (shared with ``llara evaluate``)."""
    group = parser.add_argument_group("index type")
    group.add_argument(
        "--index-type",
        choices=INDEX_TYPES,
        default="flat",
        help="flat: exact inner product (default); hnsw: graph; ivf: inverted lists; ivfpq: inverted lists "
        "with product quantization; sq8 / sq4 / sqfp16: scalar quantization to int8, 4 bits or float16.",
    )
    group.add_argument("--hnsw-m", type=int, default=32, help="HNSW: links per node (default 32).")
    group.add_argument("--ef-construction", type=int, default=80, help="HNSW: build-time beam width (default 80).")
    group.add_argument("--ef-search", type=int, default=128, help="HNSW: query-time beam width (default 128).")
    group.add_argument("--nlist", type=int, default=None, help="IVF: number of k-means cells (default ~4*sqrt(N)).")
    group.add_argument("--nprobe", type=int, default=16, help="IVF: cells visited per query (default 16).")
    group.add_argument("--pq-m", type=int, default=None, help="IVF-PQ: sub-vectors per code; must divide the dimension (default dim/8).")
    group.add_argument("--pq-nbits", type=int, default=8, help="IVF-PQ: bits per sub-vector code (default 8).")
    group.add_argument("--train-size", type=int, default=None, help="Vectors sampled to train IVF/PQ/SQ (default: enough for the index).")
    group.add_argument("--seed", type=int, default=0, help="Seed of the training sample and k-means (default 0).")
    compress = parser.add_argument_group("compressed vectors")
    compress.add_argument("--truncate-dim", type=int, default=None, metavar="D",
                          help="Index the first D dimensions, L2-normalized again (Matryoshka prefix); queries too.")
    compress.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                          help="int8: one byte per dimension (sentence-transformers' int8 codes, float32 queries); "
                          "binary: one bit per dimension, Hamming search. Flat index only; rescoring "
                          "(--keep-embeddings, then --rescore) recovers most of the loss.")


def index_spec_from_args(args: argparse.Namespace):
    from trainers.retrieval.faiss_index import IndexSpec

    return IndexSpec(
        index_type=args.index_type,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
        nlist=args.nlist,
        nprobe=args.nprobe,
        pq_m=args.pq_m,
        pq_nbits=args.pq_nbits,
        train_size=args.train_size,
        seed=args.seed,
        truncate_dim=args.truncate_dim,
        quantize=args.quantize,
    )


def make_parser() -> argparse.ArgumentParser:
    from llara.options import add_dtype_argument

    parser = command_parser(
        "llara index",
        "Encode a BEIR-layout corpus.jsonl (_id, title, text) with a LLaRA or sentence-transformers "
        "model in length-sorted batches and write a FAISS index plus its id mapping, atomically.",
        __doc__,
    )
    parser.add_argument("--model", required=True, help="LLaRA model folder, or any sentence-transformers model path/name.")
    add_dtype_argument(parser)
    parser.add_argument("--corpus", required=True, help="corpus.jsonl with one {\"_id\", \"title\", \"text\"} object per line.")
    parser.add_argument("--out", required=True, help="Index directory to create.")
    parser.add_argument("--batch-size", type=int, default=32, help="Texts per encoder batch (default 32).")
    parser.add_argument("--shard-size", type=int, default=10_000, help="Texts per resumable embedding shard (default 10000).")
    parser.add_argument("--keep-embeddings", action="store_true", help="Keep the float32 embedding shards in <out>/embeddings/.")
    parser.add_argument("--device", default=None, help="Torch device for the encoder (default: sentence-transformers' choice; under torchrun / "
                        "accelerate launch cuda:<LOCAL_RANK> when CUDA is available, else cpu).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing index directory.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    add_index_spec_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)

    from pathlib import Path

    from trainers.retrieval.beir import scan_corpus
    from trainers.retrieval.corpus_index import index_corpus_file
    from trainers.retrieval.encoding import distributed_context, document_encoder, load_encoder, model_identity
    from trainers.retrieval.evaluation import is_bm25
    from trainers.retrieval.faiss_index import model_signature

    if is_bm25(args.model):
        parser.error("bm25 has no dense index; use `llara evaluate --model bm25` instead")
    # Errors reach the CLI boundary (llara.cli_boundary): one line, exit status 1.
    spec = index_spec_from_args(args)
    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists (use --overwrite to replace it)")
    # Under torchrun / accelerate launch every rank encodes its share of the shards; rank 0 builds the index.
    context = distributed_context()
    corpus = scan_corpus(args.corpus, show_progress=not args.no_progress and context.is_main)  # a stream: no texts kept
    device = args.device or (context.device if context.world_size > 1 else None)
    model = load_encoder(args.model, device=device, dtype=args.dtype)
    out = index_corpus_file(
        document_encoder(model, args.batch_size),
        corpus,
        args.out,
        model_id=f"{model_identity(args.model)}|dtype={args.dtype}",  # bf16 and fp32 shards must not mix
        spec=spec,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        keep_embeddings=args.keep_embeddings,
        overwrite=args.overwrite,
        show_progress=not args.no_progress,
        # a local model is recorded by absolute path, so `llara search` finds it from any working directory
        extra_meta={"model": str(Path(args.model).resolve()) if Path(args.model).exists() else args.model,
                    "model_signature": model_signature(args.model),  # `llara search` refuses other query encoders
                    "corpus": str(Path(args.corpus).resolve())},
    )
    if out is not None:
        print(f"wrote {len(corpus)} vectors ({spec.index_type}) to {out}")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("index", main)
