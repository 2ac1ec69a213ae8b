"""The whole LLaRA pipeline on real data, as resumable stages.

SmolLM2-135M (offline GGUF) -> ``llara init`` -> EBAE/EBAR pretraining on unlabeled Debian descriptions
-> BM25-mined hard negatives -> contrastive fine-tuning (LoRA) -> evaluation on a held-out BEIR-layout
collection -> Hub export, loaded back through sentence-transformers.

Every stage calls the same Python API the ``llara`` sub-commands call, with typed configs (the stages'
argument dataclasses), and writes its output atomically into the work folder; a stage whose output exists is skipped, so an interrupted
pipeline resumes where it stopped. The default sizes fit a 2-core CPU in well under 25 minutes; the
paper-comparison benchmark reuses the stages with other budgets and seeds.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """Sizes and budgets of one pipeline run (defaults: the 2-core CPU main job)."""

    out: str = "outputs/pipeline"
    seed: int = 0
    # data (disjoint by Debian package)
    n_test_queries: int = 150
    n_test_corpus: int = 600
    n_pretrain_docs: int = 1200
    n_train_pairs: int = 1200
    # inference text budget (tokens, prompt excluded), also used for evaluation
    max_text_tokens: int = 64
    # stage 1
    pretrain_steps: int = 80
    pretrain_batch_size: int = 8
    pretrain_lr: float = 5e-5
    pretrain_max_length: int = 128  # released run: 128 tokens per row in all
    remove_stopwords: bool = True  # released run: stopwords and punctuation out of the EBAE/EBAR targets
    loss_mode: str = "reference"
    ebae_weight: float | None = None
    ebar_weight: float | None = None
    # stage 2
    finetune_steps: int = 75
    finetune_batch_size: int = 8
    group_size: int = 4
    finetune_lr: float = 3e-4
    temperature: float = 0.01
    query_max_length: int = 48
    passage_max_length: int = 96
    mine_with: str = "bm25"
    mine_range: tuple[int, int] = (3, 30)
    use_lora: bool = True
    eval_batch_size: int = 16
    # compute dtype: "auto" = bf16 where the hardware runs it natively (training: bf16 autocast over fp32
    # master weights; inference: bf16 backbone, fp32 pooling), fp32 elsewhere
    dtype: str = "auto"
    extra: dict = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(self.out)


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
    splits = make_splits(
        load_pairs(),
        seed=cfg.seed,
        n_test_queries=cfg.n_test_queries,
        n_test_corpus=cfg.n_test_corpus,
        n_pretrain_docs=cfg.n_pretrain_docs,
        n_train_pairs=cfg.n_train_pairs,
    )
    write_pretraining_text(splits.pretrain_docs, paths["pretrain"])
    write_training_jsonl(splits.train_pairs, paths["train"])
    if paths["test"].exists():
        shutil.rmtree(paths["test"])
    write_beir(splits.test, paths["test"])
    return paths


def init_model(cfg: PipelineConfig, out: Path | None = None) -> Path:
    """``llara init`` on the embedded SmolLM2-135M."""
    from trainers.convert import convert

    out = out or cfg.root / "models" / "init"
    if not _done(out):
        logger.info("llara init -> %s", out)
        convert(None, out, overwrite=True, max_text_tokens=cfg.max_text_tokens)
    return out


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def trains_in_bf16(cfg: PipelineConfig) -> bool:
    """Whether the stages of this run use bf16 (autocast over fp32 master weights): the resolved `cfg.dtype`."""
    import torch

    from modeling_llara import resolve_dtype

    return resolve_dtype(cfg.dtype, _device()) == torch.bfloat16


def _trainer_settings(cfg: PipelineConfig, out: Path) -> dict:
    """TrainingArguments common to both training stages of the pipeline."""
    return {
        "output_dir": str(out.parent / f"{out.name}-run"),
        "logging_steps": 5,
        "save_strategy": "no",
        "report_to": "none",
        "seed": cfg.seed,
        "dataloader_pin_memory": False,
        "use_cpu": _device() == "cpu",
        "bf16": trains_in_bf16(cfg),  # autocast over fp32 master weights
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
    data_args = PretrainingDataArguments(**{
        "train_files": [str(data)], "max_length": cfg.pretrain_max_length, "remove_stopwords": cfg.remove_stopwords,
        **data_overrides,
    })
    weights = {k: v for k, v in (("ebae_weight", cfg.ebae_weight), ("ebar_weight", cfg.ebar_weight)) if v is not None}
    training_args = PretrainingArguments(**{
        **_trainer_settings(cfg, out),
        "per_device_train_batch_size": cfg.pretrain_batch_size,
        "warmup_ratio": 0.1,
        "loss_mode": cfg.loss_mode,
        "learning_rate": cfg.pretrain_lr,
        "max_steps": cfg.pretrain_steps,
        **weights,
        **train_overrides,
    })
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
    config = MiningConfig(method=method, range_start=cfg.mine_range[0], range_end=cfg.mine_range[1],
                          num_negatives=cfg.group_size - 1, seed=cfg.seed, batch_size=cfg.eval_batch_size)
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
    settings = {
        **_trainer_settings(cfg, out),
        "group_size": cfg.group_size,
        "query_max_length": cfg.query_max_length,
        "passage_max_length": cfg.passage_max_length,
        "per_device_train_batch_size": cfg.finetune_batch_size,
        "warmup_steps": 0.1,
        "learning_rate": cfg.finetune_lr,
        "max_steps": cfg.finetune_steps,
        "use_lora": cfg.use_lora,
        "temperature": cfg.temperature,
        **{k: v for k, v in overrides.items() if v is not None},
    }
    args = LlaraFinetuneConfig(**settings)
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
    evaluation = evaluate_model(str(model), dataset, top_k=100, batch_size=cfg.eval_batch_size, dtype=cfg.dtype,
                                show_progress=True)
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
