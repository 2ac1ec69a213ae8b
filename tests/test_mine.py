"""Hard-negative mining: rank window without positives, dense ranking equals brute force, BM25, CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from trainers.finetuning.data import ContrastiveExample, load_examples
from trainers.finetuning.mining import MiningConfig, mine_hard_negatives, select_negatives

TOPICS = ["kernel", "font", "audio", "python", "server", "shell", "video", "printer"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _corpus(n=40, seed=0):
    rng = random.Random(seed)
    return [f"{rng.choice(TOPICS)} {rng.choice(TOPICS)} package number {i}" for i in range(n)]


def test_select_negatives_samples_the_window_in_rank_order():
    config = MiningConfig(range_start=2, range_end=7, num_negatives=3)
    ranked = [9, 8, 7, 6, 4, 3, 2, 1, 0]  # rank order, positives already removed
    for seed in range(30):
        rows = select_negatives(ranked, config, random.Random(seed))
        assert len(rows) == 3 and set(rows) <= {7, 6, 4, 3, 2}  # ranks 2..6
        assert rows == sorted(rows, key=ranked.index)  # rank order kept
    rows = select_negatives(ranked, MiningConfig(range_start=7, range_end=20, num_negatives=5), random.Random(0))
    assert rows == [1, 0]  # short window: everything it has


@pytest.mark.parametrize("kwargs", [dict(range_start=5, range_end=5), dict(method="colbert"), dict(num_negatives=0),
                                    dict(range_start=0, range_end=3, num_negatives=4)])
def test_bad_mining_config(kwargs):
    with pytest.raises(ValueError):
        MiningConfig(**kwargs)


def test_dense_mining_samples_the_window_of_a_brute_force_ranking(tiny_llara_dir):
    from sentence_transformers import SentenceTransformer

    # Given a tiny LLaRA model loaded as a SentenceTransformer, a corpus and queries whose positive is in it
    model = SentenceTransformer(str(tiny_llara_dir), trust_remote_code=True, device="cpu")
    corpus = _corpus()
    examples = [ContrastiveExample(f"{TOPICS[i]} tools", [corpus[i * 3]]) for i in range(5)]
    config = MiningConfig(range_start=3, range_end=15, num_negatives=4)
    # When negatives are mined through sentence-transformers' miner (FAISS)
    mined, report = mine_hard_negatives(examples, corpus, config, model=model, show_progress=False)
    # Then each negative sits in ranks 3..14 of a brute-force ranking without the positive, and no positive is a negative
    docs = model.encode_document(corpus)
    queries = model.encode_query([e.query for e in examples])
    order = np.argsort(-(queries @ docs.T), axis=1, kind="stable")
    for example, ranking, got in zip(examples, order, mined):
        ranked = [corpus[r] for r in ranking if corpus[r] not in example.pos]
        assert len(got.neg) == 4 and set(got.neg) <= set(ranked[3:15])
        assert got.pos == example.pos and not set(got.neg) & set(example.pos)
    assert report.queries == 5 and report.negatives_written == 20 and report.queries_short_of_negatives == 0


def test_bm25_mining_picks_lexically_close_passages_and_counts_short_windows():
    corpus = ["linux kernel image", "kernel headers for linux", "kernel modules", "font for console",
              "audio mixer", "video player", "python library", "printer driver"]
    examples = [ContrastiveExample("linux kernel", ["linux kernel image"]),
                ContrastiveExample("zebra", ["audio mixer"])]  # no BM25 match at all: no negatives
    config = MiningConfig(method="bm25", range_start=0, range_end=2, num_negatives=2)  # the positive is not counted
    mined, report = mine_hard_negatives(examples, corpus, config, show_progress=False)
    assert set(mined[0].neg) == {"kernel headers for linux", "kernel modules"}
    assert mined[1].neg == [] and report.queries_without_negatives == 1 and report.queries_short_of_negatives == 1


def test_cli_writes_training_jsonl(tmp_path):
    from llara.scripts.mine import main

    corpus = _corpus(30)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"query": f"{t} help", "pos": [corpus[i]]}) for i, t in enumerate(TOPICS)) + "\n")
    (tmp_path / "corpus.txt").write_text("\n".join(corpus) + "\n")
    out = tmp_path / "mined.jsonl"
    assert main(["--data", str(data), "--corpus", str(tmp_path / "corpus.txt"), "--model", "bm25", "--out", str(out),
                 "--range-start", "0", "--range-end", "10", "--num-negatives", "3", "--quiet"]) == 0
    examples, _, report = load_examples(out)
    assert report.kept == len(TOPICS) and report.dropped_negatives_also_positive == 0
    assert all(1 <= len(e.neg) <= 3 and e.pos[0] not in e.neg for e in examples)
    with pytest.raises(SystemExit):
        main(["--data", str(data), "--model", "bm25", "--out", str(out)])  # exists, no --overwrite


@pytest.mark.parametrize("rank", ["0", "1"])
def test_bm25_under_a_launcher_mines_on_rank_zero_only(tmp_path, monkeypatch, rank):
    from llara.scripts.mine import main

    corpus = _corpus(30)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"query": f"{t} help", "pos": [corpus[i]]}) for i, t in enumerate(TOPICS)) + "\n")
    out = tmp_path / "mined.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    assert main(["--data", str(data), "--model", "bm25", "--out", str(out), "--range-start", "0", "--range-end", "10",
                 "--num-negatives", "3", "--quiet"]) == 0
    assert out.is_file() == (rank == "0")  # rank 1 leaves the output to rank 0 (no race on the same file)
