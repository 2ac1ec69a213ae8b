"""LLaRA stage-1 pretraining model: ``LlaraForPretraining`` (backbone + LM head, one-pass EBAE/EBAR forward).

Kept apart from ``modeling_llara`` so that file holds only the embedder, and shipped with it so that
``AutoModelForPreTraining.from_pretrained(path, trust_remote_code=True)`` can continue pretraining a Hub model.

One forward runs ``prefix + text + summarize suffix + predict suffix`` with positions and a 4D attention
mask that make both suffixes' states equal those of two separate passes; LM-head logits are computed at
the special positions and, for the language-modelling term, over the text in chunks whose gradients are
taken inside the forward pass, so (batch, seq, vocab) logits never exist at once.

This file imports only torch, transformers, the standard library and its sibling files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn
from transformers import AutoModel
from transformers.utils import ModelOutput

from .configuration_llara import LlaraConfig
from .modeling_llara import LlaraPreTrainedModel


# Segment ids of the one-pass pretraining input ``prefix + text + summarize suffix + predict suffix``.
SEGMENT_PAD = 0
SEGMENT_TEXT = 1  # prefix and text
SEGMENT_SUMMARIZE = 2
SEGMENT_PREDICT = 3
# Attention implementations that accept an arbitrary 4D mask (flash-attention cannot).
_DUAL_MASK_ATTENTION = ("sdpa", "eager")
# Name of sdpa computed in fp32, which LLaRA's training code registers for bf16 training on CPU (where the bf16
# attention backward is slow): sdpa underneath, so it takes the same 4D mask.
SDPA_FP32_ATTENTION = "llara_sdpa_fp32"


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


def dual_suffix_attention_mask(
    segment_ids: torch.Tensor, dtype: torch.dtype, sliding_window: int | None = None
) -> torch.Tensor:
    """Additive (batch, 1, seq, seq) mask: causal, padding hidden, predict rows blind to summarize columns.

    transformers uses a 4D mask as given, so it carries the causal part itself. It is additive with
    ``torch.finfo(dtype).min`` (not ``-inf``) in the model's dtype: eager attention needs a float mask and
    ``-inf`` turns fully masked rows into NaN. Every position may attend to itself, so padding rows (which
    no loss reads) still get a finite softmax and cannot leak NaN into the gradients.

    ``sliding_window``: the mask of a sliding-window layer, which sees a key only when it lies less than
    ``sliding_window`` positions before the query. The distance is counted in :func:`dual_suffix_positions`,
    not in sequence indices: the predict suffix then sees the same last text tokens as in its own pass,
    where it starts right after the text.
    """
    seq = segment_ids.shape[-1]
    idx = torch.arange(seq, device=segment_ids.device)
    causal = idx[None, :] <= idx[:, None]  # (seq, seq): key <= query
    keys_real = (segment_ids != SEGMENT_PAD)[:, None, :]  # (batch, 1, seq)
    blocked = (segment_ids == SEGMENT_PREDICT)[:, :, None] & (segment_ids == SEGMENT_SUMMARIZE)[:, None, :]
    if sliding_window is not None:
        positions = dual_suffix_positions(segment_ids)  # (batch, seq)
        blocked = blocked | (positions[:, :, None] - positions[:, None, :] >= sliding_window)
    allowed = (causal[None] & keys_real & ~blocked) | torch.eye(seq, dtype=torch.bool, device=idx.device)[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]  # (batch, 1, seq, seq)


# Kinds of attention layer (transformers' ``config.layer_types``) whose pattern a 4D mask can carry.
_MASKABLE_LAYER_TYPES = ("full_attention", "sliding_attention")


def backbone_attention_mask(
    segment_ids: torch.Tensor, dtype: torch.dtype, text_config
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The one-pass mask in the form the backbone takes: one 4D mask, or one per kind of attention layer.

    A 4D mask reaches the layers as given, so a sliding-window layer would look past its window unless the
    mask itself stops there. A backbone that mixes full and sliding-window layers (``config.layer_types``)
    takes a dict of masks keyed by layer type; a backbone of one kind takes that kind's mask alone (all its
    layers slide when the config sets ``sliding_window`` without ``layer_types``).
    """
    window = getattr(text_config, "sliding_window", None)
    layer_types = getattr(text_config, "layer_types", None) or ["sliding_attention" if window else "full_attention"]
    kinds = sorted(set(layer_types))
    unknown = [kind for kind in kinds if kind not in _MASKABLE_LAYER_TYPES]
    if unknown:
        raise ValueError(
            f"the one-pass EBAE/EBAR input needs a 4D mask per attention layer; the backbone's layer types "
            f"{unknown} take none (supported: {', '.join(_MASKABLE_LAYER_TYPES)})"
        )
    masks = {
        kind: dual_suffix_attention_mask(segment_ids, dtype, window if kind == "sliding_attention" else None)
        for kind in kinds
    }
    return masks if len(masks) > 1 else masks[kinds[0]]


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
    arithmetic on it. One softmax gives both the gradient and the loss
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
        # The saved gradients are scaled in place: a copy of a (vocab, hidden) fp32 gradient is 0.7 GB at a 262k
        # vocabulary, at the moment the other gradients of the tied weight arrive. So one backward per forward.
        if getattr(ctx, "consumed", False):
            raise RuntimeError("the chunked LM loss supports one backward pass per forward (its saved gradients "
                               "are scaled in place); recompute the loss instead of retain_graph=True")
        ctx.consumed = True
        grad_states, grad_weight = ctx.saved_tensors
        if grad_states is not None:
            grad_states = grad_states.mul_(grad_total.to(grad_states.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_total).to(ctx.weight_dtype)
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
    """Backbone + LM head: the object trained by EBAE/EBAR pretraining (LLaRA stage 1).

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
        if implementation == SDPA_FP32_ATTENTION:  # selected by the training code on CPU: sdpa underneath
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
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=backbone_attention_mask(segment_ids, dtype, self.model.config),
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


__all__ = [
    "LM_CHUNK_BYTES",
    "SDPA_FP32_ATTENTION",
    "SEGMENT_PAD",
    "SEGMENT_PREDICT",
    "SEGMENT_SUMMARIZE",
    "SEGMENT_TEXT",
    "LlaraForPretraining",
    "LlaraPretrainingOutput",
    "default_lm_chunk_size",
    "dual_suffix_attention_mask",
    "backbone_attention_mask",
    "dual_suffix_positions",
]
