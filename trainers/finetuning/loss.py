"""InfoNCE over the global batch for LLaRA stage 2, with cross-device negatives and GradCache.

Every query is scored against every passage of the global batch: its own positive, its own hard
negatives and all passages of the other queries (on every device). Passages come in groups of
``group_size`` (the positive first, then ``group_size - 1`` hard negatives), so the target of global
query ``i`` is passage ``i * group_size``. Scores are dot products of L2-normalized embeddings divided
by the temperature (0.01 in the released recipe, i.e. a scale of 100).

:class:`LlaraContrastiveLoss` is the one entry point the Trainer calls: ``loss_fn(model, inputs)``
encodes the collated batch, gathers embeddings across devices and returns the loss. With
``gradcache_chunk_size`` set it uses GradCache (Gao et al., 2021): embeddings are first computed in
chunks without an autograd graph, the loss gradient with respect to the embeddings is cached, and the
backward pass replays each chunk with its random state restored and back-propagates the cached
gradient. Memory then scales with the chunk, not with the batch, and the gradients are the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

QUERY_PREFIX = "query_"
PASSAGE_PREFIX = "passage_"


def info_nce_loss(query_embeddings: torch.Tensor, passage_embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE of ``n`` queries against ``n * group_size`` passages grouped per query (positive first)."""
    num_queries = query_embeddings.shape[0]
    num_passages = passage_embeddings.shape[0]
    if num_queries == 0 or num_passages % num_queries:
        raise ValueError(
            f"{num_passages} passages for {num_queries} queries: expected group_size passages per query "
            "(the positive first, then its negatives)"
        )
    group_size = num_passages // num_queries
    # Scores in fp32: bf16 dot products divided by 0.01 lose the ordering of close passages.
    scores = query_embeddings.float() @ passage_embeddings.float().T / temperature  # (n, n * group)
    targets = torch.arange(num_queries, device=scores.device) * group_size  # (n,)
    return nn.functional.cross_entropy(scores, targets)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_local_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks in rank order; the local slice is ``tensor`` itself.

    Other ranks' slices arrive without gradient; the local slice keeps its autograd graph, so each rank
    back-propagates the global loss into its own embeddings only. Ranks may hold different numbers of
    rows (the last batch of an epoch). Without an initialized process group this returns ``tensor``.
    """
    if not _distributed():
        return tensor
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    padded = tensor.detach().new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    buffers = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(buffers, padded.contiguous())
    pieces = [buffer[:n] for buffer, n in zip(buffers, sizes)]
    pieces[rank] = tensor
    return torch.cat(pieces)  # (sum of sizes, ...)


def scale_gradient_for_world(loss: torch.Tensor) -> torch.Tensor:
    """Same value, gradient times the world size.

    Each rank computes the full global loss but back-propagates only through its local slice, giving
    its share of the gradient; DDP then *averages* over ranks. Multiplying the gradient (not the logged
    value) by the world size turns that average into the sum, i.e. the gradient of the global loss.
    """
    if not _distributed():
        return loss
    world = dist.get_world_size()
    return loss + (world - 1) * (loss - loss.detach())


class _RandomState:
    """CPU and accelerator RNG states captured before a chunk's first forward, for an exact replay."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from the captured state; the global RNG state is restored afterwards."""
        devices = [self.device] if self.cuda_state is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.cuda_state is not None:
                torch.cuda.set_rng_state(self.cuda_state, self.device)
            yield


