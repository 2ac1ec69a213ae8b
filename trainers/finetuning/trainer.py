"""LLaRA stage 2 (contrastive fine-tuning) on sentence-transformers' trainer: arguments, Trainer, ``finetune``.

The model being trained is a ``SentenceTransformer`` whose single module is the Hub-shipped LLaRA encoder
(:class:`modeling_llara.sentence_llara.LlaraSentenceEncoder`), so the ecosystem's trainer, losses,
evaluators and callbacks apply unchanged. The objective is sentence-transformers'
``MultipleNegativesRankingLoss`` / ``CachedMultipleNegativesRankingLoss`` (see
:mod:`trainers.finetuning.loss`). What LLaRA adds, each in a small override:

* :class:`LlaraDataCollator`: the first column (the query) gets the query prompt, every other column the
  passage prompt, with the released per-side length budgets (query 64 / passage 160 tokens, prompt included);
* :class:`LlaraFinetuneTrainer` writes checkpoints as the inner ``LlaraModel`` (a full model, or the peft
  adapter under LoRA) and resumes from them, so that checkpoints, ZeRO-3 gathering and the final merge work
  on the model class that ships, not on a sentence-transformers folder; its ``compute_loss`` runs under
  :func:`~trainers.cpu_attention.cpu_bf16_training_attention` (fp32 attention while training in bf16 on CPU).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.losses import uses_gradient_cache
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
from transformers import Trainer

from trainers.finetuning.data import ContrastiveDataset, load_examples
from trainers.finetuning.loss import DEFAULT_TEMPERATURE, contrastive_loss, loss_config
from trainers.lora import LoraArguments
from trainers.sharded import init_deepspeed_comm, is_sharded, refuse_lora_under_fsdp, save_gathered, zero3_init_disabled

logger = logging.getLogger(__name__)

# Released recipe (FlagEmbedding research/LLARA fine-tuning): totals including the LLaRA prompt.
DEFAULT_QUERY_MAX_LENGTH = 64
DEFAULT_PASSAGE_MAX_LENGTH = 160
QUERY_TASK, DOCUMENT_TASK = "query", "document"
# Fine-tuned exports leave `auto` inference to the hardware: bf16 holds after fine-tuning (see STAGE1_AUTO_DTYPE
# in trainers.pretraining.run for the stage-1 choice).
FINETUNED_AUTO_DTYPE = "auto"


@dataclass
class LlaraFinetuneConfig(SentenceTransformerTrainingArguments, LoraArguments):
    """Training arguments of LLaRA contrastive fine-tuning; defaults follow the released recipe.

    ``per_device_train_batch_size`` counts *queries*; each brings ``group_size`` passages. The LoRA options
    (``use_lora``, ``lora_r``, ...) come from :class:`trainers.lora.LoraArguments`.
    """

    temperature: float = field(
        default=DEFAULT_TEMPERATURE, metadata={"help": "InfoNCE temperature: scores are q.p / temperature (released: 0.01)."}
    )
    group_size: int = field(default=16, metadata={"help": "Passages per query: 1 positive + group_size-1 hard negatives (released: 16)."})
    query_max_length: int = field(
        default=DEFAULT_QUERY_MAX_LENGTH, metadata={"help": "Total query length in tokens, LLaRA prompt included (released: 64)."}
    )
    passage_max_length: int = field(
        default=DEFAULT_PASSAGE_MAX_LENGTH, metadata={"help": "Total passage length in tokens, LLaRA prompt included (released: 160)."}
    )
    gradcache_chunk_size: int = field(
        default=0,
        metadata={"help": "GradCache (CachedMultipleNegativesRankingLoss): encode in mini-batches of this many rows "
                          "(same gradients, less memory). 0 = off."},
    )
    gather_across_devices: bool = field(
        default=True, metadata={"help": "Use the passages of all devices as negatives (all-gather; local slice keeps its gradient)."}
    )
    matryoshka_dims: list[int] | None = field(
        default=None,
        metadata={"help": "Also train these embedding prefixes with MatryoshkaLoss (e.g. 576 256 128), so that "
                          "SentenceTransformer(..., truncate_dim=d) works. Not part of the released recipe."},
    )
    no_negatives: Literal["random", "skip", "error"] = field(
        default="random",
        metadata={"help": "Queries without negatives: random corpus passages, skip them, or stop with an error."},
    )
    # Released-recipe defaults of stock arguments.
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate (released: 3e-4 with LoRA)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the queries (released: 1)."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warmup: steps (>= 1) or a fraction of all steps (released: 0.1)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Queries per device and step."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.gradcache_chunk_size < 0:
            raise ValueError(f"gradcache_chunk_size must be >= 0, got {self.gradcache_chunk_size}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be >= 1 (or -1 to train num_train_epochs), got {self.max_steps}")
        if not self.num_train_epochs > 0 and self.max_steps == -1:
            raise ValueError(f"num_train_epochs must be > 0, got {self.num_train_epochs}")
        for name in ("query_max_length", "passage_max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def make_loss(self, model):
        """The configured sentence-transformers loss for ``model`` (a ``SentenceTransformer``)."""
        return contrastive_loss(
            model,
            temperature=self.temperature,
            # one process has nothing to gather (sentence-transformers would warn on every step)
            gather_across_devices=self.gather_across_devices and self.world_size > 1,
            gradcache_chunk_size=self.gradcache_chunk_size or None,
            matryoshka_dims=self.matryoshka_dims,
        )


@dataclass
class LlaraDataCollator(SentenceTransformerDataCollator):
    """sentence-transformers' collator with LLaRA's routing: column 0 is the query, the others are passages.

    An explicit ``router_mapping`` (column name -> ``"query"``/``"document"``) wins; unmapped columns fall back
    to their position, so a dataset need not name its columns in any particular way.
    """

    def _get_task_for_column(self, column_name: str, column_position: int, router_mapping: dict[str, str]) -> str | None:
        return router_mapping.get(column_name) or (QUERY_TASK if column_position == 0 else DOCUMENT_TASK)


_INNER_PREFIX = "0.auto_model."  # state-dict keys of the LLaRA model inside the SentenceTransformer


def llara_backbone(model):
    """The ``LlaraModel`` (or its peft wrapper) inside a ``SentenceTransformer`` built by :func:`build_sentence_model`."""
    model = getattr(model, "module", model)  # unwrap DDP
    return model[0].auto_model


class LlaraFinetuneTrainer(SentenceTransformerTrainer):
    """``SentenceTransformerTrainer`` for LLaRA: LLaRA routing and budgets, checkpoints as the shipped model class."""

    def __init__(self, *args, **kwargs):
        training_args, model = kwargs.get("args"), kwargs.get("model")
        if kwargs.get("loss") is None and isinstance(training_args, LlaraFinetuneConfig) and model is not None:
            kwargs["loss"] = training_args.make_loss(model)
        super().__init__(*args, **kwargs)

    def add_model_card_callback(self, default_args_dict) -> None:
        # The model card of a LLaRA folder is written by ``llara export`` from the run's own logs and results
        # (hub_card); sentence-transformers' card callback would only spend time encoding widget examples.
        return None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from trainers.cpu_attention import cpu_bf16_training_attention  # model code: not loaded by `--help`

        # A GradCache loss re-embeds its inputs during backward, after this call has returned: those forwards
        # must find the same (fp32 on a bf16 CPU run) attention, so it stays selected for them.
        losses = self.loss.values() if isinstance(self.loss, dict) else [self.loss]
        replays = any(uses_gradient_cache(loss) for loss in losses)
        with cpu_bf16_training_attention(llara_backbone(model), keep=replays):
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def get_data_collator(self, model, args, processing_class=None):
        max_length = None
        if isinstance(args, LlaraFinetuneConfig):
            max_length = {QUERY_TASK: args.query_max_length, DOCUMENT_TASK: args.passage_max_length}
        return LlaraDataCollator(
            preprocess_fn=model.preprocess, router_mapping=args.router_mapping, prompts=args.prompts, max_length=max_length
        )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # sentence-transformers would write a sentence-transformers folder and ignore ``state_dict`` (the gathered
        # weights of a ZeRO-3 run); LLaRA checkpoints are the inner model: full weights, or the adapter under LoRA.
        import torch
        from transformers.trainer import TRAINING_ARGS_NAME

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        if state_dict is not None:
            state_dict = {key[len(_INNER_PREFIX):]: value for key, value in state_dict.items() if key.startswith(_INNER_PREFIX)}
        llara_backbone(self.model).save_pretrained(output_dir, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, checkpoint_path: str, model=None) -> None:
        # The checkpoint holds the inner model (see ``_save``): transformers' loader restores full weights or the
        # peft adapter into it.
        Trainer._load_from_checkpoint(self, checkpoint_path, model=llara_backbone(self.model))


# ---- end-to-end run ------------------------------------------------------------------------------
def load_finetune_model(model_name_or_path: str | os.PathLike, args: LlaraFinetuneConfig):
    """``(model, tokenizer)``: the shipped ``LlaraModel`` (+ LoRA when ``args.use_lora``)."""
    import torch
    from transformers import AutoTokenizer

    from modeling_llara import LlaraModel
    from trainers.model_folders import require_llara_folder

    refuse_lora_under_fsdp(args, args.use_lora and args.train_special_tokens)
    path = str(model_name_or_path)
    require_llara_folder(path, what="--model_name_or_path")  # before any weight is read
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    init_deepspeed_comm(args)
    # fp32 master weights; --bf16/--fp16 run the compute under autocast.
    model = LlaraModel.from_pretrained(path, dtype=torch.float32)
    if args.use_lora:
        from transformers import set_seed

        from trainers.lora import apply_lora

        set_seed(args.seed)  # LoRA's A matrices are random: the same --seed must start from the same adapter
        model = apply_lora(model, **args.lora_options())
        if args.activation_checkpointing:
            # Frozen embeddings give checkpointed blocks inputs without grad; this keeps the graph alive.
            model.enable_input_require_grads()
    return model, tokenizer


def build_sentence_model(model, tokenizer, model_name_or_path: str | os.PathLike):
    """A ``SentenceTransformer`` around a loaded (possibly peft-wrapped) ``LlaraModel``: what the trainer trains."""
    from sentence_transformers import SentenceTransformer

    from modeling_llara.sentence_llara import LlaraSentenceEncoder

    module = LlaraSentenceEncoder(str(model_name_or_path), model=model, tokenizer=tokenizer)
    return SentenceTransformer(modules=[module], similarity_fn_name="cosine")


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
    evaluator=None,
    streaming: bool = False,
) -> FinetuneResult:
    """Fine-tune a LLaRA model on ``train_data`` (jsonl, BEIR folder or datasets dataset).

    The merged full model goes to ``final_dir`` (default ``<output_dir>/final``); the data report
    and a run summary are written next to it. ``resume_from_checkpoint`` takes a checkpoint folder, or
    ``True``/``"last"`` for the last checkpoint in ``output_dir`` (``args.resume_from_checkpoint`` is used
    when this is None). ``evaluator``: any sentence-transformers evaluator (e.g.
    ``InformationRetrievalEvaluator``), run at the Trainer's ``eval_strategy``. ``streaming``: read a jsonl /
    JSON / parquet file with ``datasets``' streaming mode (see :func:`~trainers.finetuning.data.load_examples`).
    """
    from trainers.io import atomic_write_json
    from trainers.recipes import resolve_checkpoint

    examples, corpus, report = load_examples(train_data, split=split, streaming=streaming)
    groups = ContrastiveDataset(
        examples, group_size=args.group_size, corpus=corpus, no_negatives=args.no_negatives, seed=args.data_seed or args.seed,
        report=report,
    )
    logger.info("training data: %s", report.summary())
    backbone, tokenizer = load_finetune_model(model_name_or_path, args)
    model = build_sentence_model(backbone, tokenizer, model_name_or_path)
    trainer = LlaraFinetuneTrainer(
        model=model, args=args, train_dataset=groups.to_dataset(), processing_class=tokenizer, evaluator=evaluator
    )
    if resume_from_checkpoint is None:
        resume_from_checkpoint = args.resume_from_checkpoint
    output = trainer.train(resume_from_checkpoint=resolve_checkpoint(resume_from_checkpoint, args.output_dir))
    from trainers.run_records import save_run_records

    save_run_records(trainer, objective="contrastive (InfoNCE)",
                     datasets=[str(train_data) if isinstance(train_data, (str, os.PathLike)) else type(train_data).__name__])
    out_dir = None
    if save_final:  # every rank: a sharded run gathers its weights collectively
        out_dir = export_finetuned_run(trainer, tokenizer, model_name_or_path, final_dir or Path(args.output_dir) / "final")
    if out_dir is not None:
        summary = {
            "model": str(model_name_or_path),
            "loss": loss_config(trainer.loss),
            "group_size": args.group_size,
            "query_max_length": args.query_max_length,
            "passage_max_length": args.passage_max_length,
            "lora": args.lora_summary(),
            "train_metrics": output.metrics,
            "data": report.to_dict(),
            "data_summary": report.summary(),
        }
        atomic_write_json(Path(args.output_dir) / "finetune_summary.json", summary)
    return FinetuneResult(out_dir, dict(output.metrics), report.to_dict(), list(trainer.state.log_history))


def export_finetuned_run(trainer, tokenizer, model_name_or_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path | None:
    """Export the model a finetune ``trainer`` trained; every rank calls it, the main process returns the folder.

    Plain and DDP runs export the live model. Under DeepSpeed ZeRO-3 / FSDP the live weights are shards: the
    Trainer first gathers them into ``<output_dir>/final-gathered`` (full weights, or the adapter alone under
    LoRA, which is then attached to the run's base model rebuilt from ``model_name_or_path``).
    """
    import torch

    from modeling_llara import LlaraModel
    from trainers.lora import merge_and_save

    if not is_sharded(trainer):
        return export_finetuned(llara_backbone(trainer.model), tokenizer, out_dir) if trainer.is_world_process_zero() else None
    staging = Path(trainer.args.output_dir) / "final-gathered"
    if not save_gathered(trainer, staging):
        return None
    with zero3_init_disabled(trainer.args):
        if trainer.args.use_lora:
            return merge_and_save(staging, out_dir, tokenizer, base=str(model_name_or_path), dtype=torch.float32,
                                  auto_dtype=FINETUNED_AUTO_DTYPE, overwrite=True)
        return export_finetuned(LlaraModel.from_pretrained(str(staging), dtype=torch.float32), tokenizer, out_dir)


def export_finetuned(model, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Merge LoRA adapters (when present) and write a full LLaRA folder (AutoModel / SentenceTransformer)."""
    from trainers.lora import merge_and_save

    model = getattr(model, "module", model)  # unwrap DDP
    return merge_and_save(model, out_dir, tokenizer, auto_dtype=FINETUNED_AUTO_DTYPE, overwrite=True)


__all__ = [
    "DEFAULT_PASSAGE_MAX_LENGTH",
    "DEFAULT_QUERY_MAX_LENGTH",
    "FinetuneResult",
    "LlaraDataCollator",
    "LlaraFinetuneConfig",
    "LlaraFinetuneTrainer",
    "build_sentence_model",
    "export_finetuned",
    "export_finetuned_run",
    "finetune",
    "llara_backbone",
    "load_finetune_model",
]
