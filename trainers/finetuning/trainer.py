"""LLaRA stage 2 (contrastive fine-tuning): arguments, Trainer and the end-to-end ``finetune`` run.

``LlaraFinetuneTrainer`` overrides ``compute_loss`` only; the InfoNCE loss, the cross-device gather
and GradCache live in :class:`~trainers.finetuning.loss.LlaraContrastiveLoss`. ``finetune`` wires the
pieces: model (+ LoRA), data (+ report), collator, Trainer, resume, then merges the adapters and
writes a full LLaRA folder with ``trainers.convert.save_llara``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback, TrainingArguments

from trainers.finetuning.collator import DEFAULT_PASSAGE_MAX_LENGTH, DEFAULT_QUERY_MAX_LENGTH, LlaraContrastiveCollator
from trainers.finetuning.data import NO_NEGATIVE_POLICIES, ContrastiveDataset, load_examples
from trainers.finetuning.loss import LlaraContrastiveLoss
from trainers.lora import DEFAULT_LORA_ALPHA, DEFAULT_LORA_DROPOUT, DEFAULT_LORA_R, DEFAULT_TARGET_MODULES
from trainers.sharded import init_deepspeed_comm, is_sharded, refuse_lora_under_fsdp, save_gathered, zero3_init_disabled

logger = logging.getLogger(__name__)


@dataclass
class LlaraFinetuneConfig(TrainingArguments):
    """Training arguments of LLaRA contrastive fine-tuning; defaults follow the released recipe.

    ``per_device_train_batch_size`` counts *queries*; each brings ``group_size`` passages.
    """

    temperature: float = field(default=0.01, metadata={"help": "InfoNCE temperature: scores are q.p / temperature (released: 0.01)."})
    group_size: int = field(default=16, metadata={"help": "Passages per query: 1 positive + group_size-1 hard negatives (released: 16)."})
    query_max_length: int = field(
        default=DEFAULT_QUERY_MAX_LENGTH, metadata={"help": "Total query length in tokens, LLaRA prompt included (released: 64)."}
    )
    passage_max_length: int = field(
        default=DEFAULT_PASSAGE_MAX_LENGTH, metadata={"help": "Total passage length in tokens, LLaRA prompt included (released: 160)."}
    )
    gradcache_chunk_size: int = field(
        default=0, metadata={"help": "GradCache: encode in chunks of this many rows (same gradients, less memory). 0 = off."}
    )
    gather_across_devices: bool = field(
        default=True, metadata={"help": "Use the passages of all devices as negatives (all-gather; local slice keeps its gradient)."}
    )
    no_negatives: str = field(
        default="random",
        metadata={"help": f"Queries without negatives: one of {NO_NEGATIVE_POLICIES} (random = random corpus passages)."},
    )
    use_lora: bool = field(default=True, metadata={"help": "Train LoRA adapters and the 16 special-token rows (released recipe); False = all weights."})
    lora_r: int = field(default=DEFAULT_LORA_R, metadata={"help": "LoRA rank (released: 64)."})
    lora_alpha: int = field(default=DEFAULT_LORA_ALPHA, metadata={"help": "LoRA alpha (released: 16)."})
    lora_dropout: float = field(default=DEFAULT_LORA_DROPOUT, metadata={"help": "LoRA dropout (released: 0.1)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={"help": "Linear layers that get LoRA adapters (released: q,k,v,o,gate,up,down projections)."},
    )
    train_special_tokens: bool = field(
        default=True, metadata={"help": "With LoRA, also train the embedding rows of <s1>..<s16> (new tokens)."}
    )
    # Released-recipe defaults of stock arguments.
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate (released: 3e-4 with LoRA)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the queries (released: 1)."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warmup: steps (>= 1) or a fraction of all steps (released: 0.1)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Queries per device and step."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator reads the raw query/passages fields."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.no_negatives not in NO_NEGATIVE_POLICIES:
            raise ValueError(f"no_negatives must be one of {NO_NEGATIVE_POLICIES}, got {self.no_negatives!r}")
        if self.gradcache_chunk_size < 0:
            raise ValueError(f"gradcache_chunk_size must be >= 0, got {self.gradcache_chunk_size}")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False for LLaRA fine-tuning (the collator needs the raw texts)")

    def make_loss(self) -> LlaraContrastiveLoss:
        return LlaraContrastiveLoss(
            temperature=self.temperature,
            gather_across_devices=self.gather_across_devices,
            gradcache_chunk_size=self.gradcache_chunk_size or None,
        )


class _SetEpochCallback(TrainerCallback):
    """Tell the dataset the epoch, so each epoch draws fresh positives and negatives (resume-safe)."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(state.epoch or 0))


