"""Compute precision: bf16 detection, ``resolve_dtype``, the sentence-transformers default, fp32 pooling."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

import modeling_llara
import modeling_llara.modeling_llara as modeling
import trainers.cpu_attention as cpu_attention
from conftest import encode
from modeling_llara import LlaraInputBuilder, LlaraModel
from modeling_llara.modeling_llara import cpu_supports_fast_bf16, resolve_dtype
from modeling_llara.sentence_llara import LlaraSentenceEncoder
from trainers.cpu_attention import cpu_bf16_training_attention

TEXTS = [
    "nginx is a small, fast HTTP server and reverse proxy. " * 4,
    "pylint analyses Python source code looking for bugs and signs of poor quality.",
    "x",
    "GNU Image Manipulation Program: an advanced picture editor with layers and plug-ins",
]
AMX_FLAGS = "fpu vme sse sse2 avx2 avx512f avx512bw amx_bf16 amx_tile amx_int8"
AVX512_BF16_FLAGS = "fpu vme sse sse2 avx2 avx512f avx512_bf16 avx512_vnni"
PLAIN_FLAGS = "fpu vme sse sse2 avx2 avx512f avx512bw avx512_vnni"


def _cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test cpu\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    return str(path)


@pytest.mark.parametrize(("flags", "fast"), [(AMX_FLAGS, True), (AVX512_BF16_FLAGS, True), (PLAIN_FLAGS, False)])
def test_cpu_bf16_detection_reads_the_flags(tmp_path, flags, fast):
    assert cpu_supports_fast_bf16(_cpuinfo(tmp_path, flags)) is fast


def test_cpu_bf16_detection_without_cpuinfo_says_no(tmp_path):
    assert cpu_supports_fast_bf16(str(tmp_path / "missing")) is False
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_supports_fast_bf16(str(tmp_path / "noflags")) is False


@pytest.mark.parametrize(("flags", "named", "kind"),
                         [(AMX_FLAGS + " avx512_bf16", ["amx_bf16", "avx512_bf16"], "AMX-BF16"),
                          (AVX512_BF16_FLAGS, ["avx512_bf16"], "AVX512-BF16"), (PLAIN_FLAGS, [], "no native bf16")])
def test_run_records_name_the_cpu_and_its_bf16_flags(tmp_path, flags, named, kind):
    from trainers.run_records import bf16_kind, cpu_bf16_flags, cpu_model

    # bf16 kernels (and so bf16 results) differ between CPUs with and without AMX: results say which ran them
    path = _cpuinfo(tmp_path, flags)
    assert cpu_model(path) == "test cpu"
    assert cpu_bf16_flags(path) == named
    assert bf16_kind(cpu_bf16_flags(path)) == kind
    assert bf16_kind(None) == "unknown"  # a run recorded before runs named their flags


@pytest.fixture
def no_dtype_env(monkeypatch):
    monkeypatch.delenv(modeling.DTYPE_ENV, raising=False)


def _fake_cpu(monkeypatch, tmp_path, flags):
    path = _cpuinfo(tmp_path, flags)
    real = modeling.cpu_supports_fast_bf16
    monkeypatch.setattr(modeling, "cpu_supports_fast_bf16", lambda cpuinfo=path: real(cpuinfo))


def test_auto_dtype_follows_the_cpu_flags(tmp_path, monkeypatch, no_dtype_env, caplog):
    _fake_cpu(monkeypatch, tmp_path, AMX_FLAGS)
    monkeypatch.setattr(modeling, "_logged_choices", set())
    with caplog.at_level("INFO", logger=modeling.__name__):
        assert resolve_dtype("auto", "cpu") == torch.bfloat16
        assert resolve_dtype(None, torch.device("cpu")) == torch.bfloat16
    assert sum("compute dtype on cpu: bfloat16" in r.getMessage() for r in caplog.records) == 1  # logged once
    _fake_cpu(monkeypatch, tmp_path, PLAIN_FLAGS)
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "meta") == torch.float32  # no detection for other devices: fp32


def test_auto_dtype_on_cuda_asks_torch(monkeypatch, no_dtype_env):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") == torch.float32


def test_explicit_dtypes_win_over_detection_and_env(tmp_path, monkeypatch):
    _fake_cpu(monkeypatch, tmp_path, AMX_FLAGS)
    monkeypatch.setenv(modeling.DTYPE_ENV, "bfloat16")
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("fp32") == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype(torch.float32) == torch.float32
    assert resolve_dtype("torch.bfloat16") == torch.bfloat16
    monkeypatch.setenv(modeling.DTYPE_ENV, "float32")
    assert resolve_dtype("auto", "cpu") == torch.float32  # the env var overrides detection


def test_bad_dtypes_are_named(monkeypatch):
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")
    with pytest.raises(ValueError, match="floating-point"):
        resolve_dtype(torch.int64)
    monkeypatch.setenv(modeling.DTYPE_ENV, "half")
    with pytest.raises(ValueError, match="LLARA_DTYPE='half'"):
        resolve_dtype("auto")


def test_bf16_pooling_is_fp32_and_close_to_fp32(tiny_llara_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llara_dir)
    full = LlaraModel.from_pretrained(tiny_llara_dir).eval()
    half = LlaraModel.from_pretrained(tiny_llara_dir, dtype=torch.bfloat16).eval()
    builder = LlaraInputBuilder(tokenizer, full.config)
    batch = builder(TEXTS, task="document")
    with torch.no_grad():
        out = half(**batch).pooler_output
    assert half.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-6, rtol=0)
    cosine = torch.nn.functional.cosine_similarity(encode(half, builder, TEXTS), encode(full, builder, TEXTS))
    assert cosine.min() >= 0.999, cosine


def test_right_padding_runs_the_backbone_without_a_mask(tiny_llara_dir, monkeypatch):
    model = LlaraModel.from_pretrained(tiny_llara_dir).eval()
    builder = LlaraInputBuilder(AutoTokenizer.from_pretrained(tiny_llara_dir), model.config)
    seen = []
    real_forward = model.model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("attention_mask"))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model.model, "forward", spy)
    with torch.no_grad():
        right = model(**builder(TEXTS, task="query", padding_side="right")).pooler_output
        left = model(**builder(TEXTS, task="query", padding_side="left")).pooler_output
    assert seen[0] is None and seen[1] is not None  # left padding keeps its mask
    torch.testing.assert_close(right, left, atol=1e-5, rtol=0)


def test_sentence_transformers_default_dtype_is_the_resolved_one(tiny_llara_dir, monkeypatch):
    # The folder's own code (trust_remote_code) resolves "auto"; the env var stands in for the CPU flags.
    monkeypatch.setenv(modeling.DTYPE_ENV, "bfloat16")
    st = SentenceTransformer(str(tiny_llara_dir), trust_remote_code=True, device="cpu")
    docs = st.encode_document(TEXTS, convert_to_tensor=True)
    assert st[0].auto_model.dtype == torch.bfloat16
    assert docs.dtype == torch.float32
    monkeypatch.setenv(modeling.DTYPE_ENV, "float32")
    reference = SentenceTransformer(str(tiny_llara_dir), trust_remote_code=True, device="cpu")
    expected = reference.encode_document(TEXTS, convert_to_tensor=True)
    assert reference[0].auto_model.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(docs, expected).min() >= 0.999


@pytest.mark.parametrize("key", ["torch_dtype", "dtype"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sentence_transformers_explicit_dtype_is_honoured(tiny_llara_dir, monkeypatch, key, dtype):
    # The automatic choice would be the other dtype: the explicit one must win.
    monkeypatch.setenv(modeling.DTYPE_ENV, "float32" if dtype == torch.bfloat16 else "bfloat16")
    st = SentenceTransformer(str(tiny_llara_dir), trust_remote_code=True, device="cpu", model_kwargs={key: dtype})
    st.encode_query(TEXTS)
    assert st[0].auto_model.dtype == dtype


def test_auto_dtype_uses_the_cpu_flags_inside_the_module(tiny_llara_dir, tmp_path, monkeypatch, no_dtype_env):
    for flags, expected in ((AMX_FLAGS, torch.bfloat16), (PLAIN_FLAGS, torch.float32)):
        _fake_cpu(monkeypatch, tmp_path, flags)
        module = LlaraSentenceEncoder(str(tiny_llara_dir))
        assert module.auto_model.dtype == torch.float32  # loaded as stored
        features = module.preprocess(TEXTS[:2], task="document")
        with torch.inference_mode():
            out = module(features)["sentence_embedding"]
        assert module.auto_model.dtype == expected
        assert out.dtype == torch.float32


def test_a_config_pinned_to_fp32_keeps_auto_in_fp32(tiny_llara_dir, tmp_path, monkeypatch, no_dtype_env):
    import json
    import shutil

    from modeling_llara import LlaraConfig
    from trainers.retrieval.encoding import load_encoder

    _fake_cpu(monkeypatch, tmp_path, AMX_FLAGS)
    pinned = tmp_path / "stage1"
    shutil.copytree(tiny_llara_dir, pinned)
    config = json.loads((pinned / "config.json").read_text())
    (pinned / "config.json").write_text(json.dumps({**config, "auto_dtype": "float32"}))
    assert LlaraConfig.from_pretrained(tiny_llara_dir).auto_dtype == "auto"
    pinned_config = LlaraConfig.from_pretrained(pinned)
    # resolve_dtype: the config decides `auto`; an explicit dtype and $LLARA_DTYPE still win
    assert resolve_dtype("auto", "cpu", config=pinned_config) == torch.float32
    assert resolve_dtype("auto", "cpu", config={"auto_dtype": "float32"}) == torch.float32
    assert resolve_dtype("auto", "cpu", config=LlaraConfig.from_pretrained(tiny_llara_dir)) == torch.bfloat16
    assert resolve_dtype("bfloat16", "cpu", config=pinned_config) == torch.bfloat16
    monkeypatch.setenv(modeling.DTYPE_ENV, "bfloat16")
    assert resolve_dtype("auto", "cpu", config=pinned_config) == torch.bfloat16
    monkeypatch.delenv(modeling.DTYPE_ENV)
    # the sentence-transformers module and the CLI loader follow it
    for folder, expected in ((pinned, torch.float32), (tiny_llara_dir, torch.bfloat16)):
        module = LlaraSentenceEncoder(str(folder))
        with torch.inference_mode():
            module(module.preprocess(TEXTS[:2], task="document"))
        assert module.auto_model.dtype == expected
        assert load_encoder(str(folder), device="cpu")[0].auto_model.dtype == expected
    with pytest.raises(ValueError, match="auto_dtype must be one of"):
        LlaraConfig(auto_dtype="float16")


def test_training_never_switches_the_dtype(tiny_llara_dir, monkeypatch):
    monkeypatch.setenv(modeling.DTYPE_ENV, "bfloat16")
    module = LlaraSentenceEncoder(str(tiny_llara_dir))
    out = module(module.preprocess(TEXTS[:2], task="query"))["sentence_embedding"]
    out.sum().backward()
    assert module.auto_model.dtype == torch.float32
    assert np.isfinite(next(module.auto_model.parameters()).grad.numpy()).all()


def _training_model(tiny_llara_dir, model_class: str):
    """``(model, embed, direction)``: a seeded sdpa model in train mode, a function returning the fp32 embeddings of
    three texts (``pooler_output`` or ``summarize_embeds``), and a fixed direction to project them on."""
    from trainers.pretraining import PretrainingCollator

    torch.manual_seed(0)
    model = getattr(modeling_llara, model_class).from_pretrained(tiny_llara_dir, attn_implementation="sdpa").train()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llara_dir, trust_remote_code=True)
    texts = ["apt kernel driver python library", "font icon", "server client daemon tool shell audio"]
    # embeddings are unit vectors: a fixed direction gives a loss (and gradients) that depend on them
    direction = torch.randn(model.config.get_text_config().hidden_size, generator=torch.Generator().manual_seed(1))
    if model_class == "LlaraModel":
        batch = LlaraInputBuilder(tokenizer, model.config)(texts, task="document")
        return model, lambda: model(**batch).pooler_output.float(), direction
    batch = PretrainingCollator(tokenizer, model.config, max_length=200)([{"input": t, "next": None} for t in texts])
    keys = ("input_ids", "attention_mask", "segment_ids")
    return model, lambda: model(**{k: batch[k] for k in keys}).summarize_embeds.float(), direction


@pytest.mark.parametrize("model_class", ["LlaraModel", "LlaraForPretraining"])
def test_cpu_bf16_training_runs_attention_in_fp32_with_the_same_gradients(tiny_llara_dir, monkeypatch, model_class):
    # Given a model training under bf16 autocast on CPU, and a spy on the fp32 attention path
    model, embed, direction = _training_model(tiny_llara_dir, model_class)
    out = lambda: (embed() @ direction).sum()  # noqa: E731
    calls = []
    real = cpu_attention._sdpa_in_fp32
    monkeypatch.setitem(cpu_attention.AttentionInterface._global_mapping, cpu_attention._CPU_BF16_TRAINING_ATTENTION,
                        lambda *a, **k: calls.append(a[1].dtype) or real(*a, **k))
    sdpa_calls = _spy_on_sdpa(monkeypatch)

    def grads(fp32_attention: bool):
        model.zero_grad(set_to_none=True)
        # the trainers' compute_loss runs the forward under the context; without it: the plain bf16 sdpa path
        context = cpu_bf16_training_attention(model) if fp32_attention else contextlib.nullcontext()
        with context, torch.autocast("cpu", dtype=torch.bfloat16):
            loss = out()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # When the same step runs with the fp32 attention path and with bf16 sdpa
    loss_fp32_attn, with_fp32 = grads(True)
    # Then the fp32 path ran once per layer (fp32 inputs, autocast off), and the attention implementation is restored
    layers = model.config.get_text_config().num_hidden_layers
    assert len(calls) == layers
    assert sdpa_calls == [(torch.float32, False)] * layers
    assert model.model.config._attn_implementation == "sdpa"
    calls.clear()
    loss_bf16, with_bf16 = grads(False)
    assert calls == []  # the model itself never switches: only the training code does
    # And it computes the same step up to bf16 rounding
    assert loss_fp32_attn == pytest.approx(loss_bf16, rel=2e-2)
    for name, grad in with_bf16.items():
        assert (with_fp32[name] - grad).norm() <= 0.05 * grad.norm() + 1e-6, name
    # And inference (no grad, as the trainers' evaluation calls compute_loss) keeps plain bf16 sdpa
    with torch.no_grad(), cpu_bf16_training_attention(model), torch.autocast("cpu", dtype=torch.bfloat16):
        out()
    assert calls == []


def _spy_on_sdpa(monkeypatch) -> list:
    """Record (query dtype, CPU autocast on) of every transformers sdpa attention call."""
    import transformers.integrations.sdpa_attention as sdpa

    calls, real = [], sdpa.sdpa_attention_forward

    def spy(module, query, *args, **kwargs):
        calls.append((query.dtype, torch.is_autocast_enabled("cpu")))
        return real(module, query, *args, **kwargs)

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", spy)
    return calls


@pytest.mark.parametrize("model_class", ["LlaraModel", "LlaraForPretraining"])
def test_cpu_bf16_training_with_activation_checkpointing_recomputes_the_same_attention(tiny_llara_dir, model_class,
                                                                                    monkeypatch):
    # Checkpointed blocks rerun their forward in backward, after the model's forward has returned: the rerun must
    # take the same (fp32) attention path, or torch refuses the recomputed tensors (their dtype differs).
    results = []
    for checkpointing in (False, True):
        model, out, direction = _training_model(tiny_llara_dir, model_class)
        if checkpointing:
            model.activation_checkpointing_enable()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            before = out()
        calls = _spy_on_sdpa(monkeypatch)
        with cpu_bf16_training_attention(model), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (out() @ direction).sum()
        loss.backward()
        # the fp32 attention ran in the forward and, checkpointed, again in the recompute
        layers = model.config.get_text_config().num_hidden_layers
        assert calls == [(torch.float32, False)] * layers * (2 if checkpointing else 1)
        monkeypatch.undo()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            after = out()  # inference after a checkpointed step: plain bf16 sdpa again
        assert torch.equal(before, after)
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_plain, plain), (loss_ckpt, ckpt) = results
    assert loss_ckpt == loss_plain and plain.keys() == ckpt.keys() and plain
    for name in plain:
        assert torch.equal(ckpt[name], plain[name]), name


def _spy_on_fp32_attention(monkeypatch) -> list:
    """Record (gradients on, CPU autocast on) at every call of the fp32-capable attention the trainers select."""
    calls, real = [], cpu_attention._sdpa_in_fp32

    def spy(*args, **kwargs):
        calls.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return real(*args, **kwargs)

    monkeypatch.setitem(cpu_attention.AttentionInterface._global_mapping, cpu_attention._CPU_BF16_TRAINING_ATTENTION, spy)
    return calls


def test_the_pretrainer_runs_bf16_cpu_training_attention_in_fp32(tiny_llara_dir, tmp_path, monkeypatch):
    from conftest import equal_length_corpus
    from trainers.pretraining.data import PretrainingDataArguments
    from trainers.pretraining.run import PretrainingModelArguments, build_pretrainer
    from trainers.pretraining.trainer import PretrainingArguments

    # Given a one-step --bf16 run on CPU (fp32 master weights: autocast starts inside the model's forward)
    trainer, _ = build_pretrainer(
        PretrainingModelArguments(model_name_or_path=str(tiny_llara_dir)),
        PretrainingDataArguments(train_files=[str(equal_length_corpus(tmp_path / "c.txt", docs=4))], max_length=190,
                                 chunk_tokens=200),
        PretrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, disable_tqdm=True,
                             save_strategy="no", logging_strategy="no", max_steps=1, per_device_train_batch_size=4,
                             bf16=True),
    )
    calls, sdpa_calls = _spy_on_fp32_attention(monkeypatch), _spy_on_sdpa(monkeypatch)
    # When it trains
    trainer.train()
    # Then its compute_loss selected the fp32 attention, which computed every layer in fp32 with autocast off
    layers = trainer.model.config.get_text_config().num_hidden_layers
    assert calls == [(True, True)] * layers
    assert sdpa_calls == [(torch.float32, False)] * layers


@pytest.mark.parametrize("gradcache", [0, 3])
def test_the_finetune_trainer_runs_bf16_cpu_training_attention_in_fp32(tiny_llara_dir, tmp_path, monkeypatch, gradcache):
    import json

    from trainers.finetuning.trainer import LlaraFinetuneConfig, finetune

    rows = [{"query": f"q{i} apt kernel", "pos": [f"p{i} driver python library"], "neg": [f"n{i} font icon"]}
            for i in range(4)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    calls, sdpa_calls = _spy_on_fp32_attention(monkeypatch), _spy_on_sdpa(monkeypatch)
    # Given a one-step --bf16 LoRA run on CPU, with and without GradCache (which re-embeds during backward)
    args = LlaraFinetuneConfig(output_dir=str(tmp_path / "run"), group_size=2, lora_r=4, per_device_train_batch_size=4,
                               max_steps=1, use_cpu=True, bf16=True, save_strategy="no", report_to="none",
                               gradcache_chunk_size=gradcache)
    # When it trains
    finetune(tiny_llara_dir, data, args, save_final=False)
    # Then every forward with gradients (GradCache's too, run during backward) ran under autocast through the fp32
    # attention, which computed it in fp32 with autocast off; GradCache's first, gradient-free pass kept plain sdpa
    training = [call for call in calls if call[0]]
    assert training and all(autocast for _, autocast in training)
    assert sdpa_calls.count((torch.float32, False)) == len(training)
    assert len(calls) == (2 if gradcache else 1) * len(training)
