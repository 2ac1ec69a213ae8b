"""`llara export`: a complete Hub repository folder that loads with no project code, and a card built from data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, encode, make_tokenizer

QUERIES = ["how to compress a folder", "", "a query with <s1> inside"]
DOCUMENTS = ["GNU tar saves many files together into a single archive.", "short", "x " * 300]

EVALUATE_RESULTS = {  # the shape written by `llara evaluate`
    "dataset": "debian",
    "split": "test",
    "top_k": 1000,
    "results": [
        {"model": "bm25", "dataset": "debian", "split": "test", "metrics": {"ndcg@10": 0.4123, "mrr@10": 0.3811,
                                                                              "recall@100": 0.7702, "map": 0.35}},
        {"model": "MODEL", "dataset": "debian", "split": "test", "metrics": {"ndcg@10": 0.5234, "mrr@10": 0.4977,
                                                                               "recall@100": 0.8811, "map": 0.47},
         "num_queries": 500},
    ],
}
MTEB_RESULT = {  # an mteb TaskResult file
    "dataset_revision": "d56462d0e63a25450459c4f213e49ffdb866f7f9",
    "task_name": "SciFact",
    "mteb_version": "2.26.24",
    "evaluation_time": 12.5,
    "scores": {"test": [{"main_score": 0.6123, "ndcg_at_10": 0.6123, "mrr_at_10": 0.5901, "recall_at_100": 0.9012,
                         "hf_subset": "default", "languages": ["eng-Latn"]}]},
}


def _trainer_state(steps: int = 30) -> dict:
    history = [
        {"step": s, "epoch": s / steps, "loss": 2.0 / (1 + 0.1 * s), "learning_rate": 3e-4 * min(1.0, s / 3) * (1 - s / (steps + 1)),
         "grad_norm": 1.0}
        for s in range(1, steps + 1)
    ]
    history.append({"step": steps, "epoch": 1.0, "train_runtime": 95.5, "train_loss": 1.2345})
    return {"global_step": steps, "max_steps": steps, "epoch": 1.0, "train_batch_size": 8, "log_history": history}


def _write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _source_embeddings(model_dir: Path) -> dict[str, torch.Tensor]:
    """Embeddings of the source folder through the project's own code (the reference)."""
    from transformers import AutoTokenizer

    from modeling_llara import LlaraInputBuilder, LlaraModel

    model = LlaraModel.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), config=model.config)
    builder = LlaraInputBuilder(tokenizer, model.config)
    return {"query": encode(model, builder, QUERIES, task="query"), "document": encode(model, builder, DOCUMENTS, task="document")}


@pytest.fixture(scope="module")
def export_inputs(tmp_path_factory, tiny_llara_dir):
    root = tmp_path_factory.mktemp("export-inputs")
    results = json.loads(json.dumps(EVALUATE_RESULTS).replace("MODEL", str(tiny_llara_dir)))
    evaluate_file = _write_json(root / "results" / "debian_test.json", results)
    mteb_file = _write_json(root / "mteb" / "tiny" / "no_revision" / "SciFact.json", MTEB_RESULT)
    _write_json(root / "mteb" / "tiny" / "no_revision" / "model_meta.json", {"name": "tiny"})  # skipped
    run = root / "run"
    _write_json(run / "checkpoint-10" / "trainer_state.json", _trainer_state(10))
    _write_json(run / "checkpoint-30" / "trainer_state.json", _trainer_state(30))  # the newest wins
    _write_json(run / "run_info.json", {"hardware": "2x test CPU", "objective": "contrastive", "world_size": 1})
    return {"evaluate": evaluate_file, "mteb_dir": root / "mteb", "run": run, "results_data": results}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_llara_dir, export_inputs) -> Path:
    from hub_card.export import export_model

    out = tmp_path_factory.mktemp("export") / "llara-tiny"
    return export_model(
        tiny_llara_dir,
        out,
        results=[export_inputs["evaluate"], export_inputs["mteb_dir"]],
        training_dir=export_inputs["run"],
        repo_id="test-org/llara-tiny",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        datasets=["test-org/debian-pairs"],
        lookup_mteb_tasks=False,  # importing mteb costs ~10 s; the lookup only refines names
    )