class LlaraFinetuneTrainer(Trainer):
    """Trainer for LLaRA contrastive fine-tuning: ``compute_loss`` calls the contrastive loss module."""

    def __init__(self, *args, loss: LlaraContrastiveLoss | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # The loss is a mean per step and the model's forward takes **kwargs: without this the Trainer
        # would assume the model scales for gradient accumulation itself and skip the division.
        self.model_accepts_loss_kwargs = False
        self.loss = loss if loss is not None else self.args.make_loss()
        self.add_callback(_SetEpochCallback())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.loss(model, inputs)
        return (loss, {}) if return_outputs else loss


# ---- end-to-end run ------------------------------------------------------------------------------
def load_finetune_model(model_name_or_path: str | os.PathLike, args: LlaraFinetuneConfig):
    """``(model, tokenizer, builder)``: the shipped ``LlaraModel`` (+ LoRA when ``args.use_lora``)."""
    import torch
    from transformers import AutoTokenizer

    from modeling_llara import LlaraInputBuilder, LlaraModel

    refuse_lora_under_fsdp(args, args.use_lora and args.train_special_tokens)
    path = str(model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    init_deepspeed_comm(args)
    # fp32 master weights; --bf16/--fp16 run the compute under autocast.
    model = LlaraModel.from_pretrained(path, dtype=torch.float32)
    if model.config.model_type != "llara":
        raise ValueError(f"{path} is not a LLaRA model folder: run `llara init` first")
    builder = LlaraInputBuilder(tokenizer, model.config)
    if args.use_lora:
        from transformers import set_seed

        from trainers.lora import apply_lora

        set_seed(args.seed)  # LoRA's A matrices are random: the same --seed must start from the same adapter
        model = apply_lora(
            model,
            r=args.lora_r,
            alpha=args.lora_alpha,
            dropout=args.lora_dropout,
            target_modules=args.lora_target_modules,
            train_special_tokens=args.train_special_tokens,
        )
        if args.activation_checkpointing:
            # Frozen embeddings give checkpointed blocks inputs without grad; this keeps the graph alive.
            model.enable_input_require_grads()
    return model, tokenizer, builder


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class FinetuneResult:
    model_dir: Path | None
    train_metrics: dict[str, float]
    data_report: dict[str, Any]
    log_history: list[dict[str, Any]]


def finetune(
    model_name_or_path: str | os.PathLike,
    train_data: Any,
    args: LlaraFinetuneConfig,
    split: str = "train",
    final_dir: str | os.PathLike | None = None,
    resume_from_checkpoint: str | bool | None = None,
    save_final: bool = True,
) -> FinetuneResult:
    """Fine-tune a LLaRA model on ``train_data`` (jsonl, BEIR folder or datasets dataset).

    The merged full model goes to ``final_dir`` (default ``<output_dir>/final``); the data report
    and a run summary are written next to it. ``resume_from_checkpoint=True`` resumes from the last
    checkpoint in ``output_dir`` when there is one.
    """
    from transformers.trainer_utils import get_last_checkpoint

    examples, corpus, report = load_examples(train_data, split=split)
    dataset = ContrastiveDataset(
        examples, group_size=args.group_size, corpus=corpus, no_negatives=args.no_negatives, seed=args.data_seed or args.seed,
        report=report,
    )
    logger.info("training data: %s", report.summary())
    model, tokenizer, builder = load_finetune_model(model_name_or_path, args)
    collator = LlaraContrastiveCollator(
        builder, query_max_length=args.query_max_length, passage_max_length=args.passage_max_length
    )
    trainer = LlaraFinetuneTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator, processing_class=tokenizer
    )
    if resume_from_checkpoint is True:
        last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        resume_from_checkpoint = last  # None: nothing to resume, start fresh
        if last:
            logger.info("resuming from %s", last)
    output = trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
    from trainers.run_records import save_run_records

    save_run_records(trainer, objective="contrastive (InfoNCE)",
                     datasets=[str(train_data) if isinstance(train_data, (str, os.PathLike)) else type(train_data).__name__])
    out_dir = None
    if save_final:  # every rank: a sharded run gathers its weights collectively
        out_dir = export_finetuned_run(trainer, tokenizer, model_name_or_path, final_dir or Path(args.output_dir) / "final")
    if out_dir is not None:
        summary = {
            "model": str(model_name_or_path),
            "loss": trainer.loss.get_config_dict(),
            "group_size": args.group_size,
            "query_max_length": args.query_max_length,
            "passage_max_length": args.passage_max_length,
            "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                     "target_modules": list(args.lora_target_modules)} if args.use_lora else None,
            "train_metrics": output.metrics,
            "data": report.to_dict(),
            "data_summary": report.summary(),
        }
        _atomic_write_json(Path(args.output_dir) / "finetune_summary.json", summary)
    return FinetuneResult(out_dir, dict(output.metrics), report.to_dict(), list(trainer.state.log_history))


def export_finetuned_run(trainer, tokenizer, model_name_or_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path | None:
    """Export the model a finetune ``trainer`` trained; every rank calls it, the main process returns the folder.

    Plain and DDP runs export the live model. Under DeepSpeed ZeRO-3 / FSDP the live weights are shards: the
    Trainer first gathers them into ``<output_dir>/final-gathered`` (full weights, or the adapter alone under
    LoRA, which is then attached to the run's base model rebuilt from ``model_name_or_path``).
    """
    import torch

    from modeling_llara import LlaraModel

    if not is_sharded(trainer):
        return export_finetuned(trainer.model, tokenizer, out_dir) if trainer.is_world_process_zero() else None
    staging = Path(trainer.args.output_dir) / "final-gathered"
    if not save_gathered(trainer, staging):
        return None
    with zero3_init_disabled(trainer.args):
        if trainer.args.use_lora:
            from trainers.lora import load_lora, require_adapter_dir

            require_adapter_dir(staging)
            model = load_lora(LlaraModel.from_pretrained(str(model_name_or_path), dtype=torch.float32), staging)
        else:
            model = LlaraModel.from_pretrained(str(staging), dtype=torch.float32)
        return export_finetuned(model, tokenizer, out_dir)


def export_finetuned(model, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Merge LoRA adapters (when present) and write a full LLaRA folder (AutoModel / SentenceTransformer)."""
    from trainers.convert import save_llara
    from trainers.lora import merge_lora

    model = getattr(model, "module", model)  # unwrap DDP
    if hasattr(model, "merge_and_unload"):
        model = merge_lora(model)
    model.eval()
    return save_llara(model, tokenizer, out_dir, overwrite=True)


__all__ = [
    "FinetuneResult",
    "LlaraFinetuneConfig",
    "LlaraFinetuneTrainer",
    "export_finetuned",
    "export_finetuned_run",
    "finetune",
    "load_finetune_model",
]
