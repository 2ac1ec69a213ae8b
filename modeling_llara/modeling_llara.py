"""LLaRA: a decoder LLM turned into a dense-retrieval embedder (arXiv 2312.15503).

``LlaraModel`` wraps a stock decoder backbone (``AutoModel.from_config(config.text_config)``), runs it
with causal attention and pools the final-layer hidden states (after the final norm) at the special
suffix tokens into one L2-normalized embedding, returned as ``pooler_output``.

The pooled positions are found from ``input_ids`` and ``attention_mask`` (never by slicing the last
positions), so left and right padding give the same embedding. ``LlaraInputBuilder`` turns raw texts
into model inputs: ``prefix + text (truncated to its budget) + suffix``, the suffix never cut, special
token strings inside the text tokenized as plain text.

This file ships to the Hub with the model: it imports only torch, transformers, the standard library
and the sibling ``configuration_llara`` module.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn
from transformers import AttentionInterface, AutoModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

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


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The native bf16 flags (of ``FAST_BF16_CPU_FLAGS``) this CPU has, read from ``cpuinfo``'s first flags line.

    A system without that file (not Linux) has none.
    """
    try:
        with open(cpuinfo, encoding="utf8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return [flag for flag in FAST_BF16_CPU_FLAGS if flag in flags]
    except OSError:
        return []
    return []


def cpu_supports_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has native bf16 matmul support (AMX-BF16 or AVX512-BF16), read from ``cpuinfo``.

    A system without that file (not Linux) answers False, so fp32 stays the default there.
    """
    return bool(cpu_bf16_flags(cpuinfo))


def resolve_dtype(
    dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = None, config=None
) -> torch.dtype:
    """The compute dtype for inference on ``device``: ``float32``, ``bfloat16`` or ``auto``.

    ``auto`` (or ``None``) takes ``$LLARA_DTYPE`` when set, else fp32 when the model's ``config`` (a
    ``LlaraConfig`` or its ``config.json`` dict) sets ``auto_dtype="float32"`` (stage-1 exports), else bf16 where the hardware runs it natively (a CUDA device that supports
    it, a CPU with AMX-BF16 or AVX512-BF16) and fp32 everywhere else. The choice ``auto`` makes is logged once
    per device type. Pooling, mean and L2 norm stay fp32 either way.
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


# On CPU, PyTorch's bf16 scaled-dot-product attention has a slow backward (measured: forward + backward of
# SmolLM2-sized attention 54 ms in bf16 against 30 ms in fp32, forward alone faster in bf16). While training in
# bf16 on CPU the attention therefore runs in fp32: the matmuls of the linear layers, where the time goes,
# stay bf16. Registered under its own name and switched on only for the duration of a LLaRA forward.
_CPU_BF16_TRAINING_ATTENTION = "llara_sdpa_fp32"


def _bf16_on_cpu(dtype: torch.dtype) -> bool:
    """Tensors of ``dtype`` are bf16, or CPU autocast computes in bf16."""
    return dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def _sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype
    if not (torch.is_grad_enabled() and query.device.type == "cpu" and _bf16_on_cpu(dtype)):
        # not training in bf16 on CPU (the name can outlive a checkpointed forward, see below): plain sdpa
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(device_type=query.device.type, enabled=False):
        output, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return output.to(dtype), weights


AttentionInterface.register(_CPU_BF16_TRAINING_ATTENTION, _sdpa_in_fp32)


@contextlib.contextmanager
def cpu_bf16_training_attention(backbone: nn.Module) -> Iterator[None]:
    """Run ``backbone``'s sdpa attention in fp32 while it trains in bf16 on CPU (see above); else do nothing."""
    config = backbone.config
    weight = backbone.get_input_embeddings().weight
    if not (torch.is_grad_enabled() and weight.device.type == "cpu" and _bf16_on_cpu(weight.dtype)
            and config._attn_implementation in ("sdpa", _CPU_BF16_TRAINING_ATTENTION)):
        yield
        return
    config._attn_implementation = _CPU_BF16_TRAINING_ATTENTION
    try:
        yield
    finally:
        # Activation checkpointing reruns the blocks' forward during backward, after this context has closed: the
        # rerun must pick the same attention, so the name stays (and falls back to plain sdpa outside training).
        if not getattr(backbone, "is_activation_checkpointing", False):
            config._attn_implementation = "sdpa"


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
        with cpu_bf16_training_attention(self.model):
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


