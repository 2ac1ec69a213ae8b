"""mteb 2 support: a ModelMeta and encoder wrapper for LLaRA models, and BEIR folders as mteb tasks.

``LlaraEncoderWrapper`` and ``llara_model_meta`` depend only on mteb, sentence-transformers and the
constants of ``trainers.citation``, so they can be copied into mteb's registry
(``mteb/models/model_implementations/llara_models.py``) with a fixed name and revision::

    llara_passage = llara_model_meta("<org>/<llara-model>", revision="<commit>", n_parameters=..., ...)

A LLaRA model picks its prompt inside its own sentence-transformers module: ``encode_query`` appends
the "predict the following passage" suffix, ``encode_document`` the "summarize the above passage"
suffix. mteb's ``PromptType.query`` and ``PromptType.document`` map to those two calls; tasks without
a prompt type (STS, clustering, classification, ...) embed every text as a passage, the paper's
symmetric S2S setting.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
from mteb.types import PromptType

from trainers.citation import LLARA_BIBTEX, LLARA_PAPER_URL, LLARA_TRAINING_CODE
from trainers.model_folders import NotLlaraModelError, is_llara_folder, read_model_config
from trainers.retrieval.beir import load_beir

if TYPE_CHECKING:
    from mteb.types import Array

logger = logging.getLogger(__name__)

class LlaraEncoderWrapper(SentenceTransformerEncoderWrapper):
    """mteb encoder for LLaRA models: a sentence-transformers model loaded with remote code.

    Queries go through ``encode_query`` and documents through ``encode_document`` (the base
    wrapper's dispatch); symmetric tasks, which pass no prompt type, are encoded as documents.
    """

    def __init__(self, model: Any, revision: str | None = None, device: str | None = None, **kwargs: Any) -> None:
        # LLaRA pooling lives in the model folder's own code; without it there is no LLaRA embedding.
        kwargs.setdefault("trust_remote_code", True)
        super().__init__(model, revision=revision, device=device, **kwargs)

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> Array:
        return super().encode(
            inputs,
            task_metadata=task_metadata,
            hf_split=hf_split,
            hf_subset=hf_subset,
            prompt_type=prompt_type or PromptType.document,
            **kwargs,
        )


def _read_config(path: Path) -> dict[str, Any]:
    """The folder's config.json, or ``{}`` when it has none (the ModelMeta fields it feeds are optional)."""
    try:
        return read_model_config(path)
    except NotLlaraModelError:
        return {}


def _find_key(config: dict[str, Any], key: str) -> Any:
    """``config[key]``, or the first value of ``key`` in a nested sub-config (a wrapped backbone)."""
    if key in config:
        return config[key]
    for value in config.values():
        if isinstance(value, dict):
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def _count_safetensors_parameters(path: Path) -> int | None:
    """Sum of tensor sizes from the safetensors headers (no weights are read)."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
        total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    return total


def llara_model_meta(
    name: str,
    *,
    revision: str | None = None,
    loader_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> ModelMeta:
    """A ModelMeta for a LLaRA model on the Hub (``org/name``) or in a local folder.

    For a local folder, the embedding size, context length and parameter count are read from its
    files; ``overrides`` set any other ModelMeta field (license, release_date, training_datasets ...).
    """
    path = Path(name)
    local = path.is_dir()
    fields: dict[str, Any] = dict(
        _folder_fields(path if local else None),
        loader=LlaraEncoderWrapper,
        loader_kwargs={"trust_remote_code": True, **(loader_kwargs or {})},
        name=str(path.resolve()) if local else name,
        revision=revision,
        languages=["eng-Latn"],
        public_training_code=LLARA_TRAINING_CODE,
        framework=["Sentence Transformers", "PyTorch", "safetensors"],
        reference=LLARA_PAPER_URL,
        # Fixed query and passage prompts (the two suffixes) count as instructions for mteb.
        use_instructions=True,
        adapted_from=None,
        model_type=["dense"],
        citation=LLARA_BIBTEX,
    )
    fields.update(overrides)
    return ModelMeta(**fields)


def sentence_transformer_model_meta(path: str | os.PathLike[str]) -> ModelMeta:
    """A ModelMeta for a local non-LLaRA sentence-transformers folder (mteb has none for local paths)."""
    path = Path(path).resolve()
    return ModelMeta(
        **_folder_fields(path),
        loader=SentenceTransformerEncoderWrapper,
        name=str(path),
        revision=None,
        languages=None,
        public_training_code=None,
        framework=["Sentence Transformers", "PyTorch"],
        use_instructions=None,
    )


def _folder_fields(path: Path | None) -> dict[str, Any]:
    """The ModelMeta fields both kinds share: sizes read from a local folder's files, the rest not known."""
    config = _read_config(path) if path is not None else {}
    return {
        "n_parameters": _count_safetensors_parameters(path) if path is not None else None,
        "max_tokens": _find_key(config, "max_position_embeddings"),
        "embed_dim": _find_key(config, "hidden_size"),
        "release_date": None,
        "memory_usage_mb": None,
        "license": None,
        "open_weights": True,
        "public_training_data": None,
        "training_datasets": None,
        # Embeddings are L2-normalized, so cosine equals the dot product the model was trained with.
        "similarity_fn_name": ScoringFunction.COSINE,
    }


def register_local_model(path: str | os.PathLike[str]) -> str:
    """Add a local model folder to mteb's registry so ``mteb.get_model(name)`` can load it.

    LLaRA folders get ``llara_model_meta``, other sentence-transformers folders a plain one.

    Returns:
        The registry name (the folder's absolute path).
    """
    from mteb.models.model_implementations import MODEL_REGISTRY

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    meta = llara_model_meta(str(path)) if is_llara_folder(path) else sentence_transformer_model_meta(path)
    MODEL_REGISTRY[meta.name] = meta
    return meta.name


def load_llara_for_mteb(path_or_name: str, *, device: str | None = None) -> Any:
    """An mteb-wrapped model for a local folder (LLaRA or sentence-transformers) or a registry name."""
    import mteb

    name = register_local_model(path_or_name) if Path(path_or_name).is_dir() else path_or_name
    return mteb.get_model(name, device=device)


# ---------------------------------------------------------------------------------------------
# BEIR folders as mteb retrieval tasks


class BeirFolderRetrieval(AbsTaskRetrieval):
    """An mteb retrieval task whose data is a local BEIR-layout folder; make it with ``beir_retrieval_task``."""

    beir_dir: Path

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        from datasets import Dataset

        if self.data_loaded:
            return
        self.dataset = {"default": {}}
        for split in self.eval_splits:
            data = load_beir(self.beir_dir, split)
            doc_ids = list(data.corpus)
            queries = data.eval_queries
            self.dataset["default"][split] = RetrievalSplitData(
                corpus=Dataset.from_dict(
                    {
                        "id": doc_ids,
                        "title": [data.corpus[i]["title"] for i in doc_ids],
                        "text": [data.corpus[i]["text"] for i in doc_ids],
                    }
                ),
                queries=Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
                relevant_docs=data.qrels,
                top_ranked=None,
            )
        self.data_loaded = True


def beir_retrieval_task(
    beir_dir: str | os.PathLike[str], split: str = "test", *, name: str | None = None
) -> BeirFolderRetrieval:
    """An mteb task over a BEIR-layout folder, evaluated like any mteb retrieval task.

    Its scores (``ndcg_at_10``, ``mrr_at_10``, ``recall_at_100``, ``recall_at_1000``,
    ``map_at_1000``) equal ``llara evaluate`` on the same folder and split.
    """
    beir_dir = Path(beir_dir).resolve()
    if not beir_dir.is_dir():
        raise FileNotFoundError(f"BEIR folder not found: {beir_dir}")
    task_name = name or f"Beir{''.join(ch for ch in beir_dir.name.title() if ch.isalnum())}"
    metadata = TaskMetadata(
        name=task_name,
        description=f"Local BEIR-layout retrieval collection at {beir_dir}.",
        dataset={"path": str(beir_dir), "revision": "local"},
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=[split],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
    )
    task_class = type(task_name, (BeirFolderRetrieval,), {"metadata": metadata, "beir_dir": beir_dir})
    return task_class()


MTEB_METRIC_NAMES = {
    "ndcg@10": "ndcg_at_10",
    "mrr@10": "mrr_at_10",
    "recall@100": "recall_at_100",
    "recall@1000": "recall_at_1000",
    "map": "map_at_1000",
}


def evaluate_beir_with_mteb(
    model: Any,
    beir_dir: str | os.PathLike[str],
    split: str = "test",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """Run ``mteb.evaluate`` on a BEIR folder and return the five ``llara evaluate`` metrics.

    ``model`` is an mteb model (see ``load_llara_for_mteb``). With ``cache_dir`` mteb stores its
    result files there (``ResultCache``); without it nothing is written.
    """
    import mteb
    from mteb.cache import ResultCache

    task = beir_retrieval_task(beir_dir, split)
    results = mteb.evaluate(
        model,
        [task],
        cache=ResultCache(cache_dir) if cache_dir is not None else None,
        encode_kwargs={"batch_size": batch_size},
        show_progress_bar=False,
        overwrite_strategy="always",
    )
    if results.exceptions:
        raise RuntimeError(f"mteb failed on {beir_dir}: {results.exceptions[0].exception}")
    scores = results.task_results[0].scores[split][0]
    return {ours: float(scores[theirs]) for ours, theirs in MTEB_METRIC_NAMES.items()}
