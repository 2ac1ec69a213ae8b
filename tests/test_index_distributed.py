"""Data-parallel corpus encoding: ``llara index`` under ``torchrun --nproc_per_node 2`` (CPU, gloo) builds the index
one process builds, byte for byte; a run that lost a rank resumes from its shards to the same index; the Python API
spreads encoding over devices with sentence-transformers' own multi-process pool.

Every process runs torch on one thread, so a shard's vectors do not depend on how the cores were shared.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainers.retrieval.corpus_index import work_dir_for

REPO = Path(__file__).resolve().parent.parent
WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone field".split()
DOCS, SHARD_SIZE = 40, 5  # 8 shards: rank 0 encodes 0, 2, 4, 6 and rank 1 encodes 1, 3, 5, 7

# Rank 1 of this launcher dies (as if killed) right after writing its first shard.
KILL_RANK_1 = """
import os

import trainers.retrieval.encoding as encoding

if os.environ["RANK"] == "1":
    save = encoding.atomic_save_npy

    def save_then_die(path, array):
        save(path, array)
        os._exit(17)

    encoding.atomic_save_npy = save_then_die

from llara.cli_boundary import script_entry
from llara.scripts.index import main

script_entry("index", main)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", LLARA_DTYPE="float32")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _index(model: Path, corpus: Path, out: Path, *, processes: int, script: Path | None = None,
           extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = ["--model", str(model), "--corpus", str(corpus), "--out", str(out), "--shard-size", str(SHARD_SIZE),
            "--batch-size", "4", "--no-progress", *extra]
    if processes == 1:
        cmd = [sys.executable, "-m", "llara.scripts.index", *args]
    else:
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                  "--master_port", str(_free_port())]
        cmd = [*launch, str(script), *args] if script else [*launch, "-m", "llara.scripts.index", *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Documents of varied lengths, so length-sorted batches differ from file order."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    rows = [{"_id": f"d{i}", "title": WORDS[i % len(WORDS)],
             "text": " ".join(WORDS[(i * j + 3) % len(WORDS)] for j in range(2 + (i * 7) % 11))} for i in range(DOCS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def one_process_index(tiny_llara_dir, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "index"
    _ok(_index(tiny_llara_dir, corpus, out, processes=1))
    return out


def _same_index(got: Path, want: Path) -> None:
    assert (got / "index.faiss").read_bytes() == (want / "index.faiss").read_bytes()
    assert (got / "ids.json").read_bytes() == (want / "ids.json").read_bytes()
    assert json.loads((got / "ids.json").read_text()) == [f"d{i}" for i in range(DOCS)]


def test_two_processes_build_the_one_process_index(tiny_llara_dir, corpus, one_process_index, tmp_path):
    # When two gloo processes encode the corpus together
    result = _index(tiny_llara_dir, corpus, tmp_path / "two", processes=2)
    # Then rank 0 alone reports, and the index and ids are byte-identical to one process's
    _ok(result)
    assert result.stdout.count("wrote 40 vectors") == 1
    _same_index(tmp_path / "two", one_process_index)
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["encode_processes"] == 2
    assert not work_dir_for(tmp_path / "two").exists()


def test_run_with_a_killed_rank_resumes_to_the_same_index(tiny_llara_dir, corpus, one_process_index, tmp_path):
    script = tmp_path / "kill_rank_1.py"
    script.write_text(KILL_RANK_1)
    out = tmp_path / "index"
    shards = work_dir_for(out) / "shards"
    # Given a two-process run whose rank 1 died after its first shard
    killed = _index(tiny_llara_dir, corpus, out, processes=2, script=script, extra=("--keep-embeddings",))
    assert killed.returncode != 0
    assert not out.exists()
    assert (shards / "shard_000001.npy").is_file() and not (shards / "shard_000003.npy").exists()
    survivors = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard_*.npy")}
    # When the same command runs again
    _ok(_index(tiny_llara_dir, corpus, out, processes=2, extra=("--keep-embeddings",)))
    # Then the finished shards were kept as they were, the missing ones encoded, and the index is one process's
    kept = out / "embeddings"
    assert sorted(p.name for p in kept.glob("shard_*.npy")) == [f"shard_{i:06d}.npy" for i in range(DOCS // SHARD_SIZE)]
    assert {name: (kept / name).stat().st_mtime_ns for name in survivors} == survivors
    assert not list(kept.glob(".*.tmp"))  # no half-written shard of the killed run is kept
    _same_index(out, one_process_index)


def _evaluate(model: Path, beir: Path, out: Path, *, processes: int) -> subprocess.CompletedProcess:
    args = ["--model", str(model), "--beir", str(beir), "--output", str(out / "results.json"), "--save-runs",
            str(out / "runs"), "--top-k", "10", "--batch-size", "4", "--shard-size", str(SHARD_SIZE), "--no-progress"]
    launch = [sys.executable, "-m", "llara.scripts.evaluate"]
    if processes > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                  str(_free_port()), "-m", "llara.scripts.evaluate"]
    return subprocess.run([*launch, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def test_evaluate_under_two_processes_scores_like_one(tiny_llara_dir, corpus, tmp_path):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(corpus.read_text())
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": WORDS[i]}) + "\n" for i in range(6)))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{3 * i}\t1\n" for i in range(6)))
    # When the same evaluation runs in one process and in two
    _ok(_evaluate(tiny_llara_dir, beir, tmp_path / "one", processes=1))
    two = _evaluate(tiny_llara_dir, beir, tmp_path / "two", processes=2)
    # Then rank 0 alone writes, with the same run and metrics, and no shard folder is left behind
    _ok(two)
    assert two.stdout.count("wrote ") == 1
    run = f"{tiny_llara_dir.name}.trec"
    assert (tmp_path / "two" / "runs" / run).read_bytes() == (tmp_path / "one" / "runs" / run).read_bytes()
    one_results = json.loads((tmp_path / "one" / "results.json").read_text())["results"]
    two_results = json.loads((tmp_path / "two" / "results.json").read_text())["results"]
    assert [r["metrics"] for r in two_results] == [r["metrics"] for r in one_results]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["results.json", "runs"]


def test_mine_under_two_processes_mines_like_the_sharded_one_process_miner(tiny_llara_dir, tmp_path, one_torch_thread):
    from trainers.finetuning.data import load_examples
    from trainers.finetuning.mining import MiningConfig, mine_hard_negatives
    from trainers.retrieval.encoding import load_encoder

    passages = [f"{WORDS[i % 14]} {WORDS[(3 * i) % 14]} package number {i}" for i in range(36)]
    (tmp_path / "corpus.txt").write_text("\n".join(passages) + "\n")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"query": f"{WORDS[i]} tools", "pos": [passages[2 * i]]}) + "\n" for i in range(8)))
    # When two gloo processes mine hard negatives
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "llara.scripts.mine", "--data", str(data), "--corpus", str(tmp_path / "corpus.txt"), "--model",
           str(tiny_llara_dir), "--out", str(tmp_path / "mined.jsonl"), "--shard-size", str(SHARD_SIZE),
           "--range-start", "2", "--range-end", "12", "--num-negatives", "3", "--batch-size", "4"]
    result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    _ok(result)
    # Then sentence-transformers' miner took the passages' embeddings from the ranks' shards instead of encoding them
    assert "Loaded corpus embeddings" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "mined.jsonl", "train.jsonl"]
    # And the negatives are those of the same sharded encoding in one process
    examples, _, _ = load_examples(str(data))
    config = MiningConfig(range_start=2, range_end=12, num_negatives=3, batch_size=4)
    model = load_encoder(str(tiny_llara_dir), device="cpu", dtype="float32")
    mined, _ = mine_hard_negatives(examples, passages, config, model=model, show_progress=False,
                                   work_dir=tmp_path / "one.partial", shard_size=SHARD_SIZE)
    written = [json.loads(line) for line in (tmp_path / "mined.jsonl").read_text().splitlines()]
    assert [row["neg"] for row in written] == [example.neg for example in mined]
    assert all(len(row["neg"]) == 3 for row in written)


def test_multi_process_encoding_equals_one_process(tiny_llara_dir):
    from trainers.retrieval.encoding import document_encoder, encode_corpus_multi_process, load_encoder

    model = load_encoder(str(tiny_llara_dir), device="cpu", dtype="float32")
    texts = [f"passage {i}: " + " ".join(WORDS[: 1 + i % len(WORDS)]) for i in range(24)]
    # When sentence-transformers' pool encodes the passages on two CPU worker processes
    multi = encode_corpus_multi_process(model, texts, devices=["cpu", "cpu"], batch_size=4)
    # Then the rows are the one-process passage embeddings, in order, unit length
    single = document_encoder(model, batch_size=4)(texts)
    assert multi.dtype == np.float32 and multi.shape == single.shape
    np.testing.assert_allclose(multi, single, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(multi, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="either devices"):
        encode_corpus_multi_process(model, texts)
