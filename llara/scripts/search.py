"""``llara search``: search a FAISS index directory with queries.jsonl and write a TREC run.

Examples::

    llara search --index indexes/llara-flat --queries data/beir/queries.jsonl --top-k 1000 --out run.trec
    llara search --index idx-ivfpq --queries queries.jsonl --top-k 100 --nprobe 64 --out run.trec
    llara search --index idx-binary --queries queries.jsonl --top-k 100 --rescore --oversample 4 --out run.trec

The query encoder is the model recorded in the index; ``--model`` names it where it has moved, and a model
other than the one that built the index is refused. Queries are truncated and quantized as the index's
documents were (meta.json records how). ``--rescore`` ranks the top ``k x oversample`` hits again with the
full-precision vectors kept by ``llara index --keep-embeddings``.
"""

from __future__ import annotations

import argparse

from llara.cli import command_parser


def make_parser() -> argparse.ArgumentParser:
    from llara.options import add_dtype_argument

    parser = command_parser(
        "llara search",
        "Encode queries with the index's model (encode_query) and write the top-k hits of each "
        "as a TREC run file (qid Q0 docid rank score tag).",
        __doc__,
    )
    parser.add_argument("--index", required=True, help="Index directory written by `llara index`.")
    parser.add_argument("--queries", required=True, help="queries.jsonl with one {\"_id\", \"text\"} object per line.")
    parser.add_argument("--out", required=True, help="TREC run file to write.")
    parser.add_argument("--top-k", type=int, default=1000, help="Hits per query (default 1000).")
    parser.add_argument("--model", default=None, help="Query encoder; default: the model the index was built with.")
    add_dtype_argument(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="Queries per encoder batch (default 32).")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF indexes: cells visited per query (default: as built).")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW indexes: query-time beam width (default: as built).")
    parser.add_argument("--tag", default="llara", help="Run tag, the sixth column (default llara).")
    parser.add_argument("--device", default=None, help="Torch device for the encoder.")
    parser.add_argument("--mmap", action="store_true", help="Memory-map the index file instead of reading it into RAM.")
    add_rescore_args(parser)
    return parser


def add_rescore_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--rescore`` and ``--oversample`` (shared with ``llara evaluate``)."""
    from trainers.retrieval.faiss_index import DEFAULT_OVERSAMPLE

    parser.add_argument("--rescore", action="store_true",
                        help="Rank the top k x --oversample hits again by the exact inner product of the full float32 "
                        "vectors (an index needs --keep-embeddings); meant for --quantize / --truncate-dim and "
                        "approximate indexes, a no-op on an exact float32 one.")
    parser.add_argument("--oversample", type=int, default=DEFAULT_OVERSAMPLE,
                        help=f"With --rescore: candidates searched per hit wanted (default {DEFAULT_OVERSAMPLE}).")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be >= 1")
    if args.oversample < 1:
        parser.error(f"--oversample must be >= 1, got {args.oversample}")

    from tqdm.auto import tqdm

    from trainers.retrieval.beir import load_queries
    from trainers.retrieval.encoding import encode_texts, load_encoder, query_encoder
    from trainers.retrieval.evaluation import hits_to_run, write_trec_run
    from trainers.retrieval.faiss_index import (
        check_query_model,
        check_query_width,
        hits_from_search,
        load_index,
        read_index_meta,
        search_queries,
        set_search_params,
        stored_vectors,
    )

    # Errors reach the CLI boundary (llara.cli_boundary): one line, exit status 1.
    queries = load_queries(args.queries)
    meta = read_index_meta(args.index)
    model_name = args.model or meta.get("model")
    if not model_name:
        raise ValueError(f"{args.index} does not record its model; pass --model")
    # Both refusals come before anything is loaded or encoded.
    check_query_model(meta, model_name, index_dir=args.index)
    rescore_vectors = stored_vectors(args.index, meta) if args.rescore else None
    loaded = load_index(args.index, mmap=args.mmap)
    set_search_params(loaded.index, nprobe=args.nprobe, ef_search=args.ef_search)
    model = load_encoder(model_name, device=args.device, dtype=args.dtype)
    with tqdm(total=len(queries), desc="Encoding queries", unit="query") as progress:
        embeddings = encode_texts(
            query_encoder(model, args.batch_size), list(queries.values()), batch_size=args.batch_size, progress=progress
        )
    check_query_width(loaded.meta, embeddings.shape[1], index_dir=args.index)
    scores, rows = search_queries(
        loaded.index,
        embeddings,
        args.top_k,
        spec=loaded.spec,
        rescore_vectors=rescore_vectors,
        oversample=args.oversample,
    )
    run = hits_to_run(hits_from_search(list(queries), loaded.ids, scores, rows))
    write_trec_run(args.out, run, tag=args.tag)
    print(f"wrote {sum(len(hits) for hits in run.values())} hits for {len(run)} queries to {args.out}")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("search", main)
