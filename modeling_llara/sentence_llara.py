"""sentence-transformers input module for LLaRA models.

``SentenceTransformer(path, trust_remote_code=True)`` loads this module from the model folder's root:

* ``encode_query`` passes ``task="query"`` and gets the query suffix (``predict`` in the released models);
* ``encode_document`` and plain ``encode`` get the passage suffix (``summarize``);
* ``encode(..., prompt_name="query")`` equals ``encode_query`` and ``prompt_name="document"`` equals
  ``encode_document``: the folder's named prompts are markers that select the task, never text (see
  ``PROMPT_TASKS``);
* any other prompt is put in front of the text inside the LLaRA template, and long texts are cut
  in the text part only, so the suffix with its pooled special tokens is never lost (stock prompts are
  prefix-only and truncate from the right, which would drop it).

This file ships to the Hub with the model: it imports torch, transformers, the standard library, its
sibling files, and sentence-transformers inside ``try:`` (it is only ever imported by sentence-transformers).
"""

from __future__ import annotations

import json
import logging
import operator
import os
import shutil
from typing import Any

import torch
from transformers import AutoTokenizer

from .configuration_llara import LlaraConfig
from .modeling_llara import LlaraInputBuilder, LlaraModel, resolve_dtype

logger = logging.getLogger(__name__)

try:
    from sentence_transformers.base.modules.input_module import InputModule
except ImportError:  # only sentence-transformers imports this file; keep transformers' import check happy
    InputModule = torch.nn.Module

MODULE_CLASS_REF = "sentence_llara.LlaraSentenceEncoder"
MODULE_CONFIG_FILE = "sentence_llara_config.json"
# Every code file of a LLaRA folder: the embedder, its config, this module, and the pretraining model
# (``AutoModelForPreTraining`` in the folder's auto_map, to continue stage-1 pretraining).
SHIPPED_FILES = ("sentence_llara.py", "modeling_llara.py", "pretraining_llara.py", "configuration_llara.py")
# The named prompts of config_sentence_transformers.json. sentence-transformers resolves ``prompt_name`` to
# the prompt *string* before the module sees it, so the two names need distinct strings to reach the right
# suffix; the module maps them back to a task and never puts them into the text (the LLaRA template carries
# the instruction). Empty strings would make ``prompt_name="query"`` embed with the passage suffix.
PROMPT_TASKS = {"<llara:query>": "query", "<llara:document>": "document"}
NAMED_PROMPTS = {task: marker for marker, task in PROMPT_TASKS.items()}


