"""LlaraModel: pooling, padding sides, attention implementations, families, the BAAI card recipe."""

from __future__ import annotations

import pytest
import torch
from conftest import encode, make_tokenizer, save_tiny_base, tiny_text_config
from transformers import AutoModel, AutoTokenizer, LlamaModel

from modeling_llara import LlaraConfig, LlaraInputBuilder, LlaraModel
from trainers.convert import convert

TEXTS = [
    "nginx is a small, fast HTTP server and reverse proxy",
    "a",
    "the quick brown fox jumps over the lazy dog, then over the fence, then far away into the woods",
    "libc6: GNU C Library: Shared libraries",
]


def _load(folder, **kwargs):
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(folder, trust_remote_code=True)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_families_left_and_right_padding_give_the_same_embedding(tmp_path, family):
    # Given a LLaRA model converted from a tiny backbone of this family
    folder = convert(str(save_tiny_base(tmp_path / "base", family=family)), tmp_path / "llara")
    model, tokenizer = _load(folder)
    assert model.config.model_type == "llara"
    assert model.config.text_config.model_type == family
    builder = LlaraInputBuilder(tokenizer, model.config)
    for task in ("query", "document"):
        # When the same texts are padded on the right and on the left
        with torch.no_grad():
            right = model(**builder(TEXTS, task=task, padding_side="right")).pooler_output
            left = model(**builder(TEXTS, task=task, padding_side="left")).pooler_output
        # Then the embeddings agree, are unit-norm, and differ between texts
        torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
        torch.testing.assert_close(right.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
        assert (right[0] - right[1]).abs().max() > 1e-4


def test_pooling_matches_a_manual_mean_of_special_positions(tiny_llara_dir):
    model, tokenizer = _load(tiny_llara_dir)
    builder = LlaraInputBuilder(tokenizer, model.config)
    batch = builder(TEXTS, task="query")
    with torch.no_grad():
        out = model(**batch)
    special = set(model.config.predict_token_ids)
    for row, ids in enumerate(batch["input_ids"].tolist()):
        positions = [i for i, t in enumerate(ids) if t in special and batch["attention_mask"][row, i]]
        assert len(positions) == 8
        # the 8 pooled positions are the last 8 real tokens: the suffix ends the input
        length = int(batch["attention_mask"][row].sum())
        assert positions == list(range(length - 8, length))
        expected = torch.nn.functional.normalize(out.last_hidden_state[row, positions].mean(0), dim=-1)
        torch.testing.assert_close(out.pooler_output[row], expected, atol=1e-6, rtol=0)


def test_query_and_passage_use_different_suffixes(tiny_llara_dir):
    model, tokenizer = _load(tiny_llara_dir)
    builder = LlaraInputBuilder(tokenizer, model.config)
    query = builder.build_ids(["x"], task="query")[0]
    passage = builder.build_ids(["x"], task="document")[0]
    assert query[-8:] == model.config.predict_token_ids
    assert passage[-8:] == model.config.summarize_token_ids
    assert tokenizer.decode(query[len(builder.prefix_ids):]).startswith('x", predict the following passage')
    assert tokenizer.decode(passage[len(builder.prefix_ids):]).startswith('x", summarize the above passage')
    assert query[0] == tokenizer.bos_token_id


def test_sdpa_is_the_implementation_in_use_and_agrees_with_eager(tiny_llara_dir, monkeypatch):
    sdpa_model, tokenizer = _load(tiny_llara_dir)
    eager_model, _ = _load(tiny_llara_dir, attn_implementation="eager")
    assert sdpa_model.config._attn_implementation == "sdpa"
    assert sdpa_model.model.config._attn_implementation == "sdpa"
    assert eager_model.model.config._attn_implementation == "eager"
    batch = LlaraInputBuilder(tokenizer, sdpa_model.config)(TEXTS, task="document", padding_side="left")

    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    with torch.no_grad():
        sdpa_out = sdpa_model(**batch).pooler_output
        assert len(calls) == sdpa_model.config.text_config.num_hidden_layers
        calls.clear()
        eager_out = eager_model(**batch).pooler_output
        assert calls == []
    torch.testing.assert_close(sdpa_out, eager_out, atol=1e-5, rtol=0)


def _card_recipe_embed(model: LlamaModel, tokenizer, texts, suffix, max_length=512):
    """The released model-card recipe, written from its description (BAAI/LLARA-* model cards): left padding,
    pad_to_multiple_of=8, max_length on the text only, hidden_states[-1][:, -8:] mean, L2 norm."""
    prefix_ids = tokenizer('"', add_special_tokens=True)["input_ids"]
    suffix_ids = tokenizer(suffix, add_special_tokens=True)["input_ids"][1:]  # drop BOS
    features = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, max_length=max_length, truncation=True)["input_ids"]
        ids = prefix_ids + ids + suffix_ids
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    tokenizer.padding_side = "left"
    batch = tokenizer.pad(features, padding=True, pad_to_multiple_of=8, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True, return_dict=True)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)  # post-norm, as the recipe assumes
    return torch.nn.functional.normalize(out.hidden_states[-1][:, -8:, :].mean(dim=1), dim=-1)


