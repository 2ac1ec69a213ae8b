"""Training files load through ``datasets.load_dataset``: every format and streaming give the same rows, bad
lines are still named by file and line, and streaming reads lazily without the Arrow cache."""

from __future__ import annotations

import gzip
import json
from itertools import islice

import pytest

import trainers.data_files as data_files
from trainers.data_files import BadLine, iter_json_lines, iter_lines
from trainers.finetuning.data import load_examples
from trainers.pretraining.data import PretrainingDataArguments, StreamingPairDataset, load_pretraining_data

ROWS = [
    {"query": "what is a web server", "pos": ["nginx serves pages"], "neg": ["a text editor", "a compiler"]},
    {"id": "q2", "query": "python linter", "pos": ["pyflakes checks code", "pylint too"], "neg": []},
    {"query": "mail transfer agent", "pos": ["postfix routes mail"], "neg": ["an image viewer"]},
]


@pytest.fixture(scope="module")
def tokenizer():
    from conftest import make_tokenizer

    return make_tokenizer("ordered")  # one token per byte


@pytest.fixture
def load_calls(monkeypatch):
    """Every ``datasets.load_dataset`` call: (builder, streaming, type of what it returned)."""
    import datasets

    calls = []
    real = datasets.load_dataset

    def spy(builder, *args, **kwargs):
        result = real(builder, *args, **kwargs)
        calls.append((builder, kwargs.get("streaming"), type(result).__name__))
        return result

    monkeypatch.setattr(datasets, "load_dataset", spy)
    return calls


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _triples(examples):
    return [(e.query, e.pos, e.neg, e.query_id) for e in examples]


# ------------------------------------------------------------------------------------------- fine-tuning
def test_finetune_formats_and_streaming_give_the_same_examples(tmp_path, load_calls):
    import datasets

    listed, list_pool, _ = load_examples(ROWS)
    jsonl = _write_jsonl(tmp_path / "t.jsonl", ROWS)
    with gzip.open(tmp_path / "t.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(jsonl.read_text())
    (tmp_path / "t.json").write_text(json.dumps(ROWS, indent=2))
    datasets.Dataset.from_list([{**r, "id": r.get("id")} for r in ROWS]).to_parquet(str(tmp_path / "t.parquet"))
    for name in ("t.jsonl", "t.jsonl.gz", "t.json", "t.parquet"):
        for streaming in (False, True):
            load_calls.clear()
            examples, pool, report = load_examples(tmp_path / name, streaming=streaming)
            assert _triples(examples) == _triples(listed), (name, streaming)
            assert pool == list_pool and report.kept == 3
            # read by datasets, in the mode asked for
            assert load_calls and all(c[1] is streaming for c in load_calls), load_calls
            assert {c[2] for c in load_calls} == {"IterableDataset" if streaming else "Dataset"}


@pytest.mark.parametrize("streaming", [False, True])
def test_finetune_bad_lines_are_named_when_streamed_and_after_blank_lines(tmp_path, streaming):
    path = _write_jsonl(tmp_path / "t.jsonl", [ROWS[0], "", "   ", '{"query": "a", "pos": ["b"]'])
    with pytest.raises(ValueError, match=r"t\.jsonl:4: not valid JSON"):
        load_examples(path, streaming=streaming)
    _write_jsonl(path, [ROWS[0], "", '{"query": 3, "pos": ["b"]}'])
    with pytest.raises(TypeError, match=r"t\.jsonl:3: 'query' is int"):
        load_examples(path, streaming=streaming)
    _write_jsonl(path, [ROWS[0], "[1, 2]"])
    with pytest.raises(ValueError, match=r"t\.jsonl:2: expected a JSON object, got list"):
        load_examples(path, streaming=streaming)
    path.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"query": "\xff", "pos": ["p"]}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:2: invalid UTF-8 at byte 11 of the line"):
        load_examples(path, streaming=streaming)


