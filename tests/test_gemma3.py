"""Gemma 3 as a LLaRA backbone, on a tiny random configuration built like the real one: tied embeddings that
the backbone scales by sqrt(hidden), one key/value head, sliding-window layers around a full-attention one.
The window is 8 tokens, shorter than every input here: a mask that let a layer look past it fails these checks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_FAMILY_FIELDS, card_recipe_embed, run_isolated, save_tiny_base, tiny_text_config

from modeling_llara import LlaraForPretraining, LlaraInputBuilder, LlaraModel
from modeling_llara.pretraining_llara import (
    SEGMENT_PREDICT,
    SEGMENT_SUMMARIZE,
    SEGMENT_TEXT,
    backbone_attention_mask,
    dual_suffix_attention_mask,
)
from trainers.convert import convert
from trainers.pretraining import PretrainingCollator

TEXTS = [
    "nginx is a small, fast HTTP server and reverse proxy",
    "a",
    "",
    "the quick brown fox jumps over the lazy dog, then over the fence, then far away into the woods",
]
WINDOW = TINY_FAMILY_FIELDS["gemma3"]["sliding_window"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gemma3_base_dir(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("tiny-gemma3") / "base", family="gemma3")


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory, gemma3_base_dir):
    return convert(str(gemma3_base_dir), tmp_path_factory.mktemp("tiny-gemma3-llara") / "model")


@pytest.fixture(scope="module")
def tokenizer(gemma3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma3_dir, trust_remote_code=True)


def test_init_keeps_tied_scaled_embeddings_and_the_backbone(gemma3_dir, gemma3_base_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    # Given the tiny Gemma 3 causal LM and the LLaRA model `llara init` made of it
    base = AutoModelForCausalLM.from_pretrained(gemma3_base_dir).eval()
    model = LlaraForPretraining.from_pretrained(gemma3_dir).eval()
    text_config = model.config.text_config
    assert text_config.model_type == "gemma3_text"
    assert set(text_config.layer_types) == {"sliding_attention", "full_attention"}
    assert text_config.sliding_window == WINDOW
    # Then the LM head is the (tied) input embedding, grown by the 16 new rows, each the mean of the old rows
    weight = model.get_input_embeddings().weight  # (vocab + 16, hidden)
    assert model.config.tie_word_embeddings and model.lm_head.weight is weight
    rows = base.get_input_embeddings().weight.shape[0]
    new_ids = sorted(model.config.summarize_token_ids + model.config.predict_token_ids)
    assert new_ids == list(range(rows, rows + 16)) == list(range(rows, weight.shape[0]))
    torch.testing.assert_close(weight[rows:], weight[:rows].mean(0, keepdim=True).expand(16, -1))
    # and the backbone still scales looked-up rows by sqrt(hidden), the new ones included
    ids = torch.tensor([[tokenizer.bos_token_id, 40, new_ids[0], new_ids[-1]]])
    torch.testing.assert_close(model.get_input_embeddings()(ids), weight[ids] * text_config.hidden_size**0.5)
    # and on ordinary tokens it computes what the source backbone computes, with and without the window
    ids = torch.randint(4, rows, (2, 3 * WINDOW), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.model(input_ids=ids).last_hidden_state,
                                   base.model(input_ids=ids).last_hidden_state, atol=1e-6, rtol=0)
    # and the prompt starts with the tokenizer's BOS, as the released recipe tokenizes '"'
    builder = LlaraInputBuilder(tokenizer, model.config)
    assert builder.prefix_ids == tokenizer('"')["input_ids"] and builder.prefix_ids[0] == tokenizer.bos_token_id


def test_mixed_layers_get_a_mask_per_layer_type_with_the_window_in_positions():
    # Given one left-padded row: 1 pad, 4 text, 2 summarize, 2 predict tokens, and a window of 3 positions
    seg = torch.tensor([[0, 1, 1, 1, 1, 2, 2, 3, 3]])
    config = tiny_text_config("gemma3", sliding_window=3)
    # When the mask is built for a backbone that mixes full and sliding-window layers
    masks = backbone_attention_mask(seg, torch.float32, config)
    # Then each layer type gets its own mask: the full one is the plain dual-suffix mask ...
    assert sorted(masks) == ["full_attention", "sliding_attention"]
    torch.testing.assert_close(masks["full_attention"], dual_suffix_attention_mask(seg, torch.float32))
    # ... and the sliding one also hides keys 3+ positions back; the predict suffix sits at positions 4-5,
    # right after the text (positions 0-3), so its window covers the last text tokens as in its own pass
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0, 0, 0],  # a leading padding row: itself only, never read
            [0, 1, 0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 0, 0, 1, 0],
            [0, 0, 0, 0, 1, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(masks["sliding_attention"][0, 0] == 0, expected)
    # And a backbone of one kind of layer gets one mask: the plain mask, or the windowed one when all layers slide
    llama = tiny_text_config("llama")
    torch.testing.assert_close(backbone_attention_mask(seg, torch.float32, llama), masks["full_attention"])
    mistral = tiny_text_config("mistral", sliding_window=3)
    torch.testing.assert_close(backbone_attention_mask(seg, torch.float32, mistral), masks["sliding_attention"])


def _two_pass_rows(embedder, builder, kind, budget, side):
    batch = builder(TEXTS, task=kind, max_text_tokens=budget, padding_side=side)
    with torch.no_grad():
        out = embedder(**batch)
    real = batch["attention_mask"].bool()
    return out.pooler_output, [out.last_hidden_state[i][real[i]] for i in range(len(TEXTS))]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_one_pass_equals_two_passes_past_the_sliding_window(gemma3_dir, tokenizer, impl, side):
    # Given the pretraining model and the embedder on the same weights, and inputs many windows long
    model = LlaraForPretraining.from_pretrained(gemma3_dir, attn_implementation=impl).eval()
    embedder = LlaraModel.from_pretrained(gemma3_dir, attn_implementation=impl).eval()
    collator = PretrainingCollator(tokenizer, model.config, max_length=240, padding_side=side)
    builder = LlaraInputBuilder(tokenizer, model.config)
    batch = collator([{"input": text, "next": None} for text in TEXTS])
    assert batch["input_ids"].shape[1] > 10 * WINDOW
    # When one pass runs text + summarize + predict suffixes, and two ordinary passes run one suffix each
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], segment_ids=batch["segment_ids"])
    pooled = {}
    for kind, segment in (("summarize", SEGMENT_SUMMARIZE), ("predict", SEGMENT_PREDICT)):
        pooled[kind], rows = _two_pass_rows(embedder, builder, kind, collator.text_budget, side)
        # Then every state of text + suffix is the one of the separate pass
        for i, row in enumerate(rows):
            seg = batch["segment_ids"][i]
            torch.testing.assert_close(out.last_hidden_state[i][(seg == SEGMENT_TEXT) | (seg == segment)], row,
                                       atol=1e-5, rtol=0)
    # And so are the pooled embeddings
    torch.testing.assert_close(out.summarize_embeds, pooled["summarize"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.predict_embeds, pooled["predict"], atol=1e-5, rtol=0)


def test_left_and_right_padding_give_the_same_embedding(gemma3_dir, tokenizer):
    model = LlaraModel.from_pretrained(gemma3_dir).eval()
    builder = LlaraInputBuilder(tokenizer, model.config)
    for task in ("query", "document"):
        with torch.no_grad():
            right = model(**builder(TEXTS, task=task, padding_side="right")).pooler_output
            left = model(**builder(TEXTS, task=task, padding_side="left")).pooler_output
        torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
        assert (right[0] - right[3]).abs().max() > 1e-4


def test_sentence_transformers_and_the_card_recipe_give_the_model_embeddings(gemma3_dir, tokenizer):
    from sentence_transformers import SentenceTransformer

    model = LlaraModel.from_pretrained(gemma3_dir).eval()
    builder = LlaraInputBuilder(tokenizer, model.config)
    st = SentenceTransformer(str(gemma3_dir), trust_remote_code=True, device="cpu")
    encoders = {"query": st.encode_query, "document": st.encode_document}
    for task, kind in (("query", "predict"), ("document", "summarize")):
        with torch.no_grad():
            ours = model(**builder(TEXTS, task=task)).pooler_output
        np.testing.assert_allclose(encoders[task](TEXTS, batch_size=3), ours.numpy(), atol=1e-5, rtol=0)
        card = card_recipe_embed(model.model, tokenizer, TEXTS, model.config.suffix_text(kind))
        torch.testing.assert_close(card, ours, atol=1e-5, rtol=0)


_FRESH_EMBED = """
import json, sys, torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer
from transformers.dynamic_module_utils import get_class_from_dynamic_module
folder, texts = sys.argv[1], json.loads(sys.argv[2])
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
builder = get_class_from_dynamic_module("modeling_llara.LlaraInputBuilder", folder)(tokenizer, model.config)
st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
with torch.inference_mode():
    auto = {task: model(**builder(texts, task=task)).pooler_output.tolist() for task in ("query", "document")}
