"""mteb 2: the LLaRA ModelMeta, prompt-type mapping, BEIR folders as mteb tasks, and ``llara mteb``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

mteb = pytest.importorskip("mteb")

from mteb.models.model_meta import ScoringFunction  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from trainers.retrieval.beir import load_beir  # noqa: E402
from trainers.retrieval.evaluation import evaluate_model  # noqa: E402
from trainers.retrieval.mteb import (  # noqa: E402
    LlaraEncoderWrapper,
    beir_retrieval_task,
    evaluate_beir_with_mteb,
    llara_model_meta,
    load_llara_for_mteb,
)

MTEB_ROUNDING = 5e-6  # mteb stores scores rounded to 5 decimals
WORDS = "river mountain violin guitar python kernel bread coffee tiger eagle salmon piano desert ocean".split()


def make_collection(root: Path, num_docs: int = 60, num_queries: int = 15, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    docs = {f"d{i}": " ".join(rng.choice(WORDS, size=6)) for i in range(num_docs)}
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": v.split()[0] if i % 2 else "", "text": v}) + "\n" for i, (k, v) in enumerate(docs.items()))
    )
    queries, lines = [], ["query-id\tcorpus-id\tscore"]
    for q in range(num_queries):
        target = f"d{rng.integers(num_docs)}"
        queries.append(json.dumps({"_id": f"q{q}", "text": " ".join(rng.choice(docs[target].split(), 2, replace=False))}))
        lines += [f"q{q}\t{target}\t1", f"q{q}\td{(int(target[1:]) + 3) % num_docs}\t{q % 2}"]
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    return make_collection(tmp_path_factory.mktemp("beir"))


def test_model_meta_of_a_llara_folder(tiny_llara_dir):
    meta = llara_model_meta(str(tiny_llara_dir))
    config = json.loads((tiny_llara_dir / "config.json").read_text())
    assert meta.loader is LlaraEncoderWrapper
    assert meta.loader_kwargs["trust_remote_code"] is True
    assert meta.similarity_fn_name is ScoringFunction.COSINE
    assert meta.name == str(tiny_llara_dir.resolve())
    assert meta.n_parameters and meta.n_parameters > 0
    assert meta.embed_dim in {config.get("hidden_size"), *(v.get("hidden_size") for v in config.values() if isinstance(v, dict))}
    assert "2312.15503" in meta.citation
    # registry-style entry for a Hub model: name and revision are all it needs
    hub = llara_model_meta("some-org/llara-passage", revision="abc", n_parameters=7_000_000_000, embed_dim=4096)
    assert hub.name == "some-org/llara-passage" and hub.embed_dim == 4096


def test_prompt_types_map_to_llara_suffixes(tiny_llara_dir):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from torch.utils.data import DataLoader

    model = load_llara_for_mteb(str(tiny_llara_dir))
    assert isinstance(model, LlaraEncoderWrapper)
    reference = SentenceTransformer(str(tiny_llara_dir), trust_remote_code=True)
    texts = ["a short text", "another, somewhat longer text about rivers"]
    loader = DataLoader(Dataset.from_dict({"text": texts}), batch_size=2)
    metadata = _mock_metadata()
    encode = lambda prompt_type: np.asarray(  # noqa: E731
        model.encode(loader, task_metadata=metadata, hf_split="test", hf_subset="default", prompt_type=prompt_type)
    )
    queries, documents, symmetric = encode(PromptType.query), encode(PromptType.document), encode(None)
    np.testing.assert_allclose(queries, reference.encode_query(texts), atol=1e-5)
    np.testing.assert_allclose(documents, reference.encode_document(texts), atol=1e-5)
    np.testing.assert_allclose(symmetric, documents, atol=1e-6)
    assert not np.allclose(queries, documents, atol=1e-4)  # the two suffixes differ


def _mock_metadata():
    from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask

    return MockRetrievalTask.metadata


def test_beir_task_equals_llara_evaluate_minilm(collection, minilm, tmp_path):
    ours = evaluate_model(minilm, load_beir(collection)).result.metrics
    theirs = evaluate_beir_with_mteb(load_llara_for_mteb(minilm), collection, cache_dir=tmp_path / "cache")
    assert 0.0 < ours["ndcg@10"] < 1.0
    for name, value in ours.items():
        assert theirs[name] == pytest.approx(value, abs=MTEB_ROUNDING), name
    assert list((tmp_path / "cache").rglob(f"{beir_retrieval_task(collection).metadata.name}.json"))


def test_beir_task_equals_llara_evaluate_llara(collection, tiny_llara_dir):
    ours = evaluate_model(str(tiny_llara_dir), load_beir(collection)).result.metrics
    theirs = evaluate_beir_with_mteb(load_llara_for_mteb(str(tiny_llara_dir)), collection)
    for name, value in ours.items():
        assert theirs[name] == pytest.approx(value, abs=MTEB_ROUNDING), name


def test_llara_passes_mock_retrieval_and_sts(tiny_llara_dir):
    from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask
    from mteb.mocks.mock_tasks.sts import MockSTSTask

    results = mteb.evaluate(
        load_llara_for_mteb(str(tiny_llara_dir)), [MockRetrievalTask(), MockSTSTask()], cache=None, show_progress_bar=False
    )
    assert not results.exceptions
    assert {r.task_name for r in results.task_results} == {"MockRetrievalTask", "MockSTSTask"}


def test_mteb_run_cli_with_local_llara_and_beir(collection, tiny_llara_dir, tmp_path, capsys):
    from llara.scripts import mteb as mteb_script

    out = tmp_path / "results"
    assert mteb_script.main(["run", "-m", str(tiny_llara_dir), "--beir", str(collection), "--output-folder", str(out)]) == 0
    assert "ndcg_at_10=" in capsys.readouterr().out
    files = list(out.rglob("*.json"))
    assert any(f.name.startswith("Beir") for f in files)


def test_mock_run_cli_passes_for_llara(tiny_llara_dir, tmp_path, monkeypatch):
    from llara.scripts import mteb as mteb_script

    monkeypatch.chdir(tmp_path)
    assert mteb_script.main(["mock-run", "-m", str(tiny_llara_dir)]) == 0
    assert "| ✓" in (tmp_path / "mteb_mock_run_results.md").read_text()
