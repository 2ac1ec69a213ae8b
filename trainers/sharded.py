"""What both training stages need under DeepSpeed ZeRO-3 / FSDP: the final export and one refusal.

Under a sharding Trainer each rank holds only shards of the weights (a ZeRO-3 placeholder has 0 elements), so
the live model cannot be written as it is. :func:`save_gathered` has the Trainer gather them into a staging
folder (a collective: every rank calls it); the main process then rebuilds the model from that folder with
ZeRO-3's partitioned loading lifted (:func:`zero3_init_disabled`) and exports it like a plain run's model.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

LORA_UNDER_FSDP = (
    "--use_lora under FSDP is not supported: the 16 LLaRA token rows train through peft's trainable-token "
    "layer, which mixes FSDP2's sharded DTensor weight with plain tensors and fails in the forward pass. "
    "Use DeepSpeed ZeRO-3 (--deepspeed recipes/deepspeed_zero3.json) for LoRA, or FSDP without LoRA."
)


def refuse_lora_under_fsdp(training_args, use_lora: bool) -> None:
    """Raise the error above when ``use_lora`` is asked for with ``--fsdp``."""
    if use_lora and training_args.fsdp:
        raise ValueError(LORA_UNDER_FSDP)


def init_deepspeed_comm(training_args) -> None:
    """Let DeepSpeed see the process group before ZeRO-3 loads a model.

    On GPUs the TrainingArguments' device setup initializes DeepSpeed's communication layer. With ``--use_cpu``
    it only starts torch.distributed (gloo), so ``zero.Init`` inside ``from_pretrained`` counts a world of
    one process and fails its batch-size check whenever more than one process runs. DeepSpeed then wraps
    the existing group. A no-op without DeepSpeed, without a process group, or when DeepSpeed already has one.
    """
    if not getattr(training_args, "deepspeed", None):
        return
    _ = training_args.world_size  # sets up the devices (and the process group) if nothing has yet
    import torch.distributed as torch_dist

    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return
    import deepspeed.comm as ds_comm

    if not ds_comm.is_initialized():
        ds_comm.init_distributed(dist_backend=torch_dist.get_backend(), verbose=False)


def is_sharded(trainer) -> bool:
    return bool(trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled)


@contextmanager
def zero3_init_disabled(training_args):
    """While a DeepSpeed ZeRO-3 config is registered, ``from_pretrained`` partitions what it loads (``zero.Init``):
    each rank keeps an empty placeholder per weight. The export reloads the gathered checkpoint whole on the
    main process, so the registration is lifted for the duration and restored after."""
    from transformers.integrations.deepspeed import (
        is_deepspeed_zero3_enabled,
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    if not is_deepspeed_zero3_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(training_args.hf_deepspeed_config)


def save_gathered(trainer, staging: str | Path) -> bool:
    """Collective (every rank): the Trainer writes the full weights (the adapter alone under LoRA) to ``staging``.

    Returns True on the main process, which goes on to export from ``staging``; False on the others.
    """
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    return trainer.is_world_process_zero()


__all__ = ["LORA_UNDER_FSDP", "init_deepspeed_comm", "is_sharded", "refuse_lora_under_fsdp", "save_gathered", "zero3_init_disabled"]
