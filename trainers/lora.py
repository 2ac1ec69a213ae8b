"""LoRA for LLaRA models: adapters on the attention and MLP projections, the special-token rows trainable.

The released LLaRA fine-tuning recipe (FlagEmbedding research/LLARA) puts LoRA (r=64, alpha=16, dropout 0.1) on
``q,k,v,o,gate,up,down``. The 16 special tokens ``<s1>..<s16>`` are new rows of the embedding matrix:
under plain LoRA they would stay frozen at their initialization (the mean row written by ``llara init``).
Training them is our own choice, not the released recipe's (its LoRA leaves them as pretrained): with
``train_special_tokens=True`` (the default), :func:`apply_lora` also makes exactly those rows trainable with peft's ``trainable_token_indices``
(a 16 x hidden delta, not the whole vocabulary as ``modules_to_save`` would). When the backbone ties its
LM head to the input embeddings (SmolLM2), peft ties the trainable rows of both.

:class:`LoraArguments` holds the LoRA options of both training stages (``--use_lora``, ``--lora_r``, ...).
:func:`merge_lora` folds adapters and token deltas back into the weights and returns the plain
``LlaraModel`` / ``LlaraForPretraining``; :func:`load_merged` does that for a live peft model or for an adapter
folder over its base, and :func:`merge_and_save` writes the result as a complete LLaRA folder (every export of a
LoRA run goes through these two).

Dropout masks on CPU (our own implementation choice, the same distribution): torch's CPU ``bernoulli_`` draws one
Mersenne-Twister number per element, and the released dropout (0.1 on the input of every adapted projection)
then costs more than the adapters' matmuls in bf16. :class:`LoraDropout` draws one 64-bit word per four
elements and keeps an element when its 16-bit lane is at or above ``round(p * 65536)``: the drop probability is
``round(p * 65536) / 65536`` (0.100006 for 0.1), masks stay seeded by torch's generator, and scaling, eval
behaviour and gradients are those of ``nn.Dropout``. On other devices it is ``nn.Dropout`` unchanged.

bf16 autocast on CPU (an implementation choice with bit-identical results): autocast casts the frozen fp32 base
weights to bf16 in every forward (it caches only trainable leaves) and casts a shared input once per projection.
:func:`use_bf16_cast_cache` (applied by :func:`apply_lora` and :func:`load_lora`) gives the adapted base layers a
bf16 copy of their weight, made once and re-made when the weight changes, and one cast per distinct input; the
values and gradients are those of plain autocast. The copy costs 2 bytes per frozen parameter; :func:`merge_lora`
removes it.
"""

from __future__ import annotations

import logging
import math
import os
import types
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# The released LLaRA fine-tuning recipe (FlagEmbedding research/LLARA).
DEFAULT_LORA_R = 64
DEFAULT_LORA_ALPHA = 16
DEFAULT_LORA_DROPOUT = 0.1
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# Not trl's ``ModelConfig``, although its LoRA fields share our names: its switch is ``--use_peft`` where our
# commands, recipes and README say ``--use_lora``; its defaults are another recipe's (r=16, alpha=32, dropout 0.05,
# target modules None, turned into a bare string when one is given); and it brings ``model_name_or_path``, ``dtype``
# and ``attn_implementation`` fields that collide with the stages' own (``PretrainingModelArguments.model_dtype``
# and its sdpa/eager-only ``attn_implementation``, the fine-tuning script's ``model_name_or_path``) plus
# quantization, DoRA and rsLoRA options LLaRA does not wire up.
@dataclass
class LoraArguments:
    """LoRA options of a LLaRA training stage; the defaults are the released fine-tuning recipe's.

    Mixed into ``LlaraFinetuneConfig`` and ``PretrainingModelArguments``, so that both commands take
    ``--use_lora``, ``--lora_r``, ``--lora_alpha``, ``--lora_dropout``, ``--lora_target_modules`` and
    ``--train_special_tokens`` (flags and YAML recipe keys). Values are checked where the adapters are built
    (:func:`lora_config`).
    """

    use_lora: bool = field(
        default=True, metadata={"help": "Train LoRA adapters (as the released fine-tuning recipe does); False = all weights."}
    )
    lora_r: int = field(default=DEFAULT_LORA_R, metadata={"help": "LoRA rank (released fine-tuning recipe: 64)."})
    lora_alpha: int = field(default=DEFAULT_LORA_ALPHA, metadata={"help": "LoRA alpha (released fine-tuning recipe: 16)."})
    lora_dropout: float = field(
        default=DEFAULT_LORA_DROPOUT, metadata={"help": "LoRA dropout (released fine-tuning recipe: 0.1)."}
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={"help": "Linear layers that get LoRA adapters (released fine-tuning recipe: q,k,v,o,gate,up,down "
                          "projections)."},
    )
    train_special_tokens: bool = field(
        default=True,
        metadata={"help": "With LoRA, also train the embedding rows of <s1>..<s16>. Our choice, not the released "
                          "fine-tuning recipe's (its LoRA leaves them at their pretrained values)."},
    )

    def lora_options(self) -> dict:
        """The keyword arguments of :func:`apply_lora` these options stand for."""
        return {
            "r": self.lora_r,
            "alpha": self.lora_alpha,
            "dropout": self.lora_dropout,
            "target_modules": list(self.lora_target_modules),
            "train_special_tokens": self.train_special_tokens,
        }

    def lora_summary(self) -> dict | None:
        """What a run summary records of the adapters (None for a full-parameter run)."""
        if not self.use_lora:
            return None
        return {"r": self.lora_r, "alpha": self.lora_alpha, "dropout": self.lora_dropout,
                "target_modules": list(self.lora_target_modules)}


