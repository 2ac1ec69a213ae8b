"""Slow checks on the real Gemma 3 270M (GGUF Q4_K_M from PyPI, dequantized): 18 layers, five sliding-window
layers (512 tokens) to each full-attention one, a 262k vocabulary with tied embeddings scaled by sqrt(640).

Run on purpose with ``make test-slow`` (``pytest -m slow``); the session converts the model once.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import card_recipe_embed

import modeling_llara.pretraining_llara as pretraining_impl
from modeling_llara import LlaraForPretraining, LlaraInputBuilder, LlaraModel
from modeling_llara.pretraining_llara import SEGMENT_PREDICT, SEGMENT_SUMMARIZE, SEGMENT_TEXT
from trainers.pretraining import PretrainingCollator

pytestmark = pytest.mark.slow

QUERIES = ["web server", "python code checker", "photo editing", "ssh client"]
DOCUMENTS = [
    "nginx is a small, powerful, scalable web/proxy server.",
    "Pylint is a Python source code analyzer which looks for programming errors.",
    "GNU Image Manipulation Program: an advanced picture editor.",
    "OpenSSH client: secure shell for remote login and file transfer.",
]


def _long_and_short_text() -> list[str]:
    """A text of several Debian descriptions (longer than the 512-token window) and a short one."""
    from trainers.debian_data import load_pairs

    documents = [pair["document"] for pair in load_pairs()[:8]]
    return [" ".join(documents), documents[0][:80]]


@pytest.fixture(scope="module")
def tokenizer(gemma3_llara_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma3_llara_dir, trust_remote_code=True)


def test_init_turns_the_packaged_gemma3_into_llara(gemma3_llara_dir, tokenizer):
    model = LlaraForPretraining.from_pretrained(gemma3_llara_dir).eval()
    text_config = model.config.text_config
    assert text_config.model_type == "gemma3_text" and text_config.num_hidden_layers == 18
    assert text_config.sliding_window == 512
    assert set(text_config.layer_types) == {"sliding_attention", "full_attention"}
    assert not hasattr(text_config, "_model_name_or_path")  # the GGUF file's own name is storage, not model
    # the 16 new tokens sit after the 262144 ids, their tied rows the mean of the old rows
    weight = model.get_input_embeddings().weight
    assert model.config.tie_word_embeddings and model.lm_head.weight is weight
    new_ids = sorted(model.config.summarize_token_ids + model.config.predict_token_ids)
    assert new_ids == list(range(262144, 262160)) and weight.shape[0] == 262160 == len(tokenizer)
    torch.testing.assert_close(weight[262144:], weight[:262144].mean(0, keepdim=True).expand(16, -1))
    # the prompt opens with Gemma's BOS, and the tokenizer keeps its own special tokens
    builder = LlaraInputBuilder(tokenizer, model.config)
    assert tokenizer.convert_ids_to_tokens(builder.prefix_ids) == ["<bos>", '"']
    assert tokenizer.pad_token == "<pad>" and tokenizer.padding_side == "right"
    # and the converted model is still the language model: it continues an obvious sequence
    ids = tokenizer("Monday, Tuesday, Wednesday,", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[:, -1]
    assert tokenizer.decode(model.lm_head(hidden).argmax(-1)).strip() == "Thursday"


@pytest.mark.parametrize("side", ["left", "right"])
def test_one_pass_equals_two_passes_past_the_window_on_gemma3(gemma3_llara_dir, tokenizer, side, monkeypatch):
    # Given the real model in both layouts and texts longer than its 512-token sliding window
    model = LlaraForPretraining.from_pretrained(gemma3_llara_dir, attn_implementation="sdpa").eval()
    embedder = LlaraModel.from_pretrained(gemma3_llara_dir, attn_implementation="sdpa").eval()
    texts = _long_and_short_text()
    collator = PretrainingCollator(tokenizer, model.config, max_length=640, padding_side=side)
    builder = LlaraInputBuilder(tokenizer, model.config)
    batch = collator([{"input": text, "next": None} for text in texts])
    assert int((batch["segment_ids"] == SEGMENT_TEXT).sum(-1).max()) > 512 + 64
    # When one dual-suffix pass and two ordinary passes run
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], segment_ids=batch["segment_ids"])
        separate = {
            kind: embedder(**builder(texts, task=kind, max_text_tokens=collator.text_budget, padding_side=side))
            for kind in ("summarize", "predict")
        }
    # Then the pooled embeddings and every text + suffix state agree through 18 fp32 layers
    torch.testing.assert_close(out.summarize_embeds, separate["summarize"].pooler_output, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.predict_embeds, separate["predict"].pooler_output, atol=1e-4, rtol=0)
    for kind, segment in (("summarize", SEGMENT_SUMMARIZE), ("predict", SEGMENT_PREDICT)):
        real = builder(texts, task=kind, max_text_tokens=collator.text_budget, padding_side=side)["attention_mask"].bool()
        for i in range(len(texts)):
            seg = batch["segment_ids"][i]
            mine = out.last_hidden_state[i][(seg == SEGMENT_TEXT) | (seg == segment)]
            torch.testing.assert_close(mine, separate[kind].last_hidden_state[i][real[i]], atol=5e-4, rtol=1e-4)
    # And the window is what makes them agree: one mask for all layers sees past it and changes the embeddings
    monkeypatch.setattr(pretraining_impl, "backbone_attention_mask",
                        lambda segment_ids, dtype, config: pretraining_impl.dual_suffix_attention_mask(segment_ids, dtype))
    with torch.no_grad():
        unwindowed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           segment_ids=batch["segment_ids"])
    assert (unwindowed.summarize_embeds[0] - out.summarize_embeds[0]).abs().max() > 1e-3


def test_padding_sides_sentence_transformers_and_card_recipe_agree_on_gemma3(gemma3_llara_dir, tokenizer):
    from sentence_transformers import SentenceTransformer

    # Given the converted model through LlaraModel, SentenceTransformer and the released card recipe
    model = LlaraModel.from_pretrained(gemma3_llara_dir).eval()
    builder = LlaraInputBuilder(tokenizer, model.config)
    st = SentenceTransformer(str(gemma3_llara_dir), trust_remote_code=True, device="cpu")
    for task, kind, texts, encode in (("query", "predict", QUERIES, st.encode_query),
                                      ("document", "summarize", DOCUMENTS, st.encode_document)):
        # When the same texts are embedded each way
        with torch.no_grad():
            right = model(**builder(texts, task=task, padding_side="right")).pooler_output
            left = model(**builder(texts, task=task, padding_side="left")).pooler_output
        card = card_recipe_embed(model.model, tokenizer, texts, model.config.suffix_text(kind))
        # Then they agree
        torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
        np.testing.assert_allclose(encode(texts, batch_size=3), right.numpy(), atol=1e-5, rtol=0)
        torch.testing.assert_close(card, right, atol=1e-5, rtol=0)
        assert (right[0] - right[1]).abs().max() > 1e-3
