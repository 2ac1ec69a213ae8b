"""fp32 attention while training in bf16 on CPU: :func:`cpu_bf16_training_attention`.

On CPU, PyTorch's bf16 scaled-dot-product attention has a slow backward (measured: forward + backward of
SmolLM2-sized attention 54 ms in bf16 against 30 ms in fp32, forward alone faster in bf16). While training in
bf16 on CPU the attention therefore runs in fp32: the matmuls of the linear layers, where the time goes,
stay bf16. The fp32 attention is registered under its own name (the pretraining model accepts that name, see
``modeling_llara.pretraining_llara.SDPA_FP32_ATTENTION``) and selected by the trainers' ``compute_loss``
(``LlaraPretrainer``, ``LlaraFinetuneTrainer``) around the model's forward: the shipped model code only ever
runs the attention it was loaded with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel

from modeling_llara.pretraining_llara import SDPA_FP32_ATTENTION

_CPU_BF16_TRAINING_ATTENTION = SDPA_FP32_ATTENTION


def _bf16_on_cpu(dtype: torch.dtype) -> bool:
    """Tensors of ``dtype`` are bf16, or CPU autocast computes in bf16."""
    return dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def _sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype
    if not (torch.is_grad_enabled() and query.device.type == "cpu" and _bf16_on_cpu(dtype)):
        # not training in bf16 on CPU (the name can outlive a training forward, see below): plain sdpa
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(device_type=query.device.type, enabled=False):
        output, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return output.to(dtype), weights


AttentionInterface.register(_CPU_BF16_TRAINING_ATTENTION, _sdpa_in_fp32)


def decoder_backbone(model: nn.Module) -> nn.Module:
    """The decoder inside ``model``: a LLaRA model (``.model``), unwrapped from DDP/DeepSpeed (``.module``) and
    peft (``get_base_model``); a decoder is returned as it is."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    inner = getattr(model, "model", None)
    return inner if isinstance(model, PreTrainedModel) and isinstance(inner, PreTrainedModel) else model


@contextlib.contextmanager
def cpu_bf16_training_attention(model: nn.Module, keep: bool = False) -> Iterator[None]:
    """Run the sdpa attention of ``model``'s decoder (see :func:`decoder_backbone`) in fp32 while it trains in
    bf16 on CPU (see the module docstring); else do nothing.

    Whether a call is bf16 is decided per attention call, from its inputs and the autocast state at that
    moment: mixed-precision training (accelerate) turns autocast on inside the model's forward, after this
    context is entered, so a CPU model training with gradients gets the fp32-capable attention whatever its
    dtype, and fp32 calls go straight to plain sdpa.

    ``keep``: the step runs more training forwards after this context closes (a GradCache loss re-embeds
    its inputs during backward), so the fp32 attention stays selected.
    """
    backbone = decoder_backbone(model)
    config = backbone.config
    if not (torch.is_grad_enabled() and backbone.get_input_embeddings().weight.device.type == "cpu"
            and config._attn_implementation in ("sdpa", _CPU_BF16_TRAINING_ATTENTION)):
        yield
        return
    config._attn_implementation = _CPU_BF16_TRAINING_ATTENTION
    try:
        yield
    finally:
        # Activation checkpointing reruns the blocks' forward during backward, after this context has closed: the
        # rerun must pick the same attention, so the name stays (and falls back to plain sdpa outside training).
        if not (keep or getattr(backbone, "is_activation_checkpointing", False)):
            config._attn_implementation = "sdpa"


__all__ = ["cpu_bf16_training_attention", "decoder_backbone"]
