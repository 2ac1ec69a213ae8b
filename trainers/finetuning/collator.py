"""Collator for LLaRA contrastive fine-tuning: (query, passage group) examples -> one flat dict of tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Released recipe (FlagEmbedding research/LLARA finetune): totals including the LLaRA prompt.
DEFAULT_QUERY_MAX_LENGTH = 64
DEFAULT_PASSAGE_MAX_LENGTH = 160


@dataclass
class LlaraContrastiveCollator:
    """Tokenize a batch of ``{"query": str, "passages": [positive, negative, ...]}`` examples.

    Queries get the query prompt (``task="query"``, predict suffix by default), passages the passage
    prompt (``task="document"``, summarize suffix). The text is cut before the suffix is appended, so
    ``query_max_length`` / ``passage_max_length`` bound the *total* length and the suffix is never cut.
    Returns ``query_input_ids``, ``query_attention_mask`` (n, q_len) and ``passage_input_ids``,
    ``passage_attention_mask`` (n * group_size, p_len), each group in example order, positive first.
    """

    builder: Any  # modeling_llara.LlaraInputBuilder
    query_max_length: int = DEFAULT_QUERY_MAX_LENGTH
    passage_max_length: int = DEFAULT_PASSAGE_MAX_LENGTH
    pad_to_multiple_of: int | None = None
    padding_side: str = "right"

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        queries, passages = [], []
        group_size = None
        for index, feature in enumerate(features):
            if "query" not in feature or "passages" not in feature:
                raise KeyError(f"example {index} lacks 'query'/'passages' (keys: {sorted(feature)})")
            group = list(feature["passages"])
            if group_size is None:
                group_size = len(group)
            if not group or len(group) != group_size:
                raise ValueError(
                    f"example {index} has {len(group)} passages, expected {group_size}: every example of a batch "
                    "needs the same group size (1 positive + group_size - 1 negatives)"
                )
            queries.append(feature["query"])
            passages.extend(group)
        query = self.builder(
            queries,
            task="query",
            max_length=self.query_max_length,
            padding_side=self.padding_side,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        passage = self.builder(
            passages,
            task="document",
            max_length=self.passage_max_length,
            padding_side=self.padding_side,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        return {
            "query_input_ids": query["input_ids"],  # (n, q_len)
            "query_attention_mask": query["attention_mask"],  # (n, q_len)
            "passage_input_ids": passage["input_ids"],  # (n * group, p_len)
            "passage_attention_mask": passage["attention_mask"],  # (n * group, p_len)
        }


__all__ = ["DEFAULT_PASSAGE_MAX_LENGTH", "DEFAULT_QUERY_MAX_LENGTH", "LlaraContrastiveCollator"]
