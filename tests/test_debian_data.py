"""Tests for the Debian retrieval snapshot and trainers/debian_data.py.

Hermetic: they read only the committed snapshot and files under tmp_path.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import pytest

from conftest import check_snapshot_rewrite, import_script, normalise
from trainers import debian_data as dd
from trainers.io import iter_jsonl

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "data" / "debian" / "build_snapshot.py"


@pytest.fixture(scope="module")
def pairs():
    return dd.load_pairs(dd.DEFAULT_SNAPSHOT)


@pytest.fixture(scope="module")
def splits(pairs):
    return dd.make_splits(pairs, seed=0)


@pytest.fixture(scope="module")
def build_module():
    return import_script(BUILD_SCRIPT, "debian_build_snapshot")


# --- snapshot invariants -------------------------------------------------------

def test_snapshot_is_deduplicated_and_sorted(pairs):
    assert len(pairs) >= 30000
    ids = [p["id"] for p in pairs]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert len({normalise(p["query"]) for p in pairs}) == len(pairs), "a short description occurs twice"
    assert len({normalise(p["document"]) for p in pairs}) == len(pairs), "a long description occurs twice"
    first_paras = {normalise(p["document"].split("\n\n")[0]) for p in pairs}
    assert len(first_paras) == len(pairs), "two documents share a first paragraph (sibling family)"
    assert min(len(p["document"].split()) for p in pairs) >= 15
    # Debian markup must be gone: no " ." paragraph markers or bullet lines left.
    assert not any(re.search(r"^\s*\.\s*$", p["document"], re.M) for p in pairs)
    assert not any(re.search(r"^\s*[*•]\s", p["document"], re.M) for p in pairs)


def test_snapshot_is_byte_reproducible(build_module, tmp_path):
    check_snapshot_rewrite(dd.DEFAULT_SNAPSHOT, build_module.write_snapshot, tmp_path)


# --- splits --------------------------------------------------------------------

def test_default_split_sizes_use_all_data(pairs, splits):
    assert len(splits.test.queries) == 1000
    assert len(splits.test.corpus) == 10000
    assert len(splits.pretrain_docs) == 10000
    assert len(splits.train_pairs) == len(pairs) - 20000
    assert splits.unused_ids == []


def test_splits_are_disjoint_by_id_and_text(splits):
    test_ids = set(splits.test.corpus)
    pre_ids = {d["id"] for d in splits.pretrain_docs}
    train_ids = {p["id"] for p in splits.train_pairs}
    assert not test_ids & pre_ids
    assert not test_ids & train_ids
    assert not pre_ids & train_ids

    test_docs = {normalise(t) for t in splits.test.corpus.values()}
    pre_docs = {normalise(d["text"]) for d in splits.pretrain_docs}
    train_docs = {normalise(p["document"]) for p in splits.train_pairs}
    assert not test_docs & pre_docs
    assert not test_docs & train_docs
    assert not pre_docs & train_docs
    train_queries = {normalise(p["query"]) for p in splits.train_pairs}
    assert not {normalise(q) for q in splits.test.queries.values()} & train_queries


def test_test_collection_structure(pairs, splits):
    by_id = {p["id"]: p for p in pairs}
    test = splits.test
    assert set(test.qrels) == set(test.queries)
    for qid, rels in test.qrels.items():
        assert list(rels) == [qid] and rels[qid] == 1
        assert test.queries[qid] == by_id[qid]["query"]
        assert test.corpus[qid] == by_id[qid]["document"]
    positives = {d for rels in test.qrels.values() for d in rels}
    assert len(set(test.corpus) - positives) == 9000


def test_splits_are_deterministic_and_seed_dependent(pairs, splits):
    again = dd.make_splits(list(reversed(pairs)), seed=0)  # input order must not matter
    assert again.test == splits.test
    assert again.pretrain_docs == splits.pretrain_docs
    assert again.train_pairs == splits.train_pairs
    other = dd.make_splits(pairs, seed=1)
    assert set(other.test.queries) != set(splits.test.queries)


def test_custom_sizes(pairs):
    s = dd.make_splits(pairs, seed=3, n_test_queries=50, n_test_corpus=200,
                       n_train_pairs=300, n_pretrain_docs=400)
    assert (len(s.test.queries), len(s.test.corpus), len(s.train_pairs), len(s.pretrain_docs)) == (50, 200, 300, 400)
    assert len(s.unused_ids) == len(pairs) - 900
    used = set(s.test.corpus) | {d["id"] for d in s.pretrain_docs} | {p["id"] for p in s.train_pairs}
    assert not used & set(s.unused_ids)


def test_both_none_halves_remainder(pairs):
    s = dd.make_splits(pairs[:1000], n_test_queries=10, n_test_corpus=100,
                       n_train_pairs=None, n_pretrain_docs=None)
    assert len(s.pretrain_docs) == 450 and len(s.train_pairs) == 450


@pytest.mark.parametrize("kwargs, match", [
    ({"n_test_corpus": 10**6}, "exceeds"),
    ({"n_test_queries": 20, "n_test_corpus": 10}, "cannot exceed"),
    ({"n_train_pairs": 10**6}, "only"),
    ({"n_pretrain_docs": -1}, "non-negative"),
])
def test_bad_sizes_raise(pairs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dd.make_splits(pairs, **kwargs)


def test_duplicate_ids_rejected():
    rec = {"id": "a", "query": "q", "document": "d"}
    with pytest.raises(ValueError, match="duplicate"):
        dd.make_splits([rec, dict(rec)], n_test_queries=1, n_test_corpus=1)


# --- writers -------------------------------------------------------------------

def _read_jsonl(path: Path) -> list[dict]:
    return [record for _, record in iter_jsonl(path)]


def test_write_beir_roundtrip(splits, tmp_path):
    out = dd.write_beir(splits.test, tmp_path / "beir")
    corpus = _read_jsonl(out / "corpus.jsonl")
    queries = _read_jsonl(out / "queries.jsonl")
    assert {c["_id"]: c["text"] for c in corpus} == splits.test.corpus
    assert all(c["title"] == "" for c in corpus)
    assert {q["_id"]: q["text"] for q in queries} == splits.test.queries
    with open(out / "qrels" / "test.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0] == ["query-id", "corpus-id", "score"]
    qrels: dict[str, dict[str, int]] = {}
    for qid, did, score in rows[1:]:
        qrels.setdefault(qid, {})[did] = int(score)
    assert qrels == splits.test.qrels
    corpus_ids = {c["_id"] for c in corpus}
    query_ids = {q["_id"] for q in queries}
    assert all(q in query_ids and set(r) <= corpus_ids for q, r in qrels.items())
    # No temp directories or files left next to the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beir"]


def test_write_beir_refuses_existing_and_overwrites(tmp_path):
    coll = dd.TestCollection(corpus={"d1": "x y", "d2": "z"}, queries={"d1": "q"}, qrels={"d1": {"d1": 1}})
    out = dd.write_beir(coll, tmp_path / "b")
    with pytest.raises(FileExistsError):
        dd.write_beir(coll, out)
    coll2 = dd.TestCollection(corpus={"e": "t"}, queries={"e": "q"}, qrels={"e": {"e": 1}})
    dd.write_beir(coll2, out, overwrite=True)
    assert [c["_id"] for c in _read_jsonl(out / "corpus.jsonl")] == ["e"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_write_beir_rejects_dangling_qrels(tmp_path):
    coll = dd.TestCollection(corpus={"d1": "x"}, queries={"q1": "q"}, qrels={"q1": {"missing": 1}})
    with pytest.raises(ValueError, match="missing"):
        dd.write_beir(coll, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_training_and_pretraining_writers(splits, tmp_path):
    # the training pairs are written in the released layout, each named by its package id
    train = _read_jsonl(dd.write_training_jsonl(tmp_path / "train.jsonl", splits.train_pairs[:5]))
    assert train == [{"id": p["id"], "query": p["query"], "pos": [p["document"]], "neg": []} for p in splits.train_pairs[:5]]
    pre = _read_jsonl(dd.write_pretraining_text(splits.pretrain_docs[:5], tmp_path / "pre.jsonl"))
    assert pre == [{"text": d["text"]} for d in splits.pretrain_docs[:5]]
    with pytest.raises(ValueError, match="query"):
        dd.write_training_jsonl(tmp_path / "bad.jsonl", [{"document": "x"}])
    assert not (tmp_path / "bad.jsonl").exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        dd.write_training_jsonl(tmp_path / "train.jsonl", splits.train_pairs[:1])
    dd.write_training_jsonl(tmp_path / "train.jsonl", splits.train_pairs[:1], overwrite=True)
    assert len(_read_jsonl(tmp_path / "train.jsonl")) == 1


def test_training_pairs_and_mined_examples_share_one_writer(splits, tmp_path):
    from trainers.finetuning.data import ContrastiveExample, load_examples
    from trainers.finetuning.mining import write_training_jsonl as mining_writer
    from trainers.io import write_training_jsonl

    # Given the Debian pairs as dicts and the same pairs as ContrastiveExamples (as mining returns them)
    pairs = splits.train_pairs[:4]
    examples = [ContrastiveExample(p["query"], [p["document"]], [], p["id"]) for p in pairs]
    # When both are written by the one writer, under each module's name
    assert dd.write_training_jsonl is mining_writer is write_training_jsonl
    from_dicts = write_training_jsonl(tmp_path / "dicts.jsonl", pairs)
    from_examples = write_training_jsonl(tmp_path / "examples.jsonl", examples)
    # Then the files are the same and load back as the examples
    assert from_dicts.read_bytes() == from_examples.read_bytes()
    assert load_examples(from_dicts)[0] == examples
    # and a row that cannot train anything is refused before the file appears
    for bad, message in (({"query": "q"}, "no positive"), ({"query": "q", "pos": [1]}, "'pos' must be")):
        with pytest.raises(ValueError, match=message):
            write_training_jsonl(tmp_path / "bad.jsonl", [bad])
        assert not (tmp_path / "bad.jsonl").exists()


# --- loading errors ------------------------------------------------------------

def test_missing_snapshot_is_clear(tmp_path):
    missing = tmp_path / "nope.jsonl.gz"
    with pytest.raises(FileNotFoundError, match="nope.jsonl.gz"):
        dd.load_pairs(missing)


def test_env_var_override(tmp_path, monkeypatch):
    path = tmp_path / "mini.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "b", "query": "qb", "document": "db"}) + "\n")
        fh.write(json.dumps({"id": "a", "query": "qa", "document": "da"}) + "\n")
    monkeypatch.setenv(dd.ENV_VAR, str(path))
    assert [p["id"] for p in dd.load_pairs()] == ["a", "b"]
    monkeypatch.setenv(dd.ENV_VAR, str(tmp_path / "absent.gz"))
    with pytest.raises(FileNotFoundError, match=dd.ENV_VAR):
        dd.load_pairs()


@pytest.mark.parametrize("content, match", [
    (b"not gzip at all", "cannot read"),
    (gzip.compress(b'{"id": "a", "query": "q"}\n'), r":1: field 'document'"),
    (gzip.compress(b'{"id": "a", "query": "q", "document": "d"}\n{oops\n'), ":2: not valid JSON"),
    (gzip.compress(b'{"id": "a", "query": "q", "document": "d"}\n' * 2), "duplicate id"),
    (gzip.compress(b""), "empty"),
    (gzip.compress(b'{"id": "a", "query": "q", "document": "d"}\n')[:-6], "cannot read"),
])
def test_bad_snapshot_is_clear(tmp_path, content, match):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        dd.load_pairs(path)


# --- build script helpers ------------------------------------------------------

SAMPLE = """Package: foo
Description-md5: 0000
Description-en: Foo tool
 Foo does things
 across two lines.
 .
 Features:
  * fast
  - small
 * also
   wrapped
 .
 ----

