"""LlaraPretrainer end to end on CPU with a tiny model: accumulation equivalence, SIGKILL + resume,
LoRA with a YAML recipe and export that loads with AutoModel / SentenceTransformer, torchrun (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import equal_length_corpus as _corpus
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _common(model_dir, corpus, out):
    return [
        "--model_name_or_path", str(model_dir), "--train_files", str(corpus), "--output_dir", str(out),
        "--max_length", "190", "--chunk_tokens", "200", "--report_to", "none", "--use_cpu", "true",
        "--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--seed", "3",
    ]


def _build(model_dir, corpus, out, **overrides):
    from trainers.pretraining.data import PretrainingDataArguments
    from trainers.pretraining.run import PretrainingModelArguments, build_pretrainer
    from trainers.pretraining.trainer import PretrainingArguments

    training = dict(
        output_dir=str(out), report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
        logging_strategy="no", dataloader_pin_memory=False, seed=3, lr_scheduler_type="constant", warmup_ratio=0.0,
    )
    training.update(overrides)
    trainer, _ = build_pretrainer(
        PretrainingModelArguments(model_name_or_path=str(model_dir)),
        PretrainingDataArguments(train_files=[str(corpus)], max_length=190, chunk_tokens=200),
        PretrainingArguments(**training),
    )
    return trainer


def test_accumulation_matches_one_big_batch(tiny_llara_dir, tmp_path):
    # Given 8 equal-length pairs and plain SGD (an update proportional to the gradient)
    corpus = _corpus(tmp_path / "c.txt", docs=8)
    common = dict(optim="sgd", learning_rate=0.5, max_steps=1, loss_mode="reference")
    # When one step runs as 8 x 1 and as 2 x 4
    big = _build(tiny_llara_dir, corpus, tmp_path / "a", per_device_train_batch_size=8, **common)
    small = _build(tiny_llara_dir, corpus, tmp_path / "b", per_device_train_batch_size=2, gradient_accumulation_steps=4, **common)
    before = {n: p.detach().clone() for n, p in big.model.named_parameters()}
    big.train()
    small.train()
    # Then both updates are the same (and not zero)
    after_small = dict(small.model.named_parameters())
    moved = 0.0
    for name, param in big.model.named_parameters():
        torch.testing.assert_close(param, after_small[name], atol=1e-6, rtol=1e-5)
        moved = max(moved, (param - before[name]).abs().max().item())
    assert moved > 1e-4


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_bf16_mixed_precision_step_close_to_fp32(tiny_llara_dir, tmp_path, device):
    # Given the same one-step run in fp32 and with --bf16 (autocast, float32 master weights)
    corpus = _corpus(tmp_path / "c.txt", docs=4)
    common = dict(optim="sgd", learning_rate=0.5, max_steps=1, per_device_train_batch_size=4, loss_mode="reference",
                  use_cpu=device == "cpu")
    full = _build(tiny_llara_dir, corpus, tmp_path / "fp32", **common)
    mixed = _build(tiny_llara_dir, corpus, tmp_path / "bf16", bf16=True, **common)
    before = {n: p.detach().clone() for n, p in full.model.named_parameters()}
    # When both train
    loss_full = full.train().training_loss
    loss_mixed = mixed.train().training_loss
    # Then the bf16 run computed in bf16 yet kept fp32 weights, and its loss and update match fp32 to bf16 precision
    assert mixed.args.bf16 and all(p.dtype == torch.float32 for p in mixed.model.parameters())
    assert next(mixed.model.parameters()).device.type == device
    assert abs(loss_mixed - loss_full) < 0.02 * abs(loss_full) and loss_mixed != loss_full
    delta_full = torch.cat([(p.detach() - before[n]).flatten() for n, p in full.model.named_parameters()])
    delta_mixed = torch.cat([(p.detach() - before[n]).flatten() for n, p in mixed.model.named_parameters()])
    assert torch.nn.functional.cosine_similarity(delta_full, delta_mixed, dim=0) > 0.98


@pytest.mark.gpu
def test_fp16_run_on_cuda_tracks_fp32(tiny_llara_dir, tmp_path):
    # Given the same 6-step run in fp32 and with --fp16 (autocast + dynamic loss scaling, fp32 master weights)
    corpus = _corpus(tmp_path / "c.txt", docs=12)
    common = dict(optim="sgd", learning_rate=0.1, max_steps=6, per_device_train_batch_size=2, loss_mode="reference",
                  use_cpu=False, logging_strategy="steps", logging_steps=1)
    full = _build(tiny_llara_dir, corpus, tmp_path / "fp32", **common)
    mixed = _build(tiny_llara_dir, corpus, tmp_path / "fp16", fp16=True, **common)
    before = {n: p.detach().clone() for n, p in mixed.model.named_parameters()}
    full.train()
    mixed.train()
    first = [next(r["loss"] for r in t.state.log_history if "loss" in r) for t in (full, mixed)]
    # Then the first loss (before any update) matches fp32 to fp16 precision, the weights stay fp32 and finite,
    # and the run updated them (a step the scaler skips on overflow leaves them as they were)
    assert abs(first[1] - first[0]) < 0.02 * abs(first[0])
    params = dict(mixed.model.named_parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params.values())
    assert max((params[n].detach() - before[n]).abs().max().item() for n in before) > 1e-3
    assert 0 < mixed.accelerator.scaler.get_scale() < float("inf")


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    import trainers.pretraining.run as run
    from llara.scripts import pretrain

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    build = run.build_pretrainer
    run.build_pretrainer = lambda *a, **k: build(*a, **{**k, "callbacks": [KillAfterSave()]})
    sys.exit(pretrain.main(sys.argv[1:]))
    """
)


