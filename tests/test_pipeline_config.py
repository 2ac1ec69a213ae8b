"""``llara pipeline``'s config is its command line: one name and one default per parameter, the main job in one recipe.

* every parameter a stage owns has that stage's field name and default (``STAGE_FIELDS``), so they cannot drift;
* ``recipes/pipeline_main_job.yaml`` (loaded by default) gives exactly the main job ``make run`` always ran: the
  values below are ``PipelineConfig()``'s defaults before the pipeline took the stages' names, and the stages
  receive the same arguments as then;
* ``--config``, ``--quick``, flags (and the earlier flag spellings) layer in that order;
* ``--dtype`` is one option with one help text in every command, and ``auto`` is resolved by ``resolve_dtype``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
from pathlib import Path

import pytest

from llara import pipeline as p
from llara.cli import main as cli_main

# The main job before this config became the CLI (PipelineConfig's old defaults), under the stages' names.
MAIN_JOB = {
    "out": "outputs/pipeline", "base": None, "seed": 0,
    "n_test_queries": 150, "n_test_corpus": 600, "n_pretrain_docs": 1200, "n_train_pairs": 1200,
    "max_text_tokens": 64, "eval_batch_size": 16, "dtype": "auto",
    "pretrain_max_steps": 80, "pretrain_per_device_train_batch_size": 8, "pretrain_learning_rate": 5e-5,
    "loss_mode": "reference", "lm_weight": None, "ebae_weight": None, "ebar_weight": None, "max_length": 128,
    "remove_stopwords": True,
    "mine_with": "bm25", "range_start": 3, "range_end": 30,
    "finetune_max_steps": 75, "finetune_per_device_train_batch_size": 8, "finetune_learning_rate": 3e-4,
    "group_size": 4, "query_max_length": 48, "passage_max_length": 96, "temperature": 0.01, "finetune_use_lora": True,
}
QUICK_JOB = {**MAIN_JOB, "pretrain_max_steps": 3, "finetune_max_steps": 3, "n_test_queries": 40, "n_test_corpus": 150,
             "n_pretrain_docs": 64, "n_train_pairs": 64}


class _Stop(Exception):
    """Ends a pipeline run once the part under test has run."""


def _owner_default(stage: str, name: str):
    """The default of ``name`` in the config (dataclass) or function that ``STAGES[stage]`` names."""
    module, attr = p.STAGES[stage].split(":")
    owner = getattr(importlib.import_module(module), attr)
    if dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}[name]
        return field.default_factory() if field.default is dataclasses.MISSING else field.default
    return inspect.signature(owner).parameters[name].default


# ---- one name and one default per parameter ---------------------------------------------------------
def test_every_parameter_is_a_config_field_and_every_stage_field_exists():
    names = {f.name for f in dataclasses.fields(p.PipelineConfig)}
    assert set(p.STAGE_FIELDS) <= names
    # the pipeline's own parameters: where to write, and which model mines
    assert names - set(p.STAGE_FIELDS) == {"out", "base", "mine_with"}
    for param, targets in p.STAGE_FIELDS.items():
        for stage, name in targets:
            _owner_default(stage, name)  # KeyError when a stage renamed or dropped the field


@pytest.mark.parametrize("param", sorted(p.STAGE_FIELDS))
def test_a_stage_parameter_has_the_stage_fields_name_and_default(param):
    stage, name = p.STAGE_FIELDS[param][0]
    assert param in (name, f"pretrain_{name}", f"finetune_{name}", f"eval_{name}")
    default = {f.name: f.default for f in dataclasses.fields(p.PipelineConfig)}[param]
    assert default == _owner_default(stage, name), f"--{param}: the pipeline's default differs from {p.STAGES[stage]}"


def test_the_recipe_holds_only_what_the_main_job_changes():
    import yaml

    recipe = yaml.safe_load(p.MAIN_JOB_RECIPE.read_text())
    defaults = dataclasses.asdict(p.PipelineConfig())
    assert set(recipe) <= set(defaults)
    assert all(defaults[key] != value for key, value in recipe.items()), "the recipe restates a stage default"


# ---- the main job is unchanged ------------------------------------------------------------------------
def test_the_default_recipe_is_the_main_job():
    cfg, run = p.parse_config([])
    assert dataclasses.asdict(cfg) == MAIN_JOB
    assert (run.quick, run.no_baselines) == (False, False)
    assert dataclasses.asdict(p.main_job_config()) == MAIN_JOB
    assert p.main_job_config(seed=3).seed == 3


@pytest.mark.parametrize("argv,expected", [([], MAIN_JOB), (["--quick"], QUICK_JOB)], ids=["main", "quick"])
def test_llara_pipeline_saves_the_main_job_config(tmp_path, monkeypatch, argv, expected):
    """What `make run` (``llara pipeline --out DIR``) writes to DIR/pipeline_config.json, before any stage runs."""

    def stop(cfg):
        raise _Stop

    from llara.scripts.pipeline import main

    monkeypatch.setattr(p, "prepare_data", stop)
    with pytest.raises(_Stop):
        main(["--out", str(tmp_path), *argv])
    saved = json.loads((tmp_path / "pipeline_config.json").read_text())
    assert saved == {**expected, "out": str(tmp_path)}


def test_the_stages_receive_the_main_jobs_arguments(tmp_path, monkeypatch):
    """The arguments each stage got from the main job before its config became the CLI."""
    import trainers.convert
    import trainers.debian_data
    import trainers.finetuning.data
    import trainers.finetuning.mining
    import trainers.finetuning.trainer
    import trainers.pretraining.run
    import trainers.retrieval.beir
    import trainers.retrieval.evaluation

    got = {}

    def record(name, result=None):
        def run(*args, **kwargs):
            got[name] = (args, kwargs)
            if isinstance(result, Exception):
                raise result
            return result
        return run

    class Report:
        def summary(self):
            return ""

    monkeypatch.setattr(trainers.debian_data, "load_pairs", lambda: [])
    monkeypatch.setattr(trainers.debian_data, "make_splits", record("splits", _Stop()))
    monkeypatch.setattr(trainers.convert, "convert", record("init"))
    monkeypatch.setattr(trainers.pretraining.run, "pretrain", record("pretrain"))
    monkeypatch.setattr(trainers.finetuning.data, "load_examples", lambda path, **kwargs: ([], [], None))
    monkeypatch.setattr(trainers.finetuning.mining, "mine_hard_negatives", record("mining", ([], Report())))
    monkeypatch.setattr(trainers.finetuning.mining, "write_training_jsonl", lambda *args, **kwargs: None)
    monkeypatch.setattr(trainers.finetuning.trainer, "finetune", record("finetune"))
    monkeypatch.setattr(trainers.retrieval.beir, "load_beir", lambda *args, **kwargs: None)
    monkeypatch.setattr(trainers.retrieval.evaluation, "evaluate_model", record("evaluate", _Stop()))

    cfg = p.main_job_config(out=str(tmp_path))
    with pytest.raises(_Stop):
        p.prepare_data(cfg)
    p.init_model(cfg)
    p.pretrain(cfg, tmp_path / "init", tmp_path / "pretrain.jsonl")
    p.mine(cfg, tmp_path / "train.jsonl")
    p.finetune(cfg, tmp_path / "pretrained", tmp_path / "mined.jsonl")
    with pytest.raises(_Stop):
        p.evaluate(cfg, "bm25", tmp_path, "bm25")

    assert got["splits"][1] == {"seed": 0, "n_test_queries": 150, "n_test_corpus": 600, "n_pretrain_docs": 1200,
                                "n_train_pairs": 1200}
    assert got["init"][1] == {"overwrite": True, "max_text_tokens": 64}
    _, data_args, train_args = got["pretrain"][0]
    assert (data_args.max_length, data_args.remove_stopwords) == (128, True)
    assert {k: getattr(train_args, k) for k in ("max_steps", "learning_rate", "per_device_train_batch_size", "seed",
                                                "warmup_ratio", "loss_mode", "lm_weight", "ebae_weight", "ebar_weight",
                                                "logging_steps")} == {
        "max_steps": 80, "learning_rate": 5e-5, "per_device_train_batch_size": 8, "seed": 0, "warmup_ratio": 0.1,
        "loss_mode": "reference", "lm_weight": None, "ebae_weight": None, "ebar_weight": None, "logging_steps": 5}
    assert dataclasses.asdict(got["mining"][0][2]) == {"method": "bm25", "range_start": 3, "range_end": 30,
                                                       "num_negatives": 3, "seed": 0, "batch_size": 16,
                                                       "keep_existing_negatives": False}
    args = got["finetune"][0][2]
    assert {k: getattr(args, k) for k in ("max_steps", "learning_rate", "per_device_train_batch_size", "seed",
                                          "warmup_steps", "group_size", "query_max_length", "passage_max_length",
                                          "temperature", "use_lora", "logging_steps")} == {
        "max_steps": 75, "learning_rate": 3e-4, "per_device_train_batch_size": 8, "seed": 0, "warmup_steps": 0.1,
        "group_size": 4, "query_max_length": 48, "passage_max_length": 96, "temperature": 0.01, "use_lora": True,
        "logging_steps": 5}
    assert got["evaluate"][1] == {"top_k": 100, "show_progress": True, "batch_size": 16, "dtype": "auto"}


# ---- layering: stage defaults < recipe < --quick < flags -------------------------------------------------
def test_flags_override_the_recipe_under_their_names_and_earlier_spellings():
    cfg, _ = p.parse_config(["--finetune_learning_rate", "1e-4", "--group-size", "3", "--loss-mode", "paper",
                             "--no_remove_stopwords", "--range_start", "0"])
    assert (cfg.finetune_learning_rate, cfg.group_size, cfg.loss_mode, cfg.remove_stopwords, cfg.range_start) == (
        1e-4, 3, "paper", False, 0)
    assert cfg.pretrain_max_steps == 80  # the rest stays the main job's
    old, _ = p.parse_config(["--pretrain-steps", "7", "--finetune-steps", "6", "--test-queries", "9",
                             "--test-corpus", "90", "--pretrain-lr", "2e-5", "--finetune-lr", "1e-4",
                             "--finetune-batch-size", "4"])
    assert (old.pretrain_max_steps, old.finetune_max_steps, old.n_test_queries, old.n_test_corpus,
            old.pretrain_learning_rate, old.finetune_learning_rate, old.finetune_per_device_train_batch_size) == (
        7, 6, 9, 90, 2e-5, 1e-4, 4)


def test_quick_goes_over_the_recipe_and_flags_over_quick():
    cfg, run = p.parse_config(["--quick"])
    assert run.quick and dataclasses.asdict(cfg) == QUICK_JOB
    cfg, _ = p.parse_config(["--quick", "--pretrain_max_steps", "5", "--n_test_queries=12"])
    assert (cfg.pretrain_max_steps, cfg.finetune_max_steps, cfg.n_test_queries) == (5, 3, 12)


def test_another_config_replaces_the_main_job_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("pretrain_max_steps: 5\nfinetune_learning_rate: 1.0e-4\n")
    cfg, _ = p.parse_config(["--config", str(recipe), "--seed", "1"])
    expected = {**dataclasses.asdict(p.PipelineConfig()), "pretrain_max_steps": 5, "finetune_learning_rate": 1e-4,
                "seed": 1}
    assert dataclasses.asdict(cfg) == expected  # the stage defaults under it, not the main job's values
    cfg, _ = p.parse_config([f"--config={recipe}", "--quick"])
    assert (cfg.pretrain_max_steps, cfg.finetune_max_steps, cfg.group_size) == (3, 3, 16)


@pytest.mark.parametrize("argv,message", [
    (["--group_size", "1"], "--group_size must be >= 2"),
    (["--group_size", "40"], "more than the mining window"),
    (["--range_start", "30"], "need 0 <= --range_start < --range_end"),
    (["--finetune_max_steps", "0"], "--finetune_max_steps must be >= 1 (or -1"),
    (["--pretrain_learning_rate", "0"], "--pretrain_learning_rate must be > 0"),
    (["--eval_batch_size", "0"], "--eval_batch_size must be >= 1, got 0"),
    (["--ebae_weight", "-1"], "--ebae_weight must be >= 0"),
    (["--loss_mode", "bogus"], "invalid choice: 'bogus'"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
])
def test_bad_values_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        p.parse_config(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_config_validates_in_code_too():
    with pytest.raises(ValueError, match="--loss_mode must be one of reference, paper"):
        p.PipelineConfig(loss_mode="bogus")
    with pytest.raises(ValueError, match="--n_train_pairs must be >= 1"):
        p.main_job_config(n_train_pairs=0)
    assert p.PipelineConfig(n_train_pairs=None).n_train_pairs is None  # all that are left


def test_help_lists_choices_stage_groups_and_both_defaults(capsys):
    assert cli_main(["pipeline", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("{reference,paper}", "{auto,float32,bfloat16}", "recipes/pipeline_main_job.yaml",
                     "stage 1: EBAE/EBAR pretraining", "stage 2: contrastive fine-tuning", "hard negatives",
                     "(default: 80; stage default: -1)", "(default: 4; stage default: 16)", "--quick"):
        assert expected in text, expected
    assert "--pretrain-steps" not in text  # earlier spellings work but are not advertised


# ---- --dtype: one option, one resolution -------------------------------------------------------------------
@pytest.mark.parametrize("script", ["search", "evaluate", "index", "mine", "pipeline"])
def test_every_command_has_the_one_dtype_option(script):
    from llara.options import DTYPE_HELP
    from modeling_llara import DTYPE_CHOICES

    parser = importlib.import_module(f"llara.scripts.{script}").make_parser()
    (action,) = [a for a in parser._actions if "--dtype" in a.option_strings]
    assert tuple(action.choices) == DTYPE_CHOICES
    assert action.help.startswith(DTYPE_HELP)
    assert action.default == "auto"


@pytest.mark.parametrize("env,dtype,bf16", [("float32", "auto", False), ("bfloat16", "auto", True),
                                            ("bfloat16", "float32", False)])
def test_the_pipeline_resolves_auto_through_resolve_dtype(tmp_path, monkeypatch, env, dtype, bf16):
    import torch

    from modeling_llara import resolve_dtype

    monkeypatch.setenv("LLARA_DTYPE", env)  # honoured by resolve_dtype alone
    cfg = p.main_job_config(dtype=dtype)
    assert p.compute_dtype(cfg) == resolve_dtype(dtype, p._device())
    assert p._trainer_settings(cfg, Path(tmp_path) / "m")["bf16"] is bf16
    assert p.compute_dtype(cfg) == (torch.bfloat16 if bf16 else torch.float32)


def test_the_main_job_table_reads_results_under_the_old_and_the_new_names(tmp_path):
    """benchmarks/readme_tables.py renders the committed results.json (old names) and a new run's alike."""
    spec = importlib.util.spec_from_file_location("readme_tables", p.REPO / "benchmarks" / "readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    committed = p.REPO / "benchmarks" / "results" / "pipeline_main_job.json"
    data = json.loads(committed.read_text())
    renamed = tables.pipeline_config(data["config"])
    assert set(renamed) <= set(MAIN_JOB) | {"extra"}  # every old key has its current name
    new = tmp_path / "results.json"
    new.write_text(json.dumps({**data, "config": renamed}))
    assert tables.main_job_table(new) == tables.main_job_table(committed)


def test_the_base_llm_reaches_llara_init_and_names_the_export(tmp_path, monkeypatch):
    # Given a run on another base LLM (a local .gguf file)
    gguf = tmp_path / "gemma-3-270m.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    cfg = p.PipelineConfig(out=str(tmp_path / "run"), base=str(gguf))
    seen = {}
    import trainers.convert

    monkeypatch.setattr(trainers.convert, "convert", lambda src, out, **kw: seen.update(src=src, out=out) or out)
    # When the init stage runs
    p.init_model(cfg)
    # Then `llara init` converts that file, and the export is named after it; the default stays the embedded SmolLM2
    assert seen["src"] == str(gguf)
    assert p.base_names(cfg) == ("gemma-3-270m.Q4_K_M", None)  # a local file names no Hub id in the card
    assert p.export_name(cfg) == "llara-gemma-3-270m.q4-k-m-debian"
    default = p.PipelineConfig()
    assert p.base_names(default) == ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert p.export_name(default) == "llara-smollm2-135m-debian"
    assert p.base_names(p.PipelineConfig(base="google/gemma-3-270m")) == ("gemma-3-270m", "google/gemma-3-270m")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="per-stage peaks need Linux's clear_refs")
