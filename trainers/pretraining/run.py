"""Assembling a pretraining run: model (LLaRA folder or a base LM converted in memory), optional LoRA,
data, collator, trainer, and the final export of a LLaRA folder.

Kept apart from the command-line script so that tests and other pipelines build the same trainer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

import torch

from trainers.lora import LoraArguments
from trainers.sharded import init_deepspeed_comm, is_sharded, refuse_lora_under_fsdp, save_gathered, zero3_init_disabled

from .data import PretrainingDataArguments, load_pretraining_data
from .trainer import LlaraPretrainer, PretrainingArguments

logger = logging.getLogger(__name__)

# Stage-1 exports pin `auto` inference to fp32 (our choice): without contrastive fine-tuning, bf16 inference
# cost these models about 0.01 nDCG@10 zero-shot (benchmarks/results/bf16_retrieval_quality_pretrained_seeds*.json);
# fine-tuned exports stay within 0.003 and leave the choice to the hardware.
STAGE1_AUTO_DTYPE = "float32"


@dataclass
class PretrainingModelArguments(LoraArguments):
    """Which model to adapt and how (full-parameter, as released, or LoRA: see :class:`trainers.lora.LoraArguments`)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A LLaRA folder (from `llara init`, with an LM head) or a causal-LM folder/.gguf converted on the fly "
                  "(default: the embedded SmolLM2-135M-Instruct)."},
    )
    export_dir: str | None = field(
        default=None, metadata={"help": "Where the final LLaRA model folder is written (default: <output_dir>/final)."}
    )
    attn_implementation: Literal["sdpa", "eager"] = field(
        default="sdpa", metadata={"help": "'sdpa' or 'eager': the one-pass input needs a custom 4D mask (no flash-attention)."}
    )
    model_dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32",
        metadata={"help": "Dtype the weights are loaded in ('float32', 'bfloat16', 'float16'); with --bf16/--fp16 keep float32 "
                  "for mixed precision."},
    )
    # The released stage 1 trains every weight; LoRA here is an option (its defaults are the fine-tuning recipe's).
    use_lora: bool = field(
        default=False,
        metadata={"help": "Train LoRA adapters (+ the 16 special-token rows, see --train_special_tokens) instead of "
                          "all weights (released: all weights)."},
    )


def load_pretraining_model(args: PretrainingModelArguments):
    """``(LlaraForPretraining, tokenizer)`` from a LLaRA folder, or a base LM converted in memory."""
    from transformers import AutoConfig, AutoTokenizer

    from modeling_llara import LlaraForPretraining
    from trainers.convert import build_llara, default_base, load_base
    from trainers.model_folders import is_llara_folder

    dtype = getattr(torch, args.model_dtype)
    source = args.model_name_or_path or default_base()
    if is_llara_folder(source):
        config = AutoConfig.from_pretrained(source, trust_remote_code=True)
        if "LlaraForPretraining" not in (config.architectures or []) and not config.tie_word_embeddings:
            raise ValueError(
                f"{source} holds no LM head (architectures {config.architectures}): EBAE/EBAR needs one; run "
                "`llara init` on the causal LM instead of on an embedder"
            )
        model = LlaraForPretraining.from_pretrained(source, dtype=dtype, attn_implementation=args.attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
    else:
        base, tokenizer, has_head = load_base(source, dtype=dtype)
        if not has_head:
            raise ValueError(f"{source} has no LM head: EBAE/EBAR pretraining needs a causal LM")
        model, tokenizer = build_llara(base, tokenizer, has_head)
        model.config._attn_implementation = args.attn_implementation
        model.model.config._attn_implementation = args.attn_implementation
    return model, tokenizer


def build_pretrainer(
    model_args: PretrainingModelArguments,
    data_args: PretrainingDataArguments,
    training_args: PretrainingArguments,
    callbacks: list | None = None,
    sources: list | None = None,
):
    """``(trainer, tokenizer)`` ready for ``trainer.train()``."""
    from transformers import set_seed

    # Seeded before anything random is built (LoRA's A matrices): the Trainer seeds only once it exists, so
    # without this two runs with the same --seed started from different LoRA weights.
    set_seed(training_args.seed)
    init_deepspeed_comm(training_args)
    model, tokenizer = load_pretraining_model(model_args)
    from .collator import PretrainingCollator

    collator = PretrainingCollator(
        tokenizer,
        model.config,
        max_length=data_args.max_length,
        max_target_tokens=data_args.max_target_tokens,
        remove_stopwords=data_args.remove_stopwords,
    )
    dataset = load_pretraining_data(tokenizer, data_args, collator.text_budget, sources=sources)
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps: a stream has no known length")
    if model_args.use_lora:
        from trainers.lora import apply_lora

        refuse_lora_under_fsdp(training_args, model_args.use_lora and model_args.train_special_tokens)
        model = apply_lora(model, **model_args.lora_options())
    model.train()
    trainer = LlaraPretrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        loss=training_args.make_loss(collator.ignore_ids),
    )
    return trainer, tokenizer