def test_sigkill_and_resume_equals_uninterrupted_run(tiny_llara_dir, tmp_path):
    from llara.scripts import pretrain

    corpus = _corpus(tmp_path / "c.txt")
    steps = ["--max_steps", "4", "--save_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
             "--logging_steps", "1"]
    # Given a run SIGKILLed right after its step-2 checkpoint
    killed = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), *_common(tiny_llara_dir, corpus, killed), *steps],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (killed / "checkpoint-2").is_dir() and not (killed / "final").exists()
    # When it is resumed from its last checkpoint, and an uninterrupted run goes side by side
    assert pretrain.main([*_common(tiny_llara_dir, corpus, killed), *steps, "--resume_from_checkpoint", "auto"]) == 0
    whole = tmp_path / "whole"
    assert pretrain.main([*_common(tiny_llara_dir, corpus, whole), *steps]) == 0
    # Then both end with the same parameters
    resumed = load_file(killed / "final" / "model.safetensors")
    straight = load_file(whole / "final" / "model.safetensors")
    initial = load_file(Path(tiny_llara_dir) / "model.safetensors")
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(straight[k], initial[k]) for k in straight)


def test_lora_recipe_trains_special_rows_and_exports_a_loadable_model(tiny_llara_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from modeling_llara import LlaraConfig
    from llara.scripts import pretrain

    # Given a YAML recipe with LoRA and the paper loss, overridden by flags
    corpus = _corpus(tmp_path / "c.txt", docs=6)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "use_lora: true\nlora_r: 4\nlora_alpha: 8\nlora_target_modules: [q_proj, v_proj]\nloss_mode: paper\n"
        "learning_rate: 0.05\nmax_steps: 2\nper_device_train_batch_size: 3\nactivation_checkpointing: true\n"
        "save_strategy: 'no'\n"
    )
    out = tmp_path / "run"
    # When the CLI trains and exports
    assert pretrain.main(["--config", str(recipe), *_common(tiny_llara_dir, corpus, out), "--max_steps", "3"]) == 0
    final = out / "final"
    # Then the special-token rows and the adapted projections moved, other embedding rows did not
    before = load_file(Path(tiny_llara_dir) / "model.safetensors")
    after = load_file(final / "model.safetensors")
    config = LlaraConfig.from_pretrained(final)
    assert config.auto_dtype == "float32"  # a stage-1 export pins `auto` inference to fp32
    special = torch.tensor(config.summarize_token_ids + config.predict_token_ids)
    emb = "model.embed_tokens.weight"
    other = torch.ones(before[emb].shape[0], dtype=torch.bool)
    other[special] = False
    assert not torch.allclose(before[emb][special], after[emb][special])
    torch.testing.assert_close(before[emb][other], after[emb][other])
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    torch.testing.assert_close(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    assert not any("lora" in k for k in after)
    # And the folder loads like any LLaRA model, with the same embeddings both ways
    model = AutoModel.from_pretrained(final, trust_remote_code=True)
    st = SentenceTransformer(str(final), trust_remote_code=True, device="cpu")
    assert type(model).__name__ == "LlaraModel"
    vec = st.encode(["alpha beta"], convert_to_tensor=True)
    assert vec.shape == (1, 32) and torch.isfinite(vec).all()


def test_sharded_lora_export_path_equals_direct_merge(tiny_llara_dir, tmp_path):
    from trainers.pretraining.data import PretrainingDataArguments
    from trainers.pretraining.run import PretrainingModelArguments, build_pretrainer, export_pretrained, export_saved_adapter
    from trainers.pretraining.trainer import PretrainingArguments

    # Given a short LoRA run (the in-process trainer: its live model is the peft model)
    corpus = _corpus(tmp_path / "c.txt", docs=6)
    model_args = PretrainingModelArguments(model_name_or_path=str(tiny_llara_dir), use_lora=True, lora_r=4, lora_alpha=8,
                                           lora_target_modules=["q_proj", "v_proj"])

    trainer, tokenizer = build_pretrainer(
        model_args,
        PretrainingDataArguments(train_files=[str(corpus)], max_length=190, chunk_tokens=200),
        PretrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, disable_tqdm=True,
                             save_strategy="no", logging_strategy="no", max_steps=2, learning_rate=0.05,
                             per_device_train_batch_size=3, loss_mode="paper", seed=3),
    )
    trainer.train()
    # When the DeepSpeed/FSDP path exports from the adapter the Trainer saves, and the plain path merges live
    trainer.save_model(str(tmp_path / "adapter"))
    via_adapter = export_saved_adapter(model_args, tmp_path / "adapter", tokenizer, tmp_path / "via-adapter")
    model_args.export_dir = str(tmp_path / "direct")
    direct = export_pretrained(trainer, tokenizer, model_args)
    # Then both folders hold the same weights, and they differ from the base
    a, b = load_file(Path(via_adapter) / "model.safetensors"), load_file(Path(direct) / "model.safetensors")
    base = load_file(Path(tiny_llara_dir) / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-6)
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    # And a folder without an adapter is refused by name
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        export_saved_adapter(model_args, tmp_path, tokenizer, tmp_path / "nothing")


