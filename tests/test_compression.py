"""Compressed vectors: Matryoshka truncation, int8 and binary codes, rescoring with the stored float32 vectors,
what meta.json records of them, and the one-line refusals of combinations that cannot work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from llara.cli import main as llara_main
from trainers.retrieval.faiss_index import (
    IndexSpec,
    StoredVectors,
    build_index,
    check_query_model,
    load_index,
    model_signature,
    read_index_meta,
    rescore,
    save_index,
    search_index,
    search_queries,
)


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, dim: int = 64, clusters: int = 25, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres: neighbours are well separated from the rest, as with real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def low_rank(n: int, dim: int = 64, rank: int = 6, seed: int = 0) -> np.ndarray:
    """Unit vectors spanning a few directions of a wider space, as embeddings do: nearest neighbours stand out,
    and the sign bits of the coordinates (64 random projections of the few underlying ones) keep most angles."""
    mixing = np.random.default_rng(123).standard_normal((rank, dim)).astype(np.float32)
    x = np.random.default_rng(seed).standard_normal((n, rank)).astype(np.float32) @ mixing
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top_k(queries: np.ndarray, docs: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries.astype(np.float64) @ docs.T.astype(np.float64)), axis=1, kind="stable")[:, :k]


# ---------------------------------------------------------------------------------------------
# Search over compressed vectors against numpy references


def test_binary_index_holds_ubinary_codes_and_ranks_by_hamming_distance():
    import faiss

    docs, queries, k = unit_rows(600, 64, 0), unit_rows(40, 64, 1), 10
    spec = IndexSpec(quantize="binary")
    # When a binary index is built and searched with float32 queries
    index = build_index(docs, spec)
    scores, rows = search_queries(index, queries, k, spec=spec)
    # Then it holds sentence-transformers' ubinary codes, 8 bytes per 64-d vector
    assert isinstance(index, faiss.IndexBinaryFlat) and index.code_size == 8
    stored = faiss.vector_to_array(index.xb).reshape(len(docs), 8)
    np.testing.assert_array_equal(stored, quantize_embeddings(docs, precision="ubinary"))
    # And each hit is at the Hamming distance of a numpy reference's k nearest (ties may come in any order)
    doc_bits = np.unpackbits(quantize_embeddings(docs, precision="ubinary"), axis=1).astype(bool)  # (docs, 64)
    query_bits = np.unpackbits(quantize_embeddings(queries, precision="ubinary"), axis=1).astype(bool)  # (queries, 64)
    hamming = (query_bits[:, None, :] != doc_bits[None, :, :]).sum(axis=2)  # (queries, docs)
    nearest = np.sort(hamming, axis=1)[:, :k]
    np.testing.assert_array_equal(np.take_along_axis(hamming, rows, axis=1), nearest)
    # And the score is the inner product of the +-1 sign vectors, dim - 2 * hamming
    np.testing.assert_array_equal(scores, 64 - 2 * nearest)
    signs = np.where(query_bits, 1, -1) @ np.where(doc_bits, 1, -1).T  # (queries, docs)
    np.testing.assert_array_equal(np.take_along_axis(signs, rows, axis=1), scores)
    # And every document strictly nearer than the k-th is among the hits
    for query in range(len(queries)):
        assert set(np.flatnonzero(hamming[query] < nearest[query, -1])) <= set(rows[query].tolist())


def test_int8_index_holds_sentence_transformers_codes_and_ranks_like_their_dequantization():
    import faiss

    docs, queries, k = unit_rows(800, 48, 2), unit_rows(30, 48, 3), 15
    spec = IndexSpec(quantize="int8")
    # When an int8 index is built (calibrated on the min/max of every document) and searched with float32 queries
    index = build_index(docs, spec)
    scores, rows = search_queries(index, queries, k, spec=spec)
    # Then its codes are quantize_embeddings(precision="int8") with those ranges, offset by 128 (one byte each)
    ranges = np.stack([docs.min(axis=0), docs.max(axis=0)])
    st_codes = quantize_embeddings(docs, precision="int8", ranges=ranges)
    stored = faiss.vector_to_array(index.codes).reshape(len(docs), 48)
    np.testing.assert_array_equal(stored.astype(np.int16) - 128, st_codes)
    # And the ranking is that of the float32 queries against sentence-transformers' dequantized codes ...
    steps = (ranges[1] - ranges[0]) / 255
    dequantized = (st_codes.astype(np.float64) + 128) * steps + ranges[0]  # (docs, 48)
    reference = queries.astype(np.float64) @ dequantized.T  # (queries, docs)
    np.testing.assert_array_equal(rows, exact_top_k(queries, dequantized, k))
    # ... whose scores differ from faiss' (bucket middles, not lower edges) by one constant per query
    offset = 0.5 * (queries.astype(np.float64) * steps).sum(axis=1, keepdims=True)  # (queries, 1)
    np.testing.assert_allclose(scores, np.take_along_axis(reference, rows, axis=1) + offset, atol=1e-5)


def test_truncation_indexes_renormalized_prefixes_and_truncates_queries_alike():
    import faiss

    docs, queries, k = unit_rows(300, 32, 4), unit_rows(25, 32, 5), 7
    spec = IndexSpec(truncate_dim=12)
    index = build_index(docs, spec)
    prefixes = docs[:, :12] / np.linalg.norm(docs[:, :12], axis=1, keepdims=True)
    query_prefixes = queries[:, :12] / np.linalg.norm(queries[:, :12], axis=1, keepdims=True)
    # The index holds the renormalized 12-d prefixes ...
    assert index.d == 12
    held = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    np.testing.assert_allclose(held, prefixes, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(held, axis=1), 1.0, rtol=1e-6)
    # ... and full-width queries are truncated the same way before the search
    scores, rows = search_queries(index, queries, k, spec=spec)
    np.testing.assert_array_equal(rows, exact_top_k(query_prefixes, prefixes, k))
    np.testing.assert_allclose(scores, np.take_along_axis(query_prefixes @ prefixes.T, rows, axis=1), atol=1e-6)
    # Truncation combines with approximate indexes too, and with binary codes of the prefix
    assert build_index(docs, IndexSpec("hnsw", truncate_dim=16)).d == 16
    binary = build_index(docs, IndexSpec(truncate_dim=16, quantize="binary"))
    assert (binary.d, binary.code_size) == (16, 2)


@pytest.mark.parametrize("spec", [IndexSpec(quantize="binary"), IndexSpec(quantize="int8"),
                                  IndexSpec(truncate_dim=8), IndexSpec("ivfpq", nlist=4, nprobe=4, pq_m=4),
                                  IndexSpec()], ids=["binary", "int8", "truncate-8", "ivfpq", "flat"])
def test_rescoring_recovers_the_exact_top_k_when_the_candidates_cover_it(spec):
    docs, queries, k = clustered(400, 32, seed=6), clustered(20, 32, seed=7), 10
    index = build_index(docs, spec)
    exact = exact_top_k(queries, docs, k)
    # Given candidates that cover every document (k x 40 = 400), rescoring returns the exact float32 top k
    scores, rows = search_queries(index, queries, k, spec=spec, rescore_vectors=docs, oversample=40)
    np.testing.assert_array_equal(rows, exact)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ docs.T, exact, axis=1), rtol=1e-5)


@pytest.mark.parametrize(("spec", "plain_below", "rescored_above"),
                         [(IndexSpec(quantize="binary"), 0.6, 0.9), (IndexSpec(truncate_dim=16), 0.8, 0.98)],
                         ids=["binary", "truncate-16"])
def test_rescoring_four_candidates_per_hit_recovers_most_of_the_exact_top_k(spec, plain_below, rescored_above):
    docs, queries, k = low_rank(3000, seed=8), low_rank(100, seed=9), 10
    index = build_index(docs, spec)
    exact = exact_top_k(queries, docs, k)

    def recall(rows):
        return np.mean([len(set(a) & set(b)) / k for a, b in zip(rows, exact, strict=True)])

    _, plain = search_queries(index, queries, k, spec=spec)
    _, rescored = search_queries(index, queries, k, spec=spec, rescore_vectors=docs, oversample=4)
    assert recall(plain) < plain_below, recall(plain)  # the compressed codes alone lose neighbours ...
    assert recall(rescored) > rescored_above, recall(rescored)  # ... that 4 candidates per hit bring back


def test_rescore_keeps_ann_misses_last_and_reads_memory_mapped_shards(tmp_path):
    docs, queries = unit_rows(50, 8, 10), unit_rows(3, 8, 11)
    for number, (start, stop) in enumerate([(0, 20), (20, 35), (35, 50)]):
        np.save(tmp_path / f"shard_{number:06d}.npy", docs[start:stop])
    stored = StoredVectors(sorted(tmp_path.glob("shard_*.npy")))
    assert stored.shape == (50, 8)
    np.testing.assert_array_equal(stored.take(np.array([49, 0, 20, 19, 35])), docs[[49, 0, 20, 19, 35]])
    # Candidates padded with -1 (an ANN index found fewer than asked) and spread over the three shards
    candidates = np.array([[3, 40, -1, 22], [-1, -1, 7, 7], [49, 0, 21, 36]])
    # Rescored in groups of one query (block_elements) and all at once: the same answer
    for block_elements in (4 * 8, 2**20):
        scores, rows = rescore(queries, candidates, stored, 3, block_elements=block_elements)
        for query in range(3):
            found = [row for row in candidates[query] if row >= 0]
            expected = sorted(found, key=lambda row: -float(queries[query] @ docs[row]))[:3]
            assert rows[query][: len(expected)].tolist() == expected
            assert (rows[query][len(expected) :] == -1).all()
            np.testing.assert_allclose(scores[query][: len(expected)], docs[expected] @ queries[query], atol=1e-6)


def test_compressed_indexes_save_load_and_record_their_bytes_per_vector(tmp_path):
    docs, queries = unit_rows(200, 64, 12), unit_rows(5, 64, 13)
    ids = [f"d{i}" for i in range(len(docs))]
    for name, spec, code_bytes in [("flat", IndexSpec(), 256), ("int8", IndexSpec(quantize="int8"), 64),
                                   ("binary", IndexSpec(quantize="binary"), 8),
                                   ("binary-32", IndexSpec(truncate_dim=32, quantize="binary"), 4)]:
        index = build_index(docs, spec)
        save_index(tmp_path / name, index, ids, {"index_spec": spec.to_dict()})
        loaded = load_index(tmp_path / name)
        assert loaded.meta["bytes_per_vector"] == code_bytes, name
        assert loaded.spec == spec
        before = search_queries(index, queries, 5, spec=spec)
        after = search_queries(loaded.index, queries, 5, spec=loaded.spec)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_array_equal(after[0], before[0])
    assert load_index(tmp_path / "binary", mmap=True).index.ntotal == 200
    # A binary index takes packed codes of its own width, and says so when given floats of the wrong width
    with pytest.raises(ValueError, match=r"queries must be \(num_queries, 8\) to search this index of binary codes"):
        search_index(load_index(tmp_path / "binary").index, queries, 5)


def test_spec_refuses_combinations_that_cannot_work():
    with pytest.raises(ValueError, match="--truncate-dim must be a multiple of 8, got 12"):
        IndexSpec(truncate_dim=12, quantize="binary")
    with pytest.raises(ValueError, match="--truncate-dim must be >= 1, got 0"):
        IndexSpec(truncate_dim=0)
    with pytest.raises(ValueError, match="cannot be combined with --index-type hnsw"):
        IndexSpec("hnsw", quantize="int8")
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        IndexSpec(quantize="int4")
    # The model's width is known when vectors arrive
    with pytest.raises(ValueError, match="--truncate-dim 64 is larger than the model's 32 dimensions"):
        build_index(unit_rows(10, 32, 0), IndexSpec(truncate_dim=64))
    with pytest.raises(ValueError, match="packs 8 dimensions per byte, but the model's embeddings have 20"):
        build_index(unit_rows(10, 20, 0), IndexSpec(quantize="binary"))
    with pytest.raises(ValueError, match="oversample must be >= 1"):
        search_queries(build_index(unit_rows(10, 8, 0)), unit_rows(2, 8, 1), 3, rescore_vectors=unit_rows(10, 8, 0),
                       oversample=0)


def test_model_signature_follows_content_not_location(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 32}')
    (model / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(300_000))
    (model / "README.md").write_text("a card")
    signature = model_signature(model)
    # A copy elsewhere, with another card and a result file next to the weights, is the same model
    shutil.copytree(model, tmp_path / "copy")
    (tmp_path / "copy" / "README.md").write_text("another card")
    (tmp_path / "copy" / "results.json").write_text('{"ndcg@10": 0.5}')
    assert model_signature(tmp_path / "copy") == signature
    check_query_model({"model_signature": signature, "model": str(model)}, tmp_path / "copy", index_dir="idx")
    # Retrained weights (same size, other bytes) are not
    weights = bytearray((model / "model.safetensors").read_bytes())
    weights[150_000 : 150_000 + 8192] = bytes(8192)
    (model / "model.safetensors").write_bytes(bytes(weights))
    assert model_signature(model) != signature
    with pytest.raises(ValueError, match="changed since idx was built"):
        check_query_model({"model_signature": signature, "model": str(model)}, str(model), index_dir="idx")
    # Another prompt (sentence-transformers' config) is another model too
    (tmp_path / "copy" / "config_sentence_transformers.json").write_text('{"prompts": {"query": "q: "}}')
    assert model_signature(tmp_path / "copy") != signature
    # A hub name is its own signature
    assert model_signature("org/some-model") == "org/some-model"


# ---------------------------------------------------------------------------------------------
# Through the command line


class StandIn:
    """An encoder of ``dim`` dimensions: a deterministic unit vector per text; counts its batches."""

    def __init__(self, dim: int = 16):
        self.dim = dim
        self.batches = 0

    def _encode(self, texts, **kwargs):
        self.batches += 1
        rows = [np.random.default_rng(abs(hash(text)) % 2**32).standard_normal(self.dim) for text in texts]
        rows = np.asarray(rows, dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    encode_document = encode_query = _encode


@pytest.fixture
def stand_in(monkeypatch):
    """The encoder every command loads; ``stand_in.dim`` sets its width."""
    encoder = StandIn()
    loader = lambda name, device=None, dtype="auto": encoder  # noqa: E731
    monkeypatch.setattr("trainers.retrieval.encoding.load_encoder", loader)
    monkeypatch.setattr("trainers.retrieval.evaluation.load_encoder", loader)
    return encoder


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "beir" / "qrels").mkdir(parents=True)
    beir = tmp_path / "beir"
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) + "\n" for i in range(40))
    )
    queries = [json.dumps({"_id": f"q{i}", "text": f"doc {i}"}) + "\n" for i in range(6)]
    (beir / "queries.jsonl").write_text("".join(queries))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(6)))
    return beir


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """``llara <argv>``: exit status and the last line on stderr (after checking it is one error line)."""
    status = llara_main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if status == 0:
        return status, ""
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(f"llara {argv[0]}: error: "), err
    return status, lines[-1]


def test_binary_index_with_rescoring_through_the_cli(stand_in, corpus, tmp_path, capsys):
    index_args = ["index", "--model", "stand-in", "--corpus", corpus / "corpus.jsonl", "--no-progress"]
    # Given a flat float32 index and a binary one that keeps its float32 vectors
    assert run_cli(capsys, [*index_args, "--out", tmp_path / "flat"])[0] == 0
    assert run_cli(capsys, [*index_args, "--out", tmp_path / "bin", "--quantize", "binary", "--keep-embeddings"])[0] == 0
    # Then meta.json records what was done to the vectors, their size and the model
    meta = read_index_meta(tmp_path / "bin")
    assert meta["index_spec"]["quantize"] == meta["quantize"] == "binary"
    assert (meta["truncate_dim"], meta["source_dim"], meta["dim"], meta["bytes_per_vector"]) == (None, 16, 16, 2)
    assert meta["model_signature"] == "stand-in" and meta["binary"] and meta["has_embeddings"]
    assert read_index_meta(tmp_path / "flat")["bytes_per_vector"] == 64
    # When both are searched, the binary one rescoring every candidate (3 hits x oversample 14 >= 40 documents)
    search_args = ["search", "--queries", corpus / "queries.jsonl", "--top-k", "3"]
    assert run_cli(capsys, [*search_args, "--index", tmp_path / "flat", "--out", tmp_path / "flat.trec"])[0] == 0
    assert run_cli(capsys, [*search_args, "--index", tmp_path / "bin", "--out", tmp_path / "bin.trec",
                            "--rescore", "--oversample", "14"])[0] == 0
    assert run_cli(capsys, [*search_args, "--index", tmp_path / "bin", "--out", tmp_path / "hamming.trec"])[0] == 0
    # Then the rescored run is the float32 run; each query finds its own text first by Hamming distance too
    flat = [line.split()[:5] for line in (tmp_path / "flat.trec").read_text().splitlines()]
    rescored = [line.split()[:5] for line in (tmp_path / "bin.trec").read_text().splitlines()]
    assert [row[:4] for row in rescored] == [row[:4] for row in flat]
    np.testing.assert_allclose([float(row[4]) for row in rescored], [float(row[4]) for row in flat], rtol=1e-6)
    hamming = [line.split() for line in (tmp_path / "hamming.trec").read_text().splitlines()]
    assert [row[2] for row in hamming if row[3] == "1"] == [f"d{i}" for i in range(6)]
    assert {row[4] for row in hamming if row[3] == "1"} == {"16.0"}  # identical codes: 16 bits agree


def test_evaluate_with_compression_flags(stand_in, corpus, tmp_path, capsys):
    base = ["evaluate", "--model", "stand-in", "--beir", corpus, "--top-k", "10", "--no-progress"]
    assert run_cli(capsys, [*base, "--output", tmp_path / "flat.json"])[0] == 0
    assert run_cli(capsys, [*base, "--output", tmp_path / "rescored.json", "--truncate-dim", "8", "--quantize", "binary",
                            "--rescore", "--oversample", "4"])[0] == 0
    flat = json.loads((tmp_path / "flat.json").read_text())
    rescored = json.loads((tmp_path / "rescored.json").read_text())
    assert rescored["index_spec"]["truncate_dim"] == 8 and rescored["index_spec"]["quantize"] == "binary"
    assert rescored["rescore"] == {"oversample": 4} and flat["rescore"] is None
    # each query's own text is its nearest neighbour in every variant: rescoring finds it among 40 candidates
    assert flat["results"][0]["metrics"]["ndcg@10"] == rescored["results"][0]["metrics"]["ndcg@10"] == 1.0


@pytest.mark.parametrize(
    ("argv", "dim", "code", "message"),
    [
        (["--quantize", "binary", "--truncate-dim", "12"], 16, 1,
         "--quantize binary packs 8 dimensions per byte: --truncate-dim must be a multiple of 8, got 12"),
        (["--quantize", "binary"], 12, 1,
         "--quantize binary packs 8 dimensions per byte, but the model's embeddings have 12 dimensions"),
        (["--truncate-dim", "64"], 16, 1, "--truncate-dim 64 is larger than the model's 16 dimensions"),
        (["--truncate-dim", "0"], 16, 1, "--truncate-dim must be >= 1, got 0"),
        (["--quantize", "int8", "--index-type", "hnsw"], 16, 1, "cannot be combined with --index-type hnsw"),
        (["--quantize", "int4"], 16, 2, "argument --quantize: invalid choice: 'int4'"),
    ],
    ids=["binary-truncate-12", "binary-model-width-12", "truncate-wider-than-model", "truncate-0", "int8-hnsw",
         "unknown-quantization"],
)
def test_index_refuses_bad_combinations_in_one_line(stand_in, corpus, tmp_path, capsys, argv, dim, code, message):
    stand_in.dim = dim
    status, line = run_cli(capsys, ["index", "--model", "stand-in", "--corpus", corpus / "corpus.jsonl",
                                    "--out", tmp_path / "idx", "--shard-size", "8", "--batch-size", "4",
                                    "--no-progress", *argv])
    assert status == code and message in line, line
    # Refused at once or on the first batch of the encoder, never after encoding the corpus
    assert stand_in.batches <= 1
    assert not (tmp_path / "idx").exists()
    # The same through llara evaluate, which takes the same flags
    stand_in.batches = 0
    status, line = run_cli(capsys, ["evaluate", "--model", "stand-in", "--beir", corpus, "--top-k", "5",
                                    "--batch-size", "4", "--no-progress", "--output", tmp_path / "r.json", *argv])
    assert status == code and message in line, line
    assert stand_in.batches <= 1


def test_truncate_dim_wider_than_a_real_model_fails_on_its_first_batch(tiny_llara_dir, corpus, tmp_path, capsys):
    status, line = run_cli(capsys, ["index", "--model", tiny_llara_dir, "--corpus", corpus / "corpus.jsonl",
                                    "--out", tmp_path / "idx", "--truncate-dim", "4096", "--no-progress"])
    assert status == 1 and "--truncate-dim 4096 is larger than the model's" in line, line
    assert not (tmp_path / "idx").exists()


def test_search_refuses_rescoring_without_vectors_another_model_and_another_width(stand_in, corpus, tmp_path, capsys):
    assert run_cli(capsys, ["index", "--model", "stand-in", "--corpus", corpus / "corpus.jsonl", "--out", tmp_path / "idx",
                            "--quantize", "int8", "--no-progress"])[0] == 0
    search = ["search", "--index", tmp_path / "idx", "--queries", corpus / "queries.jsonl",
              "--out", tmp_path / "run.trec"]
    stand_in.batches = 0
    # Rescoring an index built without --keep-embeddings: refused before any query is encoded
    status, line = run_cli(capsys, [*search, "--rescore"])
    assert status == 1 and "keeps no full-precision vectors to rescore with: build it with --keep-embeddings" in line
    assert stand_in.batches == 0
    # Queries from another model
    status, line = run_cli(capsys, [*search, "--model", "another-model"])
    assert status == 1 and "was built with stand-in, not another-model" in line, line
    assert stand_in.batches == 0
    # Queries of another width (the recorded model now embeds in 8 dimensions)
    stand_in.dim = 8
    status, line = run_cli(capsys, search)
    assert status == 1 and "embeds queries in 8 dimensions but" in line and "built from 16-dimensional" in line, line
    # A non-positive oversample is a usage error
    status, line = run_cli(capsys, [*search, "--rescore", "--oversample", "0"])
    assert status == 2 and "--oversample must be >= 1, got 0" in line
    assert not (tmp_path / "run.trec").exists()


def test_quality_benchmark_encodes_once_and_scores_every_variant(tiny_llara_dir, tmp_path, monkeypatch):
    """``benchmarks/compression_quality.py`` on a tiny model: every variant, bytes, ratios, one encoding per domain."""
    from conftest import import_script
    from test_evaluation import make_collection

    import trainers.retrieval.encoding as encoding

    benchmark = import_script(Path(__file__).resolve().parent.parent / "benchmarks" / "compression_quality.py",
                              "compression_quality")
    beir = make_collection(tmp_path / "debian", num_docs=60, num_queries=12)
    encoded, real_encode = [], encoding.encode_texts

    def counting_encode(encode_fn, texts, **options):
        encoded.append(len(texts))
        return real_encode(encode_fn, texts, **options)

    monkeypatch.setattr(encoding, "encode_texts", counting_encode)
    out = tmp_path / "results" / "compression_quality.json"
    # 10 hits x oversample 6 = 60 candidates: every document, so that rescoring must give the float32 ranking
    assert benchmark.main(["--model", str(tiny_llara_dir), "--debian", str(beir), "--truncate-dims", "16", "8", "64",
                           "--oversample", "4", "6", "--out", str(out)]) == 0
    assert encoded == [60, 12]  # the corpus and the queries, once for all variants
    report = json.loads(out.read_text())
    rows = {row["variant"]: row for row in report["domains"]["debian"]["rows"]}
    dim = report["domains"]["debian"]["dim"]
    assert list(rows) == ["fp32-flat", "int8", "binary", "binary+rescore-x4", "binary+rescore-x6", "truncate-16",
                          "truncate-8"]  # no prefix as wide as the model (64 >= 32)
    assert [rows[name]["vector_bytes_per_document"] for name in rows] == [4 * dim, dim, dim // 8, dim // 8, dim // 8,
                                                                          64, 32]
    assert rows["binary"]["vector_bytes_ratio"] == 1 / 32 and rows["binary"]["rescore_bytes_per_document"] == 0
    assert rows["binary+rescore-x6"]["rescore_bytes_per_document"] == 4 * dim
    assert rows["fp32-flat"]["ndcg@10_ratio"] == 1.0
    assert rows["binary+rescore-x6"]["metrics"] == pytest.approx(rows["fp32-flat"]["metrics"], abs=1e-9)
    assert isinstance(report["domains"]["debian"]["target_met"], bool)
    assert "| binary+rescore-x4 | 4 |" in out.with_suffix(".md").read_text()
