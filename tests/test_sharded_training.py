"""Sharded `llara pretrain` and `llara finetune` runs end with the same weights as a plain run of the same steps.

Each run is the real command (``torchrun -m llara.scripts.pretrain`` or ``.finetune``, one process), on the
same tiny model, data and seed, with plain SGD so that a difference in the gradients shows up in the weights:

* DeepSpeed ZeRO-3 with the shipped ``recipes/deepspeed_zero3.json``: every weight, the LM head included, is a
  partitioned parameter (``ds_id``), so the LM term takes its module-call path and the export reloads the
  gathered checkpoint. On CPU (the default suite) DeepSpeed runs on its CPU accelerator over gloo. Stage 2
  (contrastive, full-parameter) too: its export gathers the same way.
* FSDP2 with ``recipes/fsdp_llama.json`` (CUDA only: the Trainer enables FSDP for GPU processes).
* LoRA under ZeRO-3 (CUDA only: peft gathers ZeRO-3 token rows on a CUDA device): the Trainer saves the gathered
  adapter and the export merges it into the rebuilt base. LoRA under FSDP is refused with a clear error (peft's
  trainable-token layer fails on FSDP2's sharded weight), which the default suite checks.

The runs of one device start together (they are small) and each test compares two of them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from conftest import equal_length_corpus
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
# No LoRA dropout: its random masks depend on how much of the RNG stream each launcher consumed before training.
LORA = ["--use_lora", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--lora_target_modules", "q_proj", "v_proj"]
SHARDING = {
    "zero3": ["--deepspeed", str(REPO / "recipes" / "deepspeed_zero3.json")],
    "fsdp": ["--fsdp", "--fsdp_config", str(REPO / "recipes" / "fsdp_llama.json")],
}
# Runs per device: name -> (sharding, lora, extra flags); "ft_" runs are stage 2. CPU runs DeepSpeed only (see the
# module docstring).
RUNS = {
    "cpu": {"plain": (None, False, []), "zero3": ("zero3", False, []),
            "ft_plain": (None, False, []), "ft_zero3": ("zero3", False, []),
            # two processes of batch 1 = one of batch 2: the weights are partitioned across two ranks
            "zero3_2proc": ("zero3", False, ["--per_device_train_batch_size", "1"]),
            "ft_zero3_2proc": ("zero3", False, ["--per_device_train_batch_size", "1"])},
    "cuda": {
        "plain": (None, False, []), "zero3": ("zero3", False, []), "fsdp": ("fsdp", False, []),
        "plain_lora": (None, True, []), "zero3_lora": ("zero3", True, []),
        "zero3_bf16": ("zero3", False, ["--bf16", "true"]),  # the shipped 8-GPU recipe's setting
    },
}
CUDA = pytest.param("cuda", marks=pytest.mark.gpu)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _contrastive_data(path: Path) -> Path:
    """Eight (query, positive, negative) records of corpus words: a stage 2 training file."""
    words = equal_length_corpus(path.with_suffix(".txt"), docs=24).read_text().split("\n")
    rows = [{"query": words[i][:30], "pos": [words[i + 8]], "neg": [words[i + 16]]} for i in range(8)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _command(model_dir: Path, workdir: Path, name: str, device: str, sharding: str | None, lora: bool,
             extra: list[str]) -> list[str]:
    common = ["--model_name_or_path", str(model_dir), "--output_dir", str(workdir / name), "--report_to", "none",
              "--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--seed", "3", "--max_steps", "3",
              "--per_device_train_batch_size", "2", "--optim", "sgd", "--lr_scheduler_type", "constant",
              "--save_strategy", "no"]
    processes = "2" if name.endswith("_2proc") else "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", processes, "--master_port", str(_free_port())]
    if name.startswith("ft_"):
        cmd += ["-m", "llara.scripts.finetune", *common, "--train_data", str(workdir / "contrastive.jsonl"),
                "--group_size", "2", "--learning_rate", "0.05", "--warmup_steps", "0", "--use_lora", str(lora).lower()]
    else:
        cmd += ["-m", "llara.scripts.pretrain", *common, "--train_files", str(workdir / "corpus.txt"),
                "--max_length", "190", "--chunk_tokens", "200", "--learning_rate", "0.5", "--loss_mode", "reference"]
    if device == "cpu":
        cmd += ["--use_cpu", "true"]
    if sharding:
        cmd += SHARDING[sharding]
    if lora:
        cmd += LORA
    return cmd + extra


@lru_cache(maxsize=None)
def _launch_all(device: str, model_dir: Path, workdir: Path) -> dict:
    """Start every run of ``device`` at once; returns name -> (process, output folder, log file)."""
    equal_length_corpus(workdir / "corpus.txt")
    _contrastive_data(workdir / "contrastive.jsonl")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    runs = {}
    for name, (sharding, lora, extra) in RUNS[device].items():
        out = workdir / name
        log = (workdir / f"{name}.log").open("w")
        proc = subprocess.Popen(_command(model_dir, workdir, name, device, sharding, lora, extra), cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        runs[name] = (proc, out, log)
    return runs


def _weights(device: str, name: str, model_dir: Path, workdir: Path) -> dict[str, torch.Tensor]:
    proc, out, log = _launch_all(device, model_dir, workdir)[name]
    code = proc.wait(timeout=900)
    log.close()
    text = Path(log.name).read_text(errors="replace")
    assert code == 0, f"{name} run failed ({code}):\n{text[-4000:]}"
    return load_file(out / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    return {"cpu": tmp_path_factory.mktemp("sharded-cpu"), "cuda": tmp_path_factory.mktemp("sharded-cuda")}


def _assert_same_training(device, sharded, reference, tiny_llara_dir, workdirs, moved=1e-2):
    args = (tiny_llara_dir, workdirs[device])
    got, want = _weights(device, sharded, *args), _weights(device, reference, *args)
    initial = load_file(Path(tiny_llara_dir) / "model.safetensors")
    if "lm_head.weight" not in want:  # stage 2 exports the embedder: the initial folder's LM head is not in it
        initial = {k: v for k, v in initial.items() if k != "lm_head.weight"}
    # Then the exported folder holds every weight, whole (a ZeRO-3 placeholder has 0 elements)
    assert got.keys() == want.keys() == initial.keys()
    for key in want:
        assert got[key].shape == want[key].shape == initial[key].shape, key
        torch.testing.assert_close(got[key], want[key], atol=2e-5, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")
    # And training moved the weights (three SGD steps)
    assert max((want[k] - initial[k]).abs().max().item() for k in want) > moved


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_deepspeed_zero3_run_equals_plain_run(device, tiny_llara_dir, workdirs):
    assert importlib.util.find_spec("deepspeed"), "deepspeed is a test requirement (make install): it is missing"
    _assert_same_training(device, "zero3", "plain", tiny_llara_dir, workdirs)


@pytest.mark.parametrize("stage", ["zero3_2proc", "ft_zero3_2proc"])
def test_two_process_deepspeed_zero3_run_equals_one_process_plain_run(stage, tiny_llara_dir, workdirs):
    # Given ZeRO-3 over two CPU processes (gloo; each rank holds half of every weight, the export gathers them
    # across ranks) with batch 1 each, against one plain process with batch 2: the same global batches
    assert importlib.util.find_spec("deepspeed"), "deepspeed is a test requirement (make install): it is missing"
    reference = "ft_plain" if stage.startswith("ft_") else "plain"
    _assert_same_training("cpu", stage, reference, tiny_llara_dir, workdirs, moved=1e-3)


def test_finetune_deepspeed_zero3_run_equals_plain_run(tiny_llara_dir, workdirs):
    # Given stage 2 (InfoNCE, full parameters) under ZeRO-3 and plain, same data, seed and SGD steps
    assert importlib.util.find_spec("deepspeed"), "deepspeed is a test requirement (make install): it is missing"
    _assert_same_training("cpu", "ft_zero3", "ft_plain", tiny_llara_dir, workdirs, moved=1e-3)


@pytest.mark.gpu
def test_fsdp2_run_equals_plain_run(tiny_llara_dir, workdirs):
    _assert_same_training("cuda", "fsdp", "plain", tiny_llara_dir, workdirs)


@pytest.mark.gpu
def test_deepspeed_zero3_lora_export_equals_plain_lora(tiny_llara_dir, workdirs):
    _assert_same_training("cuda", "zero3_lora", "plain_lora", tiny_llara_dir, workdirs)


def test_lora_under_fsdp_is_refused_by_name(tiny_llara_dir, tmp_path):
    from trainers.pretraining.data import PretrainingDataArguments
    from trainers.pretraining.run import PretrainingModelArguments, build_pretrainer
    from trainers.pretraining.trainer import PretrainingArguments

    args = PretrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, fsdp=True,
                                fsdp_config=str(REPO / "recipes" / "fsdp_llama.json"))
    with pytest.raises(ValueError, match="--use_lora under FSDP is not supported"):
        build_pretrainer(PretrainingModelArguments(model_name_or_path=str(tiny_llara_dir), use_lora=True, lora_r=4),
                         PretrainingDataArguments(train_files=[str(equal_length_corpus(tmp_path / "c.txt"))], max_length=190,
                                                  chunk_tokens=200), args)


@pytest.mark.gpu
def test_deepspeed_zero3_bf16_run_close_to_plain_fp32(tiny_llara_dir, workdirs):
    # Given the recipe's setting (ZeRO-3 + bf16: bf16 compute, fp32 master weights in DeepSpeed's optimizer)
    args = (tiny_llara_dir, workdirs["cuda"])
    mixed, full = _weights("cuda", "zero3_bf16", *args), _weights("cuda", "plain", *args)
    initial = load_file(Path(tiny_llara_dir) / "model.safetensors")
    # Then every weight comes back whole and finite, and the update points where the fp32 update points
    assert mixed.keys() == initial.keys()
    assert all(mixed[k].shape == initial[k].shape and torch.isfinite(mixed[k]).all() for k in initial)
    delta_mixed = torch.cat([(mixed[k].float() - initial[k]).flatten() for k in initial])
    delta_full = torch.cat([(full[k] - initial[k]).flatten() for k in initial])
    assert torch.nn.functional.cosine_similarity(delta_mixed, delta_full, dim=0) > 0.98


def test_finetune_lora_with_token_rows_under_fsdp_is_refused_by_name(tiny_llara_dir, tmp_path):
    from trainers.finetuning.trainer import LlaraFinetuneConfig, load_finetune_model

    args = LlaraFinetuneConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, fsdp=True,
                               fsdp_config=str(REPO / "recipes" / "fsdp_llama.json"), use_lora=True, lora_r=4)
    with pytest.raises(ValueError, match="--use_lora under FSDP is not supported"):
        load_finetune_model(tiny_llara_dir, args)