def test_finetune_parquet_rows_are_named_by_row(tmp_path):
    import datasets

    rows = [{"id": "a", "query": "q", "pos": ["p"]}, {"id": "a", "query": "r", "pos": ["s"]}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "t.parquet"))
    with pytest.raises(ValueError, match=r"t\.parquet:row 2: duplicate id 'a' \(first at row 1\)"):
        load_examples(tmp_path / "t.parquet")
    with pytest.raises(FileNotFoundError, match="training file not found"):
        load_examples(tmp_path / "missing.parquet")


# ------------------------------------------------------------------------------------------- pretraining
def _pretrain_args(**kw):
    return PretrainingDataArguments(**{"chunk_tokens": 12, "min_chunk_tokens": 4, **kw})


def test_pretraining_formats_and_streaming_give_the_same_pairs(tokenizer, tmp_path, load_calls):
    import datasets

    records = [
        {"text": "the first document is long enough for three chunks"},
        {"input": "an explicit input", "next": "its next passage"},
        {"input": "released row", "output_summarize": "released row", "output_predict": "what came next"},
    ]
    _write_jsonl(tmp_path / "d.jsonl", records)
    (tmp_path / "d.json").write_text(json.dumps(records))
    keys = sorted({key for record in records for key in record})
    table = datasets.Dataset.from_list([{key: record.get(key) for key in keys} for record in records])  # nulls
    table.to_parquet(str(tmp_path / "d.parquet"))
    listed = load_pretraining_data(tokenizer, _pretrain_args(), 50, sources=[table])
    assert len(listed.pairs) == 6  # 4 chunks of the document (its short tail merged) + 2 explicit pairs
    for name in ("d.jsonl", "d.json", "d.parquet"):
        args = _pretrain_args(train_files=[str(tmp_path / name)])
        data = load_pretraining_data(tokenizer, args, 50)
        assert data.pairs == listed.pairs, name
        load_calls.clear()
        args = _pretrain_args(train_files=[str(tmp_path / name)], streaming=True)
        stream = load_pretraining_data(tokenizer, args, 50)
        assert isinstance(stream, StreamingPairDataset)
        assert list(stream) == data.pairs
        assert load_calls and all(c[1] is True and c[2] == "IterableDataset" for c in load_calls), load_calls


def test_large_file_streams_without_materializing(tokenizer, tmp_path, load_calls):
    path = tmp_path / "big.jsonl"
    with path.open("w") as handle:
        for i in range(20_000):
            handle.write(json.dumps({"text": f"document number {i} of the generated corpus"}) + "\n")
    args = _pretrain_args(train_files=[str(path)], streaming=True, on_error="skip", chunk_tokens=100)
    stream = load_pretraining_data(tokenizer, args, 100)
    assert isinstance(stream, StreamingPairDataset) and not hasattr(stream, "pairs")
    assert load_calls == []  # nothing read yet: the file is opened when a pass starts
    first = list(islice(iter(stream), 3))
    assert [p["input"] for p in first] == [f"document number {i} of the generated corpus" for i in range(3)]
    # one lazily read IterableDataset: no Arrow table of the file was built
    assert load_calls == [("text", True, "IterableDataset")]
    rows = data_files.load_files([path], "text", streaming=True)
    import datasets

    assert isinstance(rows, datasets.IterableDataset) and not isinstance(rows, datasets.Dataset)