def test_released_baai_layout_converts_and_matches_the_card_recipe(tmp_path):
    # Given a plain LlamaModel whose tokenizer already holds <s1>..<s16> at scrambled ids (BAAI layout)
    tokenizer = make_tokenizer(llara_tokens="scrambled")
    ids = tokenizer.convert_tokens_to_ids([f"<s{i}>" for i in range(1, 17)])
    assert ids != sorted(ids)
    torch.manual_seed(3)
    baai = LlamaModel(tiny_text_config("llama", vocab_size=len(tokenizer))).eval()
    baai.save_pretrained(tmp_path / "baai")
    tokenizer.save_pretrained(tmp_path / "baai")

    # When it is converted with `llara init`
    folder = convert(str(tmp_path / "baai"), tmp_path / "llara")
    model, llara_tokenizer = _load(folder)
    assert model.config.summarize_token_ids == ids[:8]
    assert model.config.predict_token_ids == ids[8:]
    assert len(llara_tokenizer) == len(tokenizer)  # nothing added

    # Then queries and passages embed exactly as the card recipe does
    builder = LlaraInputBuilder(llara_tokenizer, model.config)
    cfg = model.config
    for task, kind in (("query", "predict"), ("document", "summarize")):
        ours = encode(model, builder, TEXTS, task=task, batch_size=3)
        card = _card_recipe_embed(baai, tokenizer, TEXTS, cfg.suffix_text(kind))
        torch.testing.assert_close(ours, card, atol=1e-5, rtol=0)


def test_init_adds_tokens_with_mean_initialized_rows(tmp_path, tiny_base_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    folder = convert(str(tiny_base_dir), tmp_path / "llara")
    model, tokenizer = _load(folder)
    old_rows = base.get_input_embeddings().weight.shape[0]
    assert len(tokenizer) == old_rows + 16
    new_ids = model.config.summarize_token_ids + model.config.predict_token_ids
    assert sorted(new_ids) == list(range(old_rows, old_rows + 16))
    weight = model.get_input_embeddings().weight
    expected = base.get_input_embeddings().weight.mean(0)
    for token_id in new_ids:
        torch.testing.assert_close(weight[token_id], expected)
    # the backbone's own rows are untouched
    torch.testing.assert_close(weight[:old_rows], base.get_input_embeddings().weight)


def test_config_validation_rejects_inconsistent_settings():
    text = tiny_text_config().to_dict()
    with pytest.raises(ValueError, match="num_pooled_tokens"):
        LlaraConfig(text_config=text, num_pooled_tokens=4)
    with pytest.raises(ValueError, match="pooling"):
        LlaraConfig(text_config=text, pooling="max")
    with pytest.raises(ValueError, match="query_suffix_kind"):
        LlaraConfig(text_config=text, query_suffix_kind="next")
    with pytest.raises(ValueError, match="disjoint"):
        LlaraConfig(text_config=text, predict_tokens=[f"<s{i}>" for i in range(1, 9)])
    with pytest.raises(ValueError, match="unknown task"):
        LlaraConfig(text_config=text).suffix_kind_for("passages")


@pytest.mark.parametrize("mode,query_kind,passage_kind", [("s2s", "summarize", "summarize"), ("n2n", "predict", "predict")])
def test_symmetric_modes(tmp_path, tiny_base_dir, mode, query_kind, passage_kind):
    folder = convert(str(tiny_base_dir), tmp_path / mode, query_suffix_kind=query_kind, passage_suffix_kind=passage_kind)
    model, tokenizer = _load(folder)
    builder = LlaraInputBuilder(tokenizer, model.config)
    with torch.no_grad():
        query = model(**builder(TEXTS, task="query")).pooler_output
        passage = model(**builder(TEXTS, task="document")).pooler_output
    torch.testing.assert_close(query, passage, atol=0, rtol=0)


def test_tie_and_dtype_survive_bf16(tiny_llara_dir):
    model, tokenizer = _load(tiny_llara_dir, dtype=torch.bfloat16)
    batch = LlaraInputBuilder(tokenizer, model.config)(TEXTS, task="query")
    with torch.no_grad():
        out = model(**batch).pooler_output
    assert model.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert out.dtype == torch.float32  # pooled, averaged and normalized in fp32 whatever the backbone dtype
    assert torch.isfinite(out).all()
