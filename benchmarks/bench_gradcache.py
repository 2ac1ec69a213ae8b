"""GradCache vs plain InfoNCE: peak memory and step time at one global batch, side by side.

Each configuration runs in its own fresh process (so peak memory is its own): load the LLaRA model
with LoRA (released recipe r64/alpha16, dropout 0 so both runs compute the same loss), build one
batch of real Debian texts (queries x group = passages; 8 x 16 = 128 passages by default), then time
``--steps`` forward+backward steps through the stage-2 loss (sentence-transformers'
``MultipleNegativesRankingLoss`` vs ``CachedMultipleNegativesRankingLoss``, as ``llara finetune`` builds them). Peak memory: CUDA
``max_memory_allocated`` on a GPU; on CPU the process's peak RSS growth over the loaded model.

Memory without GradCache grows with the batch and the padded passage length: on SmolLM2-135M (LoRA on
all projections) 1.5 to 2.5 MB per padded passage token on CPU in fp32 (measured at 48 and 160 tokens), so
128 passages of 160 tokens need ~50 GB. On a 24 GB machine the 128-passage batch runs with shorter passages:

    python benchmarks/bench_gradcache.py --passage-max-length 48     # 8 x 16 = 128 passages, ~9 GB plain
    python benchmarks/bench_gradcache.py --quick                      # 4 x 8 = 32 passages of 160 tokens
    python benchmarks/bench_gradcache.py [--model DIR]                # 128 x 160 tokens: a GPU or > 50 GB

Prints a table and writes ``benchmarks/results/gradcache.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import memprobe  # noqa: E402

from trainers.io import atomic_write_json, path_for_record  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="LLaRA model folder (default: the embedded SmolLM2, converted once into outputs/cache/smollm2-llara)")
    parser.add_argument("--queries", type=int, default=8, help="queries per batch (default 8)")
    parser.add_argument("--group-size", type=int, default=16, help="passages per query (default 16: 128 passages)")
    parser.add_argument("--chunk", type=int, default=16, help="GradCache chunk size in rows (default 16)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per configuration (default 1)")
    parser.add_argument("--passage-max-length", type=int, default=160)
    parser.add_argument("--query-max-length", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="4 queries x group 8 = 32 passages, chunk 8")
    parser.add_argument("--out", default=None,
                        help="result JSON (default benchmarks/results/gradcache.json, gradcache_quick.json with --quick)")
    parser.add_argument("--worker", choices=["plain", "gradcache"], help=argparse.SUPPRESS)
    return parser


def _texts(n_queries: int, n_passages: int) -> tuple[list[str], list[str]]:
    try:
        from trainers.debian_data import load_pairs

        pairs = load_pairs()[: n_queries + n_passages]
        return [p["query"] for p in pairs[:n_queries]], [p["document"] for p in pairs[n_queries:]]
    except Exception:  # the snapshot is missing: synthetic text of a realistic length
        words = "package library kernel driver font audio python server daemon tool".split()
        passages = [" ".join(words[(i + j) % 10] for j in range(90)) for i in range(n_passages)]
        return [f"{words[i % 10]} tool {i}" for i in range(n_queries)], passages


def worker(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from modeling_llara import LlaraModel
    from trainers.finetuning.loss import contrastive_loss
    from trainers.finetuning.trainer import LlaraDataCollator, build_sentence_model
    from trainers.lora import apply_lora

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = apply_lora(LlaraModel.from_pretrained(args.model), dropout=0.0)
    st = build_sentence_model(model, AutoTokenizer.from_pretrained(args.model, trust_remote_code=True), args.model)
    st = st.to(device).train()
    queries, passages = _texts(args.queries, args.queries * args.group_size)
    rows = [
        {"anchor": q, **{("positive" if j == 0 else f"negative_{j}"): passages[i * args.group_size + j] for j in range(args.group_size)}}
        for i, q in enumerate(queries)
    ]
    collate = LlaraDataCollator(preprocess_fn=st.preprocess,
                                max_length={"query": args.query_max_length, "document": args.passage_max_length})
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in collate(rows).items()}
    features = [{k[len(c) + 1:]: v for k, v in batch.items() if k.startswith(c + "_")} for c in rows[0]]
    loss_fn = contrastive_loss(st, gradcache_chunk_size=args.chunk if args.worker == "gradcache" else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = memprobe.reset_peak()
    times, losses = [], []
    for _ in range(args.steps):
        for parameter in trainable:
            parameter.grad = None
        started = time.perf_counter()
        loss = loss_fn(features, None)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        losses.append(loss.item())
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else memprobe.peak_mib()
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainable if p.grad is not None])).item()
    return {
        "mode": args.worker,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "passages": sum(int(f["input_ids"].shape[0]) for f in features[1:]),
        "queries": int(features[0]["input_ids"].shape[0]),
        "passage_tokens": sum(int(f["attention_mask"].sum()) for f in features[1:]),
        "passage_padded_length": max(int(f["input_ids"].shape[1]) for f in features[1:]),
        "chunk": args.chunk if args.worker == "gradcache" else None,
        "step_seconds": times,
        "mean_step_seconds": sum(times) / len(times),
        "memory_before_mb": round(base, 1),
        "peak_memory_mb": round(peak, 1),
        "peak_growth_mb": round(peak - base, 1),
        "loss": losses[-1],
        "grad_norm": grad_norm,
    }


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.model is None:
        from trainers.convert import cached_default_llara

        args.model = str(cached_default_llara())
    if args.quick:
        args.queries, args.group_size, args.chunk = 4, 8, 8
    if args.out is None:
        args.out = str(RESULTS / ("gradcache_quick.json" if args.quick else "gradcache.json"))
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0
    rows = []
    for mode in ("plain", "gradcache"):
        cmd = [sys.executable, __file__, "--worker", mode, "--model", args.model, "--queries", str(args.queries),
               "--group-size", str(args.group_size), "--chunk", str(args.chunk), "--steps", str(args.steps),
               "--passage-max-length", str(args.passage_max_length), "--query-max-length", str(args.query_max_length)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            return proc.returncode
        rows.append(json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:]))
    plain, cached = rows
    summary = {
        "model": path_for_record(args.model, ROOT),
        "rows": rows,
        "memory_ratio_gradcache_over_plain": cached["peak_growth_mb"] / max(plain["peak_growth_mb"], 1e-9),
        "time_ratio_gradcache_over_plain": cached["mean_step_seconds"] / plain["mean_step_seconds"],
        "loss_abs_diff": abs(cached["loss"] - plain["loss"]),
        "grad_norm_rel_diff": abs(cached["grad_norm"] - plain["grad_norm"]) / plain["grad_norm"],
    }
    header = f"{'mode':<10} {'device':<6} {'passages':>8} {'chunk':>5} {'step s':>8} {'peak MB':>9} {'growth MB':>9} {'loss':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['mode']:<10} {r['device']:<6} {r['passages']:>8} {str(r['chunk'] or '-'):>5} "
              f"{r['mean_step_seconds']:>8.2f} {r['peak_memory_mb']:>9.0f} {r['peak_growth_mb']:>9.0f} {r['loss']:>8.4f}")
    print(f"GradCache / plain: memory growth x{summary['memory_ratio_gradcache_over_plain']:.2f}, "
          f"step time x{summary['time_ratio_gradcache_over_plain']:.2f}; |loss diff| {summary['loss_abs_diff']:.2e}, "
          f"grad-norm rel diff {summary['grad_norm_rel_diff']:.2e}")
    out = Path(args.out)
    atomic_write_json(out, summary)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