def test_torchrun_two_processes_gloo(tiny_llara_dir, tmp_path):
    corpus = _corpus(tmp_path / "c.txt")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "llara.scripts.pretrain", *_common(tiny_llara_dir, corpus, out),
           "--max_steps", "3", "--per_device_train_batch_size", "2", "--ddp_backend", "gloo", "--save_strategy", "no"]
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    assert (out / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("fails", [False, True])
def test_a_command_closes_its_process_group(tmp_path, monkeypatch, fails):
    import torch.distributed as dist

    from llara.cli_boundary import run_verb

    # Given a command running inside a gloo process group, as every rank does under torchrun (one rank here)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    barriers = []
    real_barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: barriers.append(1) or real_barrier(*a, **k))

    def command(argv):
        assert dist.is_initialized()
        if fails:
            raise RuntimeError("the run failed")
        return 0

    # When the command returns or fails
    try:
        code = run_verb("pretrain", command, [])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
            closed = False
        else:
            closed = True
    # Then the group is destroyed before the process exits (an open gloo group can abort the interpreter's
    # shutdown); the ranks wait for each other only after a success (after a failure the others may be gone)
    assert closed
    assert code == (1 if fails else 0)
    assert barriers == ([] if fails else [1])


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_same_seed_starts_from_the_same_lora_adapter(tiny_llara_dir, tmp_path, stage):
    # Given two LoRA builds with the same --seed, with random numbers drawn in between (as a launcher may)
    def adapter_weights():
        if stage == "pretrain":
            from trainers.pretraining.data import PretrainingDataArguments
            from trainers.pretraining.run import PretrainingModelArguments, build_pretrainer
            from trainers.pretraining.trainer import PretrainingArguments

            model = build_pretrainer(
                PretrainingModelArguments(model_name_or_path=str(tiny_llara_dir), use_lora=True, lora_r=4),
                PretrainingDataArguments(train_files=[str(_corpus(tmp_path / "c.txt", docs=2))], max_length=190,
                                         chunk_tokens=200),
                PretrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, seed=11),
            )[0].model
        else:
            from trainers.finetuning.trainer import LlaraFinetuneConfig, load_finetune_model

            args = LlaraFinetuneConfig(output_dir=str(tmp_path / "ft"), use_lora=True, lora_r=4, seed=11,
                                       report_to="none", use_cpu=True)
            model = load_finetune_model(tiny_llara_dir, args)[0]
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    first = adapter_weights()
    torch.rand(1000)
    second = adapter_weights()
    # Then the random LoRA A matrices are the same
    assert first and first.keys() == second.keys()
    assert all(torch.equal(first[n], second[n]) for n in first)
