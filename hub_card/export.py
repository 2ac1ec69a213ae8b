"""``llara export``: a LLaRA model (or a LoRA adapter over one) -> a complete Hub model repository folder.

The folder holds the merged full weights (safetensors), the shipped code files, ``config.json`` with
``auto_map``, the tokenizer (right padding, ``model_max_length`` = the longest LLaRA input), the
sentence-transformers files (with a ``requirements`` block) and ``README.md``: a model card rendered from
:class:`~hub_card.card_data.LlaraCardData` through ``huggingface_hub.ModelCard.from_template``.

Everything is written into a temporary sibling folder, checked (the card parses, the reloaded weights give
the in-memory model's embeddings) and only then moved into place (``trainers.io.staged_dir``): a failed
export leaves no half-written folder behind, and the hidden folder of a killed export is removed by the next
export to the same place.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.model_folders import NotLlaraModelError, require_llara_folder

from .card_data import DEFAULT_TAGS, LlaraCardData, ModelFacts
from .results import read_results, split_own_and_baselines
from .training import TrainingSummary, read_training_summary

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md.j2"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
ADAPTER_CONFIG = "adapter_config.json"
# Texts embedded before saving and after reloading: the export must not change a single embedding.
PROBE_TEXTS = ("A short probe query.", "A somewhat longer probe document about packaging software for Debian.")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class LoadedSource:
    model: Any
    tokenizer: Any
    folder: Path
    lora: dict[str, Any] | None = None
    base_folder: Path | None = None


# ---- loading and checking the source -----------------------------------------------------------
def _check_llara_folder(folder: Path) -> dict[str, Any]:
    config = require_llara_folder(folder, "model folder")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (found {pickles}: pickled weights are not loaded; re-save as safetensors)" if pickles else ""
        raise NotLlaraModelError(f"{folder} holds no safetensors weights ({' or '.join(WEIGHT_FILES)}){hint}")
    return config


def _check_tokenizer(tokenizer, config, folder: Path):
    """The tokenizer must hold the LLaRA special tokens at the config's ids; returns the input builder."""
    from modeling_llara import LlaraInputBuilder

    try:
        builder = LlaraInputBuilder(tokenizer, config)
    except ValueError as err:
        raise ValueError(f"the tokenizer of {folder} cannot build LLaRA inputs: {err}") from err
    return builder


def _resolve_base(adapter_dir: Path, base: str) -> Path:
    candidates = [Path(base)] if Path(base).is_absolute() else [Path(base), adapter_dir / base]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise NotLlaraModelError(
        f"{adapter_dir / ADAPTER_CONFIG}: base_model_name_or_path {base!r} is not a local folder; "
        "export needs the LLaRA base model on disk"
    )


def load_source(model_dir: str | os.PathLike, keep_lm_head: bool = False) -> LoadedSource:
    """Load a LLaRA folder or a LoRA adapter folder over one, merged, with its checked tokenizer."""
    import modeling_llara  # noqa: F401  (registers the LLaRA classes for the Auto API)
    from modeling_llara import LlaraForPretraining, LlaraModel
    from transformers import AutoTokenizer

    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    lora = None
    base_folder = folder
    if (folder / ADAPTER_CONFIG).is_file():
        adapter = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
        if not base:
            raise NotLlaraModelError(f"{folder / ADAPTER_CONFIG}: no base_model_name_or_path")
        base_folder = _resolve_base(folder, base)
        lora = {key: adapter.get(key) for key in ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules")}
        if isinstance(lora["target_modules"], list):
            lora["target_modules"] = sorted(lora["target_modules"])
    config = _check_llara_folder(base_folder)
    pretraining = keep_lm_head and "LlaraForPretraining" in (config.get("architectures") or [])
    cls = LlaraForPretraining if pretraining else LlaraModel
    model = cls.from_pretrained(str(base_folder), dtype="auto")
    has_tokenizer = lambda path: (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
    tokenizer_dir = folder if lora and has_tokenizer(folder) else base_folder
    if not has_tokenizer(tokenizer_dir):
        raise ValueError(f"{tokenizer_dir} holds no tokenizer (tokenizer.json / tokenizer_config.json)")
    # The loaded config is passed so that AutoTokenizer neither asks to run the folder's code nor guesses.
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), config=model.config)
    _check_tokenizer(tokenizer, model.config, tokenizer_dir)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise ValueError(
            f"the tokenizer of {tokenizer_dir} has {len(tokenizer)} tokens but the model only "
            f"{model.get_input_embeddings().weight.shape[0]} embedding rows: they do not belong together"
        )
    if lora:
        from trainers.lora import load_merged

        model = load_merged(folder, base=model)  # the result keeps the LLaRA class
        if not isinstance(model, (LlaraModel, LlaraForPretraining)):
            raise TypeError(f"merging {folder} gave a {type(model).__name__}, expected a LLaRA model")
    return LoadedSource(model=model.eval(), tokenizer=tokenizer, folder=folder, lora=lora, base_folder=base_folder)