# Runs with `python -I` (no PYTHONPATH, no script dir, no user site) from an empty folder, then removes
# whatever could still reach the project (an editable install's path or finder) and blocks the project's
# top-level names, so the folder must carry all the code it needs.
FRESH_PROCESS = textwrap.dedent(
    """
    import importlib.abc, importlib.util, json, os, sys
    repo, folder, out = sys.argv[1:4]
    PROJECT = ("modeling_llara", "trainers", "hub_card")

    def reaches_project(entry):
        entry = os.path.realpath(entry or os.getcwd())
        return entry == repo or any(os.path.exists(os.path.join(entry, name, "__init__.py")) for name in PROJECT)

    sys.path[:] = [p for p in sys.path if not (reaches_project(p) and "site-packages" not in p)]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    importlib.invalidate_caches()
    findable = {name: importlib.util.find_spec(name) for name in PROJECT}
    findable = {name: spec.origin for name, spec in findable.items() if spec is not None}
    # Left after the stripping: only a regular (non-editable) install in site-packages; block it too.
    assert all("site-packages" in str(origin) and not origin.startswith(repo) for origin in findable.values()), findable

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in PROJECT:
                raise ModuleNotFoundError(f"blocked: {name}")

    sys.meta_path.insert(0, Block())
    for name in PROJECT:
        try:
            __import__(name)
        except ModuleNotFoundError:
            continue
        raise AssertionError(f"{name} is importable in the fresh process")

    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    queries, documents = json.loads(sys.argv[4]), json.loads(sys.argv[5])
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    Builder = get_class_from_dynamic_module("modeling_llara.LlaraInputBuilder", folder)
    builder = Builder(tokenizer, model.config)
    with torch.inference_mode():
        auto_q = model(**builder(queries, task="query")).pooler_output
        auto_d = model(**builder(documents, task="document", padding_side="left")).pooler_output
    st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    result = {
        "project_findable_after_stripping": findable,
        "model_module": type(model).__module__,
        "st_module": type(st[0]).__module__,
        "padding_side": tokenizer.padding_side,
        "model_max_length": tokenizer.model_max_length,
        "auto": {"query": auto_q.tolist(), "document": auto_d.tolist()},
        "st": {"query": st.encode_query(queries).tolist(), "document": st.encode_document(documents).tolist()},
    }
    with open(out, "w") as handle:
        json.dump(result, handle)
    """
)