@pytest.mark.parametrize("streaming", [False, True])
def test_pretraining_bad_lines_named_and_skipped_when_streamed(tokenizer, tmp_path, streaming):
    path = tmp_path / "bad.jsonl"
    lines = [b'{"text": "a fine first document"}', b"", b"{oops", b'{"text": "caf\xe9 latin-1"}', b"[1]",
             b'{"text": "last fine one"}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON"):
        load_pretraining_data(tokenizer, _pretrain_args(train_files=[str(path)], streaming=streaming), 50)
    args = _pretrain_args(train_files=[str(path)], on_error="skip", streaming=streaming)
    data = load_pretraining_data(tokenizer, args, 50)
    pairs = list(data) if streaming else data.pairs
    assert data.stats.skipped == {"malformed_json": 1, "invalid_utf8": 1, "bad_record": 1}
    assert [p["input"] for p in pairs] == ["a fine first", "document", "last fine one"]
    text = tmp_path / "bad.txt"
    text.write_bytes(b"para one a\npara one b\n\n\xff\n\npara two\n")
    args = _pretrain_args(train_files=[str(text)], text_unit="paragraph", on_error="skip", streaming=streaming,
                          chunk_tokens=50)
    data = load_pretraining_data(tokenizer, args, 50)
    pairs = list(data) if streaming else data.pairs
    assert [p["input"] for p in pairs] == ["para one a\npara one b", "para two"]
    assert data.stats.skipped == {"invalid_utf8": 1}


def test_empty_files_have_no_rows(tokenizer, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "empty.json").write_text("[]")
    for name in ("empty.txt", "empty.json"):
        with pytest.raises(ValueError, match="no training pairs"):
            load_pretraining_data(tokenizer, _pretrain_args(train_files=[str(tmp_path / name)]), 50)
    _write_jsonl(tmp_path / "empty.jsonl", [])
    examples, pool, report = load_examples(tmp_path / "empty.jsonl")
    assert examples == [] and pool == [] and report.records == 0


# ------------------------------------------------------------------------------------------- line reader
@pytest.mark.parametrize("streaming", [False, True])
def test_invalid_utf8_midway_resumes_at_the_right_line(tmp_path, monkeypatch, streaming):
    """The "text" builder fails a whole chunk on a bad byte; the Latin-1 re-read must give back exactly the
    lines not yet yielded (chunks of a few bytes put the bad byte far past the first chunk)."""
    real = data_files.load_files
    monkeypatch.setattr(data_files, "load_files", lambda *a, **kw: real(*a, chunksize=64, **kw))
    lines = [f"line {i} é" for i in range(4000)]
    raw = [line.encode() for line in lines]
    raw[3500] = b"bad \xc3( byte"
    raw[3900] = b"\xff"
    path = tmp_path / "doc.txt"
    path.write_bytes(b"\n".join(raw) + b"\n")
    got = list(iter_lines(path, streaming=streaming))
    assert [n for n, _ in got] == list(range(1, 4001))
    expected = [line for i, line in enumerate(lines) if i not in (3500, 3900)]
    assert [t for _, t in got if not isinstance(t, BadLine)] == expected
    bad = {n: t.error.start for n, t in got if isinstance(t, BadLine)}
    assert bad == {3501: 4, 3901: 0}
    # JSON lines: blank lines are passed over but counted
    (tmp_path / "j.jsonl").write_text('{"a": 1}\n\n\n{"a": 2}\n')
    assert list(iter_json_lines(tmp_path / "j.jsonl", streaming=streaming)) == [(1, {"a": 1}), (4, {"a": 2})]


@pytest.mark.parametrize("flag,expected", [([], False), (["--streaming"], True)])
def test_llara_finetune_streaming_flag_reaches_the_loader(tmp_path, monkeypatch, flag, expected):
    import trainers.finetuning.trainer as trainer
    from llara.scripts.finetune import main

    seen = {}

    class Stop(Exception):
        pass

    def load(source, split="train", streaming=False):
        seen.update(source=source, streaming=streaming)
        raise Stop

    monkeypatch.setattr(trainer, "load_examples", load)
    data = _write_jsonl(tmp_path / "t.jsonl", ROWS)
    with pytest.raises(Stop):
        main(["--model_name_or_path", str(tmp_path), "--train_data", str(data), "--output_dir", str(tmp_path / "o"),
              "--use_cpu", "true", *flag])
    assert seen == {"source": str(data), "streaming": expected}
