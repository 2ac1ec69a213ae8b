"""Shard encoding with resume, FAISS index build/save/load, and the refusal of half-written indexes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainers.retrieval.encoding import encode_in_shards, encode_texts, length_sorted_batches, load_shards
from trainers.retrieval.faiss_index import (
    IncompleteIndexError,
    IndexSpec,
    build_index,
    load_index,
    save_index,
    search_index,
)

DIM = 16


class FakeEncoder:
    """Deterministic text -> unit vector; records batches; can fail after a number of batches."""

    def __init__(self, fail_after: int | None = None):
        self.batches: list[list[str]] = []
        self.fail_after = fail_after

    def __call__(self, texts):
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.batches.append(list(texts))
        rows = []
        for text in texts:
            rng = np.random.default_rng(abs(hash(text)) % 2**32)
            rows.append(rng.standard_normal(DIM))
        rows = np.asarray(rows, dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered(n, dim=32, clusters=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_length_sorted_batches_cover_everything_longest_first():
    texts = ["a" * n for n in (3, 10, 1, 7, 5)]
    batches = list(length_sorted_batches(texts, 2))
    assert [[len(texts[i]) for i in b] for b in batches] == [[10, 7], [5, 3], [1]]


def test_encode_texts_returns_rows_in_input_order():
    texts = [f"text {i} " + "x" * (i * 7 % 11) for i in range(23)]
    encoder = FakeEncoder()
    rows = encode_texts(encoder, texts, batch_size=4)
    np.testing.assert_array_equal(rows, encoder(texts))
    lengths = [max(len(t) for t in batch) for batch in encoder.batches[:-1]]
    assert lengths == sorted(lengths, reverse=True)


def test_resumed_shard_encoding_equals_uninterrupted(tmp_path):
    texts = [f"passage number {i}" for i in range(50)]
    # Given an encoding interrupted during the third shard (shards of 10, batches of 5)
    interrupted = FakeEncoder(fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        encode_in_shards(interrupted, texts, tmp_path / "a", fingerprint="f", shard_size=10, batch_size=5, show_progress=False)
    assert sorted(p.name for p in (tmp_path / "a").glob("shard_*.npy")) == ["shard_000000.npy", "shard_000001.npy"]
    # When it is started again
    resumed = FakeEncoder()
    paths = encode_in_shards(resumed, texts, tmp_path / "a", fingerprint="f", shard_size=10, batch_size=5, show_progress=False)
    # Then only the missing shards are encoded and the result equals an uninterrupted run
    assert sum(len(b) for b in resumed.batches) == 30
    straight = encode_in_shards(FakeEncoder(), texts, tmp_path / "b", fingerprint="f", shard_size=10, batch_size=5, show_progress=False)
    np.testing.assert_array_equal(load_shards(paths), load_shards(straight))
    assert not list((tmp_path / "a").glob("*.tmp"))


def test_resume_refuses_shards_of_another_run(tmp_path):
    texts = ["a", "b", "c"]
    encode_in_shards(FakeEncoder(), texts, tmp_path, fingerprint="one", shard_size=2, show_progress=False)
    with pytest.raises(ValueError, match="different run"):
        encode_in_shards(FakeEncoder(), texts, tmp_path, fingerprint="two", shard_size=2, show_progress=False)


def test_truncated_shard_is_encoded_again(tmp_path):
    texts = [f"t{i}" for i in range(6)]
    paths = encode_in_shards(FakeEncoder(), texts, tmp_path, fingerprint="f", shard_size=3, show_progress=False)
    paths[1].write_bytes(paths[1].read_bytes()[:40])
    again = FakeEncoder()
    encode_in_shards(again, texts, tmp_path, fingerprint="f", shard_size=3, show_progress=False)
    assert sum(len(b) for b in again.batches) == 3
    assert load_shards(paths).shape == (6, DIM)


def test_flat_index_is_exact_and_shards_equal_one_array(tmp_path):
    x = clustered(500)
    q = clustered(20, seed=1)
    np.save(tmp_path / "s0.npy", x[:200])
    np.save(tmp_path / "s1.npy", x[200:])
    scores, rows = search_index(build_index(x), q, 5)
    _, rows_from_shards = search_index(build_index([tmp_path / "s0.npy", tmp_path / "s1.npy"]), q, 5)
    brute = np.argsort(-(q @ x.T), axis=1)[:, :5]
    np.testing.assert_array_equal(rows, brute)
    np.testing.assert_array_equal(rows_from_shards, rows)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, brute, axis=1), rtol=1e-5)


@pytest.mark.parametrize("k", [7, 300])
def test_flat_search_by_matmul_equals_faiss_flat_search(monkeypatch, k):
    import faiss

    import trainers.retrieval.faiss_index as indexing

    # Given a flat index over random vectors (no exact ties) and blocks of 256 rows (k=300 spans blocks)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 24)).astype(np.float32)
    q = rng.standard_normal((64, 24)).astype(np.float32)
    index = build_index(x)
    monkeypatch.setattr(indexing, "FLAT_GEMM_BLOCK_ELEMENTS", 64 * 256)
    monkeypatch.setattr(indexing, "FLAT_GEMM_MIN_QUERIES", 20)
    # When search_index takes its matrix-product path (64 queries per batch; 10 per batch stays on faiss)
    assert isinstance(index, faiss.IndexFlat)
    faiss_calls = []
    real = indexing._faiss_search
    monkeypatch.setattr(indexing, "_faiss_search", lambda i, b, n: faiss_calls.append(len(b)) or real(i, b, n))
    scores, rows = search_index(index, q, k)
    assert faiss_calls == []
    small_scores, small_rows = search_index(index, q, k, batch_size=10)
    assert faiss_calls == [10] * 6 + [4]
    faiss_scores, faiss_rows = index.search(q, k)
    # Then it returns what faiss' own flat search returns: the same rows (two BLAS round differently, so rows
    # whose scores are within float rounding may swap: the exact scores at each rank still agree), same scores
    exact = q.astype(np.float64) @ x.T.astype(np.float64)  # (queries, vectors)
    np.testing.assert_allclose(np.take_along_axis(exact, rows, 1), np.take_along_axis(exact, faiss_rows, 1), atol=1e-5)
    assert (rows == faiss_rows).mean() > 0.999
    np.testing.assert_allclose(scores, faiss_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(small_rows, faiss_rows)
    # And queries of the wrong width are refused by name
    with pytest.raises(ValueError, match=r"queries must be \(num_queries, 24\)"):
        search_index(index, q[:, :10], k)


@pytest.mark.parametrize(
    ("spec", "minimum"),
    [
        (IndexSpec("hnsw", hnsw_m=16, ef_construction=40, ef_search=128), 0.9),
        (IndexSpec("ivf", nlist=16, nprobe=4), 0.8),
        (IndexSpec("ivfpq", nlist=16, nprobe=4, pq_m=8), 0.4),
        (IndexSpec("sq8"), 0.9),
        (IndexSpec("sqfp16"), 0.99),
    ],
    ids=lambda value: value.index_type if isinstance(value, IndexSpec) else str(value),
)
def test_ann_recall_against_exact(spec, minimum):
    x = clustered(2000)
    q = clustered(100, seed=2)
    _, exact = search_index(build_index(x), q, 10)
    _, found = search_index(build_index(x, spec), q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found, strict=True)])
    assert recall >= minimum, f"{spec.index_type} recall@10 {recall:.3f}"
    assert recall <= 1.0


def test_index_spec_validation():
    with pytest.raises(ValueError, match="unknown index type 'annoy'"):
        IndexSpec("annoy")
    with pytest.raises(ValueError, match="pq_m=7 must divide"):
        IndexSpec("ivfpq", pq_m=7).factory_string(32, 1000)
    assert IndexSpec("ivfpq", nlist=8, pq_m=4).factory_string(32, 1000) == "IVF8,PQ4x8"


def test_save_load_roundtrip_keeps_ids_and_search_params(tmp_path):
    x = clustered(400)
    spec = IndexSpec("ivf", nlist=8, nprobe=3)
    index = build_index(x, spec)
    ids = [f"doc-{i}" for i in range(len(x))]
    save_index(tmp_path / "idx", index, ids, {"index_spec": spec.to_dict(), "model": "m"})
    loaded = load_index(tmp_path / "idx")
    assert loaded.ids == ids and loaded.meta["model"] == "m" and loaded.index.nprobe == 3
    np.testing.assert_array_equal(search_index(loaded.index, x[:5], 3)[1], search_index(index, x[:5], 3)[1])
    with pytest.raises(FileExistsError):
        save_index(tmp_path / "idx", index, ids)


def test_half_written_index_is_rejected(tmp_path):
    x = clustered(100)
    ids = [str(i) for i in range(100)]
    save_index(tmp_path / "idx", build_index(x), ids)
    # no meta.json: an interrupted build
    (tmp_path / "idx" / "meta.json").rename(tmp_path / "meta.bak")
    with pytest.raises(IncompleteIndexError, match="not completely written"):
        load_index(tmp_path / "idx")
    (tmp_path / "meta.bak").rename(tmp_path / "idx" / "meta.json")
    # truncated index file
    data = (tmp_path / "idx" / "index.faiss").read_bytes()
    (tmp_path / "idx" / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(IncompleteIndexError, match="truncated"):
        load_index(tmp_path / "idx")
    (tmp_path / "idx" / "index.faiss").write_bytes(data)
    # meta.json not marked complete
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    (tmp_path / "idx" / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(IncompleteIndexError, match="complete index"):
        load_index(tmp_path / "idx")
    with pytest.raises(IncompleteIndexError, match="not found"):
        load_index(tmp_path / "missing")


def test_crash_while_saving_leaves_no_index(tmp_path, monkeypatch):
    import faiss

    index = build_index(clustered(50))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("trainers.retrieval.faiss_index.atomic_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        save_index(tmp_path / "idx", index, [str(i) for i in range(50)])
    assert list(tmp_path.iterdir()) == []
    assert faiss.__version__


def test_save_rejects_duplicate_or_missing_ids(tmp_path):
    index = build_index(clustered(3))
    with pytest.raises(ValueError, match="duplicate ids"):
        save_index(tmp_path / "a", index, ["x", "x", "y"])
    with pytest.raises(ValueError, match="3 vectors but 2 ids"):
        save_index(tmp_path / "b", index, ["x", "y"])


def test_index_cli_resumes_and_search_cli_writes_trec(tmp_path, monkeypatch):
    """``llara index`` and ``llara search`` end to end, with a stand-in encoder (the real one is in test_evaluation)."""
    from llara.scripts import index as index_script
    from llara.scripts import search as search_script

    class StandIn:
        def encode_document(self, texts, **kwargs):
            return FakeEncoder()(texts)

        encode_query = encode_document

    monkeypatch.setattr("trainers.retrieval.encoding.load_encoder", lambda name, device=None, dtype="auto": StandIn())
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) + "\n" for i in range(30)))
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "doc 3"}\n{"_id": "q2", "text": "doc 17"}\n')
    args = ["--model", "stand-in", "--corpus", str(corpus), "--out", str(tmp_path / "idx"), "--shard-size", "7", "--no-progress"]
    assert index_script.main(args + ["--keep-embeddings"]) == 0
    assert sorted(p.name for p in (tmp_path / "idx" / "embeddings").glob("shard_*.npy"))[-1] == "shard_000004.npy"
    assert not (tmp_path / "idx.partial").exists()
    with pytest.raises(FileExistsError, match="already exists"):  # exists, no --overwrite (one line under `llara`)
        index_script.main(args)
    out = tmp_path / "run.trec"
    assert search_script.main(["--index", str(tmp_path / "idx"), "--queries", str(queries), "--top-k", "3", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 6
    assert lines[0].split()[:4] == ["q1", "Q0", "d3", "1"]  # a text's own vector is its nearest neighbour
    assert lines[3].split()[:4] == ["q2", "Q0", "d17", "1"]


def test_index_records_the_model_by_absolute_path_and_overwrite_drops_stale_shards(tmp_path, monkeypatch):
    from trainers.retrieval.corpus_index import work_dir_for
    from trainers.retrieval.faiss_index import read_index_meta
    from llara.scripts import index as index_script

    class StandIn:
        def encode_document(self, texts, **kwargs):
            return FakeEncoder()(texts)

    monkeypatch.setattr("trainers.retrieval.encoding.load_encoder", lambda name, device=None, dtype="auto": StandIn())
    # Given a model folder named relative to the working directory, and a stale shard folder of an earlier build
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) + "\n" for i in range(12)))
    out = tmp_path / "idx"
    stale = work_dir_for(out) / "shards"
    stale.mkdir(parents=True)
    (stale / "leftover.npy").write_bytes(b"junk")
    # When the index is built with --overwrite
    assert index_script.main(["--model", "m", "--corpus", str(corpus), "--out", str(out), "--overwrite", "--no-progress"]) == 0
    # Then meta.json names the model by absolute path (search works from any directory) and no shard is left behind
    assert read_index_meta(out)["model"] == str((tmp_path / "m").resolve())
    assert not work_dir_for(out).exists()
