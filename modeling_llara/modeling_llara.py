"""LLaRA: a decoder LLM turned into a dense-retrieval embedder (arXiv 2312.15503).

``LlaraModel`` wraps a stock decoder backbone (``AutoModel.from_config(config.text_config)``), runs it
with causal attention and pools the final-layer hidden states (after the final norm) at the special
suffix tokens into one L2-normalized embedding, returned as ``pooler_output``.

The pooled positions are found from ``input_ids`` and ``attention_mask`` (never by slicing the last
positions), so left and right padding give the same embedding. ``LlaraInputBuilder`` turns raw texts
into model inputs: ``prefix + text (truncated to its budget) + suffix``, the suffix never cut, special
token strings inside the text tokenized as plain text. ``resolve_dtype`` picks the compute precision
for inference (bf16 where the hardware runs it natively, fp32 elsewhere).

This file ships to the Hub with the model: it imports only torch, transformers, the standard library
and the sibling ``configuration_llara`` module. The stage-1 pretraining model (backbone + LM head) ships
next to it in ``pretraining_llara``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_llara import LlaraConfig

logger = logging.getLogger(__name__)

# A token of any tokenizer spans far fewer characters than this; cutting huge texts to
# ``budget * _MAX_CHARS_PER_TOKEN`` characters before tokenizing bounds the work without changing
# the kept tokens.
_MAX_CHARS_PER_TOKEN = 64


# ---- compute precision ------------------------------------------------------------------------------
# CPU flags of native bf16 matrix units (AMX) or bf16 dot-product instructions (AVX512-BF16): with them a
# bf16 matmul runs several times faster than fp32; without them bf16 is emulated and slower.
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# Environment variable that overrides what ``dtype="auto"`` picks (``float32`` or ``bfloat16``).
DTYPE_ENV = "LLARA_DTYPE"
DTYPE_CHOICES = ("auto", "float32", "bfloat16")
_DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_logged_choices: set[tuple[str, str]] = set()


def cpu_supports_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether ``cpuinfo``'s first flags line names one of ``FAST_BF16_CPU_FLAGS`` (native bf16 matmuls).

    A system without that file (not Linux) answers False, so fp32 stays the default there.
    """
    try:
        with open(cpuinfo, encoding="utf8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return not set(FAST_BF16_CPU_FLAGS).isdisjoint(line.partition(":")[2].split())
    except OSError:
        pass
    return False


def resolve_dtype(
    dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = None, config=None
) -> torch.dtype:
    """The compute dtype for inference on ``device``: ``float32``, ``bfloat16`` or ``auto``.

    ``auto`` (or ``None``) takes ``$LLARA_DTYPE`` when set, else fp32 when the model's ``config`` (a
    ``LlaraConfig`` or its ``config.json`` dict) sets ``auto_dtype="float32"`` (stage-1 exports), else bf16
    where the hardware runs it natively (a CUDA device that supports it, a CPU with AMX-BF16 or AVX512-BF16)
    and fp32 everywhere else. The choice ``auto`` makes is logged once per device type. Pooling, mean and L2
    norm stay fp32 either way.
    """
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        return dtype
    name = "auto" if dtype is None else str(dtype).strip().lower().removeprefix("torch.")
    if name != "auto":
        if name not in _DTYPE_NAMES:
            raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPE_CHOICES)}")
        return _DTYPE_NAMES[name]
    device_type = torch.device(device).type if device is not None else "cpu"
    override = os.environ.get(DTYPE_ENV, "").strip().lower()
    if override and override != "auto":
        if override not in _DTYPE_NAMES:
            raise ValueError(f"${DTYPE_ENV}={override!r} is not one of {', '.join(DTYPE_CHOICES)}")
        chosen, reason = _DTYPE_NAMES[override], f"${DTYPE_ENV}"
    elif (config.get("auto_dtype") if isinstance(config, dict) else getattr(config, "auto_dtype", None)) == "float32":
        chosen, reason = torch.float32, "the model's config sets auto_dtype='float32'"
    elif device_type == "cuda":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        chosen, reason = (torch.bfloat16 if fast else torch.float32), f"CUDA bf16 support: {fast}"
    elif device_type == "cpu":
        fast = cpu_supports_fast_bf16()
        chosen = torch.bfloat16 if fast else torch.float32
        reason = f"CPU flags {'/'.join(FAST_BF16_CPU_FLAGS)}: {'present' if fast else 'absent'}"
    else:
        chosen, reason = torch.float32, f"no bf16 detection for {device_type}"
    key = (device_type, str(chosen))
    if key not in _logged_choices:
        _logged_choices.add(key)
        logger.info("LLaRA compute dtype on %s: %s (%s)", device_type, str(chosen).removeprefix("torch."), reason)
    return chosen


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only attended tokens, so left padding does not shift positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (batch, seq)


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when no row attends to a token after a padded one (right padding, or none at all)."""
    mask = attention_mask.bool()
    return not bool((mask[:, 1:] & ~mask[:, :-1]).any())


class LlaraPreTrainedModel(PreTrainedModel):
    config: LlaraConfig
    config_class = LlaraConfig
    # No submodule carries this name: weights keep their ``model.`` / ``lm_head.`` keys verbatim, so the
    # embedder and the pretraining model load each other's checkpoints.
    base_model_prefix = "llara"
    supports_gradient_checkpointing = True
    # Without these flags a wrapper (and the backbone it builds) silently falls back to eager attention.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as err:
            # safetensors reports a truncated or corrupt file without naming it.
            if type(err).__name__ == "SafetensorError":
                raise OSError(
                    f"the weight file of {pretrained_model_name_or_path} is corrupt or truncated ({err}); "
                    "re-download or re-export the model"
                ) from err
            raise

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def _init_weights(self, module: nn.Module) -> None:
        # The backbone initializes its own modules; the wrapper adds only the optional LM head.
        if isinstance(module, nn.Linear):
            std = getattr(self.config.get_text_config(), "initializer_range", 0.02)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # ---- pooling -------------------------------------------------------------------------------
    def special_token_ids(self, device: torch.device | None = None) -> torch.Tensor:
        ids = (self.config.summarize_token_ids or []) + (self.config.predict_token_ids or [])
        if len(ids) != 2 * self.config.num_pooled_tokens:
            raise ValueError(
                "config.summarize_token_ids / predict_token_ids are not set: build the model with "
                "`llara init`, which resolves them from the tokenizer"
            )
        return torch.tensor(ids, dtype=torch.long, device=device)

    def pooling_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Boolean (batch, seq) mask of the special suffix tokens that are attended to."""
        mask = torch.isin(input_ids, self.special_token_ids(input_ids.device)) & attention_mask.bool()
        counts = mask.sum(-1)  # (batch,)
        bad = (counts != self.config.num_pooled_tokens).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"rows {bad[:10]} hold {counts[bad[0]].item()} special suffix tokens, expected "
                f"{self.config.num_pooled_tokens}: build inputs with LlaraInputBuilder, which appends exactly "
                "one suffix and tokenizes special-token strings inside the text as plain text"
            )
        return mask

    def pool(self, hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool (batch, seq, hidden) states at the masked positions into (batch, hidden)."""
        if self.config.pooling == "last":
            # index of the last masked position in each row
            seq = torch.arange(mask.shape[1], device=mask.device)
            last = torch.where(mask, seq, -1).amax(-1)  # (batch,)
            pooled = hidden_states[torch.arange(mask.shape[0], device=mask.device), last].float()
        else:
            # Only the masked states are read (not a (batch, seq, hidden) product) and they are summed
            # in fp32: eight bf16 vectors lose precision when summed in bf16.
            rows = mask.nonzero()[:, 0]  # (pooled,) row of each masked position, row-major order
            selected = hidden_states[mask].float()  # (pooled, hidden)
            sums = selected.new_zeros((mask.shape[0], hidden_states.shape[-1])).index_add(0, rows, selected)
            pooled = sums / mask.sum(-1, keepdim=True).to(torch.float32)  # (batch, hidden)
        if self.config.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        # fp32 whatever the backbone's dtype: rounding a unit vector to bf16 would cost cosine digits.
        return pooled


class LlaraModel(LlaraPreTrainedModel):
    """Decoder backbone + LLaRA pooling. ``pooler_output`` is the (batch, hidden) embedding."""

    # A checkpoint written by the pretraining model also holds an LM head the embedder does not use.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: LlaraConfig):
        super().__init__(config)
        self.model = AutoModel.from_config(config.text_config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        if input_ids is None:
            raise ValueError("LlaraModel needs input_ids: the pooled positions are found from the token ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        kwargs.pop("token_type_ids", None)
        # Under causal attention a right-padded row's real tokens never see its padding, so the padding
        # mask changes no pooled state: drop it and let attention run its plain causal kernel (no mask
        # to build or read, fully masked blocks skipped). Padding positions' own states then differ,
        # which nothing reads.
        backbone_mask = None if is_right_padded(attention_mask) else attention_mask
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=backbone_mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden = outputs.last_hidden_state  # (batch, seq, hidden), after the final norm
        pooled = self.pool(hidden, self.pooling_mask(input_ids, attention_mask))  # (batch, hidden)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=pooled,
            hidden_states=outputs.hidden_states,
        )


class LlaraInputBuilder:
    """Turns raw texts into LLaRA inputs: ``prefix + text[:budget] + suffix`` for a task.

    * ``task="query"`` appends ``config.query_suffix_kind``'s suffix, ``task="document"`` (or ``None``)
      the ``config.passage_suffix_kind`` one; ``"summarize"``/``"predict"`` pick a suffix directly
      (the symmetric S2S/N2N modes are configs with both kinds equal).
    * The budget of text tokens is ``max_text_tokens`` (default ``config.max_text_tokens``) and, when
      ``max_length`` is given, also ``max_length - len(prefix) - len(suffix)``: the suffix is never cut.
    * Special-token strings inside a text (``"<s1>"``) are tokenized as plain text, so a text can never add
      or move a pooled position.
    * An empty or whitespace-only text is embedded as it is (prefix + suffix around no text tokens):
      a defined, valid embedding. ``None`` or a non-string raises ``TypeError`` naming its index.
    """

    def __init__(self, tokenizer, config: LlaraConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.prefix_ids = list(tokenizer(config.prompt_prefix, add_special_tokens=False)["input_ids"])
        if config.add_bos_token and tokenizer.bos_token_id is not None:
            self.prefix_ids = [tokenizer.bos_token_id] + self.prefix_ids
        self.suffix_ids: dict[str, list[int]] = {}
        for kind in ("summarize", "predict"):
            tokens = config.suffix_tokens(kind)
            ids = tokenizer.convert_tokens_to_ids(tokens)
            if any(i is None or i == tokenizer.unk_token_id for i in ids):
                missing = [t for t, i in zip(tokens, ids) if i is None or i == tokenizer.unk_token_id]
                raise ValueError(f"the tokenizer lacks the LLaRA special tokens {missing}: run `llara init` first")
            expected = config.suffix_token_ids(kind)
            if expected is not None and list(expected) != list(ids):
                raise ValueError(
                    f"the tokenizer maps {tokens} to {ids} but the model config says {expected}: "
                    "tokenizer and model do not belong together"
                )
            suffix = list(tokenizer(config.suffix_text(kind), add_special_tokens=False)["input_ids"])
            if suffix[-len(ids):] != list(ids):
                raise ValueError(
                    f"the {kind} suffix does not end with its special tokens when tokenized; "
                    f"are {tokens} registered as special tokens?"
                )
            self.suffix_ids[kind] = suffix
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    # ---- validation and tokenization -----------------------------------------------------------
    @staticmethod
    def check_texts(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("expected a list of strings, got a single str: wrap it in a list")
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text at index {index} is {type(text).__name__}, expected str")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                # An unpaired surrogate (e.g. from a JSON "\\ud800" escape) is not text: the tokenizer
                # would fail with an unrelated TypeError deep in its Rust binding.
                raise ValueError(
                    f"text at index {index} is not valid Unicode: {text[error.start]!r} at character "
                    f"{error.start} is an unpaired surrogate"
                ) from None
        return texts

    def text_budget(self, kind: str, max_length: int | None = None, max_text_tokens: int | None = None) -> int:
        budget = self.config.max_text_tokens if max_text_tokens is None else max_text_tokens
        if max_length is not None:
            room = max_length - len(self.prefix_ids) - len(self.suffix_ids[kind])
            if room < 0:
                raise ValueError(
                    f"max_length={max_length} cannot hold the prompt: prefix {len(self.prefix_ids)} + "
                    f"suffix {len(self.suffix_ids[kind])} tokens"
                )
            budget = min(budget, room)
        return budget

    def tokenize_texts(self, texts: Sequence[str], budget: int) -> list[list[int]]:
        """Text token ids without special tokens, cut to ``budget`` tokens; specials stay plain text."""
        texts = self.check_texts(texts)
        if not texts:
            return []
        char_cap = max(budget, 1) * _MAX_CHARS_PER_TOKEN
        clipped = [text[:char_cap] for text in texts]
        encoded = self.tokenizer(clipped, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [list(ids[:budget]) for ids in encoded]

    def build_ids(
        self,
        texts: Sequence[str],
        task: str | None = None,
        max_length: int | None = None,
        max_text_tokens: int | None = None,
    ) -> list[list[int]]:
        """Unpadded id lists ``prefix + text + suffix`` for each text."""
        kind = self.config.suffix_kind_for(task)
        budget = self.text_budget(kind, max_length, max_text_tokens)
        suffix = self.suffix_ids[kind]
        return [self.prefix_ids + ids + suffix for ids in self.tokenize_texts(texts, budget)]

    def pad(
        self,
        sequences: list[list[int]],
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
    ) -> dict[str, torch.Tensor]:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not sequences:
            return {
                "input_ids": torch.zeros((0, 0), dtype=torch.long),
                "attention_mask": torch.zeros((0, 0), dtype=torch.long),
            }
        length = max(len(s) for s in sequences)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            span = slice(0, len(seq)) if padding_side == "right" else slice(length - len(seq), length)
            input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, span] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def __call__(
        self,
        texts: Sequence[str],
        task: str | None = None,
        max_length: int | None = None,
        max_text_tokens: int | None = None,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` tensors for ``texts``."""
        ids = self.build_ids(texts, task=task, max_length=max_length, max_text_tokens=max_text_tokens)
        return self.pad(ids, padding_side=padding_side, pad_to_multiple_of=pad_to_multiple_of)


__all__ = [
    "DTYPE_CHOICES",
    "DTYPE_ENV",
    "LlaraInputBuilder",
    "LlaraModel",
    "LlaraPreTrainedModel",
    "cpu_supports_fast_bf16",
    "is_right_padded",
    "positions_from_mask",
    "resolve_dtype",
]
