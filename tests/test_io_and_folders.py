"""Atomic writes, JSON-lines reading and the LLaRA folder check (trainers/io.py, trainers/model_folders.py)."""

from __future__ import annotations

import gzip
import json

import pytest

from trainers.io import (
    JsonlFormatError,
    atomic_write_json,
    atomic_write_text,
    iter_jsonl,
    path_for_record,
    staged_dir,
    write_jsonl,
)
from trainers.model_folders import NotLlaraModelError, is_llara_folder, require_llara_folder


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2, "text": "é"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 2, "text": "é"}
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, "old\n")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"not serializable": object()})
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_staged_dir_replaces_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "folder"
    with staged_dir(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(FileExistsError, match="overwrite"):
        with staged_dir(target):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with staged_dir(target, overwrite=True) as staging:
            (staging / "b.txt").write_text("second")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with staged_dir(target, overwrite=True) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_jsonl_round_trip_with_line_numbers(tmp_path, suffix):
    records = [{"_id": "1", "text": "α"}, {"_id": "2", "text": "b"}]
    path = write_jsonl(tmp_path / f"plain{suffix.replace('.gz', '')}", records)
    text = path.read_text(encoding="utf-8").replace("\n", "\n\n", 1)  # a blank line 2 is skipped
    if suffix.endswith(".gz"):
        path = tmp_path / f"data{suffix}"
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    assert list(iter_jsonl(path)) == [(1, records[0]), (3, records[1])]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"a": 1}\n{"a": \n', r"bad\.jsonl:2: not valid JSON"),
        ('{"a": 1}\n\n[1, 2]\n', r"bad\.jsonl:3: expected a JSON object, got list"),
    ],
)
def test_jsonl_error_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(JsonlFormatError, match=message):
        list(iter_jsonl(path))


def test_jsonl_missing_file_and_caller_error_class(tmp_path):
    class MyFormatError(ValueError):
        pass

    with pytest.raises(MyFormatError, match=r"not found: .*nope\.jsonl"):
        list(iter_jsonl(tmp_path / "nope.jsonl", error=MyFormatError))


def _folder(tmp_path, name, config):
    folder = tmp_path / name
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


def test_llara_folder_is_recognised_from_config_alone(tmp_path):
    folder = _folder(tmp_path, "llara", {"model_type": "llara", "architectures": ["LlaraModel"]})
    (folder / "model.safetensors").write_bytes(b"not weights: never read")
    assert is_llara_folder(folder)
    assert require_llara_folder(folder)["architectures"] == ["LlaraModel"]


@pytest.mark.parametrize(
    "name, config, message",
    [
        ("llama", {"model_type": "llama"}, r"llama is not a LLaRA model folder: config.json has model_type 'llama'.*llara init"),
        ("bert", {"model_type": "bert"}, r"model_type 'bert'.*llara init"),
        ("untyped", {"hidden_size": 8}, r"model_type None.*llara init"),
        ("empty", None, r"empty is not a model folder: it has no config\.json.*llara init"),
        ("corrupt", '{"model_type": "ll', r"corrupt/config\.json: not valid JSON \(line 1"),
        ("listed", "[1]", r"listed/config\.json: expected a JSON object, got list"),
    ],
)
def test_not_llara_folders_get_a_clear_error(tmp_path, name, config, message):
    folder = _folder(tmp_path, name, config)
    assert not is_llara_folder(folder)
    with pytest.raises(NotLlaraModelError, match=message):
        require_llara_folder(folder, "--model")


def test_missing_folder_or_file_is_named(tmp_path):
    assert not is_llara_folder(tmp_path / "missing")
    with pytest.raises(NotLlaraModelError, match=r"base model not found: .*missing"):
        require_llara_folder(tmp_path / "missing", "base model")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotLlaraModelError, match=r"file is a file, expected a model folder"):
        require_llara_folder(tmp_path / "file")


def test_last_complete_checkpoint_skips_checkpoints_cut_short(tmp_path):
    from trainers.recipes import last_complete_checkpoint, resolve_checkpoint

    for step, state in ((2, "{}"), (4, "{}"), (6, '{"trunc'), (8, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert resolve_checkpoint("last", tmp_path) == str(tmp_path / "checkpoint-4")
    assert resolve_checkpoint(None, tmp_path) is None and last_complete_checkpoint(tmp_path / "nowhere") is None
    with pytest.raises(ValueError, match="not written to the end"):
        resolve_checkpoint(str(tmp_path / "checkpoint-6"), tmp_path)
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(str(tmp_path / "checkpoint-10"), tmp_path)


def test_path_for_record_is_relative_inside_the_root_and_absolute_outside(tmp_path):
    root = tmp_path / "repo"
    (root / "outputs" / "m").mkdir(parents=True)
    assert path_for_record(root / "outputs" / "m", root) == "outputs/m"
    assert path_for_record(root / "outputs" / ".." / "outputs" / "m", root) == "outputs/m"
    assert path_for_record(tmp_path / "elsewhere", root) == str((tmp_path / "elsewhere").resolve())
