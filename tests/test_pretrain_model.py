"""LlaraForPretraining: the one-pass EBAE/EBAR forward equals two separate passes; chunked LM loss."""

from __future__ import annotations

import pytest
import torch

import modeling_llara.pretraining_llara as llara_impl
from modeling_llara import LlaraForPretraining, LlaraInputBuilder, LlaraModel
from modeling_llara.pretraining_llara import (
    SEGMENT_PAD,
    SEGMENT_PREDICT,
    SEGMENT_SUMMARIZE,
    SEGMENT_TEXT,
    dual_suffix_attention_mask,
    dual_suffix_positions,
)
from trainers.pretraining import PretrainingCollator

TEXTS = [
    "a retrieval model embeds text",
    "short",
    "",
    "a much longer passage that forces the others to be padded by quite a few positions",
]


CUDA = pytest.param("cuda", marks=pytest.mark.gpu)  # the same checks on a GPU: make test-gpu
DEVICES = pytest.mark.parametrize("device", ["cpu", CUDA])


@pytest.fixture(scope="module")
def tokenizer(tiny_llara_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llara_dir, trust_remote_code=True)


def _load(cls, path, impl, dtype=torch.float32, device="cpu"):
    return cls.from_pretrained(path, attn_implementation=impl, dtype=dtype).to(device).eval()


def _on(batch, device):
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def test_positions_reuse_summarize_positions():
    # Given one row: 2 pads, 3 text, 2 summarize, 2 predict tokens (left padding)
    seg = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 3, 3]])
    # Then the predict suffix starts where the summarize suffix starts, right after the text
    assert dual_suffix_positions(seg).tolist() == [[0, 0, 0, 1, 2, 3, 4, 3, 4]]


def test_mask_blocks_summarize_columns_for_predict_rows_only():
    seg = torch.tensor([[1, 1, 2, 2, 3, 3, 0]])
    mask = dual_suffix_attention_mask(seg, torch.float32)[0, 0]
    allowed = mask == 0
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0],
            [1, 1, 0, 0, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1],  # a trailing padding row: finite, never read
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)
    assert mask.min().item() == torch.finfo(torch.float32).min


def _two_pass_states(embedder, builder, texts, kind, budget, side):
    batch = _on(builder(texts, task=kind, max_text_tokens=budget, padding_side=side), embedder.device)
    with torch.no_grad():
        hidden = embedder(**batch).last_hidden_state  # (batch, seq, hidden)
    rows = []
    for i in range(len(texts)):
        real = batch["attention_mask"][i].bool()
        rows.append(hidden[i][real])  # prefix + text + suffix, unpadded
    return rows


@DEVICES
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_one_pass_equals_two_passes(tiny_llara_dir, tokenizer, impl, side, device):
    # Given the pretraining model and the plain embedder sharing the same weights
    model = _load(LlaraForPretraining, tiny_llara_dir, impl, device=device)
    embedder = _load(LlaraModel, tiny_llara_dir, impl, device=device)
    collator = PretrainingCollator(tokenizer, model.config, max_length=190, padding_side=side)
    builder = LlaraInputBuilder(tokenizer, model.config)
    batch = _on(collator([{"input": t, "next": None} for t in TEXTS]), device)
    # When one pass runs text + summarize + predict with the dual mask and positions
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], segment_ids=batch["segment_ids"])
    summarize = _two_pass_states(embedder, builder, TEXTS, "summarize", collator.text_budget, side)
    predict = _two_pass_states(embedder, builder, TEXTS, "predict", collator.text_budget, side)
    # Then every state of text + suffix equals the separate pass with that suffix (fp32, 1e-5)
    for i in range(len(TEXTS)):
        seg = batch["segment_ids"][i]
        hidden = out.last_hidden_state[i]
        one_summarize = hidden[(seg == SEGMENT_TEXT) | (seg == SEGMENT_SUMMARIZE)]
        one_predict = hidden[(seg == SEGMENT_TEXT) | (seg == SEGMENT_PREDICT)]
        torch.testing.assert_close(one_summarize, summarize[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(one_predict, predict[i], atol=1e-5, rtol=0)
    # And the pooled embeddings are those of the embedder
    ref_s = embedder(**_on(builder(TEXTS, task="summarize", max_text_tokens=collator.text_budget), device)).pooler_output
    ref_p = embedder(**_on(builder(TEXTS, task="predict", max_text_tokens=collator.text_budget), device)).pooler_output
    torch.testing.assert_close(out.summarize_embeds, ref_s, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.predict_embeds, ref_p, atol=1e-5, rtol=0)
    # And the special logits are the LM head at the special positions
    lm = model.lm_head(out.last_hidden_state)
    pos = torch.isin(batch["input_ids"], torch.tensor(model.config.summarize_token_ids, device=device))
    torch.testing.assert_close(out.summarize_logits, lm[pos].view(len(TEXTS), 8, -1))


@DEVICES
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_bf16_left_padding_has_no_nan(tiny_llara_dir, tokenizer, impl, device):
    model = _load(LlaraForPretraining, tiny_llara_dir, impl, dtype=torch.bfloat16, device=device).train()
    collator = PretrainingCollator(tokenizer, model.config, max_length=190, padding_side="left")
    batch = _on(collator([{"input": t, "next": "next words"} for t in TEXTS]), device)
    out = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "segment_ids", "lm_labels")}, lm_chunk_size=16)
    total = out.summarize_logits.float().sum() + out.predict_logits.float().sum() + out.lm_loss
    total.backward()
    assert torch.isfinite(out.last_hidden_state.float()).all()
    assert all(torch.isfinite(p.grad.float()).all() for p in model.parameters() if p.grad is not None)