print(json.dumps({"model_type": model.config.text_config.model_type, "auto": auto,
                  "st": {"query": st.encode_query(texts).tolist(), "document": st.encode_document(texts).tolist()}}))
"""


def test_lora_step_moves_the_new_rows_and_the_export_loads_back_identically(gemma3_dir, tokenizer, tmp_path):
    from hub_card.export import export_model
    from trainers.convert import save_llara
    from trainers.finetuning.loss import contrastive_loss
    from trainers.finetuning.trainer import LlaraDataCollator, build_sentence_model
    from trainers.lora import apply_lora, merge_lora

    # Given a LoRA model over the tied, scaled embeddings: before any step it embeds as the plain model does
    torch.manual_seed(0)
    plain = LlaraModel.from_pretrained(gemma3_dir).eval()
    model = apply_lora(LlaraModel.from_pretrained(gemma3_dir), r=4, dropout=0.0)
    builder = LlaraInputBuilder(tokenizer, plain.config)
    batch = builder(TEXTS, task="query")
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**batch).pooler_output, plain(**batch).pooler_output, atol=1e-6, rtol=0)
    # When contrastive steps of the stage-2 loss run
    st = build_sentence_model(model, tokenizer, gemma3_dir)
    vocab = plain.config.get_text_config().vocab_size
    embed_before = model.get_input_embeddings()(torch.arange(vocab)).detach()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rows = [{"anchor": f"query {i}", "positive": f"answer {i}", "negative_1": f"other {i}"} for i in range(3)]
    features = LlaraDataCollator(preprocess_fn=st.preprocess, max_length={"query": 72, "document": 88})(rows)
    features = [{k[len(c) + 1:]: v for k, v in features.items() if k.startswith(c + "_")} for c in rows[0]]
    loss_fn = contrastive_loss(st, temperature=0.05)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        loss_fn(features, None).backward()
        optimizer.step()
    model.eval()
    # Then of the embedding matrix exactly the 16 new rows moved
    embed_after = model.get_input_embeddings()(torch.arange(vocab)).detach()
    changed = (embed_after != embed_before).any(-1).nonzero().flatten().tolist()
    assert changed == sorted(plain.config.summarize_token_ids + plain.config.predict_token_ids)
    # And merged, saved and exported, the model loads in a fresh process without the project and embeds the same
    expected = {}
    with torch.no_grad():
        for task in ("query", "document"):
            expected[task] = model(**builder(TEXTS, task=task)).pooler_output
    save_llara(merge_lora(model), tokenizer, tmp_path / "merged")
    exported = export_model(tmp_path / "merged", tmp_path / "export", repo_id="test-org/llara-tiny-gemma3",
                            lookup_mteb_tasks=False)
    code = f"import sys\nsys.argv[1:] = {[str(exported), json.dumps(TEXTS)]!r}\n" + _FRESH_EMBED
    result = run_isolated(code, tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["model_type"] == "gemma3_text"
    for via in ("auto", "st"):
        for task in ("query", "document"):
            torch.testing.assert_close(torch.tensor(got[via][task]), expected[task], atol=1e-5, rtol=0)
    # and the steps did change what the model computes
    with torch.no_grad():
        assert not torch.allclose(plain(**builder(TEXTS, task="query")).pooler_output, expected["query"], atol=1e-4)