def test_export_loads_in_a_fresh_process_without_project_code(tmp_path, tiny_llara_dir, exported):
    # Given: the embeddings of the source folder through the project's code
    expected = _source_embeddings(tiny_llara_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), TOKENIZERS_PARALLELISM="false")
    work = tmp_path / "cwd"
    work.mkdir()
    out = tmp_path / "fresh.json"

    # When: a fresh interpreter with nothing of the project importable loads the exported folder
    proc = subprocess.run(
        [sys.executable, "-I", "-c", FRESH_PROCESS, str(REPO_ROOT.resolve()), str(exported), str(out),
         json.dumps(QUERIES), json.dumps(DOCUMENTS)],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(out.read_text())

    # Then: AutoModel and SentenceTransformer both run the shipped code and give the source's embeddings
    assert got["model_module"].startswith("transformers_modules"), got["model_module"]
    assert got["st_module"].startswith("transformers_modules"), got["st_module"]
    assert got["padding_side"] == "right"
    for task in ("query", "document"):
        for via in ("auto", "st"):
            torch.testing.assert_close(torch.tensor(got[via][task]), expected[task], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(expected["query"][:1], expected["document"][:1])  # the two suffixes differ


def test_export_folder_is_a_complete_repository(exported, tiny_llara_dir):
    from sentence_transformers.util import check_version_requirements

    names = {p.name for p in exported.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json",
            "config_sentence_transformers.json", "sentence_llara_config.json", "configuration_llara.py",
            "modeling_llara.py", "pretraining_llara.py", "sentence_llara.py"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(f".{exported.name}.")]  # no staging left
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "llara" and config["architectures"] == ["LlaraModel"]
    assert config["auto_map"]["AutoModel"] == "modeling_llara.LlaraModel"
    assert config["auto_map"]["AutoConfig"] == "configuration_llara.LlaraConfig"
    # the shipped code is the project's code, byte for byte
    for name in ("configuration_llara.py", "modeling_llara.py", "pretraining_llara.py", "sentence_llara.py"):
        assert (exported / name).read_bytes() == (REPO_ROOT / "modeling_llara" / name).read_bytes()
    st_config = json.loads((exported / "config_sentence_transformers.json").read_text())
    assert set(st_config["prompts"]) == {"query", "document"}
    assert st_config["similarity_fn_name"] == "cosine"
    assert {"transformers", "sentence-transformers"} <= set(st_config["requirements"])
    check_version_requirements(st_config["requirements"], source=str(exported))  # the exporting env satisfies them
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert tokenizer_config["padding_side"] == "right"
    # model_max_length = BOS+'"' prefix + text budget + longest suffix, as the builder tokenizes them
    from transformers import AutoTokenizer

    from modeling_llara import LlaraConfig, LlaraInputBuilder

    llara_config = LlaraConfig.from_pretrained(str(exported))
    builder = LlaraInputBuilder(AutoTokenizer.from_pretrained(str(tiny_llara_dir), config=llara_config), llara_config)
    longest = builder.build_ids(["y" * 5000], task="query") + builder.build_ids(["y" * 5000], task="document")
    assert tokenizer_config["model_max_length"] == max(len(ids) for ids in longest)


def test_export_with_lm_head_loads_with_auto_model_for_pretraining(tmp_path, tiny_llara_dir):
    from transformers import AutoModelForPreTraining

    from hub_card.export import export_model
    from modeling_llara import LlaraForPretraining

    # Given a folder exported with its LM head (to continue stage-1 pretraining)
    out = export_model(tiny_llara_dir, tmp_path / "with-head", repo_id="test-org/llara-tiny", keep_lm_head=True,
                       lookup_mteb_tasks=False)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlaraForPretraining"]
    assert config["auto_map"]["AutoModelForPreTraining"] == "pretraining_llara.LlaraForPretraining"
    assert (out / "pretraining_llara.py").read_bytes() == (REPO_ROOT / "modeling_llara" / "pretraining_llara.py").read_bytes()
    # When AutoModelForPreTraining loads it with the folder's code
    model = AutoModelForPreTraining.from_pretrained(str(out), trust_remote_code=True)
    # Then the folder's pretraining_llara.py builds it, with the source's LM head
    assert type(model).__module__.startswith("transformers_modules.") and type(model).__name__ == "LlaraForPretraining"
    assert type(model).__module__.endswith(".pretraining_llara")
    source = LlaraForPretraining.from_pretrained(str(tiny_llara_dir))
    torch.testing.assert_close(model.lm_head.weight.float(), source.lm_head.weight.float(), atol=0, rtol=0)


def test_card_metadata_parses_and_comes_from_the_inputs(exported, export_inputs):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(str(exported / "README.md"))  # raises on bad YAML or a malformed model-index
    data = card.data.to_dict()
    assert data["library_name"] == "sentence-transformers"
    assert data["pipeline_tag"] == "sentence-similarity"
    assert "mteb" in data["tags"] and "llara" in data["tags"]
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data["datasets"] == ["test-org/debian-pairs"]
    assert data["language"] == ["en"] and data["license"] == "apache-2.0"

    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "llara-tiny"
    got = {(r.dataset_name, r.dataset_split, r.metric_type): r.metric_value for r in results}
    own = next(r for r in export_inputs["results_data"]["results"] if r["model"] != "bm25")
    expected = {("debian", "test", key.replace("@", "_at_")): value for key, value in own["metrics"].items()}
    score = MTEB_RESULT["scores"]["test"][0]
    expected.update({("MTEB SciFact", "test", k): v for k, v in score.items() if k not in ("hf_subset", "languages", "main_score")})
    assert got == expected  # BM25, a comparison row, stays out of the model-index
    scifact = next(r for r in results if r.dataset_name == "MTEB SciFact")
    assert scifact.dataset_revision == MTEB_RESULT["dataset_revision"] and scifact.dataset_config == "default"


def test_card_body_reports_training_logs_results_and_usage(exported, export_inputs):
    from hub_card.training import read_training_summary

    text = (exported / "README.md").read_text()
    body = text.split("\n---\n", 1)[1]
    summary = read_training_summary(export_inputs["run"])
    state = _trainer_state(30)
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert f"| Optimizer steps | {state['global_step']} of {state['max_steps']} |" in body
    assert f"| Batch size | {state['train_batch_size']} per device |" in body
    assert f"{max(e.get('learning_rate', 0) for e in state['log_history']):.3g}" in body
    assert f"{losses[0]:.4f} (first log) → {losses[-1]:.4f} (last log)" in body
    assert "2x test CPU" in body and summary.hardware == "2x test CPU"
    bm25 = export_inputs["results_data"]["results"][0]["metrics"]
    assert f"| bm25 | {bm25['ndcg@10']:.4f} | {bm25['mrr@10']:.4f} |" in body
    for snippet in ('SentenceTransformer("test-org/llara-tiny", trust_remote_code=True)', "encode_query(",
                    "encode_document(", 'AutoModel.from_pretrained("test-org/llara-tiny", trust_remote_code=True)',
                    "mteb.evaluate(", "predict the following passage within eight words: <s9>",
                    "summarize the above passage within eight words: <s1>", "@misc{", "2312.15503", "## Limitations"):
        assert snippet in body, snippet
    assert "None" not in body and "nan" not in body.lower().replace("nanopore", "")


def test_lora_adapter_is_merged_into_full_weights(tmp_path, tiny_llara_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from hub_card.export import export_model
    from modeling_llara import LlaraInputBuilder, LlaraModel

    # Given: a LoRA adapter with non-zero weights over the tiny LLaRA model, saved as peft writes it
    torch.manual_seed(0)
    base = LlaraModel.from_pretrained(str(tiny_llara_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llara_dir), config=base.config)
    builder = LlaraInputBuilder(tokenizer, base.config)
    before = encode(base, builder, DOCUMENTS, task="document")
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(base, lora).eval()
    expected = {"query": encode(peft_model, builder, QUERIES, task="query"),
                "document": encode(peft_model, builder, DOCUMENTS, task="document")}
    assert not torch.allclose(expected["document"], before, atol=1e-4)  # the adapter changes the embeddings
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_llara_dir)

    # When: the adapter folder is exported
    out = export_model(adapter_dir, tmp_path / "merged", repo_id="test-org/merged")

    # Then: the folder holds full weights (no adapter) that reproduce the adapted model, and the card says so
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    merged = LlaraModel.from_pretrained(str(out)).eval()
    assert not any("lora" in name for name in merged.state_dict())
    for task, texts in (("query", QUERIES), ("document", DOCUMENTS)):
        torch.testing.assert_close(encode(merged, builder, texts, task=task), expected[task], atol=1e-5, rtol=1e-4)
    assert "r=4, alpha=8" in (out / "README.md").read_text()


# ---- bad input ---------------------------------------------------------------------------------
def test_not_a_llara_folder_is_refused(tmp_path, tiny_base_dir):
    from hub_card.export import NotLlaraModelError, export_model

    with pytest.raises(NotLlaraModelError, match="model_type 'llama'.*llara init"):
        export_model(tiny_base_dir, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        export_model(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        export_model(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"foo": 1}, r"neither a `llara evaluate` file .* found keys \['foo'\]"),
        ([1, 2], "expected a JSON object at the top level, got list"),
        ({"results": [{"metrics": {"ndcg@10": 0.5}, "split": "test"}]}, r"results\[0\]: 'dataset'"),
        ({"dataset": "d", "split": "s", "results": [{"metrics": {"ndcg@10": 0.5}}, {"metrics": {"ndcg@10": "high"}}]},
         r"results\[1\]\.metrics\.ndcg@10: expected a number"),
        ({"dataset": "d", "split": "s", "metrics": {}}, "'metrics' must be a non-empty object"),
        ({"task_name": "SciFact", "scores": {"test": [{"ndcg_at_10": 0.5}]}}, r"scores\['test'\]\[0\]: expected an object with 'main_score'"),
        ({"task_name": "SciFact", "scores": []}, "'scores' must be an object"),
        ({"task_name": "SciFact", "scores": {"test": [{"main_score": float("nan")}]}}, "not finite"),
    ],
)
def test_results_of_the_wrong_shape_are_refused_before_any_work(tmp_path, tiny_llara_dir, content, message):
    from hub_card.export import export_model
    from hub_card.results import ResultsFormatError

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    with pytest.raises(ResultsFormatError, match=message) as info:
        export_model(tiny_llara_dir, tmp_path / "out", results=[bad])
    assert str(bad) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_invalid_json_result_names_the_line(tmp_path):
    from hub_card.results import ResultsFormatError, read_result_file

    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "dataset": "d",\n  "metrics": {ndcg: 1}\n}')
    with pytest.raises(ResultsFormatError, match=r"bad.json: not valid JSON \(line 3"):
        read_result_file(bad)


