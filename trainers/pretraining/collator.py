"""Collator of LLaRA stage 1: (input, next) text pairs -> one flat dict of tensors for one forward pass.

Each row is ``prefix + text[:budget] + summarize suffix + predict suffix``; the text is cut *before* the
suffixes are appended, so they are never truncated, and ``max_length`` counts the whole row (the released
run: 128 tokens in all, 89 of text with LLaMA-2's prompts). ``segment_ids`` name the four parts for the
model's position ids and 4D mask (``modeling_llara.pretraining_llara.SEGMENT_*``).

Targets of the bag-of-words losses are token-id lists padded with -1: EBAE's is the text the model sees
(or the record's explicit ``summarize_target``), EBAR's the next passage (cut to ``max_target_tokens``).
Special ids (pad, BOS, EOS, unk, the 16 LLaRA tokens, ...) are dropped here; with ``remove_stopwords`` the
target text also loses punctuation (``[\\W_]+`` -> space, as the released preprocessing) and the English
function words of ``trainers/resources/english_stopwords.txt`` before it is tokenized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from modeling_llara import LlaraConfig, LlaraInputBuilder
from modeling_llara.pretraining_llara import SEGMENT_PAD, SEGMENT_PREDICT, SEGMENT_SUMMARIZE, SEGMENT_TEXT

from .loss import IGNORE_INDEX

STOPWORDS_FILE = Path(__file__).resolve().parent.parent / "resources" / "english_stopwords.txt"
TARGET_PAD = -1
_NON_WORD = re.compile(r"[\W_]+")


@lru_cache(maxsize=1)
def english_stopwords() -> frozenset[str]:
    """The shipped English stopword list (lower case)."""
    lines = STOPWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def clean_target_text(text: str, stopwords: frozenset[str]) -> str:
    """Drop punctuation and stopwords from a bag-of-words target (case kept for the kept words)."""
    return " ".join(word for word in _NON_WORD.sub(" ", text).split() if word.lower() not in stopwords)


def _pad_rows(rows: list[list[int]], value: int, width: int | None = None) -> torch.Tensor:
    width = max([len(r) for r in rows] + [1]) if width is None else width
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


@dataclass
class PretrainingCollator:
    """Builds ``input_ids``, ``attention_mask``, ``segment_ids``, ``lm_labels``, ``ebae_target_ids`` and
    ``ebar_target_ids`` from records ``{"input": str, "next": str | None, "summarize_target"?: str}``.

    ``lm_labels`` are aligned with the positions that predict them (label at p = token p+1, -100 elsewhere):
    the next-token targets of the prefix + text part, never of the suffixes or padding.
    """

    tokenizer: Any
    config: LlaraConfig
    max_length: int = 128
    max_target_tokens: int | None = None
    remove_stopwords: bool = False
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None
    builder: LlaraInputBuilder = field(init=False, repr=False)
    text_budget: int = field(init=False)
    ignore_ids: list[int] = field(init=False)

    def __post_init__(self):
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        self.builder = LlaraInputBuilder(self.tokenizer, self.config)
        prompt = len(self.builder.prefix_ids) + sum(len(s) for s in self.builder.suffix_ids.values())
        if self.max_length <= prompt:
            raise ValueError(
                f"max_length={self.max_length} leaves no room for text: prefix and both suffixes take {prompt} tokens"
            )
        self.text_budget = self.max_length - prompt
        if self.max_target_tokens is None:
            self.max_target_tokens = self.text_budget
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        special |= {self.tokenizer.pad_token_id, self.tokenizer.bos_token_id, self.tokenizer.eos_token_id}
        special |= {self.tokenizer.unk_token_id, self.builder.pad_token_id}
        special |= set(self.config.suffix_token_ids("summarize") or []) | set(self.config.suffix_token_ids("predict") or [])
        self.ignore_ids = sorted(i for i in special if i is not None)

    # ---- targets ---------------------------------------------------------------------------
    def _target_ids(self, texts: list[str | None], limit: int) -> list[list[int]]:
        """Token ids of each target text (None -> no target), cleaned, cut to ``limit``, specials dropped."""
        rows: list[list[int]] = [[] for _ in texts]
        present = [i for i, t in enumerate(texts) if t]
        if not present:
            return rows
        batch = [texts[i] for i in present]
        if self.remove_stopwords:
            stop = english_stopwords()
            batch = [clean_target_text(t, stop) for t in batch]
        ids = self.builder.tokenize_texts(batch, limit)
        ignore = set(self.ignore_ids)
        for i, row in zip(present, ids):
            rows[i] = [t for t in row if t not in ignore]
        return rows

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("empty batch")
        inputs, nexts, own = [], [], []
        for index, feature in enumerate(features):
            text = feature.get("input") if isinstance(feature, dict) else None
            if not isinstance(text, str):
                raise TypeError(f"batch record {index}: 'input' must be a str, got {type(text).__name__}")
            following = feature.get("next")
            if following is not None and not isinstance(following, str):
                raise TypeError(f"batch record {index}: 'next' must be a str or None, got {type(following).__name__}")
            inputs.append(text)
            nexts.append(following)
            own.append(feature.get("summarize_target"))
        text_ids = self.builder.tokenize_texts(inputs, self.text_budget)
        prefix = self.builder.prefix_ids
        summarize, predict = self.builder.suffix_ids["summarize"], self.builder.suffix_ids["predict"]

        sequences, segments, labels = [], [], []
        for ids in text_ids:
            head = prefix + ids
            sequences.append(head + summarize + predict)
            segments.append(
                [SEGMENT_TEXT] * len(head) + [SEGMENT_SUMMARIZE] * len(summarize) + [SEGMENT_PREDICT] * len(predict)
            )
            # position p predicts token p + 1 within prefix + text
            labels.append(head[1:] + [IGNORE_INDEX] * (1 + len(summarize) + len(predict)))
        width = max(len(s) for s in sequences)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(sequences), width), self.builder.pad_token_id, dtype=torch.long)
        segment_ids = torch.full((len(sequences), width), SEGMENT_PAD, dtype=torch.long)
        lm_labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
        for row, (seq, seg, lab) in enumerate(zip(sequences, segments, labels)):
            span = slice(0, len(seq)) if self.padding_side == "right" else slice(width - len(seq), width)
            input_ids[row, span] = torch.tensor(seq)
            segment_ids[row, span] = torch.tensor(seg)
            lm_labels[row, span] = torch.tensor(lab)

        # EBAE: the explicit target when the record has one, else exactly the text the model sees.
        ebae_rows = self._target_ids(own, self.max_target_tokens)
        implicit = [i for i, target in enumerate(own) if target is None]
        if self.remove_stopwords:
            # cleaning works on words: go back to the text of the kept tokens
            seen = self._target_ids([self.tokenizer.decode(text_ids[i]) for i in implicit], self.max_target_tokens)
            for i, row in zip(implicit, seen):
                ebae_rows[i] = row
        else:
            ignore = set(self.ignore_ids)
            for i in implicit:
                ebae_rows[i] = [t for t in text_ids[i][: self.max_target_tokens] if t not in ignore]
        ebar_rows = self._target_ids(nexts, self.max_target_tokens)
        return {
            "input_ids": input_ids,
            "attention_mask": (segment_ids != SEGMENT_PAD).long(),
            "segment_ids": segment_ids,
            "lm_labels": lm_labels,
            "ebae_target_ids": _pad_rows(ebae_rows, TARGET_PAD),
            "ebar_target_ids": _pad_rows(ebar_rows, TARGET_PAD),
        }


__all__ = ["PretrainingCollator", "STOPWORDS_FILE", "TARGET_PAD", "clean_target_text", "english_stopwords"]