def _split_inputs(inputs: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    side = {key[len(prefix):]: value for key, value in inputs.items() if key.startswith(prefix)}
    if "input_ids" not in side or "attention_mask" not in side:
        raise KeyError(f"the batch lacks {prefix}input_ids / {prefix}attention_mask (keys: {sorted(inputs)})")
    return side


def _chunks(side: dict[str, torch.Tensor], chunk_size: int | None) -> list[dict[str, torch.Tensor]]:
    rows = side["input_ids"].shape[0]
    size = chunk_size or max(rows, 1)
    out = []
    for start in range(0, rows, size):
        chunk = {key: value[start : start + size] for key, value in side.items()}
        # Drop trailing columns that are padding in every row of the chunk (right padding): less
        # work, same embeddings. Left-padded chunks are left as they are.
        columns = chunk["attention_mask"].any(0).nonzero()
        if len(columns) and bool(chunk["attention_mask"][:, 0].all()):
            chunk = {key: value[:, : int(columns.max()) + 1] for key, value in chunk.items()}
        out.append(chunk)
    return out


def _embed(model: nn.Module, chunk: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=chunk["input_ids"], attention_mask=chunk["attention_mask"]).pooler_output  # (rows, dim)


class LlaraContrastiveLoss(nn.Module):
    """InfoNCE for LLaRA fine-tuning; call it as ``loss_fn(model, batch)``.

    Args:
        temperature: scores are ``q . p / temperature`` (released recipe: 0.01).
        gather_across_devices: score each query against the passages of all ranks (cross-device
            negatives); the gradient is scaled so that DDP's average equals the global-batch gradient.
        gradcache_chunk_size: when set, encode queries and passages in chunks of this many rows with
            GradCache (same loss and gradients, memory of one chunk). ``None``/0 disables it.

    The batch holds ``query_input_ids``, ``query_attention_mask`` (n queries) and ``passage_input_ids``,
    ``passage_attention_mask`` (n * group_size passages, each query's positive first).
    """

    citation = """
@inproceedings{li2024llama2vec,
  title={Llama2Vec: Unsupervised Adaptation of Large Language Models for Dense Retrieval},
  author={Li, Chaofan and Liu, Zheng and Xiao, Shitao and Shao, Yingxia and Lian, Defu},
  booktitle={ACL},
  year={2024}
}
@inproceedings{gao2021scaling,
  title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
  author={Gao, Luyu and Zhang, Yunyi and Han, Jiawei and Callan, Jamie},
  booktitle={RepL4NLP},
  year={2021}
}
"""

    def __init__(
        self,
        temperature: float = 0.01,
        gather_across_devices: bool = True,
        gradcache_chunk_size: int | None = None,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if gradcache_chunk_size is not None and gradcache_chunk_size < 0:
            raise ValueError(f"gradcache_chunk_size must be >= 0, got {gradcache_chunk_size}")
        self.temperature = temperature
        self.gather_across_devices = gather_across_devices
        self.gradcache_chunk_size = gradcache_chunk_size or None

    def get_config_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "gather_across_devices": self.gather_across_devices,
            "gradcache_chunk_size": self.gradcache_chunk_size,
        }

    def compute_loss_from_embeddings(
        self, query_embeddings: torch.Tensor, passage_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """Pure InfoNCE on (n, dim) queries and (n * group_size, dim) grouped passages."""
        return info_nce_loss(query_embeddings, passage_embeddings, self.temperature)

    def _global_loss(self, query_embeddings: torch.Tensor, passage_embeddings: torch.Tensor) -> torch.Tensor:
        if self.gather_across_devices:
            query_embeddings = gather_with_local_grad(query_embeddings)  # (global n, dim)
            passage_embeddings = gather_with_local_grad(passage_embeddings)  # (global n * group, dim)
            return scale_gradient_for_world(self.compute_loss_from_embeddings(query_embeddings, passage_embeddings))
        return self.compute_loss_from_embeddings(query_embeddings, passage_embeddings)

    def forward(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        queries = _split_inputs(inputs, QUERY_PREFIX)
        passages = _split_inputs(inputs, PASSAGE_PREFIX)
        if self.gradcache_chunk_size is None or not torch.is_grad_enabled():
            query_embeddings = torch.cat([_embed(model, c) for c in _chunks(queries, self.gradcache_chunk_size)])
            passage_embeddings = torch.cat([_embed(model, c) for c in _chunks(passages, self.gradcache_chunk_size)])
            return self._global_loss(query_embeddings, passage_embeddings)
        return self._gradcache_forward(model, queries, passages)

    # ---- GradCache ---------------------------------------------------------------------------
    def _gradcache_forward(self, model, queries, passages) -> torch.Tensor:
        query_chunks = _chunks(queries, self.gradcache_chunk_size)
        chunks = query_chunks + _chunks(passages, self.gradcache_chunk_size)
        num_query_chunks = len(query_chunks)
        device = queries["input_ids"].device
        # The replay runs inside backward, outside the Trainer's autocast context: remember it.
        autocast = {
            "device_type": device.type,
            "dtype": torch.get_autocast_dtype(device.type),
            "enabled": torch.is_autocast_enabled(device.type),
        }
        states, embeddings = [], []
        # Pass 1: embeddings without a graph; remember the RNG state (dropout) of each chunk.
        with torch.no_grad():
            for chunk in chunks:
                states.append(_RandomState(device))
                embeddings.append(_embed(model, chunk))
        # Loss on leaf copies of the embeddings: its backward fills the embedding gradients.
        leaves = [e.detach().requires_grad_() for e in embeddings]
        with torch.enable_grad():
            loss = self._global_loss(torch.cat(leaves[:num_query_chunks]), torch.cat(leaves[num_query_chunks:]))
            loss.backward()
        cached = [leaf.grad for leaf in leaves]
        # The returned loss is a leaf whose hook runs pass 2 when the Trainer calls backward on it;
        # the hook's incoming gradient carries gradient-accumulation and fp16 loss scaling.
        result = loss.detach().requires_grad_()
        result.register_hook(
            partial(_replay_chunks, model=model, chunks=chunks, states=states, cached=cached, autocast=autocast)
        )
        return result


def _replay_chunks(grad_output: torch.Tensor, *, model, chunks, states, cached, autocast) -> None:
    """Pass 2 of GradCache: re-run each chunk with its RNG state and back-propagate its cached gradient."""
    no_sync = getattr(model, "no_sync", None)
    last = len(chunks) - 1
    for index, (chunk, state, grad) in enumerate(zip(chunks, states, cached)):
        # Under DDP, gradients are all-reduced only with the last chunk's backward.
        sync_context = no_sync() if (no_sync is not None and index < last) else nullcontext()
        with sync_context, torch.enable_grad():
            with state.replay(), torch.autocast(**autocast):
                embedding = _embed(model, chunk)  # (rows, dim)
            # d(surrogate)/d(embedding) = cached gradient: backward gives the parameter gradients.
            surrogate = (embedding.float() * (grad * grad_output)).sum()
            surrogate.backward()


__all__ = ["LlaraContrastiveLoss", "gather_with_local_grad", "info_nce_loss", "scale_gradient_for_world"]
