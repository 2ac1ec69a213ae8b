"""LLaRA stage 2 end to end: the CLI with a YAML recipe, resume equals an uninterrupted run."""

from __future__ import annotations

import json
import shutil
import random

import pytest
import torch

WORDS = "apt kernel driver python library font icon server client daemon tool shell audio video".split()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def train_jsonl(tmp_path):
    rng = random.Random(0)
    rows = []
    for i in range(10):
        rows.append({
            "query": f"q{i} " + " ".join(rng.choices(WORDS, k=3)),
            "pos": [f"p{i} " + " ".join(rng.choices(WORDS, k=6))],
            "neg": [f"n{i}.{j} " + " ".join(rng.choices(WORDS, k=6)) for j in range(i % 3)],
        })
    rows.append({"query": "no positive here", "pos": [""], "neg": ["x"]})  # counted skip
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _safetensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_cli_with_recipe_trains_and_writes_a_loadable_model(tiny_llara_dir, train_jsonl, tmp_path):
    from transformers import AutoModel

    from llara.scripts.finetune import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "group_size: 3\nquery_max_length: 72\npassage_max_length: 88\nlora_r: 4\nper_device_train_batch_size: 4\n"
        "max_steps: 2\nlogging_steps: 1\nuse_cpu: true\ngradcache_chunk_size: 5\nsave_strategy: 'no'\n"
    )
    out = tmp_path / "run"
    start = tmp_path / "stage1"  # a stage-1 export: `auto` pinned to fp32
    shutil.copytree(tiny_llara_dir, start)
    config = json.loads((start / "config.json").read_text())
    (start / "config.json").write_text(json.dumps({**config, "auto_dtype": "float32"}))
    code = main(["--config", str(recipe), "--model_name_or_path", str(start), "--train_data", str(train_jsonl),
                 "--output_dir", str(out), "--learning_rate", "0.01"])
    assert code == 0
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["loss"]["gradcache_chunk_size"] == 5 and summary["group_size"] == 3
    assert summary["data"]["skipped_no_positive"] == 1 and summary["data"]["kept"] == 10
    assert "skipped (no positive): 1" in summary["data_summary"]
    model = AutoModel.from_pretrained(out / "final", trust_remote_code=True)
    assert type(model).__name__ == "LlaraModel"
    assert model.config.auto_dtype == "auto"  # fine-tuned: bf16 where the hardware runs it
    base, tuned = _safetensors(tiny_llara_dir), _safetensors(out / "final")
    changed = [k for k in tuned if not torch.equal(base[k], tuned[k])]
    assert any("q_proj" in k for k in changed) and any("embed_tokens" in k for k in changed)