# Segment ids of the one-pass pretraining input ``prefix + text + summarize suffix + predict suffix``.
SEGMENT_PAD = 0
SEGMENT_TEXT = 1  # prefix and text
SEGMENT_SUMMARIZE = 2
SEGMENT_PREDICT = 3
# Attention implementations that accept an arbitrary 4D mask (flash-attention cannot).
_DUAL_MASK_ATTENTION = ("sdpa", "eager")


def dual_suffix_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position ids of a one-pass input: the predict suffix re-uses the summarize suffix's positions.

    Text and summarize tokens count themselves and everything attended before them except the predict
    suffix; predict tokens count the text and themselves, skipping the summarize suffix. Both suffixes thus
    start right after the text, exactly as in two separate passes. Padding (either side) is not counted.
    """
    text = segment_ids == SEGMENT_TEXT
    summarize_side = (text | (segment_ids == SEGMENT_SUMMARIZE)).long().cumsum(-1) - 1  # (batch, seq)
    predict_side = (text | (segment_ids == SEGMENT_PREDICT)).long().cumsum(-1) - 1  # (batch, seq)
    return torch.where(segment_ids == SEGMENT_PREDICT, predict_side, summarize_side).clamp(min=0)


def dual_suffix_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (batch, 1, seq, seq) mask: causal, padding hidden, predict rows blind to summarize columns.

    transformers uses a 4D mask as given, so it carries the causal part itself. It is additive with
    ``torch.finfo(dtype).min`` (not ``-inf``) in the model's dtype: eager attention needs a float mask and
    ``-inf`` turns fully masked rows into NaN. Every position may attend to itself, so padding rows (which
    no loss reads) still get a finite softmax and cannot leak NaN into the gradients.
    """
    seq = segment_ids.shape[-1]
    idx = torch.arange(seq, device=segment_ids.device)
    causal = idx[None, :] <= idx[:, None]  # (seq, seq): key <= query
    keys_real = (segment_ids != SEGMENT_PAD)[:, None, :]  # (batch, 1, seq)
    blocked = (segment_ids == SEGMENT_PREDICT)[:, :, None] & (segment_ids == SEGMENT_SUMMARIZE)[:, None, :]
    allowed = (causal[None] & keys_real & ~blocked) | torch.eye(seq, dtype=torch.bool, device=idx.device)[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]  # (batch, 1, seq, seq)


# Below this probability ``-log p`` of a rounded fp32 softmax loses digits: the loss comes from the logits.
_TINY_PROB = 1e-30


