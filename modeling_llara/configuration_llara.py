"""LLaRA configuration: the single source of truth of what a LLaRA embedding is.

An embedding is built from ``prefix + text + suffix`` where the suffix is an instruction followed by
``num_pooled_tokens`` special tokens; the final-layer hidden states at those special tokens are pooled
(mean by default) and L2-normalized. Two suffixes exist:

* ``summarize`` (EBAE, "self"): ``", summarize the above passage within eight words: <s1>..<s8>``
* ``predict``   (EBAR, "next"): ``", predict the following passage within eight words: <s9>..<s16>``

Queries use ``query_suffix_kind`` (default ``predict``) and passages ``passage_suffix_kind`` (default
``summarize``), as in the released LLaRA checkpoints. Setting both to ``summarize`` gives the paper's
symmetric S2S variant, both to ``predict`` the N2N variant.

This file ships to the Hub with the model: it imports only the standard library and transformers.
"""

from __future__ import annotations

from dataclasses import field

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

SUFFIX_KINDS = ("summarize", "predict")
POOLING_MODES = ("mean", "last")
AUTO_DTYPE_CHOICES = ("auto", "float32")


def _default_summarize_tokens() -> list[str]:
    return [f"<s{i}>" for i in range(1, 9)]


def _default_predict_tokens() -> list[str]:
    return [f"<s{i}>" for i in range(9, 17)]


class LlaraConfig(PreTrainedConfig):
    r"""
    Configuration of a LLaRA embedder wrapping a decoder-only backbone (LLaMA, Mistral, Qwen2, ...).

    Args:
        text_config (`dict` or `PreTrainedConfig`):
            Configuration of the decoder backbone (any `AutoModel` decoder).
        prompt_prefix (`str`, defaults to `'"'`):
            Text placed before the input text (tokenized on its own, with BOS when `add_bos_token`).
        add_bos_token (`bool`, defaults to `True`):
            Whether the prefix starts with the tokenizer's BOS token (when the tokenizer has one).
        summarize_instruction / predict_instruction (`str`):
            Instruction text of each suffix; the suffix is the instruction followed by its special tokens.
        summarize_tokens / predict_tokens (`list[str]`):
            Special-token strings closing each suffix; their hidden states are pooled.
        summarize_token_ids / predict_token_ids (`list[int]`):
            The ids of those tokens in the model's tokenizer, resolved from the tokenizer by `llara init`
            (the released checkpoints scramble them, so they are never assumed).
        num_pooled_tokens (`int`, defaults to 8): how many special tokens each suffix carries.
        query_suffix_kind / passage_suffix_kind (`"summarize"` or `"predict"`): which suffix serves which side.
        pooling (`"mean"` or `"last"`): mean over the special-token states (released) or the last one only.
        normalize (`bool`, defaults to `True`): L2-normalize the pooled embedding.
        max_text_tokens (`int`, defaults to 512): budget of text tokens (prompt excluded), as in the card recipe.
        auto_dtype (`"auto"` or `"float32"`, defaults to `"auto"`): what an `auto` compute dtype means for this
            model. `"auto"`: bf16 on hardware that runs it natively, fp32 elsewhere. `"float32"`: always fp32
            (stage-1 exports write it: before contrastive fine-tuning, bf16 rounding costs these models
            retrieval quality). An explicit dtype always wins.
    """

    model_type = "llara"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    prompt_prefix: str = '"'
    add_bos_token: bool = True
    summarize_instruction: str = '", summarize the above passage within eight words: '
    predict_instruction: str = '", predict the following passage within eight words: '
    summarize_tokens: list[str] = field(default_factory=_default_summarize_tokens)
    predict_tokens: list[str] = field(default_factory=_default_predict_tokens)
    summarize_token_ids: list[int] | None = None
    predict_token_ids: list[int] | None = None
    num_pooled_tokens: int = 8
    query_suffix_kind: str = "predict"
    passage_suffix_kind: str = "summarize"
    pooling: str = "mean"
    normalize: bool = True
    max_text_tokens: int = 512
    auto_dtype: str = "auto"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # The LM head of the pretraining model is tied exactly when the backbone ties it.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self.validate_llara()

    def validate_llara(self) -> None:
        """Reject configurations that cannot describe a LLaRA embedding."""
        if self.num_pooled_tokens < 1:
            raise ValueError(f"num_pooled_tokens must be >= 1, got {self.num_pooled_tokens}")
        for kind in SUFFIX_KINDS:
            tokens = self.suffix_tokens(kind)
            if len(tokens) != self.num_pooled_tokens:
                raise ValueError(
                    f"{kind}_tokens has {len(tokens)} tokens but num_pooled_tokens={self.num_pooled_tokens}"
                )
            if len(set(tokens)) != len(tokens):
                raise ValueError(f"{kind}_tokens contains duplicates: {tokens}")
            ids = self.suffix_token_ids(kind)
            if ids is not None and len(ids) != len(tokens):
                raise ValueError(f"{kind}_token_ids has {len(ids)} ids for {len(tokens)} tokens")
        if set(self.summarize_tokens) & set(self.predict_tokens):
            raise ValueError("summarize_tokens and predict_tokens must be disjoint")
        for name in ("query_suffix_kind", "passage_suffix_kind"):
            if getattr(self, name) not in SUFFIX_KINDS:
                raise ValueError(f"{name} must be one of {SUFFIX_KINDS}, got {getattr(self, name)!r}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.max_text_tokens < 0:
            raise ValueError(f"max_text_tokens must be >= 0, got {self.max_text_tokens}")
        if self.auto_dtype not in AUTO_DTYPE_CHOICES:
            raise ValueError(f"auto_dtype must be one of {AUTO_DTYPE_CHOICES}, got {self.auto_dtype!r}")

    # ---- helpers used by the model and the input builder -------------------------------------
    def suffix_tokens(self, kind: str) -> list[str]:
        if kind not in SUFFIX_KINDS:
            raise ValueError(f"suffix kind must be one of {SUFFIX_KINDS}, got {kind!r}")
        return list(self.summarize_tokens if kind == "summarize" else self.predict_tokens)

    def suffix_token_ids(self, kind: str) -> list[int] | None:
        if kind not in SUFFIX_KINDS:
            raise ValueError(f"suffix kind must be one of {SUFFIX_KINDS}, got {kind!r}")
        ids = self.summarize_token_ids if kind == "summarize" else self.predict_token_ids
        return None if ids is None else list(ids)

    def suffix_text(self, kind: str) -> str:
        instruction = self.summarize_instruction if kind == "summarize" else self.predict_instruction
        return instruction + "".join(self.suffix_tokens(kind))

    def suffix_kind_for(self, task: str | None) -> str:
        """Map a task name (``query``/``document``/``passage``/``None``) to a suffix kind."""
        if task in (None, "document", "passage", "corpus"):
            return self.passage_suffix_kind
        if task == "query":
            return self.query_suffix_kind
        if task in SUFFIX_KINDS:
            return task
        raise ValueError(
            f"unknown task {task!r}: use 'query', 'document' (alias 'passage'), 'summarize' or 'predict'"
        )

    @property
    def special_tokens(self) -> list[str]:
        return list(self.summarize_tokens) + list(self.predict_tokens)


__all__ = ["LlaraConfig"]
