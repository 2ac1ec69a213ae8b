"""EBAE/EBAR losses of LLaRA stage 1 (bag-of-words prediction through the LM head).

For one suffix (summarize = EBAE, predict = EBAR) the LM-head logits at its ``k`` special tokens are
max-pooled over the ``k`` positions into one vocabulary-sized vector; its log-softmax scores the *unique*
target token ids, and the loss of a row is minus their mean log-probability. EBAE's target is the input
text itself, EBAR's the passage that follows it. Rows without targets (a last chunk with no next passage)
are left out of the mean.

Two named modes combine the terms:

* ``reference`` (the released code): ``L = L_lm + (L_ebae / 10 + L_ebar / 10) / 2``, i.e. weights
  ``lm=1, ebae=ebar=0.05``, where ``L_lm`` is the ordinary next-token loss on the input text. The released code
  averages the bag-of-words terms that are present and uses one alone otherwise, so a run with only one of them
  (the other's weight set to 0) gives it ``1/10``: ``L = L_lm + L_ebae / 10``;
* ``paper`` (arXiv 2312.15503, eq. of the training objective): ``L = L_ebae + L_ebar``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trainers.citation import LLARA_BIBTEX

IGNORE_INDEX = -100
LOSS_MODES = ("reference", "paper")
# (lm, ebae, ebar) weights of each mode. Reference: the released code divides each bag-of-words loss by
# 10 and averages the two, on top of the unit-weight LM loss.
MODE_WEIGHTS = {"reference": (1.0, 0.05, 0.05), "paper": (0.0, 1.0, 1.0)}
# The released code's scale of one bag-of-words loss (divided by 10) before the present terms are averaged.
REFERENCE_BOW_SCALE = 0.1


def target_multi_hot(target_ids: torch.Tensor, vocab_size: int, ignore_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, vocab) 0/1 float mask of each row's unique valid target ids.

    ``target_ids`` (batch, targets) is padded with any negative value. Scattering into a per-row vocabulary
    mask makes repeated ids count once, which is the ``unique`` of the released code without a loop.
    """
    valid = (target_ids >= 0) & (target_ids < vocab_size)  # (batch, targets)
    hot = torch.zeros(target_ids.shape[0], vocab_size, dtype=torch.float32, device=target_ids.device)
    # Invalid slots add 0 at index 0; valid ones add 1 at their id. Repeats sum above 1, clipped below.
    hot.scatter_add_(1, torch.where(valid, target_ids, 0), valid.float())
    hot = (hot > 0).float()
    if ignore_ids is not None and ignore_ids.numel():
        hot[:, ignore_ids.to(hot.device)] = 0.0
    return hot  # (batch, vocab)


class _MaxOverPositions(torch.autograd.Function):
    """``x.amax(dim=1)`` with a cheaper backward: the same gradient (shared evenly among tied maxima).

    Autograd's ``amax`` backward counts the ties with a boolean sum over a (batch, k, vocab) mask, which on
    CPU converts the whole mask to another dtype first, then multiplies and divides in fresh tensors. Here
    the 0/1 hit mask is made once in the gradient's dtype, counted, and scaled in place.
    """

    @staticmethod
    def forward(ctx, x):  # x (batch, k, vocab)
        pooled = x.amax(dim=1)  # (batch, vocab)
        ctx.save_for_backward(x, pooled)
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled):
        x, pooled = ctx.saved_tensors
        hit = torch.eq(x, pooled.unsqueeze(1)).to(grad_pooled.dtype)  # (batch, k, vocab): 1 at each maximum
        count = hit.sum(dim=1, keepdim=True)  # (batch, 1, vocab): >= 1
        return hit.mul_(grad_pooled.unsqueeze(1) / count)


