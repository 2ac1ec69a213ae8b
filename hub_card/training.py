"""Training details for the model card, read from a Trainer output folder.

Sources, all optional and all plain JSON (``training_args.bin`` is a pickle and is never read):

* ``trainer_state.json`` (``Trainer.save_state``; in the folder or its newest ``checkpoint-*``):
  ``global_step``, ``num_train_epochs``, ``train_batch_size`` and ``log_history`` (loss, learning rate,
  grad norm per logging step; the final entry holds ``train_runtime`` and ``train_loss``);
* ``train_results.json`` / ``all_results.json`` (``Trainer.save_metrics``);
* ``training_args.json``: a JSON dump of the TrainingArguments, when the training script writes one;
* ``run_info.json``: ``{"hardware": ..., "world_size": ..., "objective": ..., "datasets": [...]}`` when the
  training script records it (the Trainer itself does not record the hardware).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"


@dataclass
class TrainingSummary:
    """What the card says about training; ``None`` means the logs do not record it."""

    source: str
    global_step: int | None = None
    max_steps: int | None = None
    epochs: float | None = None
    per_device_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    world_size: int | None = None
    peak_learning_rate: float | None = None
    final_learning_rate: float | None = None
    lr_scheduler: str | None = None
    warmup: str | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    min_loss: float | None = None
    mean_train_loss: float | None = None
    last_eval_loss: float | None = None
    runtime_seconds: float | None = None
    precision: str | None = None
    hardware: str | None = None
    objective: str | None = None
    datasets: list[str] = field(default_factory=list)
    matryoshka_dims: list[int] = field(default_factory=list)
    loss_curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def effective_batch_size(self) -> int | None:
        if self.per_device_batch_size is None:
            return None
        return self.per_device_batch_size * (self.gradient_accumulation_steps or 1) * (self.world_size or 1)


def find_trainer_state(folder: str | os.PathLike) -> Path | None:
    """``trainer_state.json`` in ``folder``, else in its checkpoint with the highest step."""
    folder = Path(folder)
    direct = folder / TRAINER_STATE
    if direct.is_file():
        return direct
    checkpoints = []
    for child in folder.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if match and (child / TRAINER_STATE).is_file():
            checkpoints.append((int(match.group(1)), child / TRAINER_STATE))
    return max(checkpoints)[1] if checkpoints else None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _curve(points: list[tuple[int, float]], size: int = 8) -> list[tuple[int, float]]:
    """At most ``size`` evenly spaced points of the loss curve, first and last included."""
    if len(points) <= size:
        return points
    picks = sorted({round(i * (len(points) - 1) / (size - 1)) for i in range(size)})
    return [points[i] for i in picks]


def read_training_summary(folder: str | os.PathLike) -> TrainingSummary | None:
    """Summarize the training logs under ``folder``; ``None`` when it holds no ``trainer_state.json``."""
    folder = Path(folder)
    state_path = find_trainer_state(folder)
    if state_path is None:
        return None
    state = _load_json(state_path)
    if not isinstance(state, dict) or not isinstance(state.get("log_history", []), list):
        raise ValueError(f"{state_path}: expected a Trainer state object with a 'log_history' list")
    history = [entry for entry in state.get("log_history", []) if isinstance(entry, dict)]
    summary = TrainingSummary(source=str(state_path))
    summary.global_step = state.get("global_step") if isinstance(state.get("global_step"), int) else None
    summary.max_steps = state.get("max_steps") if isinstance(state.get("max_steps"), int) else None
    summary.epochs = _finite(state.get("epoch"))
    summary.per_device_batch_size = state.get("train_batch_size") if isinstance(state.get("train_batch_size"), int) else None

    losses = [(int(e.get("step", 0)), _finite(e["loss"])) for e in history if "loss" in e]
    losses = [(step, value) for step, value in losses if value is not None]
    if losses:
        values = [value for _, value in losses]
        summary.first_loss, summary.last_loss, summary.min_loss = values[0], values[-1], min(values)
        summary.loss_curve = _curve(losses)
    rates = [_finite(e.get("learning_rate")) for e in history if "learning_rate" in e]
    rates = [r for r in rates if r is not None]
    if rates:
        summary.peak_learning_rate, summary.final_learning_rate = max(rates), rates[-1]
    evals = [_finite(e.get("eval_loss")) for e in history if "eval_loss" in e]
    evals = [e for e in evals if e is not None]
    summary.last_eval_loss = evals[-1] if evals else None
    final = next((e for e in reversed(history) if "train_runtime" in e), {})
    summary.runtime_seconds = _finite(final.get("train_runtime"))
    summary.mean_train_loss = _finite(final.get("train_loss"))

    # Files written next to the state: the run folder is the state's folder or its parent (checkpoint).
    run_dirs = [state_path.parent] if state_path.parent == folder else [folder, state_path.parent]
    for run_dir in run_dirs:
        for name in ("train_results.json", "all_results.json"):
            if (run_dir / name).is_file() and summary.runtime_seconds is None:
                metrics = _load_json(run_dir / name)
                if isinstance(metrics, dict):
                    summary.runtime_seconds = _finite(metrics.get("train_runtime"))
                    summary.mean_train_loss = summary.mean_train_loss or _finite(metrics.get("train_loss"))
        args_path = run_dir / "training_args.json"
        if args_path.is_file():
            args = _load_json(args_path)
            if isinstance(args, dict):
                _apply_training_args(summary, args)
        info_path = run_dir / "run_info.json"
        if info_path.is_file():
            info = _load_json(info_path)
            if isinstance(info, dict):
                summary.hardware = summary.hardware or (str(info["hardware"]) if info.get("hardware") else None)
                if isinstance(info.get("world_size"), int):
                    summary.world_size = info["world_size"]
                summary.objective = summary.objective or (str(info["objective"]) if info.get("objective") else None)
                if isinstance(info.get("datasets"), list):
                    summary.datasets = [str(d) for d in info["datasets"]]
    return summary


def _apply_training_args(summary: TrainingSummary, args: dict[str, Any]) -> None:
    if isinstance(args.get("per_device_train_batch_size"), int):
        summary.per_device_batch_size = args["per_device_train_batch_size"]
    if isinstance(args.get("gradient_accumulation_steps"), int):
        summary.gradient_accumulation_steps = args["gradient_accumulation_steps"]
    if args.get("lr_scheduler_type"):
        summary.lr_scheduler = str(args["lr_scheduler_type"])
    if _finite(args.get("learning_rate")) is not None:
        summary.peak_learning_rate = _finite(args["learning_rate"])
    if _finite(args.get("warmup_ratio")):
        summary.warmup = f"{args['warmup_ratio']:g} of the steps"
    elif isinstance(args.get("warmup_steps"), (int, float)) and args["warmup_steps"]:
        # transformers 5 reads a warmup_steps value below 1 as a fraction of all steps
        steps = args["warmup_steps"]
        summary.warmup = f"{steps:g} of the steps" if steps < 1 else f"{steps:g} steps"
    if args.get("bf16"):
        summary.precision = "bf16"
    elif args.get("fp16"):
        summary.precision = "fp16"
    elif "bf16" in args or "fp16" in args:
        summary.precision = "fp32"
    dims = args.get("matryoshka_dims")
    if isinstance(dims, list) and all(isinstance(d, int) for d in dims):
        summary.matryoshka_dims = sorted(dims, reverse=True)
    for key in ("objective", "loss_mode", "mode"):
        if isinstance(args.get(key), str) and summary.objective is None:
            summary.objective = args[key]


__all__ = ["TRAINER_STATE", "TrainingSummary", "find_trainer_state", "read_training_summary"]