@DEVICES
@pytest.mark.parametrize("path", ["fused", "checkpoint"])
def test_chunked_lm_loss_matches_full_logits(tiny_llara_dir, tokenizer, path, monkeypatch, device):
    # Given labels over the text part only, and the fused path or the module-call fallback (ZeRO-3)
    if path == "checkpoint":
        monkeypatch.setattr(llara_impl, "_is_partitioned", lambda weight: True)
    model = _load(LlaraForPretraining, tiny_llara_dir, "sdpa", device=device).train()
    collator = PretrainingCollator(tokenizer, model.config, max_length=190)
    batch = _on(collator([{"input": t, "next": None} for t in TEXTS]), device)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "segment_ids", "lm_labels")}
    # When the loss runs in chunks of 7 tokens
    out = model(**inputs, lm_chunk_size=7)
    out.lm_loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    # Then it equals the cross-entropy of full (batch, seq, vocab) logits, value and gradients
    ref = model(**inputs, lm_chunk_size=10**6)
    full = model.lm_head(ref.last_hidden_state).float()
    expected = torch.nn.functional.cross_entropy(full.flatten(0, 1), batch["lm_labels"].flatten(), ignore_index=-100)
    expected.backward()
    torch.testing.assert_close(out.lm_loss, expected, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(grads[name], param.grad, atol=1e-6, rtol=1e-4)
    # And the labels cover text tokens only: next-token targets inside prefix + text
    labelled = batch["lm_labels"] != -100
    assert (batch["segment_ids"][labelled] == SEGMENT_TEXT).all()
    assert out.lm_tokens.item() == int(((batch["segment_ids"] == SEGMENT_TEXT).sum(-1) - 1).sum())


def test_rejects_flash_attention_and_bad_segments(tiny_llara_dir, tokenizer):
    model = _load(LlaraForPretraining, tiny_llara_dir, "sdpa")
    collator = PretrainingCollator(tokenizer, model.config, max_length=190)
    batch = collator([{"input": "text", "next": None}])
    bad = batch["segment_ids"].clone()
    bad[bad == SEGMENT_PREDICT] = SEGMENT_SUMMARIZE  # predict specials now sit in the wrong segment
    with pytest.raises(ValueError, match="predict special tokens"):
        model(input_ids=batch["input_ids"], segment_ids=bad)
    with pytest.raises(ValueError, match="attention_mask disagrees"):
        model(input_ids=batch["input_ids"], segment_ids=batch["segment_ids"], attention_mask=torch.zeros_like(bad))
    model.model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="4D mask"):
        model(input_ids=batch["input_ids"], segment_ids=batch["segment_ids"])
    assert SEGMENT_PAD == 0


@DEVICES
def test_fused_lm_loss_with_frozen_head_and_bf16(tiny_llara_dir, tokenizer, device):
    # Given a frozen LM head (LoRA) in bf16: only the states need gradients
    model = _load(LlaraForPretraining, tiny_llara_dir, "sdpa", dtype=torch.bfloat16, device=device).train()
    collator = PretrainingCollator(tokenizer, model.config, max_length=190)
    batch = _on(collator([{"input": t, "next": None} for t in TEXTS]), device)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "segment_ids", "lm_labels")}
    model.lm_head.weight.requires_grad_(False)  # tied: the embedding freezes with it
    states = model(**inputs).last_hidden_state.detach()
    keep = batch["lm_labels"] != -100
    # When the fused chunked loss and autograd on full logits see the same states
    fused_states = states[keep].clone().requires_grad_(True)
    fused = llara_impl._LinearCrossEntropySum.apply(fused_states, model.lm_head.weight, batch["lm_labels"][keep], 5)
    (fused * 0.5).backward()
    ref_states = states[keep].clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(model.lm_head(ref_states).float(), batch["lm_labels"][keep], reduction="sum")
    (ref * 0.5).backward()
    # Then values and gradients agree to bf16 precision, and the frozen weight gets none
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(fused_states.grad.float(), ref_states.grad.float(), rtol=2e-2, atol=1e-3)
    assert model.lm_head.weight.grad is None