def test_recipe_with_unknown_option_is_a_one_line_usage_error(tmp_path, capsys):
    from llara.scripts.finetune import parse_args

    recipe = tmp_path / "bad.yaml"
    recipe.write_text("temprature: 0.02\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", str(recipe), "--model_name_or_path", "x", "--train_data", "y", "--output_dir", "o"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "temprature" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--train_data", "d"], "--model_name_or_path is required"),
    (["--model_name_or_path", "m", "--train_data", "d", "--no_negatives", "sometimes"], "invalid choice"),
    (["--config", "missing.yaml"], "missing.yaml: file not found"),
])
def test_usage_errors_name_the_problem(tmp_path, capsys, argv, message):
    from llara.scripts.finetune import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args([*argv, "--output_dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_zero_steps_is_refused(tmp_path):
    from trainers.finetuning.trainer import LlaraFinetuneConfig

    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        LlaraFinetuneConfig(output_dir=str(tmp_path), max_steps=0)


def test_flags_override_the_recipe(tmp_path):
    from llara.scripts.finetune import parse_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text("temperature: 0.05\ngroup_size: 4\n")
    _, args = parse_args(["--config", str(recipe), "--model_name_or_path", "m", "--train_data", "d",
                          "--output_dir", str(tmp_path / "o"), "--group_size", "8"])
    assert args.temperature == 0.05 and args.group_size == 8 and args.learning_rate == 3e-4


def test_resume_from_checkpoint_equals_uninterrupted_run(tiny_llara_dir, train_jsonl, tmp_path):
    from trainers.finetuning.trainer import LlaraFinetuneConfig, finetune

    def config(out, **kw):
        return LlaraFinetuneConfig(
            output_dir=str(out), group_size=3, query_max_length=72, passage_max_length=88, lora_r=4,
            per_device_train_batch_size=3, max_steps=4, save_steps=2, logging_steps=1, use_cpu=True,
            learning_rate=0.01, seed=3, **kw,
        )

    # Given an uninterrupted 4-step run (dropout on, so RNG state matters) that saved checkpoint-2
    full = finetune(tiny_llara_dir, train_jsonl, config(tmp_path / "a"))
    # When another run resumes from that checkpoint (--resume_from_checkpoint) and finishes
    resumed = finetune(tiny_llara_dir, train_jsonl,
                       config(tmp_path / "b", resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2")))
    # Then the losses after the checkpoint and the final weights are the same
    losses = lambda r: [h["loss"] for h in r.log_history if "loss" in h]  # noqa: E731
    assert len(losses(full)) == 4
    assert losses(resumed)[-2:] == pytest.approx(losses(full)[2:], abs=1e-5)
    a, b = _safetensors(full.model_dir), _safetensors(resumed.model_dir)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_matryoshka_training_makes_truncated_embeddings_normalized_prefixes(tiny_llara_dir, train_jsonl, tmp_path):
    from sentence_transformers import SentenceTransformer

    from trainers.finetuning.trainer import LlaraFinetuneConfig, finetune

    # Given a few fine-tuning steps with MatryoshkaLoss over prefixes 8 and 16 of the 32-d embedding
    args = LlaraFinetuneConfig(
        output_dir=str(tmp_path / "run"), group_size=2, query_max_length=72, passage_max_length=88, lora_r=4,
        per_device_train_batch_size=4, max_steps=2, logging_steps=1, use_cpu=True, learning_rate=0.01,
        save_strategy="no", matryoshka_dims=[16, 8],
    )
    result = finetune(tiny_llara_dir, train_jsonl, args)
    summary = json.loads((tmp_path / "run" / "finetune_summary.json").read_text())
    assert summary["loss"]["class"] == "MatryoshkaLoss" and summary["loss"]["matryoshka_dims"] == [16, 8]
    assert all(h["loss"] == h["loss"] for h in result.log_history if "loss" in h)  # finite, logged
    # When the exported model is loaded with truncate_dim
    texts = ["apt kernel driver", "font icon server client"]
    full = SentenceTransformer(str(result.model_dir), trust_remote_code=True, device="cpu")
    short = SentenceTransformer(str(result.model_dir), trust_remote_code=True, device="cpu", truncate_dim=8)
    # Then its embeddings are the normalized 8-d prefixes of the full ones
    for encode in ("encode_query", "encode_document"):
        whole = torch.as_tensor(getattr(full, encode)(texts))
        cut = torch.as_tensor(getattr(short, encode)(texts, normalize_embeddings=True))
        assert cut.shape == (2, 8)
        assert torch.allclose(cut, torch.nn.functional.normalize(whole[:, :8], dim=-1), atol=1e-6)


_KILLER = """
import os, signal, sys
from transformers import TrainerCallback
from trainers.finetuning import trainer as stage2
from llara.scripts import finetune


class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)


init = stage2.LlaraFinetuneTrainer.__init__
stage2.LlaraFinetuneTrainer.__init__ = lambda self, *a, **k: init(self, *a, **{**k, "callbacks": [KillAfterSave()]})
sys.exit(finetune.main(sys.argv[1:]))
"""


def test_sigkill_then_resume_skips_a_half_written_checkpoint_and_equals_an_uninterrupted_run(
    tiny_llara_dir, train_jsonl, tmp_path
):
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from llara.scripts.finetune import main

    common = ["--model_name_or_path", str(tiny_llara_dir), "--train_data", str(train_jsonl), "--group_size", "3",
              "--query_max_length", "72", "--passage_max_length", "88", "--lora_r", "4", "--per_device_train_batch_size",
              "3", "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1", "--use_cpu", "true",
              "--learning_rate", "0.01", "--seed", "3"]
    # Given a run SIGKILLed right after its step-2 checkpoint, and a step-4 checkpoint cut short while saving
    killed = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), *common, "--output_dir", str(killed)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (killed / "checkpoint-2" / "trainer_state.json").is_file() and not (killed / "final").exists()
    partial = killed / "checkpoint-4"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"\0" * 64)  # what a kill mid-save leaves
    # When the run resumes from its last checkpoint, and an uninterrupted run goes side by side
    assert main([*common, "--output_dir", str(killed), "--resume_from_checkpoint", "last"]) == 0
    whole = tmp_path / "whole"
    assert main([*common, "--output_dir", str(whole)]) == 0
    # Then the half-written checkpoint was not trusted (it was rewritten) and both runs end with the same weights
    assert (killed / "checkpoint-4" / "trainer_state.json").is_file()
    a, b = _safetensors(killed / "final"), _safetensors(whole / "final")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_sharded_lora_export_path_equals_direct_merge(tiny_llara_dir, train_jsonl, tmp_path, monkeypatch):
    from trainers.finetuning import trainer as ft
    from trainers.finetuning.data import ContrastiveDataset, load_examples

    # Given a short LoRA run (in process: its live model is the peft model)
    args = ft.LlaraFinetuneConfig(
        output_dir=str(tmp_path / "run"), group_size=2, query_max_length=72, passage_max_length=88, lora_r=4,
        per_device_train_batch_size=4, max_steps=2, use_cpu=True, learning_rate=0.05, save_strategy="no",
        report_to="none", seed=3,
    )
    examples, corpus, report = load_examples(train_jsonl)
    groups = ContrastiveDataset(examples, group_size=2, corpus=corpus, seed=3, report=report)
    backbone, tokenizer = ft.load_finetune_model(tiny_llara_dir, args)
    trainer = ft.LlaraFinetuneTrainer(model=ft.build_sentence_model(backbone, tokenizer, tiny_llara_dir), args=args,
                                      train_dataset=groups.to_dataset(), processing_class=tokenizer)
    trainer.train()
    # When the DeepSpeed/FSDP path exports from the adapter the Trainer gathers (merged over the rebuilt base),
    # and then the plain path merges the live model
    monkeypatch.setattr(ft, "is_sharded", lambda trainer: True)
    via_adapter = ft.export_finetuned_run(trainer, tokenizer, tiny_llara_dir, tmp_path / "via-adapter")
    assert (tmp_path / "run" / "final-gathered" / "adapter_config.json").is_file()
    monkeypatch.setattr(ft, "is_sharded", lambda trainer: False)
    direct = ft.export_finetuned_run(trainer, tokenizer, tiny_llara_dir, tmp_path / "direct")
    # Then both folders hold the same files and weights, which differ from the base
    assert sorted(p.name for p in via_adapter.iterdir()) == sorted(p.name for p in direct.iterdir())
    a, b, base = _safetensors(via_adapter), _safetensors(direct), _safetensors(tiny_llara_dir)
    assert a.keys() == b.keys() and not any("lora" in key for key in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-6)
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert json.loads((via_adapter / "config.json").read_text())["auto_dtype"] == "auto"
