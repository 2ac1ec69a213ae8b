"""Pretraining data: documents -> consecutive (input, next) chunks; bad input errors or counted skips."""

from __future__ import annotations

import json

import pytest

from trainers.pretraining.data import PairBuilder, PretrainingDataArguments, load_pretraining_data


@pytest.fixture(scope="module")
def tokenizer():
    from conftest import make_tokenizer

    return make_tokenizer("ordered")  # one token per byte: token counts are character counts


def _args(**kw):
    return PretrainingDataArguments(**{"chunk_tokens": 10, "min_chunk_tokens": 4, **kw})


def test_consecutive_chunks_and_last_chunk_policies(tokenizer, tmp_path):
    # Given a 26-token document: chunks of 10 -> 10, 10, 6
    doc = "abcdefghij" + "klmnopqrst" + "uvwxyz"
    path = tmp_path / "docs.txt"
    path.write_text(doc + "\n")
    # When pairs are built with each last-chunk policy
    mask = load_pretraining_data(tokenizer, _args(train_files=[str(path)]), 50)
    drop = load_pretraining_data(tokenizer, _args(train_files=[str(path)], no_next="drop"), 50)
    own = load_pretraining_data(tokenizer, _args(train_files=[str(path)], no_next="self"), 50)
    # Then chunk i's next passage is chunk i + 1, and the last chunk follows the policy
    assert [(p["input"], p["next"]) for p in mask.pairs] == [
        ("abcdefghij", "klmnopqrst"), ("klmnopqrst", "uvwxyz"), ("uvwxyz", None)
    ]
    assert len(drop.pairs) == 2 and own.pairs[-1] == {"input": "uvwxyz", "next": "uvwxyz"}
    assert mask.stats.as_dict() == {"documents": 1, "pairs": 3, "without_next": 1, "skipped": {}}
    # And a tail shorter than min_chunk_tokens joins the previous chunk
    builder = PairBuilder(tokenizer, _args(), 50)
    assert [p["input"] for p in builder.pairs("x", {"text": "a" * 22})] == ["a" * 10, "a" * 12]


def test_invalid_utf8_errors_with_file_and_line_or_is_skipped(tokenizer, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"a fine first document here\n\xff\xfe broken\nanother fine document\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: invalid UTF-8"):
        load_pretraining_data(tokenizer, _args(train_files=[str(path)]), 50)
    data = load_pretraining_data(tokenizer, _args(train_files=[str(path)], on_error="skip"), 50)
    assert data.stats.skipped == {"invalid_utf8": 1} and data.stats.documents == 2


def test_jsonl_formats_and_bad_lines(tokenizer, tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"text": "a document long enough"}),
        json.dumps({"input": "explicit input", "next": "explicit next"}),
        json.dumps({"input": "released", "output_summarize": "released", "output_predict": "the next one"}),
        "{not json",
        json.dumps({"title": "no text field"}),
        json.dumps({"text": ""}),
        json.dumps({"text": "abc"}),  # 3 tokens < min_chunk_tokens
        json.dumps([1, 2]),
        "",
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"data\.jsonl:4: malformed JSON"):
        load_pretraining_data(tokenizer, _args(train_files=[str(path)]), 50)
    data = load_pretraining_data(tokenizer, _args(train_files=[str(path)], on_error="skip", chunk_tokens=50), 50)
    assert data.stats.skipped == {"malformed_json": 1, "missing_field": 1, "empty": 1, "too_short": 1, "bad_record": 1}
    assert data.pairs[1] == {"input": "explicit input", "next": "explicit next"}
    assert data.pairs[2] == {"input": "released", "next": "the next one", "summarize_target": "released"}
    for bad, message in (({"text": "abc"}, "too_short|fewer than"), ({"text": "  "}, "empty document"), ({"input": 3}, "'input' must be")):
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=rf"data\.jsonl:1: .*({message})"):
            load_pretraining_data(tokenizer, _args(train_files=[str(path)]), 50)


def test_parquet_datasets_paragraphs_and_streaming(tokenizer, tmp_path):
    import datasets

    rows = {"text": ["first parquet document", "second parquet document"]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "p.txt").write_text("para one line a\nline b\n\npara two here\n")
    files = [str(tmp_path / "d.parquet"), str(tmp_path / "ds"), str(tmp_path / "p.txt")]
    args = _args(train_files=files, text_unit="paragraph", chunk_tokens=100)
    data = load_pretraining_data(tokenizer, args, 100)
    assert [p["input"] for p in data.pairs] == rows["text"] * 2 + ["para one line a\nline b", "para two here"]
    # streaming yields the same pairs, twice (one per epoch), without holding them
    stream = load_pretraining_data(tokenizer, _args(train_files=files, text_unit="paragraph", chunk_tokens=100, streaming=True), 100)
    assert list(stream) == data.pairs == list(stream)
    # a bad line in a stream fails before training starts (up-front scan), not midway
    (tmp_path / "bad.jsonl").write_text('{"text": "fine document"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_pretraining_data(tokenizer, _args(train_files=[str(tmp_path / "bad.jsonl")], streaming=True), 100)
    with pytest.raises(FileNotFoundError):
        load_pretraining_data(tokenizer, _args(train_files=[str(tmp_path / "missing.txt")]), 100)
