"""LLaRA stage-2 data: the three sources, bad input (errors or counted skips), released-style sampling."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter

import pytest

from trainers.finetuning.data import (
    ContrastiveDataset,
    ContrastiveExample,
    load_examples,
    sample_negatives,
)


def _write_jsonl(path, rows, gz=False):
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_bad_records_are_counted_and_reported(tmp_path):
    rows = [
        {"query": "good", "pos": ["p1", "p1", ""], "neg": ["n1", "p1", "n1", " "]},
        {"query": "   ", "pos": ["p"], "neg": []},  # empty query
        {"query": "no positive", "pos": [], "neg": ["n"]},
        {"query": "only empty positive", "pos": [""]},
        {"query": "good", "pos": "single string positive"},  # repeated query text, no negatives
    ]
    examples, corpus, report = load_examples(_write_jsonl(tmp_path / "t.jsonl.gz", rows, gz=True))
    assert [e.query for e in examples] == ["good", "good"]
    assert examples[0].pos == ["p1"] and examples[0].neg == ["n1"]
    assert examples[1].pos == ["single string positive"] and examples[1].neg == []
    assert (report.records, report.kept) == (5, 2)
    assert report.skipped_empty_query == 1 and report.skipped_no_positive == 2
    assert report.dropped_negatives_also_positive == 1
    assert report.dropped_empty_passages == 3 and report.dropped_duplicate_passages == 2
    assert report.repeated_queries == 1 and report.without_negatives == 1
    summary = report.summary()
    assert "skipped (no positive): 2" in summary and "t.jsonl.gz:3" in summary
    assert set(corpus) == {"p1", "n1", "single string positive"}


@pytest.mark.parametrize(
    "line, error, message",
    [
        ('{"query": "a", "pos": ["b"]', ValueError, r"t\.jsonl:2: not valid JSON"),
        ('{"query": 3, "pos": ["b"]}', TypeError, r"t\.jsonl:2: 'query' is int"),
        ('{"query": "a", "pos": ["b", 4]}', TypeError, r"t\.jsonl:2: 'pos'\[1\] is int"),
        ('{"text": "a"}', ValueError, r"t\.jsonl:2: a record needs 'query' and 'pos'"),
        ('{"id": "q1", "query": "c", "pos": ["d"]}', ValueError, r"t\.jsonl:2: duplicate id 'q1' \(first on line 1\)"),
    ],
)
def test_jsonl_malformed_lines_raise_with_file_and_line(tmp_path, line, error, message):
    path = _write_jsonl(tmp_path / "t.jsonl", [{"id": "q1", "query": "a", "pos": ["b"]}, line])
    with pytest.raises(error, match=message):
        load_examples(path)


def test_beir_folder_turns_qrels_into_examples(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    _write_jsonl(folder / "corpus.jsonl", [
        {"_id": "d1", "title": "Title", "text": "one"},
        {"_id": "d2", "title": "", "text": "two"},
        {"_id": "d3", "text": "three"},
    ])
    _write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}])
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td3\t0\nq2\td9\t1\nq2\td2\t2\n")
    examples, corpus, report = load_examples(folder, split="train")
    by_query = {e.query: e for e in examples}
    assert by_query["first"].pos == ["Title one"] and by_query["first"].neg == ["three"]
    assert by_query["second"].pos == ["two"] and by_query["first"].query_id == "q1"
    assert report.qrels_unknown_documents == 1
    assert sorted(corpus) == ["Title one", "three", "two"]
    # duplicate ids in the corpus are an error naming the line
    _write_jsonl(folder / "corpus.jsonl", [{"_id": "d1", "text": "one"}, {"_id": "d1", "text": "again"}])
    with pytest.raises(ValueError, match=r"corpus\.jsonl:2: duplicate document id 'd1'"):
        load_examples(folder, split="train")


def test_datasets_dataset_and_saved_folder(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([
        {"anchor": "q", "positive": "p", "negative": "n"},
        {"anchor": "r", "positive": "s", "negative": "s"},  # negative == positive: dropped, counted
    ])
    examples, _, report = load_examples(ds)
    assert [(e.query, e.pos, e.neg) for e in examples] == [("q", ["p"], ["n"]), ("r", ["s"], [])]
    assert report.dropped_negatives_also_positive == 1 and "dataset[1]" in report.summary()
    ds.save_to_disk(str(tmp_path / "saved"))
    again, _, _ = load_examples(tmp_path / "saved")
    assert again == examples


def test_unsupported_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_examples(tmp_path / "missing.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="neither a BEIR folder"):
        load_examples(tmp_path / "folder")


def test_sample_negatives_as_released():
    rng = random.Random(0)
    # enough negatives: a sample without replacement
    got = sample_negatives([f"n{i}" for i in range(10)], 5, rng)
    assert len(set(got)) == 5
    # too few: the list is repeated, so each negative appears at most ceil(count / len) times
    got = sample_negatives(["a", "b"], 5, rng)
    counts = Counter(got)
    assert len(got) == 5 and set(counts) == {"a", "b"} and max(counts.values()) <= 3


def test_dataset_groups_positive_first_deterministic_and_epoch_dependent():
    examples = [ContrastiveExample(f"q{i}", [f"p{i}a", f"p{i}b"], [f"n{i}.{j}" for j in range(6)]) for i in range(4)]
    dataset = ContrastiveDataset(examples, group_size=4, seed=1)
    item = dataset[2]
    assert item["query"] == "q2" and item["passages"][0] in {"p2a", "p2b"}
    assert len(item["passages"]) == 4 and all(p.startswith("n2.") for p in item["passages"][1:])
    assert ContrastiveDataset(examples, group_size=4, seed=1)[2] == item  # same seed, same draw
    draws = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        draws.add(tuple(dataset[2]["passages"]))
    assert len(draws) > 1  # a new draw each epoch
    positives = Counter(ContrastiveDataset(examples, 4, seed=s)[0]["passages"][0] for s in range(200))
    assert set(positives) == {"p0a", "p0b"} and min(positives.values()) > 60  # random positive


def test_queries_without_negatives_policies():
    examples = [ContrastiveExample("q0", ["p0"], []), ContrastiveExample("q1", ["p1"], ["n1"])]
    corpus = ["p0", "c1", "c2", "c3"]
    dataset = ContrastiveDataset(examples, group_size=5, corpus=corpus, no_negatives="random", seed=0)
    for epoch in range(20):
        dataset.set_epoch(epoch)
        negatives = dataset[0]["passages"][1:]
        assert len(negatives) == 4 and "p0" not in negatives and set(negatives) <= {"c1", "c2", "c3"}
    from trainers.finetuning.data import DataReport

    report = DataReport()
    skipped = ContrastiveDataset(examples, group_size=5, no_negatives="skip", report=report)
    assert len(skipped) == 1 and report.skipped_no_negative == 1
    with pytest.raises(ValueError, match="example 0 .*has no negatives"):
        ContrastiveDataset(examples, group_size=5, no_negatives="error")
    # group size 1 (in-batch negatives only) needs no negatives at all
    assert ContrastiveDataset(examples, group_size=1, no_negatives="error")[0]["passages"] == ["p0"]


def test_to_dataset_gives_sentence_transformers_columns_in_order():
    examples = [ContrastiveExample(f"q{i}", [f"p{i}"], [f"n{i}.{j}" for j in range(5)]) for i in range(3)]
    groups = ContrastiveDataset(examples, group_size=3, seed=4)
    table = groups.to_dataset()
    # the first column is the query, the second its positive, then the hard negatives: the loss reads positions
    assert table.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    for index, row in enumerate(table):
        assert [row[c] for c in table.column_names] == [groups[index]["query"], *groups[index]["passages"]]
