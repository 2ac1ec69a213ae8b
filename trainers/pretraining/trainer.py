"""``LlaraPretrainer``: LLaRA stage 1 (EBAE/EBAR) as a ``transformers.Trainer`` subclass.

The model is the shipped ``modeling_llara.pretraining_llara.LlaraForPretraining`` (optionally wrapped by
peft); one forward gives both suffixes' special-token logits, :class:`~trainers.pretraining.loss.EbaeEbarLoss`
combines them. Only ``compute_loss`` is overridden (plus ``log``, to report the ``ebae``, ``ebar`` and ``lm``
terms next to ``loss``); it runs the forward under :func:`~trainers.cpu_attention.cpu_bf16_training_attention`
(fp32 attention while training in bf16 on CPU). ``model_accepts_loss_kwargs`` is False: the loss is a
per-micro-batch mean and the Trainer divides it by the accumulation steps, so batch 8 x 1 and batch 2 x 4
give the same update (exactly for the bag-of-words terms, which average rows; for the LM term when
micro-batches hold equal token counts, as in the released code's per-device token mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import Trainer, TrainingArguments

from .loss import LOSS_MODES, EbaeEbarLoss


@dataclass
class PretrainingArguments(TrainingArguments):
    """TrainingArguments of EBAE/EBAR pretraining; the defaults follow the released run where it is known."""

    loss_mode: Literal["reference", "paper"] = field(
        default="reference",
        metadata={"help": f"One of {LOSS_MODES}: 'reference' = LM + (EBAE/10 + EBAR/10)/2 (released code); 'paper' = EBAE + EBAR."},
    )
    lm_weight: float | None = field(default=None, metadata={"help": "Weight of the LM term (default: from --loss_mode)."})
    ebae_weight: float | None = field(default=None, metadata={"help": "Weight of the EBAE term (default: from --loss_mode)."})
    ebar_weight: float | None = field(default=None, metadata={"help": "Weight of the EBAR term (default: from --loss_mode)."})
    lm_chunk_size: int = field(
        default=0,
        metadata={"help": "Text tokens per LM-head chunk of the LM term (bounds the vocab-sized logits in memory). "
                          "0 = as many as fit 64 MiB of fp32 logits (341 for a 49k vocabulary, 524 for 32k)."},
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (released: 1e-5, full-parameter)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Linear warmup fraction (released: 10%%)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the text columns: the collator tokenizes them."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.loss_mode not in LOSS_MODES:
            raise ValueError(f"--loss_mode must be one of {LOSS_MODES}, got {self.loss_mode!r}")
        if self.lm_chunk_size < 0:
            raise ValueError(f"--lm_chunk_size must be >= 0 (0 = sized from the vocabulary), got {self.lm_chunk_size}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"--max_steps must be >= 1 (or -1 to train --num_train_epochs), got {self.max_steps}")
        for name in ("lm_weight", "ebae_weight", "ebar_weight"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")

    def make_loss(self, ignore_ids: list[int] | None = None) -> EbaeEbarLoss:
        return EbaeEbarLoss(
            mode=self.loss_mode,
            lm_weight=self.lm_weight,
            ebae_weight=self.ebae_weight,
            ebar_weight=self.ebar_weight,
            ignore_ids=list(ignore_ids or []),
        )


class LlaraPretrainer(Trainer):
    """Trainer of EBAE/EBAR pretraining. ``loss`` defaults to ``args.make_loss()``."""

    def __init__(self, *args, loss: EbaeEbarLoss | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # The loss is a per-micro-batch mean: let the Trainer divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.loss = loss if loss is not None else self.args.make_loss()
        self._parts_sum: dict[str, torch.Tensor] = {}
        self._parts_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from trainers.cpu_attention import cpu_bf16_training_attention  # model code: not loaded by `--help`

        with cpu_bf16_training_attention(model):
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                segment_ids=inputs["segment_ids"],
                lm_labels=inputs["lm_labels"] if self.loss.uses_lm else None,
                lm_chunk_size=getattr(self.args, "lm_chunk_size", 0) or None,
            )
        loss, parts = self.loss(outputs, inputs["ebae_target_ids"], inputs["ebar_target_ids"])
        if model.training:
            for name, value in parts.items():
                self._parts_sum[name] = self._parts_sum.get(name, 0.0) + value.float()
            self._parts_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._parts_count:
            names = sorted(self._parts_sum)
            means = torch.stack([self._parts_sum[n] for n in names]) / self._parts_count  # (terms,)
            means = self.accelerator.reduce(means.to(self.accelerator.device), reduction="mean")
            logs.update({name: round(value, 4) for name, value in zip(names, means.tolist())})
            self._parts_sum, self._parts_count = {}, 0
        super().log(logs, *args, **kwargs)


__all__ = ["LlaraPretrainer", "PretrainingArguments"]
