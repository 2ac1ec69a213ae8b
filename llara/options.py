"""Command-line options that several ``llara`` commands share, each defined once.

``--dtype``: the compute dtype of LLaRA models. Its choices are :data:`modeling_llara.DTYPE_CHOICES` and what
``auto`` means is decided by :func:`modeling_llara.resolve_dtype` alone; the argparse commands (``search``,
``index``, ``mine``, ``evaluate``) add it with :func:`add_dtype_argument`, dataclass-parsed ones (``pipeline``)
declare it with :func:`dtype_field`. Both carry :data:`DTYPE_HELP`.
"""

from __future__ import annotations

import argparse
from dataclasses import field

# The shipped model file's values (modeling_llara/modeling_llara.py), restated so that `llara <command> --help` does
# not import torch; tests/test_layering.py checks that they stay equal.
DTYPE_CHOICES = ("auto", "float32", "bfloat16")
DTYPE_ENV = "LLARA_DTYPE"
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")

DTYPE_DEFAULT = "auto"
_CPU_FLAGS = "/".join(flag.upper().replace("_", "-") for flag in FAST_BF16_CPU_FLAGS)  # AMX-BF16/AVX512-BF16
DTYPE_HELP = (
    f"Compute dtype of LLaRA models, one of {', '.join(DTYPE_CHOICES)}. {DTYPE_DEFAULT} = ${DTYPE_ENV} when set, else "
    "float32 for a model whose config sets auto_dtype=float32 (stage-1 exports), else bfloat16 where the hardware "
    f"runs it natively (CPUs with {_CPU_FLAGS}, CUDA devices with bf16) and float32 elsewhere. Pooling and "
    "normalization stay float32; training runs under bf16 autocast over float32 master weights."
)


def add_dtype_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str = DTYPE_DEFAULT):
    """Add ``--dtype`` (choices :data:`DTYPE_CHOICES`, help :data:`DTYPE_HELP`) to an argparse parser or group."""
    return parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=default,
                               help=f"{DTYPE_HELP} (default {default})")


def dtype_field(default: str = DTYPE_DEFAULT):
    """The ``dtype`` field of a dataclass parsed by ``HfArgumentParser``; annotate it ``Literal[DTYPE_CHOICES]``."""
    return field(default=default, metadata={"help": DTYPE_HELP})


__all__ = ["DTYPE_CHOICES", "DTYPE_DEFAULT", "DTYPE_HELP", "add_dtype_argument", "dtype_field"]
