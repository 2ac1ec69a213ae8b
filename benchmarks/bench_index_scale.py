"""How ``llara index`` grows with the corpus: wall time, documents/s, peak memory and index bytes at 10^4, 10^5
and 10^6 documents, in one process and in two (``torchrun --nproc_per_node 2``).

The model is a tiny random LLaRA folder (hidden 32, 2 layers, a byte-level tokenizer built here), so the cost
measured is LLaRA's indexing machinery (reading the corpus, batching, shards, FAISS), not the network. Corpora are
synthetic, deterministic and streamed to disk (``--workdir``, reused between runs). Each run is a fresh
subprocess started by a fresh runner process, so that its peak memory is its own:

* ``peak_rss_bytes``: the largest peak resident set of one process of the run (``getrusage(RUSAGE_CHILDREN)``
  in the runner; with two processes, the larger rank);
* ``peak_tree_rss_bytes``: the whole process tree's resident memory summed, sampled every 0.1 s (launcher and
  ranks together; a sample can miss a short peak);
* ``index_bytes``: index.faiss + ids.json; ``docs_per_second``: documents over the wall time of the command
  (start-up and model loading included, as a user waits for them).

Targets: documents/s at 10^6 within 20% of 10^5 (the cost is linear in the corpus), and peak RSS at 10^6 minus the
index's own bytes under 1 GiB (memory does not grow with the corpus text). The two-process speedup is reported per
size. Results go to ``benchmarks/results/index_scale.json`` (written after every run; sizes already measured with
the same settings are skipped, so an interrupted benchmark resumes) and a plot next to it.

    python benchmarks/bench_index_scale.py                       # 10^4, 10^5, 10^6; 1 and 2 processes
    python benchmarks/bench_index_scale.py --sizes 2000 --out /tmp/index_scale.json   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "index_scale.json"
WORDS = (
    "river stone field light water green house music table garden winter summer library engine signal paper "
    "market window forest bridge letter number system network process memory corpus vector passage search"
).split()
# Targets of the issue this benchmark answers.
LINEAR_TOLERANCE = 0.20
MEMORY_BUDGET_BYTES = 2**30

# Runs the command given on its command line, samples the tree's memory, reports the peak of its children.
RUNNER = r"""
import json, resource, subprocess, sys, threading, time
import psutil

process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
root = psutil.Process(process.pid)
peak_tree = 0
done = threading.Event()

def sample():
    global peak_tree
    while not done.is_set():
        try:
            tree = [root, *root.children(recursive=True)]
            total = 0
            for member in tree:
                try:
                    total += member.memory_info().rss
                except psutil.Error:
                    pass
            peak_tree = max(peak_tree, total)
        except psutil.Error:
            pass
        time.sleep(0.1)

