"""Hard-negative mining: rank window without positives, dense ranking equals brute force, BM25, CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from trainers.finetuning.data import ContrastiveExample, load_examples
from trainers.finetuning.mining import MiningConfig, mine_hard_negatives, select_negatives

TOPICS = ["kernel", "font", "audio", "python", "server", "shell", "video", "printer"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _corpus(n=40, seed=0):
    rng = random.Random(seed)
    return [f"{rng.choice(TOPICS)} {rng.choice(TOPICS)} package number {i}" for i in range(n)]


def test_select_negatives_uses_the_window_and_skips_positives():
    config = MiningConfig(range_start=2, range_end=8, num_negatives=3)
    ranked = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]  # rank order
    for seed in range(30):
        rows, dropped = select_negatives(ranked, {5, 9}, config, random.Random(seed))
        assert len(rows) == 3 and set(rows) <= {7, 6, 4, 3, 2}  # ranks 2..7 minus positive 5
        assert dropped == 1
        assert rows == sorted(rows, key=ranked.index)  # rank order kept
    rows, _ = select_negatives(ranked, set(), MiningConfig(range_start=8, range_end=20, num_negatives=5), random.Random(0))
    assert rows == [1, 0]  # short window: everything it has


@pytest.mark.parametrize("kwargs", [dict(range_start=5, range_end=5), dict(method="colbert"), dict(num_negatives=0)])
def test_bad_mining_config(kwargs):
    with pytest.raises(ValueError):
        MiningConfig(**kwargs)


def test_dense_mining_matches_brute_force_ranks(tiny_llara_dir):
    from transformers import AutoTokenizer

    from modeling_llara import LlaraInputBuilder, LlaraModel, encode

    # Given a tiny LLaRA model, a corpus and queries whose positive is in the corpus
    model = LlaraModel.from_pretrained(tiny_llara_dir).eval()
    builder = LlaraInputBuilder(AutoTokenizer.from_pretrained(tiny_llara_dir, trust_remote_code=True), model.config)
    corpus = _corpus()
    examples = [ContrastiveExample(f"{TOPICS[i]} tools", [corpus[i * 3]]) for i in range(5)]
    config = MiningConfig(range_start=3, range_end=15, num_negatives=4, query_max_length=80, passage_max_length=100)
    # When negatives are mined with FAISS
    mined, report = mine_hard_negatives(examples, corpus, config, model=model, builder=builder, show_progress=False)
    # Then each negative sits in ranks 3..14 of a brute-force ranking, and no positive is a negative
    docs = encode(model, builder, corpus, task="document", max_length=100).numpy()
    queries = encode(model, builder, [e.query for e in examples], task="query", max_length=80).numpy()
    order = np.argsort(-(queries @ docs.T), axis=1, kind="stable")
    for example, ranking, got in zip(examples, order, mined):
        window = {corpus[r] for r in ranking[3:15]} - set(example.pos)
        assert len(got.neg) == 4 and set(got.neg) <= window
        assert got.pos == example.pos and not set(got.neg) & set(example.pos)
    assert report.queries == 5 and report.negatives_written == 20


def test_bm25_mining_picks_lexically_close_passages():
    corpus = ["linux kernel image", "kernel headers for linux", "kernel modules", "font for console",
              "audio mixer", "video player", "python library", "printer driver"]
    examples = [ContrastiveExample("linux kernel", ["linux kernel image"])]
    config = MiningConfig(method="bm25", range_start=0, range_end=3, num_negatives=2)  # rank 0 is the positive
    mined, _ = mine_hard_negatives(examples, corpus, config, show_progress=False)
    assert set(mined[0].neg) == {"kernel headers for linux", "kernel modules"}


def test_cli_writes_training_jsonl(tmp_path):
    from trainers.scripts.mine import main

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
