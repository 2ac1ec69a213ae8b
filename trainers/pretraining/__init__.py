"""LLaRA stage 1: EBAE/EBAR pretraining (bag-of-words prediction of the text and of the next passage)."""

from .collator import PretrainingCollator
from .data import PretrainingDataArguments, load_pretraining_data
from .loss import EbaeEbarLoss, bow_loss_from_logits
from .trainer import LlaraPretrainer, PretrainingArguments

__all__ = [
    "EbaeEbarLoss",
    "LlaraPretrainer",
    "PretrainingArguments",
    "PretrainingCollator",
    "PretrainingDataArguments",
    "bow_loss_from_logits",
    "load_pretraining_data",
]