sampler = threading.Thread(target=sample, daemon=True)
started = time.perf_counter()
sampler.start()
_, stderr = process.communicate()
wall = time.perf_counter() - started
done.set()
sampler.join()
print(json.dumps({
    "returncode": process.returncode,
    "wall_seconds": wall,
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    "peak_tree_rss_bytes": peak_tree,
    "stderr_tail": stderr[-3000:],
}))
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="corpus sizes in documents (default 10000 100000 1000000)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    parser.add_argument("--words", type=int, default=12,
                        help="mean words per document (default 12: with the byte-level tokenizer ~140 tokens, prompt included)")
    parser.add_argument("--batch-size", type=int, default=128, help="texts per encoder batch (default 128)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="documents per shard (default 10000, as llara index)")
    parser.add_argument("--dtype", default="float32", help="encoder compute dtype passed to llara index (default float32)")
    parser.add_argument("--workdir", type=Path, default=REPO / "outputs" / "bench_index_scale",
                        help="model, corpora and indexes (default outputs/bench_index_scale)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (the plot goes next to it as .png)")
    parser.add_argument("--timeout", type=int, default=6 * 3600, help="seconds allowed per run (default 6 h)")
    return parser


# ---------------------------------------------------------------------------------------------------- inputs
def byte_level_tokenizer():
    """A byte-level BPE tokenizer without merges (one token per byte), built in memory: any text tokenizes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def tiny_llara(workdir: Path) -> Path:
    """A random LLaMA of hidden 32 and 2 layers, converted to a LLaRA folder once (``llara init``'s code)."""
    model_dir = workdir / "tiny-llara"
    if (model_dir / "config.json").is_file():
        return model_dir
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from trainers.convert import convert

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=3,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    base = workdir / "tiny-base"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    return convert(str(base), model_dir, overwrite=True)


def synthetic_corpus(workdir: Path, size: int, words: int) -> Path:
    """``size`` BEIR documents of ~``words`` words each (seeded), streamed to ``corpus-<size>.jsonl``."""
    from trainers.io import atomic_open

    path = workdir / f"corpus-{size}-w{words}.jsonl"
    if path.is_file():
        return path
    rng = random.Random(size)
    with atomic_open(path, "w") as handle:
        for doc in range(size):
            length = rng.randint(words // 2, words * 3 // 2)
            text = " ".join(rng.choices(WORDS, k=length))
            handle.write(json.dumps({"_id": f"doc{doc}", "title": f"title {doc}", "text": text}) + "\n")
    return path


# ------------------------------------------------------------------------------------------------------ runs
def index_command(processes: int, model: Path, corpus: Path, out: Path, args: argparse.Namespace) -> list[str]:
    flags = ["--model", str(model), "--corpus", str(corpus), "--out", str(out), "--batch-size", str(args.batch_size),
             "--shard-size", str(args.shard_size), "--dtype", args.dtype, "--no-progress", "--overwrite"]
    if processes == 1:
        return [sys.executable, "-m", "llara.scripts.index", *flags]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
            str(free_port()), "-m", "llara.scripts.index", *flags]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(processes: int, model: Path, corpus: Path, size: int, args: argparse.Namespace) -> dict:
    import shutil

    from trainers.retrieval.corpus_index import work_dir_for

    out = args.workdir / f"index-{size}-p{processes}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work_dir_for(out), ignore_errors=True)
    threads = max(1, (os.cpu_count() or 1) // processes)  # the machine's cores shared evenly by the ranks
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, "-c", RUNNER, *index_command(processes, model, corpus, out, args)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    if result.returncode != 0:
        raise RuntimeError(f"the runner failed ({result.returncode}): {result.stderr[-3000:]}")
    run = json.loads(result.stdout.strip().splitlines()[-1])
    if run["returncode"] != 0:
        raise RuntimeError(f"llara index with {processes} process(es) on {size} documents failed: {run['stderr_tail']}")
    meta = json.loads((out / "meta.json").read_text())
    index_bytes = sum(meta["files"].values())
    record = {
        "processes": processes,
        "threads_per_process": threads,
        "wall_seconds": round(run["wall_seconds"], 3),
        "docs_per_second": round(size / run["wall_seconds"], 1),
        "encode_seconds": meta["encode_seconds"],
        "build_seconds": meta["build_seconds"],
        "peak_rss_bytes": run["peak_rss_bytes"],
        "peak_tree_rss_bytes": run["peak_tree_rss_bytes"],
        "index_bytes": index_bytes,
        "peak_rss_minus_index_bytes": run["peak_rss_bytes"] - index_bytes,
        "corpus_bytes": corpus.stat().st_size,
    }
    shutil.rmtree(out, ignore_errors=True)
    return record


# --------------------------------------------------------------------------------------------------- summary
def summarize(results: dict) -> dict:
    """Targets and speedups from whatever sizes have been measured."""
    runs = results["runs"]
    summary: dict = {"speedup_2_processes": {}}
    for size, by_processes in runs.items():
        if "1" in by_processes and "2" in by_processes:
            summary["speedup_2_processes"][size] = round(
                by_processes["1"]["wall_seconds"] / by_processes["2"]["wall_seconds"], 3
            )
    for processes in ("1", "2"):
        big, mid = runs.get("1000000", {}).get(processes), runs.get("100000", {}).get(processes)
        if big and mid:
            ratio = big["docs_per_second"] / mid["docs_per_second"]
            summary[f"linear_cost_{processes}p"] = {
                "docs_per_second_ratio_1e6_over_1e5": round(ratio, 3),
                "met": ratio >= 1 - LINEAR_TOLERANCE,
            }
        if big:
            summary[f"memory_{processes}p"] = {
                "peak_rss_minus_index_bytes_1e6": big["peak_rss_minus_index_bytes"],
                "met": big["peak_rss_minus_index_bytes"] < MEMORY_BUDGET_BYTES,
            }
    return summary


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainers.io import atomic_open

    figure, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    for processes in ("1", "2"):
        sizes = sorted(int(size) for size, runs in results["runs"].items() if processes in runs)
        if not sizes:
            continue
        rows = [results["runs"][str(size)][processes] for size in sizes]
        label = f"{processes} process" + ("es" if processes != "1" else "")
        speed.plot(sizes, [row["docs_per_second"] for row in rows], marker="o", label=label)
        memory.plot(sizes, [row["peak_rss_bytes"] / 2**20 for row in rows], marker="o", label=f"{label}: peak RSS")
        memory.plot(sizes, [row["peak_rss_minus_index_bytes"] / 2**20 for row in rows], marker="x", linestyle="--",
                    label=f"{label}: peak RSS - index")
    speed.set(xscale="log", xlabel="documents", ylabel="documents / s (wall)", title="llara index throughput")
    memory.axhline(MEMORY_BUDGET_BYTES / 2**20, color="grey", linestyle=":", label="1 GiB target")
    memory.set(xscale="log", xlabel="documents", ylabel="MiB", title="peak memory (largest process)")
    memory.set_ylim(bottom=0)
    for axes in (speed, memory):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(f"tiny random LLaRA, {results['config']['words']} words/doc, {results['environment']['cpu']}",
                    fontsize=9)
    figure.tight_layout()
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from trainers.io import atomic_write_json
    from trainers.run_records import environment

    config = {"words": args.words, "batch_size": args.batch_size, "shard_size": args.shard_size, "dtype": args.dtype,
              "model": "tiny random LLaRA (llama, hidden 32, 2 layers, byte-level tokenizer)"}
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if results.get("config") != config:
        results = {"config": config, "runs": {}}  # other settings: earlier numbers are not comparable
    results["environment"] = {**environment(), "cpu_count": os.cpu_count()}
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = tiny_llara(args.workdir)
    for size in args.sizes:
        corpus = synthetic_corpus(args.workdir, size, args.words)
        for processes in args.processes:
            done = results["runs"].get(str(size), {})
            if str(processes) in done:
                print(f"{size:>9} docs, {processes} process(es): measured already, skipped")
                continue
            record = measure(processes, model, corpus, size, args)
            results["runs"].setdefault(str(size), {})[str(processes)] = record
            results["summary"] = summarize(results)
            atomic_write_json(args.out, results)
            print(f"{size:>9} docs, {processes} process(es): {record['wall_seconds']:8.1f} s, "
                  f"{record['docs_per_second']:9.1f} docs/s, peak RSS {record['peak_rss_bytes'] / 2**20:7.1f} MiB, "
                  f"index {record['index_bytes'] / 2**20:7.1f} MiB")
    results["summary"] = summarize(results)
    atomic_write_json(args.out, results)
    plot(results, args.out.with_suffix(".png"))
    print(json.dumps(results["summary"], indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
