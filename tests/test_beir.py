"""BEIR-layout loading: valid folders load, bad input fails with file and line number."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from trainers.retrieval.beir import BeirFormatError, load_beir, load_corpus, load_qrels, load_queries, passage_text


def write_beir(root: Path, corpus=None, queries=None, qrels=None, split="test") -> Path:
    corpus = corpus if corpus is not None else [
        {"_id": "d1", "title": "Cats", "text": "Cats purr."},
        {"_id": "d2", "title": "", "text": "Dogs bark."},
        {"_id": "d3", "title": "Birds", "text": "Birds sing."},
    ]
    queries = queries if queries is not None else [{"_id": "q1", "text": "purring pets"}, {"_id": "q2", "text": "barking"}]
    qrels = qrels if qrels is not None else "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t0\n"
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus) if isinstance(corpus, list) else corpus)
    (root / "queries.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in queries) if isinstance(queries, list) else queries
    )
    (root / "qrels" / f"{split}.tsv").write_text(qrels)
    return root


def test_valid_folder_loads_in_file_order(tmp_path):
    data = load_beir(write_beir(tmp_path))
    assert list(data.corpus) == ["d1", "d2", "d3"]
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}
    ids, texts = data.passages()
    assert texts == ["Cats Cats purr.", "Dogs bark.", "Birds Birds sing."]
    assert data.eval_queries == {"q1": "purring pets", "q2": "barking"}


def test_passage_text_follows_mteb():
    # mteb joins title and body with a space and strips; no title -> body alone
    from datasets import Dataset
    from mteb._create_dataloaders import _retrieval_texts
    from mteb.types import PromptType

    rows = [{"id": "a", "title": "T", "text": " body "}, {"id": "b", "title": "", "text": " only body "}]
    expected = _retrieval_texts(Dataset.from_list(rows), PromptType.document)
    assert [passage_text(r["title"], r["text"]) for r in rows] == expected


def test_malformed_json_line_names_file_and_line(tmp_path):
    write_beir(tmp_path, corpus='{"_id": "d1", "text": "ok"}\n\n{"_id": "d2", "text": broken}\n')
    with pytest.raises(BeirFormatError, match=r"corpus\.jsonl:3: not valid JSON"):
        load_corpus(tmp_path / "corpus.jsonl")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"_id": "d1"}\n', r":1: missing field 'text'"),
        ('{"text": "x"}\n', r":1: missing field '_id'"),
        ('{"_id": "d1", "text": 3}\n', r":1: field 'text' must be a string"),
        ('[1, 2]\n', r":1: expected a JSON object"),
        ('{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n', r":2: duplicate document id 'd1' \(first seen on line 1\)"),
        ("", r"the corpus is empty"),
    ],
)
def test_bad_corpus_lines(tmp_path, lines, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text(lines)
    with pytest.raises(BeirFormatError, match=message):
        load_corpus(path)


def test_empty_and_duplicate_queries(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "q1", "text": "fine"}\n{"_id": "q2", "text": "   "}\n')
    with pytest.raises(BeirFormatError, match=r"queries\.jsonl:2: query 'q2' has empty text"):
        load_queries(path)
    path.write_text('{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n')
    with pytest.raises(BeirFormatError, match=r":2: duplicate query id 'q1'"):
        load_queries(path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(BeirFormatError, match="BEIR folder not found"):
        load_beir(tmp_path / "nope")
    write_beir(tmp_path)
    (tmp_path / "queries.jsonl").unlink()
    with pytest.raises(BeirFormatError, match=r"queries not found: .*queries\.jsonl"):
        load_beir(tmp_path)


def test_missing_split_lists_available_ones(tmp_path):
    write_beir(tmp_path, split="dev")
    with pytest.raises(BeirFormatError, match=r"split 'test' not found.*available splits: dev"):
        load_beir(tmp_path, "test")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\n", r"test\.tsv:2: expected 3 tab-separated columns"),
        ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", r"test\.tsv:2: score 'high' is not an integer"),
        ("q1\td1\t1\nq1\td1\t2\n", r"test\.tsv:2: \('q1', 'd1'\) judged 2 here but 1 on line 1"),
        ("query-id\tcorpus-id\tscore\n", "no relevance judgements"),
    ],
)
def test_bad_qrels(tmp_path, text, message):
    path = tmp_path / "test.tsv"
    path.write_text(text)
    with pytest.raises(BeirFormatError, match=message):
        load_qrels(path)


def test_qrels_without_header_and_trec_four_columns(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("q1\td1\t1\nq1 0 d2 2\n")
    assert load_qrels(path) == {"q1": {"d1": 1, "d2": 2}}


def test_unknown_ids_warn_with_counts_and_are_dropped(tmp_path, caplog):
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tghost\t1\nq9\td2\t1\nq9\td3\t1\n"
    write_beir(tmp_path, qrels=qrels)
    with caplog.at_level(logging.WARNING, logger="trainers.retrieval.beir"):
        data = load_beir(tmp_path)
    assert data.qrels == {"q1": {"d1": 1}}
    assert data.dropped == {"unknown_queries": 1, "unknown_docs": 1, "judgements": 3}
    assert "dropped 3 judgements naming 1 unknown query ids and 1 unknown corpus ids" in caplog.text


def test_qrels_of_another_collection_are_refused(tmp_path):
    write_beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nx1\ty1\t1\n")
    with pytest.raises(BeirFormatError, match="no judgement names a known query and a known document"):
        load_beir(tmp_path)