class _LinearCrossEntropySum(torch.autograd.Function):
    """Summed cross-entropy of ``states @ weight.T`` against ``targets``, chunk by chunk, gradients in forward.

    Each chunk's (chunk, vocab) logits exist only inside the loop: the forward pass computes the loss and
    at once its gradients (softmax minus one-hot, then two matmuls) and keeps only those, shaped like the
    inputs. Backward only scales them. Same arithmetic as autograd on ``lm_head(states).float()`` with
    ``cross_entropy(reduction="sum")`` (logits in the matmul dtype: the weight's, or autocast's when it is
    on; softmax in fp32), without the second logits computation a recomputing checkpoint pays.

    The vocabulary-sized work runs in two (chunk, vocab) fp32 buffers allocated once per call and reused by
    every chunk (``out=`` and in-place ops), rather than in fresh tensors per operation: on CPU a fresh
    tensor of that size is new memory the kernel must fault in page by page, which can cost more than the
    arithmetic (log-softmax and exp into a fresh tensor ran 3-4x slower, the hidden-64 logits matmul 2x;
    benchmarks/bench_lm_loss.py measures it). One softmax gives both the gradient and the loss
    (``-log p[target]``), instead of a log-softmax followed by a second exponential over the vocabulary;
    a target whose probability is below ``_TINY_PROB`` (a loss above 69 nats, where ``log`` of the rounded
    probability would lose digits) takes its loss from the logits instead. ``chunk_size`` is the most
    tokens a chunk may hold: the tokens are split into equal chunks, so no small remainder chunk pays a
    full pass over the weight.
    """

    @staticmethod
    def forward(ctx, states, weight, targets, chunk_size):  # states (tokens, hidden), weight (vocab, hidden)
        need_states, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        device_type = states.device.type
        compute = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        w = weight.to(compute)  # what autocast would hand each matmul, cast once per call
        tokens, vocab = states.shape[0], weight.shape[0]
        chunk_size = -(-tokens // -(-tokens // chunk_size))  # equal chunks, none above chunk_size
        rows = min(chunk_size, tokens)
        logits = torch.empty((rows, vocab), dtype=torch.float32, device=states.device)
        probs = torch.empty_like(logits)  # softmax, then softmax minus one-hot
        low = None if compute == torch.float32 else torch.empty((rows, vocab), dtype=compute, device=states.device)
        grad_states = torch.zeros_like(states) if need_states else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=states.device)
        for start in range(0, tokens, chunk_size):
            chunk = states[start : start + chunk_size].to(compute)  # (n, hidden)
            chunk_targets = targets[start : start + chunk_size, None]  # (n, 1)
            n = chunk.shape[0]
            if low is None:
                torch.mm(chunk, w.T, out=logits[:n])
            else:
                logits[:n].copy_(torch.mm(chunk, w.T, out=low[:n]))
            grad_logits = torch.softmax(logits[:n], dim=-1, out=probs[:n])  # (n, vocab) fp32
            target_probs = grad_logits.gather(1, chunk_targets)  # (n, 1)
            nll = -torch.log(target_probs)
            far = (target_probs < _TINY_PROB).flatten().nonzero().flatten()
            if far.numel():  # rare: exact loss from the logits (the chunk's logits are still in the buffer)
                rows_far = logits[:n][far]
                nll[far] = (torch.logsumexp(rows_far, dim=-1, keepdim=True) - rows_far.gather(1, chunk_targets[far]))
            total += nll.sum()
            if not (need_states or need_weight):
                continue
            grad_logits.scatter_add_(1, chunk_targets, grad_logits.new_full((n, 1), -1.0))  # softmax minus one-hot
            if low is not None:
                grad_logits = low[:n].copy_(grad_logits)
            if need_states:
                grad_states[start : start + chunk_size] = grad_logits @ w
            if need_weight:
                if low is None:
                    grad_weight.addmm_(grad_logits.T, chunk)
                else:
                    grad_weight += grad_logits.T @ chunk
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_states, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_states, grad_weight = ctx.saved_tensors
        if grad_states is not None:
            grad_states = grad_states * grad_total.to(grad_states.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_states, grad_weight, None, None


# fp32 logits one LM-term chunk may hold: the chunk size follows the vocabulary, so memory does not.
LM_CHUNK_BYTES = 64 * 2**20


def default_lm_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk of the LM term: as many as fit ``LM_CHUNK_BYTES`` of fp32 logits (at least 16).

    341 tokens for SmolLM2's 49k vocabulary, 524 for LLaMA-2's 32k, 130 for LLaMA-3's 128k: a fixed token
    count would let the chunk's (tokens, vocab) buffers grow with the vocabulary (a 1024-token chunk over
    Qwen2's 152k is 0.6 GB per buffer) and, at a batch of 8 x 128 tokens, hold all the text logits at once.
    """
    return max(16, LM_CHUNK_BYTES // (4 * vocab_size))


def _is_partitioned(weight: torch.Tensor) -> bool:
    """True for a parameter that DeepSpeed ZeRO-3 (``ds_id``) or a sharding wrapper holds outside its module
    call: its full value only exists inside ``module.forward``, so it must be used through the module."""
    return hasattr(weight, "ds_id") or weight.dim() != 2


@dataclass
class LlaraPretrainingOutput(ModelOutput):
    """Outputs of one EBAE/EBAR pass.

    Args:
        summarize_logits / predict_logits: (batch, num_pooled_tokens, vocab) LM-head logits at the special
            tokens of each suffix (model dtype), the inputs of the bag-of-words losses.
        summarize_embeds / predict_embeds: (batch, hidden) pooled embeddings, equal to what ``LlaraModel``
            gives for ``task="summarize"`` / ``"predict"`` on the same text.
        lm_loss: mean next-token cross-entropy over the ``lm_labels`` targets (fp32), when labels are given.
        lm_tokens: number of those targets.
        last_hidden_state: (batch, seq, hidden) final-layer states.
    """

    summarize_logits: torch.FloatTensor | None = None
    predict_logits: torch.FloatTensor | None = None
    summarize_embeds: torch.FloatTensor | None = None
    predict_embeds: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    lm_tokens: torch.LongTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


class LlaraForPretraining(LlaraPreTrainedModel):
    """Backbone + LM head: the object trained by EBAE/EBAR pretraining (see ``trainers/pretraining``).

    One forward runs ``prefix + text + summarize suffix + predict suffix`` (``segment_ids`` name the four
    parts, see ``SEGMENT_*``) with the positions of :func:`dual_suffix_positions` and the mask of
    :func:`dual_suffix_attention_mask`; both suffixes' states equal those of two separate passes.
    LM-head logits are computed only at the 2 x ``num_pooled_tokens`` special positions and, when
    ``lm_labels`` are given, over the labelled text tokens in chunks of ``lm_chunk_size`` tokens (default: as
    many as fit ``LM_CHUNK_BYTES`` of fp32 logits, see :func:`default_lm_chunk_size`) whose gradients
    are taken as each chunk is computed, so (batch, seq, vocab) logits never exist at once.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LlaraConfig):
        super().__init__(config)
        self.model = AutoModel.from_config(config.text_config)
        text_config = config.get_text_config()
        self.lm_head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def _special_positions(self, input_ids: torch.Tensor, segment_ids: torch.Tensor, kind: str) -> torch.Tensor:
        """Boolean (batch, seq) mask of ``kind``'s special tokens inside ``kind``'s suffix segment."""
        ids = torch.tensor(self.config.suffix_token_ids(kind) or [], dtype=torch.long, device=input_ids.device)
        if ids.numel() != self.config.num_pooled_tokens:
            raise ValueError(f"config.{kind}_token_ids is not set: build the model with `llara init`")
        segment = SEGMENT_SUMMARIZE if kind == "summarize" else SEGMENT_PREDICT
        mask = torch.isin(input_ids, ids) & (segment_ids == segment)
        counts = mask.sum(-1)  # (batch,)
        bad = (counts != self.config.num_pooled_tokens).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"rows {bad[:10]} hold {counts[bad[0]].item()} {kind} special tokens in the {kind} segment, "
                f"expected {self.config.num_pooled_tokens}: build inputs with the pretraining collator"
            )
        return mask

    def _chunked_lm_loss(self, hidden: torch.Tensor, lm_labels: torch.Tensor, chunk_size: int):
        """Mean cross-entropy of ``lm_labels`` (already aligned: label at p is predicted from p).

        Logits exist one chunk of ``chunk_size`` tokens at a time. The default path
        (:class:`_LinearCrossEntropySum`) takes the gradients inside the forward loop; when the LM head's
        weight is partitioned (DeepSpeed ZeRO-3) or has a bias, each chunk goes through the module under
        a recomputing checkpoint instead (one more logits matmul per chunk in backward).
        """
        keep = lm_labels != -100  # (batch, seq)
        states = hidden[keep]  # (tokens, hidden): padding and suffix positions never reach the LM head
        targets = lm_labels[keep]  # (tokens,)
        count = targets.numel()
        if count == 0:
            return hidden.sum() * 0.0, torch.zeros((), dtype=torch.long, device=hidden.device)
        weight = self.lm_head.weight
        if self.lm_head.bias is None and not _is_partitioned(weight):
            total = _LinearCrossEntropySum.apply(states, weight, targets, chunk_size)
            return total / count, torch.tensor(count, device=hidden.device)

        def chunk_loss(chunk_states: torch.Tensor, chunk_targets: torch.Tensor) -> torch.Tensor:
            logits = self.lm_head(chunk_states).float()  # (chunk, vocab)
            return nn.functional.cross_entropy(logits, chunk_targets, reduction="sum")

        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, count, chunk_size):
            piece = slice(start, start + chunk_size)
            if torch.is_grad_enabled() and states.requires_grad:
                # Recompute the chunk's logits in backward instead of keeping them: the saved state is
                # (chunk, hidden), never (chunk, vocab).
                total = total + torch.utils.checkpoint.checkpoint(
                    chunk_loss, states[piece], targets[piece], use_reentrant=False
                )
            else:
                total = total + chunk_loss(states[piece], targets[piece])
        return total / count, torch.tensor(count, device=hidden.device)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        segment_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lm_labels: torch.LongTensor | None = None,
        lm_chunk_size: int | None = None,
        **kwargs,
    ) -> LlaraPretrainingOutput:
        if input_ids is None or segment_ids is None:
            raise ValueError(
                "LlaraForPretraining needs input_ids and segment_ids (0 pad, 1 prefix+text, 2 summarize suffix, "
                "3 predict suffix): build them with trainers.pretraining.PretrainingCollator"
            )
        if segment_ids.shape != input_ids.shape:
            raise ValueError(f"segment_ids {tuple(segment_ids.shape)} and input_ids {tuple(input_ids.shape)} differ")
        if attention_mask is not None and not torch.equal(attention_mask.bool(), segment_ids != SEGMENT_PAD):
            raise ValueError("attention_mask disagrees with segment_ids: padding must be segment 0 exactly")
        implementation = self.model.config._attn_implementation or "eager"
        if implementation == _CPU_BF16_TRAINING_ATTENTION:  # left by a checkpointed bf16 step: sdpa underneath
            implementation = "sdpa"
        if implementation not in _DUAL_MASK_ATTENTION:
            raise ValueError(
                f"the one-pass EBAE/EBAR input needs a custom 4D mask, which {implementation!r} cannot take: "
                f"load the model with attn_implementation in {_DUAL_MASK_ATTENTION}"
            )
        summarize_mask = self._special_positions(input_ids, segment_ids, "summarize")
        predict_mask = self._special_positions(input_ids, segment_ids, "predict")
        dtype = self.model.get_input_embeddings().weight.dtype
        for key in ("token_type_ids", "position_ids", "num_items_in_batch"):
            kwargs.pop(key, None)
        with cpu_bf16_training_attention(self.model):
            outputs = self.model(
                input_ids=input_ids,
                attention_mask=dual_suffix_attention_mask(segment_ids, dtype),
                position_ids=dual_suffix_positions(segment_ids),
                use_cache=False,
                return_dict=True,
                **kwargs,
            )
        hidden = outputs.last_hidden_state  # (batch, seq, hidden)
        batch, k = input_ids.shape[0], self.config.num_pooled_tokens
        # Masked selection keeps row-major order: k consecutive states per row, in sequence order.
        special = torch.cat([hidden[summarize_mask], hidden[predict_mask]])  # (2 * batch * k, hidden)
        logits = self.lm_head(special)  # (2 * batch * k, vocab)
        summarize_logits, predict_logits = logits.view(2, batch, k, -1).unbind(0)  # (batch, k, vocab) each
        lm_loss = lm_tokens = None
        if lm_labels is not None:
            vocab = self.config.get_text_config().vocab_size
            lm_loss, lm_tokens = self._chunked_lm_loss(hidden, lm_labels, lm_chunk_size or default_lm_chunk_size(vocab))
        return LlaraPretrainingOutput(
            summarize_logits=summarize_logits,
            predict_logits=predict_logits,
            summarize_embeds=self.pool(hidden, summarize_mask),
            predict_embeds=self.pool(hidden, predict_mask),
            lm_loss=lm_loss,
            lm_tokens=lm_tokens,
            last_hidden_state=hidden,
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


@torch.inference_mode()
def encode(
    model: LlaraModel,
    builder: LlaraInputBuilder,
    texts: Sequence[str],
    task: str | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    max_text_tokens: int | None = None,
) -> torch.Tensor:
    """Embed ``texts`` for ``task`` in length-sorted batches; returns (len(texts), hidden) float32."""
    ids = builder.build_ids(texts, task=task, max_length=max_length, max_text_tokens=max_text_tokens)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    device = next(model.parameters()).device
    out = torch.empty((len(ids), model.config.get_text_config().hidden_size), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = builder.pad([ids[i] for i in chunk])
        pooled = model(**{k: v.to(device) for k, v in batch.items()}).pooler_output
        out[chunk] = pooled.float().cpu()
    return out


__all__ = [
    "LlaraPreTrainedModel",
    "LlaraModel",
    "LlaraForPretraining",
    "LlaraPretrainingOutput",
    "LlaraInputBuilder",
    "dual_suffix_attention_mask",
    "dual_suffix_positions",
    "default_lm_chunk_size",
    "encode",
    "cpu_bf16_flags",
    "cpu_supports_fast_bf16",
    "is_right_padded",
    "resolve_dtype",
    "DTYPE_CHOICES",
    "DTYPE_ENV",
]
