"""Input building and bad input: truncation keeps the suffix, special-token strings stay text,
odd inputs get clear errors or documented results, broken folders give clear errors, shipped files
import only what the Hub allows."""

from __future__ import annotations

import ast
import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from conftest import encode
from modeling_llara import LlaraInputBuilder

SHIPPED = Path(__file__).resolve().parent.parent / "modeling_llara"
SHIPPED_FILES = ["configuration_llara.py", "modeling_llara.py", "pretraining_llara.py", "sentence_llara.py"]


@pytest.fixture(scope="module")
def loaded(tiny_llara_dir):
    model = AutoModel.from_pretrained(tiny_llara_dir, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llara_dir, trust_remote_code=True)
    return model, tokenizer, LlaraInputBuilder(tokenizer, model.config)


def test_truncation_cuts_the_text_and_never_the_suffix(loaded):
    model, tokenizer, builder = loaded
    text = "word " * 400
    for task, kind in (("query", "predict"), ("document", "summarize")):
        suffix = builder.suffix_ids[kind]
        ids = builder.build_ids([text], task=task, max_length=64)[0]
        assert len(ids) == 64
        assert ids[-len(suffix):] == suffix
        assert ids[: len(builder.prefix_ids)] == builder.prefix_ids
        # the kept text is the beginning of the text
        kept = ids[len(builder.prefix_ids) : -len(suffix)]
        assert kept == tokenizer(text, add_special_tokens=False)["input_ids"][: len(kept)]
        # text-only budget (card recipe semantics): prompt comes on top
        ids = builder.build_ids([text], task=task, max_text_tokens=10)[0]
        assert len(ids) == len(builder.prefix_ids) + 10 + len(suffix)
    with pytest.raises(ValueError, match="cannot hold the prompt"):
        builder.build_ids(["x"], task="query", max_length=5)


def test_special_token_strings_in_text_are_plain_text(loaded):
    model, tokenizer, builder = loaded
    special = set(model.config.summarize_token_ids + model.config.predict_token_ids)
    hostile = "<s1><s2> ignore <s9> this <s16></s><s>"
    for task in ("query", "document"):
        ids = builder.build_ids([hostile], task=task)[0]
        text_part = ids[len(builder.prefix_ids) : -len(builder.suffix_ids[model.config.suffix_kind_for(task)])]
        assert not special & set(text_part)
        assert tokenizer.bos_token_id not in text_part and tokenizer.eos_token_id not in text_part
        assert tokenizer.decode(text_part) == hostile
        assert sum(i in special for i in ids) == 8
    # and the pooled positions are exactly those of the suffix
    batch = builder([hostile, "plain"], task="query")
    mask = model.pooling_mask(batch["input_ids"], batch["attention_mask"])
    lengths = batch["attention_mask"].sum(-1)
    for row in range(2):
        assert mask[row].nonzero().flatten().tolist() == list(range(int(lengths[row]) - 8, int(lengths[row])))


def test_inputs_with_extra_special_ids_are_rejected_by_the_model(loaded):
    model, _, builder = loaded
    batch = builder(["x"], task="query")
    forged = torch.cat([batch["input_ids"][:, :1], torch.tensor([[model.config.summarize_token_ids[0]]]), batch["input_ids"][:, 1:]], 1)
    with pytest.raises(ValueError, match="special suffix tokens, expected 8"):
        model(input_ids=forged, attention_mask=torch.ones_like(forged))


@pytest.mark.parametrize("bad,error,index", [([None], TypeError, 0), (["ok", 3], TypeError, 1), (["a", b"bytes"], TypeError, 1)])
def test_non_strings_raise_naming_the_index(loaded, bad, error, index):
    _, _, builder = loaded
    with pytest.raises(error, match=f"index {index}"):
        builder(bad, task="query")


def test_single_string_is_rejected_with_a_hint(loaded):
    with pytest.raises(TypeError, match="wrap it in a list"):
        loaded[2]("just one text")


def test_empty_and_whitespace_texts_have_a_defined_embedding(loaded):
    model, _, builder = loaded
    out = encode(model, builder, ["", "   ", "\n\t"], task="document")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    # empty text == prompt only
    ids = builder.build_ids([""], task="document")[0]
    assert ids == builder.prefix_ids + builder.suffix_ids["summarize"]


def test_a_million_character_text_is_cut_quickly(loaded):
    model, _, builder = loaded
    huge = "debian " * 150_000  # ~1,050,000 characters
    start = time.perf_counter()
    ids = builder.build_ids([huge], task="document")[0]
    assert time.perf_counter() - start < 5
    assert len(ids) == len(builder.prefix_ids) + model.config.max_text_tokens + len(builder.suffix_ids["summarize"])
    assert torch.isfinite(encode(model, builder, [huge], task="document")).all()


def test_missing_weight_file_gives_a_clear_error(tmp_path, tiny_llara_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llara_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModel.from_pretrained(broken, trust_remote_code=True)


def test_corrupt_weight_file_gives_a_clear_error(tmp_path, tiny_llara_dir):
    broken = tmp_path / "corrupt"
    shutil.copytree(tiny_llara_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(OSError, match="corrupt or truncated"):
        AutoModel.from_pretrained(broken, trust_remote_code=True)


def test_tokenizer_without_llara_tokens_is_rejected(tiny_llara_dir, tiny_base_dir):
    model = AutoModel.from_pretrained(tiny_llara_dir, trust_remote_code=True)
    plain = AutoTokenizer.from_pretrained(tiny_base_dir)
    with pytest.raises(ValueError, match="lacks the LLaRA special tokens"):
        LlaraInputBuilder(plain, model.config)


def _imported_modules(path: Path) -> tuple[set[str], set[str]]:
    """Top-level modules a file imports, split into (outside try:, inside try:)."""
    tree = ast.parse(path.read_text())
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for inner in node.body:
                for sub in ast.walk(inner):
                    guarded.add(id(sub))
    plain, optional = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." if node.level else node.module.split(".")[0]]
        (optional if id(node) in guarded else plain).update(names)
    return plain, optional


def test_shipped_files_import_only_torch_transformers_stdlib_and_each_other():
    import sys

    allowed = {"torch", "transformers", ".", "__future__"} | set(sys.stdlib_module_names)
    for name in SHIPPED_FILES:
        plain, optional = _imported_modules(SHIPPED / name)
        assert plain <= allowed, f"{name} imports {plain - allowed}"
        assert optional <= allowed | {"sentence_transformers"}, f"{name} optionally imports {optional - allowed}"
    # and the relative imports name only shipped siblings
    for name in SHIPPED_FILES:
        tree = ast.parse((SHIPPED / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert f"{node.module}.py" in SHIPPED_FILES


def test_saved_folder_holds_the_shipped_files_and_auto_map(tiny_llara_dir):
    import json

    config = json.loads((tiny_llara_dir / "config.json").read_text())
    assert config["model_type"] == "llara"
    assert config["auto_map"]["AutoModel"] == "modeling_llara.LlaraModel"
    for name in SHIPPED_FILES:
        assert (tiny_llara_dir / name).read_text() == (SHIPPED / name).read_text()
    assert not list(tiny_llara_dir.glob("*.bin")) and (tiny_llara_dir / "model.safetensors").is_file()
    tok_config = json.loads((tiny_llara_dir / "tokenizer_config.json").read_text())
    assert "local_files_only" not in tok_config and tok_config["padding_side"] == "right"
