"""fp32 vs bf16 matmul rate (GFLOP/s) at the shapes of SmolLM2-135M's layers.

SmolLM2-135M: hidden 576, intermediate 1536, 9 query heads and 3 key/value heads of 64, vocabulary 49152.
For ``--tokens`` rows (batch x sequence) the linear layers are (tokens, in) @ (in, out):

* ``q_o``:  576 -> 576 (query and output projections)
* ``k_v``:  576 -> 192 (key and value projections, 3 heads x 64)
* ``up``:   576 -> 1536 (gate and up projections)
* ``down``: 1536 -> 576
* ``lm_head``: 576 -> 49152 (pretraining only)

Each shape runs ``F.linear`` in fp32 and in bf16 (bf16 inputs and weights, as a bf16 model runs), the
dtypes interleaved repeat by repeat so machine noise hits both; the median counts. ``layer`` is the
FLOP-weighted rate of one decoder layer's linear work (what a forward pass is made of, attention and
element-wise work aside), the reference ``bench_encode.py`` compares model FLOP rates against.

    python benchmarks/bench_gemm.py                # tokens 1600, 7 repeats
    python benchmarks/bench_gemm.py --quick
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "gemm.json"
HIDDEN, INTERMEDIATE, KV = 576, 1536, 3 * 64
VOCAB = 49152
# (name, in, out, count per decoder layer)
SHAPES = (("q_o", HIDDEN, HIDDEN, 2), ("k_v", HIDDEN, KV, 2), ("up", HIDDEN, INTERMEDIATE, 2), ("down", INTERMEDIATE, HIDDEN, 1))


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1600, help="rows of each matmul (batch x sequence)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats; the median counts")
    p.add_argument("--inner", type=int, default=5, help="calls timed together per repeat")
    p.add_argument("--no-lm-head", action="store_true", help="skip the 576 -> 49152 shape")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="3 repeats, 3 calls, no LM head: a smoke run")
    p.add_argument("--out", default=str(RESULTS))
    return p


def measure(tokens: int, repeats: int, inner: int, lm_head: bool) -> dict:
    """Median GFLOP/s per (shape, dtype); dtypes interleaved within each repeat."""
    import torch

    shapes = list(SHAPES) + ([("lm_head", HIDDEN, VOCAB, 0)] if lm_head else [])
    generator = torch.Generator().manual_seed(0)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    operands = {}
    for name, fan_in, fan_out, _ in shapes:
        x = torch.randn(tokens, fan_in, generator=generator)
        w = torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5
        operands[name] = {d: (x.to(t), w.to(t)) for d, t in dtypes.items()}
    seconds = {name: {d: [] for d in dtypes} for name, *_ in shapes}
    with torch.inference_mode():
        for name, *_ in shapes:  # warm-up: kernels created, output memory faulted in
            for d in dtypes:
                torch.nn.functional.linear(*operands[name][d])
        for _ in range(repeats):
            for name, *_ in shapes:
                for d in dtypes:
                    x, w = operands[name][d]
                    start = time.perf_counter()
                    for _ in range(inner):
                        torch.nn.functional.linear(x, w)
                    seconds[name][d].append((time.perf_counter() - start) / inner)
    rates = {}
    for name, fan_in, fan_out, _ in shapes:
        flops = 2 * tokens * fan_in * fan_out
        rates[name] = {d: flops / statistics.median(seconds[name][d]) / 1e9 for d in dtypes}
    layer_flops = sum(2 * tokens * i * o * c for _, i, o, c in SHAPES)
    layer = {}
    for d in dtypes:
        layer_seconds = sum(c * statistics.median(seconds[name][d]) for name, _, _, c in SHAPES)
        layer[d] = layer_flops / layer_seconds / 1e9
    rates["layer"] = layer
    return {"gflops": rates, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import torch

    from trainers.io import atomic_write_json

    if args.quick:
        args.repeats, args.inner, args.no_lm_head = 3, 3, True
    if args.threads:
        torch.set_num_threads(args.threads)
    from trainers.run_records import cpu_bf16_flags, cpu_model

    measured = measure(args.tokens, args.repeats, args.inner, not args.no_lm_head)
    rates = measured["gflops"]
    result = {
        "tokens": args.tokens,
        "repeats": args.repeats,
        "inner": args.inner,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.platform(),
        "cpu": cpu_model(),
        "bf16_cpu_flags": cpu_bf16_flags(),
        "gflops": rates,
        "bf16_over_fp32": {name: r["bfloat16"] / r["float32"] for name, r in rates.items()},
        "seconds": measured["seconds"],
    }
    print(f"tokens {args.tokens}, {result['threads']} threads, median of {args.repeats} x {args.inner} calls")
    print(f"{'shape':<9} {'fp32 GFLOP/s':>13} {'bf16 GFLOP/s':>13} {'bf16/fp32':>10}")
    for name, r in rates.items():
        print(f"{name:<9} {r['float32']:>13.1f} {r['bfloat16']:>13.1f} {result['bf16_over_fp32'][name]:>9.2f}x")
    atomic_write_json(args.out, result)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