def test_tokenizer_without_special_tokens_is_refused(tmp_path, tiny_llara_dir):
    from hub_card.export import export_model

    broken = tmp_path / "broken"
    shutil.copytree(tiny_llara_dir, broken)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (broken / name).unlink(missing_ok=True)
    make_tokenizer(llara_tokens=None).save_pretrained(broken)
    with pytest.raises(ValueError, match=r"tokenizer of .*broken cannot build LLaRA inputs: .*lacks the LLaRA special tokens"):
        export_model(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_export_leaves_no_folder_and_keeps_the_old_one(tmp_path, tiny_llara_dir, monkeypatch):
    import hub_card.export as export

    def fail(card):
        raise RuntimeError("card rendering failed")

    monkeypatch.setattr(export, "render_model_card", fail)
    with pytest.raises(RuntimeError, match="card rendering failed"):
        export.export_model(tiny_llara_dir, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the folder nor a temp folder

    old = tmp_path / "old"
    old.mkdir()
    (old / "marker").write_text("previous export")
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_model(tiny_llara_dir, old)
    with pytest.raises(RuntimeError, match="card rendering failed"):
        export.export_model(tiny_llara_dir, old, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert (old / "marker").read_text() == "previous export"


def test_cli_reports_errors_and_exports(tmp_path, tiny_llara_dir, tiny_base_dir, capsys):
    from llara.scripts.export import main, make_parser

    assert "--results" in make_parser().format_help()
    assert main(["--model", str(tiny_base_dir), "--out", str(tmp_path / "a")]) == 1
    assert "is not a LLaRA model folder" in capsys.readouterr().err
    assert main(["--model", str(tiny_llara_dir), "--out", str(tmp_path / "b"), "--base-model", "not a hub id"]) == 1
    assert "must be a Hub model id" in capsys.readouterr().err
    assert main(["--model", str(tiny_llara_dir), "--out", str(tmp_path / "c"), "--no-verify", "--name", "tiny"]) == 0
    assert "No evaluation result files were given" in (tmp_path / "c" / "README.md").read_text()
    assert "model-index" not in (tmp_path / "c" / "README.md").read_text()


# ---- readers -----------------------------------------------------------------------------------
def test_single_record_evaluate_file_and_metric_names(tmp_path):
    from hub_card.results import normalize_metric_name, read_results

    path = _write_json(tmp_path / "r.json", {"model": "m", "dataset": "scifact", "split": "test",
                                             "metrics": {"NDCG@10": 0.7, "recall_cut_100": 0.9}})
    (record,) = read_results([path])
    assert record.metrics == {"ndcg_at_10": 0.7, "recall_at_100": 0.9} and record.main_metric == "ndcg_at_10"
    assert normalize_metric_name("mrr@10") == "mrr_at_10"


def test_training_summary_reads_the_newest_checkpoint(tmp_path):
    from hub_card.training import read_training_summary

    assert read_training_summary(tmp_path) is None
    _write_json(tmp_path / "checkpoint-9" / "trainer_state.json", _trainer_state(9))
    _write_json(tmp_path / "checkpoint-12" / "trainer_state.json", _trainer_state(12))
    _write_json(tmp_path / "training_args.json", {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4,
                                                  "learning_rate": 3e-4, "warmup_ratio": 0.1, "bf16": True})
    summary = read_training_summary(tmp_path)
    assert summary.global_step == 12 and summary.source.endswith("checkpoint-12/trainer_state.json")
    assert summary.effective_batch_size == 32 and summary.precision == "bf16" and summary.peak_learning_rate == 3e-4
    losses = [e["loss"] for e in _trainer_state(12)["log_history"] if "loss" in e]
    assert (summary.first_loss, summary.last_loss, summary.min_loss) == (losses[0], losses[-1], min(losses))
    assert summary.loss_curve[0] == (1, losses[0]) and summary.loss_curve[-1] == (12, losses[-1])
