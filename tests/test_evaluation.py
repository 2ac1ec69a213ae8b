"""Metrics through pytrec_eval, TREC runs, BM25 and model ranking, and the ``llara evaluate`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainers.retrieval.beir import BeirFormatError, load_beir
from trainers.retrieval.evaluation import (
    compute_metrics,
    evaluate_model,
    format_table,
    format_trec_run,
    rank_bm25,
    read_trec_run,
    write_trec_run,
)

WORDS = (
    "river mountain forest desert ocean island valley glacier canyon meadow "
    "violin guitar piano drum trumpet flute cello harp organ banjo "
    "python java rust kernel compiler network server database cache thread "
    "bread cheese apple coffee tea rice pepper onion garlic lemon "
    "tiger eagle salmon wolf horse rabbit turtle falcon otter bison"
).split()


def make_collection(root: Path, num_docs: int = 120, num_queries: int = 30, seed: int = 0) -> Path:
    """A small BEIR folder where retrieval is possible but not perfect (graded and zero judgements)."""
    rng = np.random.default_rng(seed)
    docs = {f"d{i}": " ".join(rng.choice(WORDS, size=8)) for i in range(num_docs)}
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i, (doc_id, text) in enumerate(docs.items()):
            f.write(json.dumps({"_id": doc_id, "title": text.split()[0] if i % 3 == 0 else "", "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"]
    with open(root / "queries.jsonl", "w") as f:
        for q in range(num_queries):
            target = f"d{rng.integers(num_docs)}"
            words = list(rng.choice(docs[target].split(), size=2, replace=False)) + [str(rng.choice(WORDS))]
            f.write(json.dumps({"_id": f"q{q}", "text": " ".join(words)}) + "\n")
            lines.append(f"q{q}\t{target}\t2")
            lines.append(f"q{q}\td{(int(target[1:]) + 1) % num_docs}\t{int(rng.integers(0, 2))}")
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    return make_collection(tmp_path_factory.mktemp("beir"))


def test_metrics_of_known_runs():
    qrels = {"q1": {"a": 1, "b": 0}, "q2": {"c": 1}, "q3": {"z": 1}}
    run = {
        "q1": {"b": 0.9, "a": 0.5},  # relevant at rank 2
        "q2": {f"x{i}": 1.0 - i / 100 for i in range(10)} | {"c": 0.001},  # relevant at rank 11
    }
    result = compute_metrics(qrels, run)
    assert result.missing_queries == 1  # q3 has no results: it counts as 0
    assert result.per_query["q1"]["mrr@10"] == pytest.approx(0.5)
    assert result.per_query["q2"]["mrr@10"] == 0.0  # MRR@10 stops at rank 10
    assert result.per_query["q2"]["recall@100"] == 1.0
    assert result.per_query["q1"]["ndcg@10"] == pytest.approx(1 / np.log2(3))
    assert result.metrics["mrr@10"] == pytest.approx(0.5 / 3)
    assert result.metrics["map"] == pytest.approx((0.5 + 1 / 11) / 3)


def test_mrr_breaks_ties_like_trec_eval():
    # equal scores: trec_eval orders by document id descending, so "b" is rank 1
    assert compute_metrics({"q": {"b": 1}}, {"q": {"a": 1.0, "b": 1.0}}).metrics["mrr@10"] == 1.0
    assert compute_metrics({"q": {"a": 1}}, {"q": {"a": 1.0, "b": 1.0}}).metrics["mrr@10"] == 0.5


def test_trec_run_roundtrip_gives_identical_metrics(tmp_path):
    rng = np.random.default_rng(0)
    run = {f"q{q}": {f"d{d}": float(np.float32(rng.standard_normal())) for d in range(50)} for q in range(5)}
    qrels = {f"q{q}": {f"d{q}": 1, f"d{q + 7}": 2} for q in range(5)}
    write_trec_run(tmp_path / "run.trec", run, tag="test")
    back = read_trec_run(tmp_path / "run.trec")
    assert back == run
    assert compute_metrics(qrels, back).metrics == compute_metrics(qrels, run).metrics
    first = (tmp_path / "run.trec").read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "test"


def test_bad_run_lines_name_the_line(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 t\n")
    with pytest.raises(BeirFormatError, match=r"run\.trec:2: expected 6 columns"):
        read_trec_run(path)
    path.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n")
    with pytest.raises(BeirFormatError, match=r":2: document 'd1' listed twice"):
        read_trec_run(path)
    with pytest.raises(ValueError, match="whitespace"):
        format_trec_run({"q 1": {"d": 1.0}})


def test_bm25_prefers_matching_terms():
    hits = rank_bm25(["a", "b", "c"], ["red apple pie", "green tea", "apple juice"], ["q"], ["apple pie"], top_k=10)
    assert [doc for doc, _ in hits["q"]] == ["a", "c"]  # "b" shares no term and is left out


def test_bm25_and_minilm_through_the_same_code(collection, minilm):
    data = load_beir(collection)
    bm25 = evaluate_model("bm25", data)
    dense = evaluate_model(minilm, data)
    for evaluation in (bm25, dense):
        assert evaluation.result.num_queries == 30
        assert 0.2 < evaluation.result.metrics["ndcg@10"] < 1.0
    assert dense.result.metrics["recall@1000"] == 1.0  # 120 docs: a dense model ranks them all
    assert bm25.result.metrics["recall@1000"] < 1.0  # BM25 leaves out documents sharing no term


def test_index_search_evaluate_equals_evaluate_model(collection, minilm, tmp_path, capsys):
    """``llara index`` + ``llara search`` + ``llara evaluate --run`` = ``llara evaluate --model`` (flat index)."""
    from llara.scripts import evaluate, index, search

    assert index.main(["--model", minilm, "--corpus", str(collection / "corpus.jsonl"), "--out", str(tmp_path / "idx"), "--no-progress"]) == 0
    assert search.main(["--index", str(tmp_path / "idx"), "--queries", str(collection / "queries.jsonl"), "--out", str(tmp_path / "run.trec")]) == 0
    by_run = tmp_path / "by_run.json"
    by_model = tmp_path / "by_model.json"
    assert evaluate.main(["--run", str(tmp_path / "run.trec"), "--qrels", str(collection / "qrels/test.tsv"), "--output", str(by_run)]) == 0
    assert evaluate.main(["--model", minilm, "--model", "bm25", "--beir", str(collection), "--output", str(by_model), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "ndcg@10" in table and "bm25" in table
    run_metrics = json.loads(by_run.read_text())["results"][0]["metrics"]
    model_results = json.loads(by_model.read_text())["results"]
    assert [r["model"] for r in model_results] == [minilm, "bm25"]
    for name, value in model_results[0]["metrics"].items():
        assert run_metrics[name] == pytest.approx(value, abs=1e-9), name


def test_evaluate_cli_reports_bad_input(collection, tmp_path, capsys):
    from llara.cli import main as cli_main
    from llara.scripts import evaluate

    (tmp_path / "run.trec").write_text("x1 Q0 d1 1 0.5 t\n")
    assert cli_main(["evaluate", "--run", str(tmp_path / "run.trec"), "--beir", str(collection), "--output", str(tmp_path / "o.json")]) == 1
    assert "none of the 30 judged queries appears in the run" in capsys.readouterr().err
    assert cli_main(["evaluate", "--model", "bm25", "--beir", str(tmp_path / "nowhere")]) == 1
    assert "BEIR folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--model", "bm25"])  # no --beir


def test_tiny_llara_model_is_evaluated_through_the_same_code(collection, tiny_llara_dir):
    result = evaluate_model(str(tiny_llara_dir), load_beir(collection), batch_size=16)
    assert result.result.num_queries == 30
    assert all(0.0 <= v <= 1.0 for v in result.result.metrics.values())


def test_recall_deeper_than_the_run_is_left_out():
    # Given a run cut to its top 100 documents, the relevant one at rank 150 of the full ranking is missing
    qrels = {"q": {"d150": 1, "d5": 1}}
    run = {"q": {f"d{i}": 1000.0 - i for i in range(100)}}
    full = compute_metrics(qrels, run)
    cut = compute_metrics(qrels, run, depth=100)
    # Then without a depth Recall@1000 reads like Recall@100 (0.5); with it, it is not reported at all
    assert full.metrics["recall@1000"] == full.metrics["recall@100"] == 0.5
    assert "recall@1000" not in cut.metrics and "recall@1000" not in cut.per_query["q"]
    assert cut.metrics["recall@100"] == 0.5 and cut.metrics["ndcg@10"] == full.metrics["ndcg@10"]
    # And a table of such results has no Recall@1000 column
    assert "recall@1000" not in format_table([("m", cut.metrics)]) and "recall@100" in format_table([("m", cut.metrics)])