_LANES = 4  # 16-bit lanes per 64-bit random word


def _keep_lanes(shape, p: float, generator: torch.Generator | None):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    shape = tuple(shape)
    n = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + _LANES - 1) // _LANES,), dtype=torch.int64, generator=generator)
    lanes = words.view(torch.int16)[:n].view(shape)  # each lane uniform over [-32768, 32767]
    return lanes, round(p * 65536) - 32768  # keep where lane >= threshold


def dropout_keep_mask(shape, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A CPU boolean mask of ``shape``: each element kept with probability ``1 - round(p * 65536) / 65536``.

    One 64-bit word from torch's generator gives four independent uniform 16-bit lanes (a quarter of the
    generator calls of ``bernoulli_``).
    """
    lanes, threshold = _keep_lanes(shape, p, generator)
    return lanes >= threshold


def dropout_noise(shape, p: float, dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None):
    """``dropout_keep_mask(shape, p).to(dtype).div_(1 - p)`` with the same generator draws, bit for bit, without
    the boolean mask: the comparison writes 0/1 in ``dtype`` directly (a CPU bool-to-float cast is slow)."""
    lanes, threshold = _keep_lanes(shape, p, generator)
    noise = torch.ge(lanes, threshold, out=torch.empty(lanes.shape, dtype=dtype))
    return noise.mul_(torch.ones((), dtype=dtype).div_(1.0 - p))  # 1 / (1 - p) rounded as div_ rounds it


class LoraDropout(torch.nn.Dropout):
    """``nn.Dropout`` whose CPU masks come from :func:`dropout_keep_mask` (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        # as torch's dropout: noise = mask / (1 - p) in the input's dtype, output = input * noise
        return x * dropout_noise(x.shape, self.p, x.dtype)


# ---- bf16 autocast on CPU: one cast per activation, frozen weights cast once -----------------------------------
def _cpu_bf16_autocast(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


class _CastAlias(torch.autograd.Function):
    """An alias of a bf16 cast of ``x`` made earlier; its backward is that of autocast's own cast.

    Each consumer gets its own node, so the gradients reach ``x`` cast to fp32 one by one and are summed in fp32,
    exactly as when autocast casts ``x`` separately for every consumer.
    """

    @staticmethod
    def forward(ctx, x, cast):
        ctx.dtype = x.dtype
        return cast.view_as(cast)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.dtype), None


class _LastCast:
    """The bf16 cast of the last activation seen (by identity and version): the base layers of q/k/v share
    their input, as do those of gate/up, so each such input is cast once instead of once per projection."""

    def __init__(self):
        self._ref = None
        self._version = -1
        self._cast = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_inference():  # no version counter to key on
            return x.to(torch.bfloat16)
        if self._ref is None or self._ref() is not x or self._version != x._version:
            with torch.no_grad():
                cast = x.detach().to(torch.bfloat16)
            self._ref, self._version, self._cast = weakref.ref(x), x._version, cast
        if not (torch.is_grad_enabled() and x.requires_grad):
            return self._cast
        return _CastAlias.apply(x, self._cast)


_last_cast = _LastCast()


def _bf16_base_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``nn.Linear.forward`` that, under CPU bf16 autocast and with a frozen weight, uses a bf16 copy of the weight
    made once (re-made when the weight changes) and the shared cast of ``x``: the values autocast would compute."""
    weight = self.weight
    if args or kwargs or weight.requires_grad or weight.dtype != torch.float32 or not _cpu_bf16_autocast(x):
        return torch.nn.Linear.forward(self, x, *args, **kwargs)
    key = (weight.data_ptr(), weight._version, weight.device)
    cached = self.__dict__.get("_llara_bf16_weight")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, weight.detach().to(torch.bfloat16))
        self.__dict__["_llara_bf16_weight"] = cached
    return torch.nn.functional.linear(_last_cast(x) if x.dtype == torch.float32 else x, cached[1], self.bias)


def use_bf16_cast_cache(peft_model) -> int:
    """Give the base layer of every LoRA-adapted ``nn.Linear`` :func:`_bf16_base_forward`; returns how many.

    Outside CPU bf16 autocast (fp32 training, GPUs, trainable base weights) the layers run ``nn.Linear.forward``.
    """
    patched = 0
    for module in peft_model.modules():
        base = getattr(module, "base_layer", None)
        if getattr(module, "lora_A", None) is None or type(base) is not torch.nn.Linear:
            continue
        base.forward = types.MethodType(_bf16_base_forward, base)
        patched += 1
    return patched


def drop_bf16_cast_cache(model) -> None:
    """Undo :func:`use_bf16_cast_cache` on every layer of ``model`` (the merged model is a plain model again)."""
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), types.MethodType) and \
                module.__dict__["forward"].__func__ is _bf16_base_forward:
            del module.forward
        module.__dict__.pop("_llara_bf16_weight", None)


def use_fast_dropout(peft_model) -> int:
    """Replace every plain ``nn.Dropout`` of the LoRA layers by :class:`LoraDropout`; returns how many."""
    replaced = 0
    for module in peft_model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if type(dropout) is torch.nn.Dropout:
                dropouts[name] = LoraDropout(dropout.p)
                replaced += 1
    return replaced


def _special_token_ids(model) -> list[int]:
    config = model.config
    ids = list(config.summarize_token_ids or []) + list(config.predict_token_ids or [])
    if not ids:
        raise ValueError(
            "the model config holds no summarize_token_ids / predict_token_ids: build the model with "
            "`llara init` (or pass special_token_ids explicitly)"
        )
    return ids


def _embedding_module_name(model) -> str:
    embeddings = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is embeddings:
            return name.rsplit(".", 1)[-1]
    raise ValueError("the input embedding module of the model could not be found by name")


def _quiet_peft_call(fn, *args, **kwargs):
    # peft 0.21 reads ``model.is_gradient_checkpointing``, which transformers 5 deprecated in favour of
    # ``is_activation_checkpointing``; the FutureWarning is the libraries' business, not the caller's.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return fn(*args, **kwargs)


def lora_config(
    model,
    r: int = DEFAULT_LORA_R,
    alpha: int = DEFAULT_LORA_ALPHA,
    dropout: float = DEFAULT_LORA_DROPOUT,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    train_special_tokens: bool = True,
    special_token_ids: Sequence[int] | None = None,
):
    """The ``peft.LoraConfig`` that :func:`apply_lora` uses (exposed for saving/inspection)."""
    from peft import LoraConfig

    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    target_modules = list(target_modules)
    if not target_modules:
        raise ValueError("target_modules is empty: name the linear layers to adapt (e.g. q_proj, v_proj)")
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in target_modules if t not in present]
    if missing:
        raise ValueError(f"target modules {missing} do not exist in the model (its module names end in e.g. "
                         f"{sorted(n for n in present if n.endswith('proj'))[:8]})")
    trainable_tokens = None
    if train_special_tokens:
        ids = list(special_token_ids) if special_token_ids is not None else _special_token_ids(model)
        vocab = model.get_input_embeddings().num_embeddings  # the weight is an empty shard under ZeRO-3
        bad = [i for i in ids if not 0 <= int(i) < vocab]
        if bad:
            raise ValueError(f"special token ids {bad} are outside the embedding matrix (vocab {vocab})")
        trainable_tokens = {_embedding_module_name(model): sorted({int(i) for i in ids})}
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        trainable_token_indices=trainable_tokens,
        bias="none",
    )


def apply_lora(model, **lora_options):
    """Wrap a LLaRA model (``LlaraModel`` or ``LlaraForPretraining``) in a peft LoRA model.

    ``lora_options`` are those of :func:`lora_config` (``r``, ``alpha``, ``dropout``, ``target_modules``,
    ``train_special_tokens``, ``special_token_ids``). Every base weight is frozen; LoRA A/B matrices on
    ``target_modules`` and (when ``train_special_tokens``) the embedding rows of ``special_token_ids`` (default:
    the config's ``summarize_token_ids + predict_token_ids``) are trainable. Returns a ``peft.PeftModel`` whose
    ``forward`` is the LLaRA model's forward.
    """
    from peft import get_peft_model

    config = lora_config(model, **lora_options)
    peft_model = _quiet_peft_call(get_peft_model, model, config)
    use_fast_dropout(peft_model)
    use_bf16_cast_cache(peft_model)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA r=%d alpha=%d on %s: %d of %d parameters trainable", config.r, config.lora_alpha,
                sorted(config.target_modules), trainable, total)
    return peft_model


def require_adapter_dir(adapter_dir) -> None:
    """Refuse a folder without ``adapter_config.json`` before anything is loaded against it."""
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter_config.json: not a LoRA adapter folder")


def load_lora(model, adapter_dir, is_trainable: bool = False):
    """Attach a saved adapter (a peft ``save_pretrained`` folder or Trainer checkpoint) to ``model``."""
    from peft import PeftModel

    peft_model = _quiet_peft_call(PeftModel.from_pretrained, model, str(adapter_dir), is_trainable=is_trainable)
    use_fast_dropout(peft_model)
    use_bf16_cast_cache(peft_model)
    return peft_model


def merge_lora(peft_model):
    """Fold LoRA adapters and trainable token rows into the weights; returns the plain LLaRA model.

    The returned object is the wrapped class itself (``LlaraModel`` / ``LlaraForPretraining``), so
    ``save_pretrained`` / ``trainers.convert.save_llara`` write a full model that loads without peft.
    """
    if not hasattr(peft_model, "merge_and_unload"):
        raise TypeError(f"expected a peft model, got {type(peft_model).__name__}")
    with torch.no_grad():
        merged = _quiet_peft_call(peft_model.merge_and_unload, progressbar=False, safe_merge=True)
    drop_bf16_cast_cache(merged)
    return merged


def _require_adapter_and_base(adapter_dir, base) -> None:
    require_adapter_dir(adapter_dir)
    if base is None:
        raise ValueError(f"merging the adapter in {adapter_dir} needs its base LLaRA model (a folder or a loaded model)")


def load_merged(model_or_adapter_dir, *, base=None, with_lm_head: bool = False, dtype=None):
    """The merged LLaRA model (in eval mode) of a live model or of an adapter folder over its base.

    ``model_or_adapter_dir``:

    * a peft model (a LoRA run's live model): adapters and token rows are folded in (:func:`merge_lora`);
    * a plain ``LlaraModel`` / ``LlaraForPretraining`` (a full-parameter run): returned as it is;
    * an adapter folder (a peft ``save_pretrained`` folder, a Trainer checkpoint, the gathered adapter of a
      sharded run): attached to ``base`` and folded in.

    ``base`` (adapter folders only): a loaded LLaRA model, or the LLaRA folder the adapter was trained on, loaded
    as ``LlaraForPretraining`` when ``with_lm_head`` else ``LlaraModel``, in ``dtype`` (None: transformers'
    default).

    Raises:
        FileNotFoundError: the adapter folder holds no ``adapter_config.json`` (checked before anything loads).
        ValueError: an adapter folder without ``base``.
    """
    if not isinstance(model_or_adapter_dir, (str, os.PathLike)):
        model = model_or_adapter_dir
        return (merge_lora(model) if hasattr(model, "merge_and_unload") else model).eval()
    adapter_dir = Path(model_or_adapter_dir)
    _require_adapter_and_base(adapter_dir, base)
    if isinstance(base, (str, os.PathLike)):
        from modeling_llara import LlaraForPretraining, LlaraModel

        cls = LlaraForPretraining if with_lm_head else LlaraModel
        base = cls.from_pretrained(str(base), **({} if dtype is None else {"dtype": dtype}))
    return merge_lora(load_lora(base, adapter_dir)).eval()


def _adapter_or_base_tokenizer(adapter_dir: Path, base):
    """The tokenizer saved with the adapter (a run's checkpoints carry it), else the base folder's."""
    from transformers import AutoTokenizer

    if (adapter_dir / "tokenizer_config.json").is_file():
        source = adapter_dir
    elif isinstance(base, (str, os.PathLike)):
        source = Path(base)
    else:
        raise ValueError(f"{adapter_dir} holds no tokenizer and the base is a loaded model: pass the tokenizer")
    return AutoTokenizer.from_pretrained(str(source), trust_remote_code=True)


def merge_and_save(
    model_or_adapter_dir,
    output_dir: str | os.PathLike,
    tokenizer=None,
    *,
    base=None,
    with_lm_head: bool = False,
    dtype=None,
    auto_dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge LoRA adapters into their LLaRA model and write a complete LLaRA folder; returns ``output_dir``.

    ``model_or_adapter_dir``, ``base``, ``with_lm_head`` and ``dtype`` are those of :func:`load_merged` (a live
    peft or plain model, or an adapter folder over ``base``). ``tokenizer``: the one to save (default, for an
    adapter folder: the adapter folder's own when it has one, else the base folder's). The folder is written by
    ``trainers.convert.save_llara``: weights (safetensors), config with ``auto_map``, tokenizer, the shipped code
    and the sentence-transformers files, staged in a hidden sibling and moved into place when complete.
    ``auto_dtype`` (``"auto"`` / ``"float32"``), when given, is recorded in the config (see ``LlaraConfig``).

    Raises:
        FileNotFoundError: an adapter folder without ``adapter_config.json``.
        FileExistsError: ``output_dir`` exists and ``overwrite`` is false (both checked before any weight loads).
        ValueError: no ``tokenizer`` for a loaded model, or for an adapter folder without one over a loaded base;
            an adapter folder without ``base``.
    """
    from trainers.convert import save_llara

    out = Path(output_dir)
    from_folder = isinstance(model_or_adapter_dir, (str, os.PathLike))
    if from_folder:
        _require_adapter_and_base(model_or_adapter_dir, base)
    elif tokenizer is None:
        raise ValueError("merge_and_save of a loaded model needs its tokenizer")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    if tokenizer is None:  # loaded before the weights: a folder without a usable tokenizer fails fast
        tokenizer = _adapter_or_base_tokenizer(Path(model_or_adapter_dir), base)
    merged = load_merged(model_or_adapter_dir, base=base, with_lm_head=with_lm_head, dtype=dtype)
    saved = save_llara(merged, tokenizer, out, overwrite=overwrite, auto_dtype=auto_dtype)
    logger.info("merged LLaRA model written to %s", saved)
    return saved


__all__ = [
    "DEFAULT_LORA_ALPHA",
    "DEFAULT_LORA_DROPOUT",
    "DEFAULT_LORA_R",
    "DEFAULT_TARGET_MODULES",
    "LoraArguments",
    "LoraDropout",
    "apply_lora",
    "drop_bf16_cast_cache",
    "dropout_keep_mask",
    "dropout_noise",
    "load_lora",
    "load_merged",
    "lora_config",
    "merge_and_save",
    "merge_lora",
    "require_adapter_dir",
    "use_bf16_cast_cache",
    "use_fast_dropout",
]
