"""Tests for the stdlib-docstring snapshot and trainers/pydocs_data.py.

Hermetic: they read only the committed snapshot and files under tmp_path.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from conftest import check_snapshot_rewrite, import_script, normalise
from trainers import debian_data, pydocs_data as pd
from trainers.retrieval.beir import load_beir

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "data" / "pydocs" / "build_snapshot.py"


@pytest.fixture(scope="module")
def records():
    return pd.load_docstrings(pd.DEFAULT_SNAPSHOT)


@pytest.fixture(scope="module")
def build_module():
    return import_script(BUILD_SCRIPT, "pydocs_build_snapshot")


# --- snapshot invariants -------------------------------------------------------

def test_snapshot_loads_sorted_unique_and_clean(records):
    assert len(records) >= 1500
    ids = [r["id"] for r in records]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for r in records:
        assert all(r[key].strip() for key in pd.FIELDS), r["id"]
        assert r["id"] == r["qualname"] and r["qualname"].startswith(r["module"])
        assert r["kind"] in {"module", "class", "function", "method", "property"}
        assert not any(part.startswith("_") for part in r["qualname"].split(".")), r["id"]
        assert 15 <= len(r["document"].split()) <= 300, r["id"]
        assert len(r["query"].split()) >= 3, r["id"]
        assert "\n" not in r["query"], r["id"]
        assert normalise(r["query"]) not in normalise(r["document"]), f"query leaks into document: {r['id']}"
        assert normalise(r["query"]) not in normalise(r["signature"]), f"query leaks into signature: {r['id']}"
        assert " at 0x" not in r["signature"], f"memory address in signature: {r['id']}"
    assert len({normalise(r["query"]) for r in records}) == len(records), "a query occurs twice"
    assert len({normalise(r["document"]) for r in records}) == len(records), "a document occurs twice"
    top_levels = {r["module"].split(".")[0] for r in records}
    assert not top_levels & {"idlelib", "tkinter", "lib2to3", "turtledemo", "test", "antigravity"}


def test_snapshot_is_byte_reproducible(build_module, tmp_path):
    raw = check_snapshot_rewrite(pd.DEFAULT_SNAPSHOT, build_module.write_snapshot, tmp_path)
    assert len(raw) < 3 * 2**20


def test_known_record(records):
    by_id = {r["id"]: r for r in records}
    rec = by_id["shutil.copytree"]
    assert rec["query"] == "Recursively copy a directory tree and return the destination directory."
    assert rec["signature"].startswith("shutil.copytree(src, dst, symlinks=False")
    assert pd.document_text(rec) == f"{rec['signature']}\n\n{rec['document']}"
    assert pd.document_text(rec, with_signature=False) == rec["document"]


# --- collection ----------------------------------------------------------------

def test_collection_structure(records):
    by_id = {r["id"]: r for r in records}
    coll = pd.make_test_collection(records, n_queries=40, n_corpus=200, seed=0)
    assert (len(coll.queries), len(coll.corpus)) == (40, 200)
    assert set(coll.qrels) == set(coll.queries)
    for qid, rels in coll.qrels.items():
        assert rels == {qid: 1}
        assert coll.queries[qid] == by_id[qid]["query"]
        assert coll.corpus[qid] == pd.document_text(by_id[qid])
    bare = pd.make_test_collection(records, n_queries=40, n_corpus=200, seed=0, with_signature=False)
    assert bare.queries == coll.queries
    assert all(bare.corpus[d] == by_id[d]["document"] for d in bare.corpus)


def test_collection_is_deterministic_and_seed_dependent(records):
    a = pd.make_test_collection(records, n_queries=30, n_corpus=100, seed=5)
    b = pd.make_test_collection(list(reversed(records)), n_queries=30, n_corpus=100, seed=5)
    assert a == b
    c = pd.make_test_collection(records, n_queries=30, n_corpus=100, seed=6)
    assert set(c.corpus) != set(a.corpus)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_corpus": 10**6}, "exceeds"),
    ({"n_queries": 20, "n_corpus": 10}, "cannot exceed"),
    ({"n_queries": -1}, "non-negative"),
])
def test_bad_sizes_raise(records, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pd.make_test_collection(records, **kwargs)


def test_written_collection_loads_with_beir_loader(tmp_path):
    out = pd.write_test_collection(tmp_path / "pydocs", n_queries=25, n_corpus=120, seed=1)
    dataset = load_beir(out)
    assert (len(dataset.queries), len(dataset.corpus), len(dataset.qrels)) == (25, 120, 25)
    assert all(dids and set(dids) <= set(dataset.corpus) for dids in dataset.qrels.values())
    assert set(dataset.qrels) == set(dataset.queries)
    assert dataset.dropped == {} or not any(dataset.dropped.values())
    expected = pd.make_test_collection(pd.load_docstrings(), n_queries=25, n_corpus=120, seed=1)
    assert dataset.queries == expected.queries
    assert {d: v["text"] for d, v in dataset.corpus.items()} == expected.corpus
    assert all(v["title"] == "" for v in dataset.corpus.values())
    # Same seed, second directory: identical bytes.
    again = pd.write_test_collection(tmp_path / "again", n_queries=25, n_corpus=120, seed=1)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    with pytest.raises(FileExistsError):
        pd.write_test_collection(out, n_queries=25, n_corpus=120, seed=1)


def test_uses_the_debian_writer():
    assert pd.write_beir is debian_data.write_beir
    assert pd.TestCollection is debian_data.TestCollection


# --- loading errors ------------------------------------------------------------

def _record(**over):
    rec = {"id": "m.f", "module": "m", "qualname": "m.f", "kind": "function", "signature": "m.f(x)",
           "query": "Do a thing.", "document": "Longer explanation of the thing."}
    rec.update(over)
    return rec


def test_missing_snapshot_and_env_override(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.jsonl.gz"):
        pd.load_docstrings(tmp_path / "nope.jsonl.gz")
    path = tmp_path / "mini.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(_record(id="m.g", qualname="m.g")) + "\n")
        fh.write(json.dumps(_record()) + "\n")
    monkeypatch.setenv(pd.ENV_VAR, str(path))
    assert [r["id"] for r in pd.load_docstrings()] == ["m.f", "m.g"]
    monkeypatch.setenv(pd.ENV_VAR, str(tmp_path / "absent.gz"))
    with pytest.raises(FileNotFoundError, match=pd.ENV_VAR):
        pd.load_docstrings()


@pytest.mark.parametrize("lines, match", [
    ([_record(signature="")], r":1: field 'signature'"),
    ([_record(), _record()], "duplicate id"),
    ([_record(document="See: do a  THING. More words.")], "verbatim"),
    ([], "empty"),
])
def test_bad_snapshot_is_clear(tmp_path, lines, match):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in lines).encode()))
    with pytest.raises(ValueError, match=match):
        pd.load_docstrings(path)


def test_corrupt_gzip_is_clear(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read"):
        pd.load_docstrings(path)


# --- build script helpers ------------------------------------------------------

def test_split_docstring(build_module):
    split = build_module.split_docstring
    assert split("S.startswith(prefix[, start[, end]]) -> bool\n\nReturn True if S starts.\nMore.") == (
        "Return True if S starts.", "More.")
    doc = """Return a new list containing all items from the iterable in
        ascending order. A custom key may be given.

        Second paragraph.
        """
    assert split(doc) == ("Return a new list containing all items from the iterable in ascending order.",
                          "A custom key may be given.\n\nSecond paragraph.")
    assert split("only a signature(x) -> y") == ("only a signature(x) -> y", "")
    assert split("f(x) -> y") == ("", "")


def test_filter_and_dedup(build_module):
    body = " ".join(["word"] * 20)
    pairs = [
        {"id": "a.f", "signature": "a.f()", "query": "Do the thing now.", "document": body},
        {"id": "a.Sub.f", "signature": "a.Sub.f()", "query": "Do the thing now.", "document": body},  # inherited
        {"id": "a.g", "signature": "a.g()", "query": "Shared summary here.", "document": body + " g"},
        {"id": "a.h", "signature": "a.h()", "query": "Shared summary here.", "document": body + " h"},
        {"id": "a.i", "signature": "a.i()", "query": "Another summary text.", "document": body + " i"},
        {"id": "a.j", "signature": "a.j()", "query": "Different summary text.", "document": body + "  I"},
        {"id": "a.k", "signature": "a.k()", "query": "Too short doc.", "document": "few words"},
        {"id": "a.l", "signature": "a.l()", "query": ">>> f(1) example", "document": body + " l"},
        {"id": "a.m", "signature": "a.m()", "query": "Leaks into doc.", "document": body + " LEAKS into  doc. x"},
    ]
    kept, fstats = build_module.filter_records(pairs)
    assert (fstats.short_document, fstats.non_text_query, fstats.query_in_document) == (1, 1, 1)
    deduped, dstats = build_module.deduplicate(kept)
    assert [p["id"] for p in deduped] == ["a.f", "a.i"]
    assert (dstats.dropped_identical_pairs, dstats.dropped_shared_query, dstats.dropped_shared_document) == (1, 2, 1)


def test_build_script_help_runs(build_module, capsys):
    with pytest.raises(SystemExit) as exc:
        build_module.main(["--help"])
    assert exc.value.code == 0
    assert "docstrings.jsonl.gz" in capsys.readouterr().out