# ---- card data ---------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import importlib.metadata

    versions = {}
    for name in ("transformers", "sentence-transformers", "torch", "peft", "huggingface_hub"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _compatible_range(version: str) -> str:
    """``5.24.0`` -> ``>=5.24,<6``: the minor release the export was tested with, up to the next major."""
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    return f">={major}.{minor},<{major + 1}"


def requirements_block(versions: dict[str, str]) -> dict[str, dict[str, str]]:
    """The ``requirements`` of config_sentence_transformers.json, derived from the exporting environment."""
    reasons = {
        "transformers": "the shipped LLaRA code uses the transformers 5 configuration and loading API",
        "sentence-transformers": "the LLaRA module is a sentence-transformers 6 InputModule (encode_query/encode_document tasks)",
    }
    return {
        name: {"specifier": _compatible_range(versions[name]), "reason": reason}
        for name, reason in reasons.items()
        if name in versions
    }


def model_facts(model, tokenizer, builder) -> ModelFacts:
    config = model.config
    text_config = config.get_text_config()
    query_kind, passage_kind = config.query_suffix_kind, config.passage_suffix_kind
    return ModelFacts(
        backbone_type=str(text_config.model_type),
        num_parameters=sum(p.numel() for p in model.parameters()),
        hidden_size=int(text_config.hidden_size),
        num_layers=int(text_config.num_hidden_layers),
        dtype=str(model.dtype).removeprefix("torch."),
        prompt_prefix=config.prompt_prefix,
        add_bos_token=bool(config.add_bos_token),
        bos_token=tokenizer.bos_token,
        query_suffix_kind=query_kind,
        passage_suffix_kind=passage_kind,
        query_suffix=config.suffix_text(query_kind),
        passage_suffix=config.suffix_text(passage_kind),
        query_token_ids=list(config.suffix_token_ids(query_kind) or []),
        passage_token_ids=list(config.suffix_token_ids(passage_kind) or []),
        num_pooled_tokens=int(config.num_pooled_tokens),
        pooling=config.pooling,
        normalize=bool(config.normalize),
        similarity_fn_name="cosine" if config.normalize else "dot",
        max_text_tokens=int(config.max_text_tokens),
        model_max_length=model_max_length(config, builder),
        prefix_length=len(builder.prefix_ids),
        query_suffix_length=len(builder.suffix_ids[query_kind]),
        passage_suffix_length=len(builder.suffix_ids[passage_kind]),
        has_lm_head=hasattr(model, "lm_head"),
    )


def model_max_length(config, builder) -> int:
    """The longest input the LLaRA template produces: prefix + text budget + longest suffix."""
    longest = len(builder.prefix_ids) + config.max_text_tokens + max(len(ids) for ids in builder.suffix_ids.values())
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    return min(longest, limit) if limit else longest


def _check_base_model(base_model: str | None) -> None:
    if base_model is not None and not _REPO_ID.match(base_model):
        raise ValueError(f"base_model {base_model!r} must be a Hub model id 'org/name' (the card's base_model field)")


def render_model_card(card: LlaraCardData):
    """``huggingface_hub.ModelCard`` rendered from the card data and the Jinja template."""
    from huggingface_hub import ModelCard

    return ModelCard.from_template(card.to_model_card_data(), template_path=str(TEMPLATE_PATH), **card.template_kwargs())


def validate_card(path: str | os.PathLike):
    """Parse a README.md the way the Hub client does (YAML block, model-index); raises ValueError."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(str(path))
    data = card.data.to_dict()
    for key in ("library_name", "pipeline_tag", "license", "tags"):
        if not data.get(key):
            raise ValueError(f"{path}: the card's metadata lacks {key!r}")
    return card


# ---- writing -----------------------------------------------------------------------------------
def _probe(model, builder) -> dict:
    """Embeddings of the probe texts through the backbone and LLaRA pooling (either LLaRA class)."""
    import torch

    from modeling_llara.modeling_llara import positions_from_mask

    embeddings = {}
    with torch.inference_mode():
        for task in ("query", "document"):
            batch = builder(list(PROBE_TEXTS), task=task)
            hidden = model.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                position_ids=positions_from_mask(batch["attention_mask"]),
                use_cache=False,
            ).last_hidden_state  # (batch, seq, hidden)
            embeddings[task] = model.pool(hidden, model.pooling_mask(batch["input_ids"], batch["attention_mask"])).float()
    return embeddings


def _write_folder(source: LoadedSource, builder, card: LlaraCardData, tmp: Path, verify: bool) -> None:
    import torch

    from modeling_llara import AUTO_MAP
    from modeling_llara.sentence_llara import write_sentence_transformers_files

    model, tokenizer = source.model, source.tokenizer
    auto_map = dict(AUTO_MAP)
    if not card.facts.has_lm_head:
        auto_map.pop("AutoModelForPreTraining", None)  # no LM head is shipped: nothing to load it into
    model.config.auto_map = auto_map
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = card.facts.model_max_length
    tokenizer.save_pretrained(tmp)
    write_sentence_transformers_files(str(tmp), max_text_tokens=card.facts.max_text_tokens)
    st_path = tmp / "config_sentence_transformers.json"
    st_config = json.loads(st_path.read_text(encoding="utf-8"))
    st_config["similarity_fn_name"] = card.facts.similarity_fn_name
    st_config["requirements"] = card.requirements
    st_path.write_text(json.dumps(st_config, indent=2) + "\n", encoding="utf-8")

    model_card = render_model_card(card)
    model_card.save(tmp / "README.md")
    validate_card(tmp / "README.md")

    if verify:
        expected = _probe(model, builder)
        reloaded = type(model).from_pretrained(str(tmp), dtype="auto").eval()
        got = _probe(reloaded, builder)
        for task in expected:
            if not torch.allclose(expected[task], got[task], atol=1e-5, rtol=1e-4):
                diff = (expected[task] - got[task]).abs().max().item()
                raise RuntimeError(f"the saved weights give other {task} embeddings than the source (max |diff| {diff:.3g})")


def export_model(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    results: Sequence[str | os.PathLike] = (),
    training_dir: str | os.PathLike | None = None,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    base_model: str | None = None,
    datasets: Iterable[str] = (),
    language: Iterable[str] = ("en",),
    license: str = "apache-2.0",
    extra_tags: Iterable[str] = (),
    keep_lm_head: bool = False,
    lookup_mteb_tasks: bool = True,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Export ``model_dir`` into the Hub repository folder ``out_dir`` (atomically); returns ``out_dir``."""
    from trainers.io import remove_stale_staging_dirs, staged_dir

    out = Path(out_dir)
    # Leftovers of a killed export (a model-sized hidden folder) go first, whatever happens to this run.
    remove_stale_staging_dirs(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    _check_base_model(base_model)
    if repo_id is not None and not _REPO_ID.match(repo_id):
        raise ValueError(f"repo_id {repo_id!r} must look like 'org/name'")
    # Read every input before loading weights: a bad result file fails in milliseconds.
    records = read_results(results, lookup_mteb_tasks=lookup_mteb_tasks)
    training: TrainingSummary | None = None
    for candidate in [training_dir] if training_dir is not None else [model_dir]:
        training = read_training_summary(candidate)
        if training is None and training_dir is not None:
            raise FileNotFoundError(f"{training_dir} holds no trainer_state.json (nor a checkpoint-*/ with one)")

    source = load_source(model_dir, keep_lm_head=keep_lm_head)
    if training is None and source.lora and source.base_folder is not None:
        training = read_training_summary(source.folder)
    builder = _check_tokenizer(source.tokenizer, source.model.config, source.folder)
    own, baselines = split_own_and_baselines(records, [str(model_dir), str(out), out.name])
    name = model_name or out.name
    versions = _versions()
    card = LlaraCardData(
        model_name=name,
        repo_id=repo_id or name,
        facts=model_facts(source.model, source.tokenizer, builder),
        base_model=base_model,
        datasets=list(datasets),
        language=list(language),
        license=license,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *extra_tags])),
        training=training,
        lora=source.lora,
        source=str(model_dir),
        eval_records=own,
        baseline_records=baselines,
        versions=versions,
        requirements=requirements_block(versions),
    )

    # 0o755/0o644: a model repository is meant to be shared, and some writers create private files.
    with staged_dir(out, overwrite=overwrite, mode=0o755) as tmp:
        _write_folder(source, builder, card, tmp, verify=verify)
        for path in tmp.iterdir():
            path.chmod(0o644)
    logger.info("exported %s to %s", model_dir, out)
    return out


__all__ = [
    "NotLlaraModelError",
    "export_model",
    "load_source",
    "model_facts",
    "render_model_card",
    "requirements_block",
    "validate_card",
]
