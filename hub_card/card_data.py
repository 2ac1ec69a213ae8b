"""The data behind a LLaRA model card: one dataclass, filled from the model, the logs and result files.

``LlaraCardData.to_model_card_data()`` gives huggingface_hub's ``ModelCardData`` (the YAML block with the
model-index built from evaluation records); ``LlaraCardData.template_kwargs()`` gives the values the
Jinja template (``templates/model_card.md.j2``) renders into the body. Nothing numeric is typed here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from trainers.citation import LLARA_BIBTEX, LLARA_PAPER_URL

from .results import EvalRecord
from .training import TrainingSummary

LIBRARY_NAME = "sentence-transformers"
PIPELINE_TAG = "sentence-similarity"
DEFAULT_TAGS = (
    "sentence-transformers",
    "feature-extraction",
    "sentence-similarity",
    "dense-retrieval",
    "llara",
    "mteb",
    "custom_code",
)


@dataclass
class ModelFacts:
    """What an embedding is, read from the exported ``LlaraConfig``, tokenizer and weights."""

    backbone_type: str
    num_parameters: int
    hidden_size: int
    num_layers: int
    dtype: str
    prompt_prefix: str
    add_bos_token: bool
    bos_token: str | None
    query_suffix_kind: str
    passage_suffix_kind: str
    query_suffix: str
    passage_suffix: str
    query_token_ids: list[int]
    passage_token_ids: list[int]
    num_pooled_tokens: int
    pooling: str
    normalize: bool
    similarity_fn_name: str
    max_text_tokens: int
    model_max_length: int
    prefix_length: int
    query_suffix_length: int
    passage_suffix_length: int
    has_lm_head: bool


_HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_DATA_FILE_SUFFIXES = (".json", ".jsonl", ".gz", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".zst", ".bz2", ".xz")


def is_hub_dataset_id(name: str) -> bool:
    """``name`` reads as a Hub dataset id (``name`` or ``org/name``) rather than a local file or folder."""
    if not _HUB_DATASET_ID.match(name) or name.lower().endswith(_DATA_FILE_SUFFIXES):
        return False
    return not os.path.exists(name)


@dataclass
class LlaraCardData:
    """Everything the card shows. ``eval_records`` feed the model-index; ``baseline_records`` only the tables."""

    model_name: str
    repo_id: str
    facts: ModelFacts
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    language: list[str] = field(default_factory=lambda: ["en"])
    license: str = "apache-2.0"
    tags: list[str] = field(default_factory=lambda: list(DEFAULT_TAGS))
    training: TrainingSummary | None = None
    lora: dict[str, Any] | None = None
    source: str = ""
    eval_records: list[EvalRecord] = field(default_factory=list)
    baseline_records: list[EvalRecord] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    # package -> {"specifier": ..., "reason": ...}, as config_sentence_transformers.json declares it
    requirements: dict[str, dict[str, str]] = field(default_factory=dict)
    citation: str = LLARA_BIBTEX

    def all_datasets(self) -> list[str]:
        """Training datasets named on the command line and in the run records, without repeats."""
        return list(dict.fromkeys(self.datasets + (self.training.datasets if self.training else [])))

    def eval_results(self) -> list:
        """One ``EvalResult`` per (record, shown metric): the model-index of the YAML block."""
        from huggingface_hub import EvalResult

        results = []
        for record in self.eval_records:
            for metric, value in record.card_metrics().items():
                results.append(
                    EvalResult(
                        task_type=record.task_type,
                        task_name=record.task_name,
                        dataset_type=record.dataset_type,
                        dataset_name=record.dataset_name,
                        dataset_config=record.dataset_config,
                        dataset_split=record.split,
                        dataset_revision=record.dataset_revision,
                        metric_type=metric,
                        metric_name=metric,
                        metric_value=value,
                    )
                )
        return results

    def to_model_card_data(self):
        from huggingface_hub import ModelCardData

        # The YAML ``datasets:`` field links Hub dataset pages: a local path there is a broken link (and the
        # Hub's metadata check may refuse it); local data is named in the card's text instead.
        datasets = [name for name in self.all_datasets() if is_hub_dataset_id(name)]
        return ModelCardData(
            model_name=self.model_name,
            base_model=self.base_model,
            datasets=datasets or None,
            language=self.language or None,
            license=self.license,
            library_name=LIBRARY_NAME,
            pipeline_tag=PIPELINE_TAG,
            tags=list(dict.fromkeys(self.tags)),
            eval_results=self.eval_results() or None,
        )

    def template_kwargs(self) -> dict[str, Any]:
        """Values for the Jinja body (``model_name`` etc. also reach it from the YAML data)."""
        return {
            "title": self.model_name,
            "repo_id": self.repo_id,
            "facts": self.facts,
            "base_model_id": self.base_model,
            "train_datasets": [
                name if is_hub_dataset_id(name) else f"{name} (local data)" for name in self.all_datasets()
            ],
            "training": self.training,
            "lora": self.lora,
            "export_source": self.source,
            "eval_tables": _eval_tables(self.eval_records, self.baseline_records),
            "versions": self.versions,
            "requirements": self.requirements,
            "citation": self.citation,
            "paper_url": LLARA_PAPER_URL,
        }


def _eval_tables(own: list[EvalRecord], baselines: list[EvalRecord]) -> list[dict[str, Any]]:
    """One table per (dataset, split): the model's row first, then comparison rows, shared metric columns."""
    tables: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    for is_own, records in ((True, own), (False, baselines)):
        for record in records:
            key = (record.dataset_name, record.split, record.dataset_config)
            table = tables.setdefault(
                key,
                {
                    "dataset": record.dataset_name,
                    "split": record.split,
                    "task_type": record.task_type,
                    "sources": [],
                    "metrics": [],
                    "rows": [],
                },
            )
            for metric in record.card_metrics():
                if metric not in table["metrics"]:
                    table["metrics"].append(metric)
            if record.source not in table["sources"]:
                table["sources"].append(record.source)
            name = "this model" if is_own else (record.model or "?")
            table["rows"].append({"name": name, "own": is_own, "metrics": record.metrics, "num_queries": record.num_queries})
    return list(tables.values())


__all__ = ["DEFAULT_TAGS", "LIBRARY_NAME", "LlaraCardData", "ModelFacts", "PIPELINE_TAG", "is_hub_dataset_id"]
