"""The stage-2 objective: sentence-transformers' InfoNCE losses, configured as the released LLaRA recipe.

LLaRA fine-tunes with InfoNCE over the global batch: every query is scored against its own positive, its
own hard negatives and every passage of the other queries (on every device), with scores
``q . p / temperature`` and a temperature of 0.01 (FlagEmbedding research/LLARA). sentence-transformers
ships exactly that objective, so this module only configures it:

* :class:`~sentence_transformers.sentence_transformer.losses.MultipleNegativesRankingLoss` with
  ``scale = 1 / temperature`` (the default ``directions=("query_to_doc",)`` is InfoNCE, query to passages);
* :class:`~sentence_transformers.sentence_transformer.losses.CachedMultipleNegativesRankingLoss`
  (GradCache, Gao et al. 2021) when a chunk size is given: same loss and gradients, memory of one chunk;
* ``gather_across_devices=True``: cross-device negatives, the local slice keeping its gradient;
* optionally :class:`~sentence_transformers.sentence_transformer.losses.MatryoshkaLoss` around it, so that
  prefixes of the embedding (``truncate_dim``) are trained as embeddings too (our own addition, not in the
  released recipe).

The one hand-written piece is :func:`fp32_cos_sim`: sentence-transformers' ``cos_sim`` runs its matmul in
the autocast dtype, and at a scale of 100 the bf16 rounding of the similarities (about 4e-3 relative) is
enough to reorder close passages, so the scores are computed in fp32 with autocast lifted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.util import cos_sim
from torch import nn

# Released recipe (FlagEmbedding research/LLARA fine-tuning): temperature 0.01, i.e. a scale of 100.
DEFAULT_TEMPERATURE = 0.01


def fp32_cos_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of (n, dim) and (m, dim) in fp32, whatever autocast is active: (n, m)."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return cos_sim(a.float(), b.float())


def contrastive_loss(
    model,
    temperature: float = DEFAULT_TEMPERATURE,
    gather_across_devices: bool = True,
    gradcache_chunk_size: int | None = None,
    matryoshka_dims: Sequence[int] | None = None,
) -> nn.Module:
    """The LLaRA stage-2 loss for a ``SentenceTransformer`` whose columns are (query, positive, negative_1, ...).

    Args:
        model: the ``SentenceTransformer`` being trained (its first module is the LLaRA encoder).
        temperature: scores are ``cos(q, p) / temperature``; embeddings are L2-normalized, so the cosine
            is the released code's dot product.
        gather_across_devices: score each query against the passages of all ranks.
        gradcache_chunk_size: GradCache mini-batch size in rows (``None``/0: no caching).
        matryoshka_dims: embedding prefixes to train as well (e.g. ``[576, 256, 128]``); ``None``: off.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if gradcache_chunk_size is not None and gradcache_chunk_size < 0:
        raise ValueError(f"gradcache_chunk_size must be >= 0, got {gradcache_chunk_size}")
    common = {"scale": 1.0 / temperature, "similarity_fct": fp32_cos_sim, "gather_across_devices": gather_across_devices}
    if gradcache_chunk_size:
        loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=gradcache_chunk_size, **common)
    else:
        loss = MultipleNegativesRankingLoss(model, **common)
    if matryoshka_dims:
        dims = [int(d) for d in matryoshka_dims]
        full = model.get_embedding_dimension()
        bad = [d for d in dims if not 0 < d <= full]
        if bad:
            raise ValueError(f"matryoshka_dims must lie in 1..{full} (the embedding size), got {bad}")
        loss = MatryoshkaLoss(model, loss, matryoshka_dims=sorted(set(dims), reverse=True))
    return loss


def loss_config(loss: nn.Module) -> dict:
    """A JSON-able description of a loss built by :func:`contrastive_loss` (for run summaries and the card)."""
    inner = loss.loss if isinstance(loss, MatryoshkaLoss) else loss
    config = {
        "class": type(loss).__name__,
        "temperature": 1.0 / inner.scale,
        "gather_across_devices": inner.gather_across_devices,
        "gradcache_chunk_size": getattr(inner, "mini_batch_size", None),
    }
    if isinstance(loss, MatryoshkaLoss):
        config["inner"] = type(inner).__name__
        config["matryoshka_dims"] = list(loss.matryoshka_dims)
    return config


__all__ = ["DEFAULT_TEMPERATURE", "contrastive_loss", "fp32_cos_sim", "loss_config"]
