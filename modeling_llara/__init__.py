"""LLaRA model code. ``configuration_llara``, ``modeling_llara``, ``pretraining_llara`` and ``sentence_llara`` ship
to the Hub.

Importing this package registers the classes for the Auto API, so ``save_pretrained`` writes
``auto_map`` and copies the shipped files next to the weights.
"""

from .configuration_llara import LlaraConfig
from .modeling_llara import (
    DTYPE_CHOICES,
    LlaraInputBuilder,
    LlaraModel,
    LlaraPreTrainedModel,
    resolve_dtype,
)
from .pretraining_llara import LlaraForPretraining

LlaraConfig.register_for_auto_class()
LlaraModel.register_for_auto_class("AutoModel")
LlaraForPretraining.register_for_auto_class("AutoModelForPreTraining")

AUTO_MAP = {
    "AutoConfig": "configuration_llara.LlaraConfig",
    "AutoModel": "modeling_llara.LlaraModel",
    "AutoModelForPreTraining": "pretraining_llara.LlaraForPretraining",
}

__all__ = [
    "AUTO_MAP",
    "DTYPE_CHOICES",
    "LlaraConfig",
    "LlaraForPretraining",
    "LlaraInputBuilder",
    "LlaraModel",
    "LlaraPreTrainedModel",
    "resolve_dtype",
]
