"""LoRA for LLaRA: what is trainable, training moves it, merge gives a full model with the same embeddings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import save_tiny_base

from trainers.lora import DEFAULT_TARGET_MODULES, apply_lora, merge_lora

TEXTS = ["debian kernel image", "a font for the console", "", "python library for tests <s1>"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=True)


def _perturb(peft_model, scale=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=gen) * scale)


def _embeddings(model, builder, task):
    from conftest import encode

    model.eval()
    return encode(model, builder, TEXTS, task=task, batch_size=2)


def test_only_adapters_and_special_rows_are_trainable(tiny_llara_dir):
    from modeling_llara import LlaraModel

    model = apply_lora(LlaraModel.from_pretrained(tiny_llara_dir), r=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or ("trainable_tokens_delta" in n) for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if "lora_" in n}
    assert adapted == set(DEFAULT_TARGET_MODULES)
    wrapper = model.get_input_embeddings()
    special = sorted(model.config.summarize_token_ids + model.config.predict_token_ids)
    assert sorted(wrapper.token_adapter.token_indices["default"]) == special


def test_bad_lora_arguments(tiny_llara_dir):
    from modeling_llara import LlaraModel

    model = LlaraModel.from_pretrained(tiny_llara_dir)
    with pytest.raises(ValueError, match="do not exist"):
        apply_lora(model, target_modules=("nope_proj",))
    with pytest.raises(ValueError, match="outside the embedding"):
        apply_lora(model, special_token_ids=[10_000])


def test_training_steps_change_every_trainable_parameter_and_only_special_rows(tiny_llara_dir):
    from modeling_llara import LlaraModel
    from trainers.finetuning.loss import contrastive_loss
    from trainers.finetuning.trainer import LlaraDataCollator, build_sentence_model

    # Given a LoRA model and a few contrastive steps through the stage-2 loss
    torch.manual_seed(0)
    model = apply_lora(LlaraModel.from_pretrained(tiny_llara_dir), r=4, dropout=0.0)
    st = build_sentence_model(model, _tokenizer(tiny_llara_dir), tiny_llara_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    embed_before = model.get_input_embeddings()(torch.arange(model.config.get_text_config().vocab_size)).detach()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rows = [{"anchor": f"query {i}", "positive": f"answer {i}", "negative_1": f"other {i}"} for i in range(3)]
    batch = LlaraDataCollator(preprocess_fn=st.preprocess, max_length={"query": 72, "document": 88})(rows)
    features = [{k[len(c) + 1:]: v for k, v in batch.items() if k.startswith(c + "_")} for c in rows[0]]
    loss_fn = contrastive_loss(st, temperature=0.05)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss_fn(features, None).backward()
        optimizer.step()
    # Then every trainable tensor moved, and of the embedding matrix only the 16 special rows did
    for name, value in before.items():
        assert not torch.equal(value, dict(model.named_parameters())[name].detach()), name
    embed_after = model.get_input_embeddings()(torch.arange(embed_before.shape[0])).detach()
    changed = (embed_after != embed_before).any(-1).nonzero().flatten().tolist()
    assert changed == sorted(model.config.summarize_token_ids + model.config.predict_token_ids)


_LOAD_IN_FRESH_PROCESS = """
import json, sys, torch
from transformers import AutoModel, AutoTokenizer
from importlib import import_module
texts = json.loads(sys.argv[1])
results = {}
for path in sys.argv[2:]:
    model = AutoModel.from_pretrained(path, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    builder = import_module(type(model).__module__).LlaraInputBuilder(tok, model.config)
    out = {}
    for task in ("query", "document"):
        with torch.inference_mode():  # batches of 2, as the in-process reference embeds them
            out[task] = [row for start in range(0, len(texts), 2)
                         for row in model(**builder(texts[start:start + 2], task=task)).pooler_output.tolist()]
    out["class"] = type(model).__name__
    out["peft"] = "peft" in sys.modules
    results[path] = out
print(json.dumps(results))
"""


def _fresh_process_embeddings(*folders) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, json.dumps(TEXTS), *map(str, folders)],
        env=env, cwd="/", capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_merged_model_loads_with_automodel_and_matches_base_plus_adapter(tiny_llara_dir, tmp_path):
    from modeling_llara import LlaraInputBuilder, LlaraModel
    from trainers.convert import save_llara
    from llara.scripts.merge import main as merge_main

    # Given a base model with a (perturbed, i.e. trained-looking) adapter saved by peft
    tokenizer = _tokenizer(tiny_llara_dir)
    peft_model = apply_lora(LlaraModel.from_pretrained(tiny_llara_dir), r=4)
    _perturb(peft_model)
    builder = LlaraInputBuilder(tokenizer, peft_model.config)
    expected = {task: _embeddings(peft_model, builder, task) for task in ("query", "document")}
    peft_model.save_pretrained(tmp_path / "adapter")
    # When it is merged in memory and saved, and merged from disk by `llara merge`
    merged = merge_lora(peft_model)
    assert type(merged) is LlaraModel
    save_llara(merged, tokenizer, tmp_path / "merged", overwrite=True)
    assert merge_main(["--base", str(tiny_llara_dir), "--adapter", str(tmp_path / "adapter"),
                       "--out", str(tmp_path / "merged-cli")]) == 0
    # Then both load through AutoModel(trust_remote_code=True) in a fresh process, without peft,
    # and embed like base + adapter within 1e-5
    results = _fresh_process_embeddings(tmp_path / "merged", tmp_path / "merged-cli")
    for folder in ("merged", "merged-cli"):
        got = results[str(tmp_path / folder)]
        assert got["class"] == "LlaraModel" and not got["peft"]
        for task in ("query", "document"):
            assert torch.allclose(torch.tensor(got[task]), expected[task], atol=1e-5), (folder, task)
    # and the merge did change the embeddings (the adapter was not a no-op)
    base = _embeddings(LlaraModel.from_pretrained(tiny_llara_dir), builder, "query")
    assert not torch.allclose(base, expected["query"], atol=1e-3)


def test_merge_with_tied_lm_head_keeps_the_tie(tmp_path):
    from modeling_llara import LlaraForPretraining
    from trainers.convert import convert

    # Given a tiny backbone with tied input/output embeddings (like SmolLM2)
    base = save_tiny_base(tmp_path / "base", tie_word_embeddings=True)
    folder = convert(str(base), tmp_path / "llara")
    model = LlaraForPretraining.from_pretrained(folder)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    peft_model = apply_lora(model, r=4)
    _perturb(peft_model)
    ids = torch.tensor([model.config.summarize_token_ids + [5, 6, 7]])
    peft_model.eval()
    with torch.no_grad():
        hidden = peft_model.base_model.model.model(input_ids=ids).last_hidden_state
        logits = peft_model.base_model.model.lm_head(hidden)
    # When merged
    merged = merge_lora(peft_model)
    # Then the LM head is still the (updated) embedding matrix and the outputs match
    assert merged.lm_head.weight is merged.model.embed_tokens.weight
    with torch.no_grad():
        hidden2 = merged.model(input_ids=ids).last_hidden_state
    assert torch.allclose(hidden, hidden2, atol=1e-5)
    assert torch.allclose(logits, merged.lm_head(hidden2), atol=1e-4)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_merge_and_save_writes_what_the_former_merge_then_save_wrote(tiny_llara_dir, tmp_path):
    from modeling_llara import LlaraInputBuilder, LlaraModel
    from trainers.convert import save_llara
    from trainers.lora import load_lora, merge_and_save

    # Given a trained-looking adapter saved by peft, the embeddings of base + adapter, and the folder the former
    # code path wrote (load_lora -> merge_lora -> save_llara)
    tokenizer = _tokenizer(tiny_llara_dir)
    peft_model = apply_lora(LlaraModel.from_pretrained(tiny_llara_dir), r=4)
    _perturb(peft_model, seed=1)
    builder = LlaraInputBuilder(tokenizer, peft_model.config)
    expected = {task: _embeddings(peft_model, builder, task) for task in ("query", "document")}
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    reference = save_llara(merge_lora(load_lora(LlaraModel.from_pretrained(tiny_llara_dir), adapter)).eval(),
                           tokenizer, tmp_path / "reference", auto_dtype="auto")
    # When the one merge function merges the adapter folder over its base, and the live peft model
    from_folder = merge_and_save(adapter, tmp_path / "from-folder", base=tiny_llara_dir, auto_dtype="auto")
    live = merge_and_save(peft_model, tmp_path / "live", tokenizer, auto_dtype="auto")
    # Then all three folders hold the same files and the same weights, bit for bit
    ref_weights = _weights(reference)
    for folder in (from_folder, live):
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in reference.iterdir())
        got = _weights(folder)
        assert got.keys() == ref_weights.keys() and not any("lora" in key for key in got)
        assert all(torch.equal(got[key], ref_weights[key]) for key in got), folder
        assert json.loads((folder / "config.json").read_text())["auto_dtype"] == "auto"
    # and the merged model embeds like base + adapter
    merged = LlaraModel.from_pretrained(str(from_folder))
    for task in ("query", "document"):
        torch.testing.assert_close(_embeddings(merged, builder, task), expected[task], atol=1e-5, rtol=1e-4)


def test_merge_and_save_keeps_the_lm_head_when_asked_and_passes_plain_models_through(tiny_llara_dir, tmp_path):
    from modeling_llara import LlaraForPretraining, LlaraModel
    from trainers.lora import merge_and_save

    # Given an adapter trained on the pretraining class (with its LM head)
    peft_model = apply_lora(LlaraForPretraining.from_pretrained(tiny_llara_dir), r=4)
    _perturb(peft_model, seed=2)
    peft_model.save_pretrained(tmp_path / "adapter")
    # When it is merged with and without --with-lm-head, and a plain (full-parameter) model is saved through it
    head = merge_and_save(tmp_path / "adapter", tmp_path / "head", base=tiny_llara_dir, with_lm_head=True)
    embedder = merge_and_save(tmp_path / "adapter", tmp_path / "embedder", base=tiny_llara_dir)
    plain = merge_and_save(LlaraModel.from_pretrained(tiny_llara_dir), tmp_path / "plain", _tokenizer(tiny_llara_dir))
    # Then the head folder is a LlaraForPretraining, the embedder folder a LlaraModel with the same backbone,
    # and the plain model's weights are written unchanged
    assert json.loads((head / "config.json").read_text())["architectures"] == ["LlaraForPretraining"]
    assert json.loads((embedder / "config.json").read_text())["architectures"] == ["LlaraModel"]
    with_head, without = _weights(head), _weights(embedder)
    assert all(torch.equal(with_head[key], value) for key, value in without.items())
    base = _weights(tiny_llara_dir)
    assert all(torch.equal(base[key], value) for key, value in _weights(plain).items())


def test_merge_and_save_refuses_bad_input_before_loading(tiny_llara_dir, tmp_path, monkeypatch):
    import trainers.lora as lora
    from modeling_llara import LlaraModel

    # Given a loader that fails loudly: nothing below may reach it
    monkeypatch.setattr(lora, "load_lora", lambda *a, **k: pytest.fail("loaded weights before refusing"))
    (tmp_path / "exists").mkdir()
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    cases = [
        (FileNotFoundError, "holds no adapter_config.json", (tmp_path, tmp_path / "out"), {"base": tiny_llara_dir}),
        (FileExistsError, "overwrite", (tmp_path / "adapter", tmp_path / "exists"), {"base": tiny_llara_dir}),
        (ValueError, "needs its base", (tmp_path / "adapter", tmp_path / "out"), {}),
        (ValueError, "needs its tokenizer", (LlaraModel.from_pretrained(tiny_llara_dir), tmp_path / "out"), {}),
    ]
    for error, message, args, kwargs in cases:
        with pytest.raises(error, match=message):
            lora.merge_and_save(*args, **kwargs)
    assert not (tmp_path / "out").exists()


def test_both_stages_take_the_same_lora_options(tmp_path):
    from dataclasses import fields

    from llara.scripts.finetune import make_parser as finetune_parser
    from llara.scripts.pretrain import make_parser as pretrain_parser
    from trainers.finetuning.trainer import LlaraFinetuneConfig
    from trainers.lora import DEFAULT_LORA_ALPHA, DEFAULT_LORA_DROPOUT, DEFAULT_LORA_R, LoraArguments
    from trainers.pretraining.run import PretrainingModelArguments

    # Given the LoRA flags both commands document
    lora_fields = {f.name for f in fields(LoraArguments)}
    assert lora_fields == {"use_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "train_special_tokens"}
    flags = ["--use_lora", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0",
             "--lora_target_modules", "q_proj", "v_proj", "--output_dir", str(tmp_path)]
    # When each command parses them
    finetune_args = finetune_parser().parse_args_and_config([*flags, "--report_to", "none"])[1]
    pretrain_args = pretrain_parser().parse_args_and_config([*flags, "--train_files", "x.txt", "--report_to", "none"])[0]
    # Then both hold the same options, for apply_lora and for the run summary
    expected = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "train_special_tokens": True}
    assert finetune_args.lora_options() == pretrain_args.lora_options() == expected
    assert pretrain_args.lora_summary() == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    # and the defaults are the released recipe's, with LoRA on for fine-tuning and off for (released) pretraining
    finetune_default = LlaraFinetuneConfig(output_dir=str(tmp_path), report_to="none")
    pretrain_default = PretrainingModelArguments()
    for args in (finetune_default, pretrain_default):
        assert (args.lora_r, args.lora_alpha, args.lora_dropout) == (DEFAULT_LORA_R, DEFAULT_LORA_ALPHA, DEFAULT_LORA_DROPOUT)
        assert args.lora_target_modules == list(DEFAULT_TARGET_MODULES) and args.train_special_tokens
    assert finetune_default.use_lora and not pretrain_default.use_lora and pretrain_default.lora_summary() is None


# ---- CPU dropout masks ---------------------------------------------------------------------------------
def test_fast_dropout_masks_have_the_dropout_distribution():
    from trainers.lora import dropout_keep_mask

    n, p = 1 << 22, 0.1
    keep = dropout_keep_mask((n,), p, generator=torch.Generator().manual_seed(0))
    assert keep.dtype == torch.bool and keep.shape == (n,)
    drop_p = round(p * 65536) / 65536
    sigma = (drop_p * (1 - drop_p) / n) ** 0.5
    assert abs((~keep).float().mean().item() - drop_p) < 5 * sigma
    # the four 16-bit lanes of one 64-bit word are each Bernoulli(p) and independent of each other
    lanes = (~keep).view(-1, 4).float()
    lane_sigma = (drop_p * (1 - drop_p) / lanes.shape[0]) ** 0.5
    for lane in range(4):
        assert abs(lanes[:, lane].mean().item() - drop_p) < 5 * lane_sigma
    both = (lanes[:, 0] * lanes[:, 1]).mean().item()
    assert abs(both - drop_p**2) < 5 * (drop_p**2 * (1 - drop_p**2) / lanes.shape[0]) ** 0.5
    # consecutive draws differ; the same seed gives the same mask; odd sizes are fine
    again = dropout_keep_mask((n,), p, generator=torch.Generator().manual_seed(0))
    assert torch.equal(keep, again)
    other = dropout_keep_mask((n,), p, generator=torch.Generator().manual_seed(1))
    assert (keep != other).float().mean().item() > 0.1
    assert dropout_keep_mask((3, 5, 7), 0.5).shape == (3, 5, 7)
    assert dropout_keep_mask((1000,), 0.0).all()
    with pytest.raises(ValueError, match="dropout probability"):
        dropout_keep_mask((4,), 1.0)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_module_computes_torch_dropout_for_its_mask(dtype, p):
    from trainers.lora import LoraDropout, dropout_keep_mask

    x = torch.randn(6, 10, 16).to(dtype).requires_grad_(True)
    layer = LoraDropout(p).train()
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    keep = dropout_keep_mask(x.shape, p)
    noise = keep.to(dtype).div_(1 - p)  # torch's dropout: input * (mask / (1 - p)) in the input's dtype
    assert out.dtype == dtype
    assert torch.equal(out, x.detach() * noise)
    out.sum().backward()
    assert torch.equal(x.grad, noise)
    assert torch.equal(layer.eval()(x), x)  # eval: identity, as nn.Dropout
    assert isinstance(layer, torch.nn.Dropout) and layer.p == p


def test_apply_lora_uses_the_fast_dropout_and_seeds_it(tiny_llara_dir):
    from modeling_llara import LlaraInputBuilder, LlaraModel
    from trainers.lora import LoraDropout

    model = apply_lora(LlaraModel.from_pretrained(tiny_llara_dir), r=4, alpha=8, dropout=0.1)
    plain = [d for m in model.modules() if hasattr(m, "lora_A") for d in m.lora_dropout.values() if type(d) is torch.nn.Dropout]
    assert not plain  # no torch dropout left behind in an adapted layer
    fast = [m for m in model.modules() if isinstance(m, LoraDropout)]
    adapted = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert len(fast) == len(adapted) > 0
    _perturb(model)  # lora_B starts at zero: make the adapters (and so the dropout) matter
    builder = LlaraInputBuilder(_tokenizer(tiny_llara_dir), model.config)
    batch = builder(["debian kernel image for arm64", "a console font"], task="document")
    model.train()
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(model(**batch).pooler_output.detach())
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    no_dropout = apply_lora(LlaraModel.from_pretrained(tiny_llara_dir), r=4, alpha=8, dropout=0.0)
    assert not any(isinstance(m, LoraDropout) for m in no_dropout.modules())


def test_fast_dropout_masks_replay_under_activation_checkpointing(tiny_llara_dir):
    # Checkpointed blocks rerun their forward in backward: torch restores the CPU generator for the rerun, so the
    # masks must come from that generator for the gradients to equal the plain run's.
    from modeling_llara import LlaraInputBuilder, LlaraModel

    builder = LlaraInputBuilder(_tokenizer(tiny_llara_dir), LlaraModel.from_pretrained(tiny_llara_dir).config)
    batch = builder(["debian kernel image for arm64", "a console font", "python test runner"], task="document")
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = apply_lora(LlaraModel.from_pretrained(tiny_llara_dir), r=4, alpha=8, dropout=0.3)
        _perturb(model)
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        direction = torch.randn(model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(2))
        torch.manual_seed(1)
        (model(**batch).pooler_output @ direction).sum().backward()  # not a norm: pooled vectors are unit length
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(g.abs().max() > 0 for g in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def _lora_pair(tiny_llara_dir, dropout=0.1):
    """Two equal LoRA models (perturbed alike): one with the bf16 cast cache, one with plain autocast casts."""
    from modeling_llara import LlaraModel
    from trainers.lora import drop_bf16_cast_cache

    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = apply_lora(LlaraModel.from_pretrained(tiny_llara_dir), r=4, alpha=8, dropout=dropout)
        _perturb(model)
        models.append(model.train())
    drop_bf16_cast_cache(models[1])
    return models


def _bf16_step(model, batch, checkpointing=False):
    if checkpointing:
        model.activation_checkpointing_enable()
    direction = torch.randn(model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch).pooler_output
    (out @ direction).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


def _cached_weights(model):
    return [m for m in model.modules() if "_llara_bf16_weight" in m.__dict__]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_bf16_cast_cache_gives_bit_identical_autocast_steps(tiny_llara_dir, checkpointing):
    from modeling_llara import LlaraInputBuilder

    cached, plain = _lora_pair(tiny_llara_dir)
    builder = LlaraInputBuilder(_tokenizer(tiny_llara_dir), cached.config)
    batch = builder(["debian kernel image for arm64", "a console font", "python test runner"], task="document")
    out, grads = _bf16_step(cached, batch, checkpointing)
    ref_out, ref_grads = _bf16_step(plain, batch, checkpointing)
    adapted = [m for m in cached.modules() if hasattr(m, "lora_A")]
    assert len(_cached_weights(cached)) == len(adapted) > 0  # the cache was used ...
    assert not _cached_weights(plain)  # ... and the reference ran autocast's own casts
    assert out.dtype == torch.float32 and torch.equal(out, ref_out)
    assert grads.keys() == ref_grads.keys() and all(g.abs().max() > 0 for g in grads.values())
    for name in grads:
        assert torch.equal(grads[name], ref_grads[name]), name
    # a second step reuses the cached weights and still matches
    assert torch.equal(_bf16_step(cached, batch)[0], _bf16_step(plain, batch)[0])


def test_bf16_cast_cache_follows_weight_changes_and_stays_out_of_fp32_and_merges(tiny_llara_dir):
    from modeling_llara import LlaraInputBuilder

    cached, plain = _lora_pair(tiny_llara_dir, dropout=0.0)
    builder = LlaraInputBuilder(_tokenizer(tiny_llara_dir), cached.config)
    batch = builder(["debian kernel image for arm64", "a console font"], task="document")
    cached.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(cached(**batch).pooler_output, plain(**batch).pooler_output)  # fp32: nn.Linear's path
        assert not _cached_weights(cached)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            before = cached(**batch).pooler_output
            assert torch.equal(before, plain(**batch).pooler_output)
            for model in (cached, plain):  # an in-place change of a frozen base weight
                model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.mul_(1.5)
            after = cached(**batch).pooler_output
            assert not torch.equal(after, before) and torch.equal(after, plain(**batch).pooler_output)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(cached(**batch).pooler_output, plain(**batch).pooler_output)
    merged = merge_lora(cached)
    assert not _cached_weights(merged)
    assert not any(isinstance(m.__dict__.get("forward"), type(merged.forward)) for m in merged.modules())