def export_pretrained(trainer, tokenizer, model_args: PretrainingModelArguments) -> Path | None:
    """Write the trained model as a LLaRA folder (LoRA merged); returns its path on the main process."""
    from modeling_llara import LlaraForPretraining
    from trainers.lora import merge_and_save

    out = Path(model_args.export_dir or Path(trainer.args.output_dir) / "final")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if is_sharded(trainer):
        # Sharded weights: let the Trainer gather them into a full checkpoint (the adapter alone under
        # LoRA), then export from that folder on the main process.
        staging = Path(trainer.args.output_dir) / "final-gathered"
        if not save_gathered(trainer, staging):
            return None
        with zero3_init_disabled(trainer.args):
            if model_args.use_lora:
                return export_saved_adapter(model_args, staging, tokenizer, out)
            model = LlaraForPretraining.from_pretrained(staging)
    if not trainer.is_world_process_zero():
        return None
    return merge_and_save(model, out, tokenizer, auto_dtype=STAGE1_AUTO_DTYPE, overwrite=True)


def export_saved_adapter(model_args: PretrainingModelArguments, adapter_dir: Path, tokenizer, out: Path) -> Path:
    """Rebuild the run's base model, attach the adapter saved in ``adapter_dir`` and write the merged folder.

    The path for LoRA under DeepSpeed ZeRO-3 / FSDP, where the live model's weights are shards: the
    Trainer saves the gathered adapter (LoRA matrices + special-token rows), the base is rebuilt exactly
    as the run built it (a LLaRA folder, or the same deterministic in-memory conversion of a base LM).
    """
    from trainers.lora import merge_and_save, require_adapter_dir

    require_adapter_dir(adapter_dir)  # before the base is rebuilt
    base, _ = load_pretraining_model(model_args)
    return merge_and_save(adapter_dir, out, tokenizer, base=base, auto_dtype=STAGE1_AUTO_DTYPE, overwrite=True)


def pretrain(
    model_args: PretrainingModelArguments, data_args: PretrainingDataArguments, training_args: PretrainingArguments
) -> Path | None:
    """A whole stage-1 run (``llara pretrain``): train (resuming when asked), keep the run records, export.

    Returns the exported LLaRA folder on the main process (None on the others).
    """
    from trainers.io import atomic_write_json
    from trainers.run_records import save_run_records
    from trainers.recipes import resolve_checkpoint

    trainer, tokenizer = build_pretrainer(model_args, data_args, training_args)
    trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir))
    save_run_records(trainer, objective=f"ebae/ebar ({training_args.loss_mode})", datasets=data_args.train_files)
    out = export_pretrained(trainer, tokenizer, model_args)
    stats = getattr(trainer.train_dataset, "stats", None)
    if out is not None and stats is not None:
        atomic_write_json(Path(training_args.output_dir) / "data_stats.json", stats.as_dict())
    return out


__all__ = ["PretrainingModelArguments", "build_pretrainer", "pretrain", "export_pretrained", "export_saved_adapter", "load_pretraining_model",
           "zero3_init_disabled"]
