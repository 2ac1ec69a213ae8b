"""Validation collections for choices: disjoint from every split the experiments train or test on."""

from __future__ import annotations

import pytest

from trainers import debian_data as dd
from trainers import pydocs_data as pd
from trainers.debian_data import normalize_text

MAIN_JOB = {"n_test_queries": 150, "n_test_corpus": 600, "n_pretrain_docs": 1200, "n_train_pairs": 1200}


@pytest.fixture(scope="module")
def pairs():
    return dd.load_pairs(dd.DEFAULT_SNAPSHOT)


@pytest.fixture(scope="module")
def splits(pairs):
    return dd.make_splits(pairs, seed=0, **MAIN_JOB)


def _texts(collection) -> set[str]:
    return {normalize_text(t) for t in [*collection.corpus.values(), *collection.queries.values()]}


def test_debian_validation_is_disjoint_from_every_split(pairs, splits):
    val = dd.make_validation(pairs, splits, n_queries=150, n_corpus=600, seed=0)
    assert (len(val.queries), len(val.corpus)) == (150, 600)
    assert all(val.qrels[q] == {q: 1} and q in val.corpus for q in val.queries)
    used_ids = set(splits.test.corpus) | {d["id"] for d in splits.pretrain_docs} | {p["id"] for p in splits.train_pairs}
    assert not set(val.corpus) & used_ids
    assert set(val.corpus) <= set(splits.unused_ids)
    used_texts = _texts(splits.test) | {normalize_text(d["text"]) for d in splits.pretrain_docs}
    used_texts |= {normalize_text(p[k]) for p in splits.train_pairs for k in ("query", "document")}
    assert not _texts(val) & used_texts
    # deterministic, and the splits it was drawn beside are what they were
    again = dd.make_validation(pairs, dd.make_splits(pairs, seed=0, **MAIN_JOB), n_queries=150, n_corpus=600, seed=0)
    assert again == val
    assert dd.make_splits(pairs, seed=0, **MAIN_JOB) == splits


def test_debian_validation_leaves_out_repeated_texts():
    # Given an unused pair whose document repeats a training document (other id, other spacing and case)
    pairs = [{"id": f"p{i:02d}", "query": f"query {i}", "document": f"document number {i}"} for i in range(12)]
    splits = dd.make_splits(pairs, seed=0, n_test_queries=1, n_test_corpus=2, n_pretrain_docs=2, n_train_pairs=2)
    twin_of = splits.train_pairs[0]["document"]
    twin = next(p for p in pairs if p["id"] in set(splits.unused_ids))
    twin["document"] = "  " + twin_of.upper().replace(" ", "   ")
    # When validation takes every unused pair it can
    val = dd.make_validation(pairs, splits, n_queries=2, n_corpus=5, seed=0)
    # Then the repeated text is not among them
    assert twin["id"] not in val.corpus and len(val.corpus) == 5
    with pytest.raises(ValueError, match="5 are left"):
        dd.make_validation(pairs, splits, n_queries=2, n_corpus=6, seed=0)


def test_debian_validation_needs_unused_pairs(pairs):
    everything = dd.make_splits(pairs, seed=0)  # the defaults use all the data
    with pytest.raises(ValueError, match="unused pairs"):
        dd.make_validation(pairs, everything)


def test_pydocs_validation_is_disjoint_from_the_test_collection():
    records = pd.load_docstrings(pd.DEFAULT_SNAPSHOT)
    test = pd.make_test_collection(records, n_queries=150, n_corpus=600, seed=0)
    val = pd.make_validation_collection(records, test_queries=150, test_corpus=600, n_queries=150, n_corpus=600, seed=0)
    assert (len(val.queries), len(val.corpus)) == (150, 600)
    assert not set(val.corpus) & set(test.corpus)
    assert not _texts(val) & _texts(test)
    assert val == pd.make_validation_collection(records, test_queries=150, test_corpus=600, seed=0)
    with pytest.raises(ValueError, match="records outside the test collection"):
        pd.make_validation_collection(records, test_queries=150, test_corpus=600, n_corpus=len(records))