def bow_loss_from_logits(
    logits: torch.Tensor,
    target_ids: torch.Tensor,
    ignore_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bag-of-words loss of one suffix.

    Args:
        logits: (batch, k, vocab) LM-head logits at the suffix's k special tokens.
        target_ids: (batch, targets) target token ids, padded with negatives (duplicates allowed).
        ignore_ids: ids never counted as targets (pad, BOS, EOS, other special tokens).

    Returns:
        ``(loss, has_target)``: the mean over rows that have targets of ``-mean(log p[unique targets])``
        (a graph-connected 0 when no row has any), and the (batch,) bool mask of those rows.
    """
    pooled = _MaxOverPositions.apply(logits.float())  # (batch, vocab): max over the k positions, in fp32
    log_probs = torch.log_softmax(pooled, dim=-1)  # (batch, vocab)
    hot = target_multi_hot(target_ids, log_probs.shape[-1], ignore_ids)  # (batch, vocab)
    counts = hot.sum(-1)  # (batch,)
    has_target = counts > 0
    per_row = -(log_probs * hot).sum(-1) / counts.clamp(min=1)  # (batch,)
    if not bool(has_target.any()):
        return log_probs.sum() * 0.0, has_target
    return per_row[has_target].mean(), has_target


@dataclass
class EbaeEbarLoss:
    """Weighted sum of the LM, EBAE and EBAR terms. ``None`` weights take the ``mode``'s values."""

    mode: str = "reference"
    lm_weight: float | None = None
    ebae_weight: float | None = None
    ebar_weight: float | None = None
    ignore_ids: list[int] = field(default_factory=list)
    citation: str = LLARA_BIBTEX

    def __post_init__(self):
        if self.mode not in LOSS_MODES:
            raise ValueError(f"loss mode must be one of {LOSS_MODES}, got {self.mode!r}")
        defaults = MODE_WEIGHTS[self.mode]
        if self.mode == "reference" and (self.ebae_weight == 0) != (self.ebar_weight == 0):
            # One bag-of-words term switched off, the other left to the mode: the released code uses the term alone,
            # not half of it (it averages only the terms that are present).
            alone = REFERENCE_BOW_SCALE
            defaults = (defaults[0], 0.0 if self.ebae_weight == 0 else alone, 0.0 if self.ebar_weight == 0 else alone)
        self.lm_weight = defaults[0] if self.lm_weight is None else float(self.lm_weight)
        self.ebae_weight = defaults[1] if self.ebae_weight is None else float(self.ebae_weight)
        self.ebar_weight = defaults[2] if self.ebar_weight is None else float(self.ebar_weight)
        for name in ("lm_weight", "ebae_weight", "ebar_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lm_weight == self.ebae_weight == self.ebar_weight == 0:
            raise ValueError("all loss weights are 0: nothing to train")

    @property
    def uses_lm(self) -> bool:
        return self.lm_weight > 0

    def get_config_dict(self) -> dict:
        return {
            "mode": self.mode,
            "lm_weight": self.lm_weight,
            "ebae_weight": self.ebae_weight,
            "ebar_weight": self.ebar_weight,
        }

    def __call__(self, outputs, ebae_target_ids: torch.Tensor, ebar_target_ids: torch.Tensor):
        """``(total, parts)`` from a ``LlaraPretrainingOutput``; ``parts`` holds detached ebae/ebar/lm."""
        ignore = torch.tensor(self.ignore_ids, dtype=torch.long) if self.ignore_ids else None
        ebae, _ = bow_loss_from_logits(outputs.summarize_logits, ebae_target_ids, ignore)
        ebar, _ = bow_loss_from_logits(outputs.predict_logits, ebar_target_ids, ignore)
        total = self.ebae_weight * ebae + self.ebar_weight * ebar
        parts = {"ebae": ebae.detach(), "ebar": ebar.detach()}
        if self.uses_lm:
            if outputs.lm_loss is None:
                raise ValueError("the LM term is on but the model returned no lm_loss: pass lm_labels")
            total = total + self.lm_weight * outputs.lm_loss
            parts["lm"] = outputs.lm_loss.detach()
        return total, parts


__all__ = ["EbaeEbarLoss", "IGNORE_INDEX", "LOSS_MODES", "MODE_WEIGHTS", "REFERENCE_BOW_SCALE", "bow_loss_from_logits", "target_multi_hot"]