@DEVICES
@pytest.mark.parametrize("chunk", [5, 10**6])
def test_fused_lm_loss_under_bf16_autocast_matches_autograd(tiny_llara_dir, tokenizer, device, chunk):
    # Given fp32 weights under bf16 autocast (what `--bf16` training does), chunks of 5 tokens or one chunk
    model = _load(LlaraForPretraining, tiny_llara_dir, "sdpa", device=device).train()
    collator = PretrainingCollator(tokenizer, model.config, max_length=190)
    batch = _on(collator([{"input": t, "next": None} for t in TEXTS]), device)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "segment_ids", "lm_labels")}
    keep = batch["lm_labels"] != -100
    states = model(**inputs).last_hidden_state.detach()[keep]
    weight = model.lm_head.weight
    results = []
    for fused in (True, False):
        s = states.clone().requires_grad_(True)
        weight.grad = None
        # When the fused loss and autograd on full logits both run under autocast
        with torch.autocast(device, dtype=torch.bfloat16):
            if fused:
                loss = llara_impl._LinearCrossEntropySum.apply(s, weight, batch["lm_labels"][keep], chunk)
            else:
                loss = torch.nn.functional.cross_entropy(model.lm_head(s).float(), batch["lm_labels"][keep], reduction="sum")
        (loss * 0.5).backward()
        results.append((loss.detach(), s.grad.clone(), weight.grad.clone()))
    (fused_loss, fused_states, fused_weight), (ref_loss, ref_states, ref_weight) = results
    # Then the logits were bf16 matmuls in both (same value to fp32 rounding), gradients agree to bf16
    # precision and keep the fp32 dtype of the weight
    torch.testing.assert_close(fused_loss, ref_loss, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(fused_states, ref_states, rtol=2e-2, atol=1e-3)
    # (autograd rounds the whole weight gradient, one bf16 matmul over all tokens, to bf16 once; the fused
    # loss sums per-chunk bf16 products in fp32: they agree to bf16 resolution of the largest entry)
    torch.testing.assert_close(fused_weight, ref_weight, rtol=2e-2, atol=2**-7 * ref_weight.abs().max().item())
    assert fused_weight.dtype == torch.float32
    # And they differ from the fp32 loss by bf16 rounding: the bf16 matmul really ran
    fp32 = llara_impl._LinearCrossEntropySum.apply(states, weight.detach(), batch["lm_labels"][keep], chunk)
    assert not torch.equal(fp32, fused_loss)


@pytest.mark.parametrize("chunk", [3, 4, 10**6])
def test_fused_lm_loss_of_improbable_targets_is_exact(chunk):
    # Given states and a head where some targets are far below the top logit (probability 1e-87 and 0 in
    # fp32: a rounded softmax cannot give their log), the rest ordinary; 10 tokens in chunks of 3, 4, or one
    torch.manual_seed(0)
    states = torch.randn(10, 16, dtype=torch.float64).float()
    weight = torch.randn(50, 16) * 0.3
    targets = torch.randint(0, 50, (10,))
    weight[49] = states[[1, 6]].sum(0) * 40  # logits 10s of units above the rest on rows 1 and 6
    targets[[1, 6]] = 0
    mine_states, mine_weight = states.clone().requires_grad_(), weight.clone().requires_grad_()
    ref_states, ref_weight = states.clone().requires_grad_(), weight.clone().requires_grad_()
    # When the fused loss and autograd on the full logits run
    loss = llara_impl._LinearCrossEntropySum.apply(mine_states, mine_weight, targets, chunk)
    loss.backward()
    ref_rows = torch.nn.functional.cross_entropy(ref_states @ ref_weight.T, targets, reduction="none")
    ref_rows.sum().backward()
    # Then the loss is finite and exact although some rows' target probabilities underflow
    assert ref_rows[[1, 6]].min() > 69  # the fallback path really ran
    torch.testing.assert_close(loss, ref_rows.sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(mine_states.grad, ref_states.grad)
    torch.testing.assert_close(mine_weight.grad, ref_weight.grad)


def test_fused_lm_loss_scales_in_place_once():
    # Given the fused loss scaled by 0.5 (its saved gradients are scaled in place, no vocabulary-sized copy)
    torch.manual_seed(0)
    states, weight = torch.randn(6, 8, requires_grad=True), torch.randn(20, 8, requires_grad=True)
    targets = torch.randint(0, 20, (6,))
    loss = 0.5 * llara_impl._LinearCrossEntropySum.apply(states, weight, targets, 4)
    ref_states, ref_weight = states.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    (0.5 * torch.nn.functional.cross_entropy(ref_states @ ref_weight.T, targets, reduction="sum")).backward()
    # When it backpropagates once, then a second time through the retained graph
    loss.backward(retain_graph=True)
    # Then the first gives autograd's gradients and the second is refused rather than scaled twice
    torch.testing.assert_close(states.grad, ref_states.grad)
    torch.testing.assert_close(weight.grad, ref_weight.grad)
    with pytest.raises(RuntimeError, match="one backward pass per forward"):
        loss.backward()


def test_default_lm_chunk_follows_the_vocabulary(tiny_llara_dir, tokenizer, monkeypatch):
    # Given the default chunk size: 64 MiB of fp32 logits, whatever the vocabulary
    assert llara_impl.default_lm_chunk_size(49168) == 341
    assert llara_impl.default_lm_chunk_size(32000) == 524
    assert llara_impl.default_lm_chunk_size(10**9) == 16
    # When the model runs without an explicit lm_chunk_size (a tiny vocabulary of 276 ids)
    seen = []
    real = llara_impl._LinearCrossEntropySum.apply
    monkeypatch.setattr(llara_impl._LinearCrossEntropySum, "apply", lambda *a: seen.append(a[3]) or real(*a))
    monkeypatch.setattr(llara_impl, "LM_CHUNK_BYTES", 4 * 276 * 20)  # 20 tokens per chunk at this vocabulary
    model = _load(LlaraForPretraining, tiny_llara_dir, "sdpa")
    collator = PretrainingCollator(tokenizer, model.config, max_length=190)
    batch = collator([{"input": t, "next": None} for t in TEXTS])
    model(**{k: batch[k] for k in ("input_ids", "attention_mask", "segment_ids", "lm_labels")})
    # Then the chunk is sized from the model's vocabulary and the module's byte budget
    assert model.config.get_text_config().vocab_size == 276 and seen == [20]


def test_saved_folder_loads_with_auto_model_for_pretraining_in_a_fresh_process(tiny_llara_dir, tokenizer, tmp_path):
    import json

    from conftest import run_isolated

    # Given the pretraining model's outputs on one batch through the project's code
    model = _load(LlaraForPretraining, tiny_llara_dir, "sdpa")
    batch = PretrainingCollator(tokenizer, model.config, max_length=190)([{"input": t, "next": None} for t in TEXTS])
    inputs = {k: batch[k].tolist() for k in ("input_ids", "attention_mask", "segment_ids", "lm_labels")}
    with torch.no_grad():
        expected = model(**{k: torch.tensor(v) for k, v in inputs.items()})
    # When a fresh process without the project loads the folder with AutoModelForPreTraining (and AutoModel)
    code = f"""
import json, torch
from transformers import AutoModel, AutoModelForPreTraining
folder = {str(tiny_llara_dir)!r}
model = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True, attn_implementation="sdpa").eval()
embedder = AutoModel.from_pretrained(folder, trust_remote_code=True)
inputs = {{k: torch.tensor(v) for k, v in json.loads({json.dumps(inputs)!r}).items()}}
with torch.no_grad():
    out = model(**inputs)
print(json.dumps({{"class": type(model).__module__ + "." + type(model).__name__, "embedder": type(embedder).__name__,
                   "tied": model.lm_head.weight is model.model.embed_tokens.weight,
                   "summarize": out.summarize_embeds.tolist(), "predict_logits": out.predict_logits.tolist(),
                   "lm_loss": out.lm_loss.item()}}))
"""
    result = run_isolated(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    # Then the folder's own pretraining_llara.py builds the model and it computes what the project's code computes
    assert got["class"].startswith("transformers_modules.") and got["class"].endswith(".pretraining_llara.LlaraForPretraining")
    assert got["embedder"] == "LlaraModel" and got["tied"] is False
    torch.testing.assert_close(torch.tensor(got["summarize"]), expected.summarize_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(got["predict_logits"]), expected.predict_logits, atol=1e-4, rtol=1e-5)
    assert got["lm_loss"] == pytest.approx(expected.lm_loss.item(), rel=1e-5)
