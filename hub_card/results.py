"""Read evaluation result files into uniform records for the model card.

Two shapes are accepted:

* ``llara evaluate`` JSON: either one record ``{"model", "dataset", "split", "metrics": {...}}`` or a file
  ``{"dataset", "split", ..., "results": [record, ...]}`` whose records may omit ``dataset``/``split``.
  Metric names may be written ``ndcg@10`` or ``ndcg_at_10``; values are fractions in [0, 1].
* mteb ``TaskResult`` JSON: ``{"task_name", "dataset_revision", "scores": {split: [{"main_score",
  "hf_subset", "languages", <metric>: value, ...}]}}`` (``model_meta.json`` files of an mteb cache
  folder are skipped).

Anything else raises :class:`ResultsFormatError` (a ``ValueError``) naming the file and the offending key
or index. A folder is searched recursively for ``*.json`` files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Metrics shown in the card and the model-index, in this order, when a file holds them.
CARD_METRICS = ("ndcg_at_10", "mrr_at_10", "map_at_10", "map", "recall_at_10", "recall_at_100", "recall_at_1000")
_MTEB_NON_METRIC_KEYS = {"hf_subset", "languages", "main_score", "evaluation_time"}
_MTEB_SKIP_FILES = {"model_meta.json"}


class ResultsFormatError(ValueError):
    """A result file that is neither ``llara evaluate`` nor mteb JSON."""


@dataclass
class EvalRecord:
    """One model on one dataset split: what a model-index entry and a card table row need."""

    task_type: str
    task_name: str
    dataset_name: str
    dataset_type: str
    split: str
    metrics: dict[str, float]
    main_metric: str
    source: str  # "llara evaluate" or "mteb <version>"
    source_file: str
    model: str | None = None
    dataset_config: str | None = None
    dataset_revision: str | None = None
    languages: list[str] = field(default_factory=list)
    num_queries: int | None = None

    def card_metrics(self) -> dict[str, float]:
        """The main metric first, then the usual retrieval metrics that the record holds."""
        names = [self.main_metric] + [m for m in CARD_METRICS if m != self.main_metric]
        return {name: self.metrics[name] for name in names if name in self.metrics}


def normalize_metric_name(name: str) -> str:
    """``ndcg@10`` / ``NDCG@10`` / ``ndcg_cut_10`` -> ``ndcg_at_10`` (the mteb and model-index spelling)."""
    key = name.strip().lower().replace("@", "_at_")
    key = re.sub(r"_cut_(\d+)$", r"_at_\1", key)
    return re.sub(r"[^a-z0-9_]+", "_", key).strip("_")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultsFormatError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ResultsFormatError(f"{where}: the value {value!r} is not finite")
    return float(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ResultsFormatError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _metrics_block(metrics: Any, where: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping) or not metrics:
        raise ResultsFormatError(f"{where}: 'metrics' must be a non-empty object of metric name -> number")
    return {normalize_metric_name(_string(k, where)): _number(v, f"{where}.{k}") for k, v in metrics.items()}


def _main_metric(metrics: Mapping[str, float]) -> str:
    return next((name for name in CARD_METRICS if name in metrics), next(iter(metrics)))


# ---- llara evaluate ---------------------------------------------------------------------------
def _llara_records(data: Mapping[str, Any], path: Path) -> list[EvalRecord]:
    if "results" in data:
        entries = data["results"]
        if not isinstance(entries, list) or not entries:
            raise ResultsFormatError(f"{path}: 'results' must be a non-empty list of records")
        located = [(entry, f"{path}: results[{i}]") for i, entry in enumerate(entries)]
    else:
        located = [(data, str(path))]
    records = []
    for entry, where in located:
        if not isinstance(entry, Mapping):
            raise ResultsFormatError(f"{where}: expected an object, got {type(entry).__name__}")
        if "metrics" not in entry:
            raise ResultsFormatError(f"{where}: no 'metrics' key (keys: {sorted(entry)})")
        metrics = _metrics_block(entry["metrics"], f"{where}.metrics")
        dataset = _string(entry.get("dataset", data.get("dataset")), f"{where}: 'dataset'")
        split = _string(entry.get("split", data.get("split")), f"{where}: 'split'")
        model = entry.get("model", entry.get("run"))
        num_queries = entry.get("num_queries")
        records.append(
            EvalRecord(
                task_type="Retrieval",
                task_name=dataset,
                dataset_name=dataset,
                dataset_type=dataset,
                split=split,
                metrics=metrics,
                main_metric=_main_metric(metrics),
                source="llara evaluate",
                source_file=str(path),
                model=None if model is None else str(model),
                num_queries=num_queries if isinstance(num_queries, int) else None,
            )
        )
    return records


# ---- mteb -------------------------------------------------------------------------------------
def _mteb_task_metadata(task_name: str) -> dict[str, Any]:
    """Type, Hub dataset id and main score of a registered mteb task; empty for custom tasks."""
    try:
        import mteb

        meta = mteb.get_task(task_name).metadata
    except Exception:  # a custom task (e.g. built from a local BEIR folder) is not registered
        return {}
    return {"type": str(meta.type), "dataset": meta.dataset.get("path"), "main_score": meta.main_score}


def _mteb_records(data: Mapping[str, Any], path: Path, lookup: bool) -> list[EvalRecord]:
    task_name = _string(data.get("task_name"), f"{path}: 'task_name'")
    scores = data.get("scores")
    if not isinstance(scores, Mapping) or not scores:
        raise ResultsFormatError(f"{path}: 'scores' must be an object of split -> list of score objects")
    for split, entries in scores.items():  # the whole shape is checked before mteb is imported
        if not isinstance(entries, list) or not entries:
            raise ResultsFormatError(f"{path}: scores[{split!r}] must be a non-empty list")
        for index, entry in enumerate(entries):
            where = f"{path}: scores[{split!r}][{index}]"
            if not isinstance(entry, Mapping) or "main_score" not in entry:
                raise ResultsFormatError(f"{where}: expected an object with 'main_score'")
            _number(entry["main_score"], f"{where}.main_score")
    meta = _mteb_task_metadata(task_name) if lookup else {}
    records = []
    for split, entries in scores.items():
        for entry in entries:
            main_value = float(entry["main_score"])
            metrics = {
                normalize_metric_name(k): float(v)
                for k, v in entry.items()
                if k not in _MTEB_NON_METRIC_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v)
            }
            main_metric = meta.get("main_score") or next(
                (name for name in CARD_METRICS if metrics.get(name) == main_value), "main_score"
            )
            metrics.setdefault(main_metric, main_value)
            subset = entry.get("hf_subset")
            languages = entry.get("languages") or []
            records.append(
                EvalRecord(
                    task_type=meta.get("type") or ("Retrieval" if "ndcg_at_10" in metrics else "mteb"),
                    task_name=task_name,
                    dataset_name=f"MTEB {task_name}" + (f" ({subset})" if subset not in (None, "default") else ""),
                    dataset_type=meta.get("dataset") or task_name,
                    split=str(split),
                    metrics=metrics,
                    main_metric=main_metric,
                    source=f"mteb {data.get('mteb_version') or ''}".strip(),
                    source_file=str(path),
                    dataset_config=subset if isinstance(subset, str) else None,
                    dataset_revision=data.get("dataset_revision") or None,
                    languages=[str(lang) for lang in languages] if isinstance(languages, list) else [],
                )
            )
    return records


# ---- entry points -----------------------------------------------------------------------------
def read_result_file(path: str | os.PathLike, lookup_mteb_tasks: bool = True) -> list[EvalRecord]:
    """Records of one result file (``llara evaluate`` or mteb JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ResultsFormatError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    except UnicodeDecodeError as err:
        raise ResultsFormatError(f"{path}: not a UTF-8 text file") from err
    if not isinstance(data, Mapping):
        raise ResultsFormatError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    if "task_name" in data or "scores" in data:
        return _mteb_records(data, path, lookup_mteb_tasks)
    if "metrics" in data or "results" in data:
        return _llara_records(data, path)
    raise ResultsFormatError(
        f"{path}: neither a `llara evaluate` file (keys 'metrics' or 'results') nor an mteb result "
        f"(keys 'task_name', 'scores'); found keys {sorted(data)[:10]}"
    )


def read_results(paths: Iterable[str | os.PathLike], lookup_mteb_tasks: bool = True) -> list[EvalRecord]:
    """Records of all files; a folder contributes its ``*.json`` files (recursively, sorted)."""
    records: list[EvalRecord] = []
    for item in paths:
        item = Path(item)
        if item.is_dir():
            files = sorted(p for p in item.rglob("*.json") if p.name not in _MTEB_SKIP_FILES)
            if not files:
                raise FileNotFoundError(f"{item} holds no *.json result files")
        else:
            files = [item]
        for file in files:
            records.extend(read_result_file(file, lookup_mteb_tasks=lookup_mteb_tasks))
    return records


def split_own_and_baselines(records: list[EvalRecord], model_names: Iterable[str]) -> tuple[list[EvalRecord], list[EvalRecord]]:
    """Separate the exported model's records from comparison rows (BM25, other models) of the same files.

    A record without a ``model`` (mteb files name the model by folder) belongs to the exported model.
    A ``llara evaluate`` record belongs to it when its model path or name matches one of ``model_names``;
    when no record of a file matches, that file's only non-BM25 record is taken as the model's.
    """
    names = {str(n) for n in model_names} | {os.path.basename(os.path.normpath(str(n))) for n in model_names}
    names |= {os.path.abspath(str(n)) for n in model_names}

    def matches(record: EvalRecord) -> bool:
        model = record.model.rstrip("/")
        return model in names or os.path.abspath(model) in names or os.path.basename(model) in names

    own, others = [], []
    by_file: dict[str, list[EvalRecord]] = {}
    for record in records:
        by_file.setdefault(record.source_file, []).append(record)
    for file_records in by_file.values():
        named = [r for r in file_records if r.model is not None]
        if not named:
            own.extend(file_records)
            continue
        mine = [r for r in named if matches(r)]
        if not mine:
            candidates = [r for r in named if r.model.lower() != "bm25"]
            if len(candidates) == 1:
                mine = candidates
            else:
                logger.warning(
                    "%s: none of the models %s is the exported model; they are shown as comparisons only",
                    file_records[0].source_file,
                    [r.model for r in named],
                )
        own.extend(r for r in file_records if r in mine or r.model is None)
        others.extend(r for r in file_records if r.model is not None and r not in mine)
    return own, others


__all__ = [
    "CARD_METRICS",
    "EvalRecord",
    "ResultsFormatError",
    "normalize_metric_name",
    "read_result_file",
    "read_results",
    "split_own_and_baselines",
]