Package: foo
Description-md5: ffff
Description-en: Older foo
 old text

Package: bar
Description-md5: 1111
Description-en:   Bar   tool
 Bar text.
"""


def test_build_helpers_parse_and_clean(build_module):
    recs = list(build_module.parse_translation(SAMPLE))
    assert [r.package for r in recs] == ["foo", "foo", "bar"]
    chosen = build_module.select_descriptions(reversed(recs))
    assert chosen["foo"].md5 == "0000"
    assert build_module.clean_short(chosen["bar"].short) == "Bar tool"
    doc = build_module.clean_long_description(chosen["foo"].long_lines)
    assert doc == "Foo does things across two lines.\n\nFeatures:\nfast\nsmall\nalso wrapped"


def test_build_dedup_rules(build_module):
    pairs = [
        {"id": "a", "query": "Transitional package", "document": "one"},
        {"id": "b", "query": "transitional  package", "document": "two"},
        {"id": "lib", "query": "Lib", "document": "Shared intro.\n\nRuntime."},
        {"id": "lib-doc", "query": "Lib docs", "document": "Shared intro.\n\nDocs."},
        {"id": "z", "query": "Z", "document": "Unique."},
    ]
    kept, stats = build_module.deduplicate(pairs)
    assert [p["id"] for p in kept] == ["lib", "z"]
    assert stats.dropped_shared_short == 2 and stats.dropped_family_siblings == 1


def test_build_script_help_runs(build_module, capsys):
    with pytest.raises(SystemExit) as exc:
        build_module.main(["--help"])
    assert exc.value.code == 0
    assert "descriptions.jsonl.gz" in capsys.readouterr().out
