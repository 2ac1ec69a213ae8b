"""LLaRA stage 1: EBAE/EBAR pretraining (bag-of-words prediction of the text and of the next passage).

The names below are imported on first use, so that ``llara pretrain --help`` does not load the model code.
"""

from importlib import import_module

_EXPORTS = {
    "EbaeEbarLoss": ".loss",
    "LlaraPretrainer": ".trainer",
    "PretrainingArguments": ".trainer",
    "PretrainingCollator": ".collator",
    "PretrainingDataArguments": ".data",
    "bow_loss_from_logits": ".loss",
    "load_pretraining_data": ".data",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