def _check_max_length(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive int (text tokens per input), got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive int (text tokens per input), got {value!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive int (text tokens per input), got {value}")
    return value


class LlaraSentenceEncoder(InputModule):
    """Tokenizes with the LLaRA template and returns the pooled embedding as ``sentence_embedding``.

    Compute precision: a dtype given in ``model_kwargs`` (``dtype`` or ``torch_dtype``) is used exactly.
    Without one, the weights load as stored and, at the first inference forward (``encode*``, under
    ``torch.inference_mode``/``no_grad``), the module switches to what ``resolve_dtype("auto", device)``
    picks for the device it runs on: bf16 on a CPU with AMX-BF16/AVX512-BF16 or a bf16-capable GPU, fp32
    elsewhere (``$LLARA_DTYPE`` overrides). Training (gradients enabled) never switches. The embedding is
    pooled, averaged and L2-normalized in fp32 in every case.
    """

    config_file_name = MODULE_CONFIG_FILE
    config_keys = ["max_text_tokens"]
    save_in_root = True

    def __init__(
        self,
        model_name_or_path: str,
        max_text_tokens: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        model: LlaraModel | None = None,
        tokenizer=None,
    ):
        super().__init__()
        model_kwargs = dict(model_kwargs or {})
        if "torch_dtype" in model_kwargs and "dtype" not in model_kwargs:
            # transformers' current name; the old one is still what sentence-transformers documents
            model_kwargs["dtype"] = model_kwargs.pop("torch_dtype")
        # No dtype given: pick one per device at the first inference forward (see the class docstring).
        self.auto_dtype = model is None and model_kwargs.get("dtype") is None
        self.auto_dtype_applied: torch.dtype | None = None
        self.auto_model = model if model is not None else LlaraModel.from_pretrained(
            model_name_or_path, **model_kwargs
        )
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(
            model_name_or_path, **(processor_kwargs or {})
        )
        self.builder = LlaraInputBuilder(self.tokenizer, self.auto_model.config)
        self.max_text_tokens = _check_max_length(
            max_text_tokens if max_text_tokens is not None else self.auto_model.config.max_text_tokens, "max_text_tokens"
        )
        # sentence-transformers reads ``max_seq_length``; here it bounds the text tokens (prompt excluded).
        self.max_seq_length = self.max_text_tokens

    @property
    def max_seq_length(self) -> int | None:
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value) -> None:
        # A zero or negative budget would silently embed the template alone, whatever the text.
        self._max_seq_length = _check_max_length(value, "max_seq_length")

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        **kwargs,
    ) -> "LlaraSentenceEncoder":
        config = cls.load_config(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        hub_kwargs = {"token": token, "cache_dir": cache_folder, "revision": revision, "local_files_only": local_files_only}
        hub_kwargs = {k: v for k, v in hub_kwargs.items() if v not in (None, False)}
        # The folder's config.json names custom classes (auto_map); the tokenizer loader reads it too.
        hub_kwargs["trust_remote_code"] = trust_remote_code
        return cls(
            model_name_or_path,
            max_text_tokens=config.get("max_text_tokens"),
            model_kwargs={**hub_kwargs, **(model_kwargs or {})},
            processor_kwargs={**hub_kwargs, **(processor_kwargs or {})},
        )

    def preprocess(
        self, inputs, prompt: str | None = None, task: str | None = None, max_length: int | None = None, **kwargs
    ) -> dict[str, Any]:
        """Token ids of ``inputs`` in the LLaRA template of ``task`` (``"query"`` or ``"document"``).

        ``max_length`` (sentence-transformers' per-task training budget) bounds the *total* length, prompt
        included, as the released fine-tuning code's query/passage lengths do; without it the text alone is cut
        at ``max_seq_length`` tokens. Either way only the text is cut, never the suffix.
        """
        texts = self.builder.check_texts(inputs)
        named = PROMPT_TASKS.get(prompt) if prompt else None
        if named is not None:
            config = self.auto_model.config
            if task is not None and config.suffix_kind_for(task) != config.suffix_kind_for(named):
                raise ValueError(f"prompt_name {named!r} contradicts task {task!r}: pass one of them")
            task, prompt = task or named, None
        if prompt:
            texts = [prompt + text for text in texts]
        if max_length is not None:
            return self.builder(texts, task=task, max_length=max_length)
        budget = self.max_seq_length if self.max_seq_length is not None else self.max_text_tokens
        return self.builder(texts, task=task, max_text_tokens=budget)

    def apply_auto_dtype(self) -> None:
        """Cast the model to ``resolve_dtype("auto")`` for its device and config (once; no-op if a dtype was given)."""
        if not self.auto_dtype:
            return
        self.auto_dtype = False
        device = next(self.auto_model.parameters()).device
        target = resolve_dtype("auto", device, config=self.auto_model.config)
        if target != self.auto_model.dtype:
            # Outside inference mode, so the cast weights stay ordinary tensors usable by autograd later.
            with torch.inference_mode(False), torch.no_grad():
                self.auto_model.to(target)
            self.auto_dtype_applied = target

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        if self.auto_dtype and not torch.is_grad_enabled():
            self.apply_auto_dtype()
        outputs = self.auto_model(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
        features["token_embeddings"] = outputs.last_hidden_state
        features["sentence_embedding"] = outputs.pooler_output
        return features

    def get_embedding_dimension(self) -> int:
        return self.auto_model.config.get_text_config().hidden_size

    def get_sentence_embedding_dimension(self) -> int:
        return self.get_embedding_dimension()

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        if self.auto_dtype_applied is not None:
            logger.warning(
                "saving weights that were cast to %s for inference: they keep only %s precision; load with "
                "model_kwargs={'dtype': torch.float32} to re-save full-precision weights",
                self.auto_dtype_applied,
                self.auto_dtype_applied,
            )
        self.auto_model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.tokenizer.save_pretrained(output_path)
        write_sentence_transformers_files(output_path, max_text_tokens=self.max_text_tokens)


def write_sentence_transformers_files(output_path: str, max_text_tokens: int | None = None) -> None:
    """Make a saved LLaRA model folder loadable by ``SentenceTransformer(path, trust_remote_code=True)``.

    Writes ``modules.json`` (one root module: this file's class), the module config,
    ``config_sentence_transformers.json`` and copies the shipped code files next to the weights.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    for name in SHIPPED_FILES:
        src, dst = os.path.join(here, name), os.path.join(output_path, name)
        if os.path.exists(src) and os.path.abspath(src) != os.path.abspath(dst):
            shutil.copyfile(src, dst)
    if max_text_tokens is None:
        with open(os.path.join(output_path, "config.json"), encoding="utf8") as handle:
            max_text_tokens = LlaraConfig.from_dict(json.load(handle)).max_text_tokens
    files = {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": MODULE_CLASS_REF}],
        MODULE_CONFIG_FILE: {"max_text_tokens": max_text_tokens},
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            # The LLaRA template is applied inside the module: the named prompts only select the task
            # (PROMPT_TASKS), so nothing is prepended outside the quotes of the template.
            "prompts": dict(NAMED_PROMPTS),
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    try:
        import sentence_transformers
        import transformers

        files["config_sentence_transformers.json"]["__version__"] = {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
        }
    except ImportError:
        pass
    for name, content in files.items():
        with open(os.path.join(output_path, name), "w", encoding="utf8") as handle:
            json.dump(content, handle, indent=2)
            handle.write("\n")


__all__ = ["NAMED_PROMPTS", "PROMPT_TASKS", "LlaraSentenceEncoder", "write_sentence_transformers_files"]