def test_the_pipeline_records_each_stages_peak_memory(tmp_path, monkeypatch):
    """results.json holds the peak resident memory of each step; a step's peak is its own, not the run's so far."""
    import mmap

    import hub_card.export
    from llara.scripts.pipeline import main

    big = 256 * 2**20

    def pretrain(cfg, init, data):
        block = mmap.mmap(-1, big)  # anonymous pages, unmapped on close whatever malloc keeps
        block.write(b"x" * big)
        block.close()
        return tmp_path / "pretrained"

    result = {"label": "x", "metrics": {"ndcg@10": 0.5}}
    monkeypatch.setattr(p, "prepare_data", lambda cfg: {"test": tmp_path, "train": tmp_path, "pretrain": tmp_path})
    monkeypatch.setattr(p, "init_model", lambda cfg: tmp_path / "init")
    monkeypatch.setattr(p, "evaluate", lambda *a, **k: result)
    monkeypatch.setattr(p, "pretrain", pretrain)
    monkeypatch.setattr(p, "mine", lambda cfg, train, model=None: tmp_path)
    monkeypatch.setattr(p, "finetune", lambda cfg, base, data: tmp_path / "finetuned")
    monkeypatch.setattr(hub_card.export, "export_model", lambda *a, **k: None)
    monkeypatch.setattr(p, "check_export", lambda *a, **k: {"texts": 1, "max_abs_diff": 0.0})
    monkeypatch.setattr(p, "format_table", lambda results: "")
    monkeypatch.setattr(p, "loss_curve", lambda folder: [])
    monkeypatch.setattr(p, "plot", lambda *a: tmp_path / "results.png")
    assert main(["--out", str(tmp_path), "--no_baselines"]) == 0
    peaks = json.loads((tmp_path / "results.json").read_text())["stage_peak_rss_bytes"]
    assert [k.split(":")[0] for k in peaks] == [str(i) for i in range(1, 10)]  # "4: EBAE/EBAR pretraining (...)"
    by_step = {k.split(":")[0]: v for k, v in peaks.items()}
    assert by_step["4"] - by_step["5"] > big * 0.9  # stage 1's 256 MiB shows in its own window only
