"""The chunked LM term of stage 1 (next-token cross-entropy over the text), four ways, side by side.

* ``autograd``  - ``cross_entropy(lm_head(states).float())`` and ``backward()``: what two ordinary passes
                  (``bench_pretrain_step.py``'s ``two_pass``) do; the (tokens, vocab) logits and their
                  gradient exist at once;
* ``fused``     - ``_LinearCrossEntropySum`` as shipped in ``pretraining_llara``: chunks of ``--chunk`` tokens,
                  gradients taken in the forward loop, every vocabulary-sized step written into two
                  (chunk, vocab) buffers allocated once per call;
* ``fused_logsoftmax`` - the shipped kernel of the previous release: the same buffers, but a log-softmax
                  for the loss and then a second exponential over the vocabulary for the gradient, and
                  chunks of exactly ``--chunk`` tokens plus a small remainder chunk (the shipped one takes
                  loss and gradient from one softmax and splits the tokens into equal chunks);
* ``fused_fresh`` - the same arithmetic with a fresh tensor per operation (logsumexp, then softmax in place):
                  the implementation before the buffers, kept here as the reference the change is measured
                  against.

Also a per-operation table (``ops``): one (tokens, vocab) matmul / log-softmax / exp into a fresh tensor vs
into a buffer that already exists, to show where the difference comes from on CPU (a fresh tensor of that
size is new memory that the kernel hands out page by page on first touch).

Values and gradients of the four agree (the script checks it: max abs difference printed). Time: median of
``--repeats`` interleaved runs of forward + backward. Writes benchmarks/results/lm_loss.json.

    python benchmarks/bench_lm_loss.py
    python benchmarks/bench_lm_loss.py --hidden 64,576 --chunks 128,auto,1024 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from modeling_llara.pretraining_llara import _LinearCrossEntropySum, default_lm_chunk_size  # noqa: E402
from trainers.io import atomic_write_json  # noqa: E402


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", default="64,576", help="comma list of hidden sizes (64: the tiny config of "
                   "bench_pretrain_step, 576: SmolLM2-135M)")
    p.add_argument("--vocab", type=int, default=49168, help="vocabulary (SmolLM2 + the 16 LLaRA tokens)")
    p.add_argument("--tokens", type=int, default=1016, help="labelled text tokens (batch 8 x 127 next-token targets)")
    p.add_argument("--chunks", default="auto,1024",
                   help="comma list of chunk sizes for the fused variants; auto = the model's default for --vocab")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lm_loss.json"))
    return p


def _zero_gradients(states, weight):
    """Zero gradients shaped like the inputs (the weight's in fp32) and a zero fp32 loss."""
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    return torch.zeros_like(states), grad_weight, torch.zeros((), dtype=torch.float32, device=states.device)


class _GradientsInForward(torch.autograd.Function):
    """Base of the reference kernels: forward computes the gradients and saves them; backward scales them."""

    @staticmethod
    def backward(ctx, grad_total):
        grad_states, grad_weight = ctx.saved_tensors
        return grad_states * grad_total, grad_weight * grad_total, None, None


class _FreshTensorFused(_GradientsInForward):
    """The fused loss before the reusable buffers: same arithmetic, a new tensor per operation."""

    @staticmethod
    def forward(ctx, states, weight, targets, chunk_size):
        grad_states, grad_weight, total = _zero_gradients(states, weight)
        for start in range(0, states.shape[0], chunk_size):
            chunk, chunk_targets = states[start : start + chunk_size], targets[start : start + chunk_size]
            logits = (chunk @ weight.T).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            total += (log_norm - logits.gather(1, chunk_targets[:, None]).squeeze(1)).sum()
            grad_logits = logits.sub_(log_norm[:, None]).exp_()
            grad_logits[torch.arange(chunk.shape[0], device=chunk.device), chunk_targets] -= 1.0
            grad_states[start : start + chunk_size] = grad_logits @ weight
            grad_weight += grad_logits.T @ chunk
        ctx.save_for_backward(grad_states, grad_weight)
        return total


class _LogSoftmaxFused(_GradientsInForward):
    """The previous release's shipped kernel (fp32 path): buffers, log-softmax, then exp for the gradient."""

    @staticmethod
    def forward(ctx, states, weight, targets, chunk_size):
        tokens, vocab = states.shape[0], weight.shape[0]
        rows = min(chunk_size, tokens)
        logits = torch.empty((rows, vocab), dtype=torch.float32, device=states.device)
        probs = torch.empty_like(logits)
        grad_states, grad_weight, total = _zero_gradients(states, weight)
        for start in range(0, tokens, chunk_size):
            chunk, chunk_targets = states[start : start + chunk_size], targets[start : start + chunk_size, None]
            n = chunk.shape[0]
            torch.mm(chunk, weight.T, out=logits[:n])
            log_probs = torch.log_softmax(logits[:n], dim=-1, out=probs[:n])
            total -= log_probs.gather(1, chunk_targets).sum()
            grad_logits = log_probs.exp_()
            grad_logits.scatter_add_(1, chunk_targets, grad_logits.new_full((n, 1), -1.0))
            grad_states[start : start + chunk_size] = grad_logits @ weight
            grad_weight.addmm_(grad_logits.T, chunk)
        ctx.save_for_backward(grad_states, grad_weight)
        return total


def _autograd(states, weight, targets, chunk):
    return torch.nn.functional.cross_entropy((states @ weight.T).float(), targets, reduction="sum")


VARIANTS = {
    "autograd": _autograd,
    "fused": lambda s, w, t, c: _LinearCrossEntropySum.apply(s, w, t, c),
    "fused_logsoftmax": lambda s, w, t, c: _LogSoftmaxFused.apply(s, w, t, c),
    "fused_fresh": lambda s, w, t, c: _FreshTensorFused.apply(s, w, t, c),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_once(fn, states, weight, targets, chunk, device):
    states.grad = weight.grad = None
    _sync(device)
    start = time.perf_counter()
    loss = fn(states, weight, targets, chunk)
    loss.backward()
    _sync(device)
    return time.perf_counter() - start, loss.detach(), states.grad.clone(), weight.grad.clone()


def ops_table(hidden: int, args) -> dict:
    """Median ms of one vocabulary-sized op into a fresh tensor vs into an existing buffer."""
    gen = torch.Generator(device=args.device).manual_seed(0)
    states = torch.randn(args.tokens, hidden, device=args.device, generator=gen)
    weight = torch.randn(args.vocab, hidden, device=args.device, generator=gen) * 0.02
    logits, out = states @ weight.T, torch.empty(args.tokens, args.vocab, device=args.device)
    ops = {
        "matmul": (lambda: states @ weight.T, lambda: torch.mm(states, weight.T, out=out)),
        "log_softmax": (lambda: torch.log_softmax(logits, -1), lambda: torch.log_softmax(logits, -1, out=out)),
        "exp": (lambda: logits.exp(), lambda: torch.exp(logits, out=out)),
    }
    table = {}
    for name, (fresh, reused) in ops.items():
        times = {"fresh": [], "buffer": []}
        fresh(), reused()
        for _ in range(args.repeats):
            for kind, fn in (("fresh", fresh), ("buffer", reused)):
                _sync(args.device)
                start = time.perf_counter()
                fn()
                _sync(args.device)
                times[kind].append(time.perf_counter() - start)
        table[name] = {kind: round(statistics.median(t) * 1000, 2) for kind, t in times.items()}
    return table


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    chunks = [default_lm_chunk_size(args.vocab) if c == "auto" else int(c) for c in args.chunks.split(",")]
    rows = []
    for hidden in (int(h) for h in args.hidden.split(",")):
        gen = torch.Generator(device=args.device).manual_seed(0)
        weight = (torch.randn(args.vocab, hidden, device=args.device, generator=gen) * 0.02).requires_grad_(True)
        states = torch.randn(args.tokens, hidden, device=args.device, generator=gen).requires_grad_(True)
        targets = torch.randint(0, args.vocab, (args.tokens,), device=args.device, generator=gen)
        runs = [("autograd", args.tokens)] + [(v, c) for c in chunks for v in ("fused", "fused_logsoftmax", "fused_fresh")]
        times = {run: [] for run in runs}
        reference = None
        for repeat in range(args.repeats + 1):  # the first round warms up
            for variant, chunk in runs:  # interleaved: load drift hits every variant alike
                seconds, loss, g_states, g_weight = run_once(VARIANTS[variant], states, weight, targets, chunk, args.device)
                if reference is None:
                    reference = (loss, g_states, g_weight)
                error = max((loss - reference[0]).abs().item() / reference[0].abs().item(),
                            (g_states - reference[1]).abs().max().item(), (g_weight - reference[2]).abs().max().item())
                if error > 1e-4:
                    raise SystemExit(f"{variant} (chunk {chunk}) disagrees with autograd by {error:.2e}")
                if repeat:
                    times[(variant, chunk)].append(seconds)
        autograd_s = statistics.median(times[("autograd", args.tokens)])
        for (variant, chunk), t in times.items():
            rows.append({"hidden": hidden, "vocab": args.vocab, "tokens": args.tokens, "variant": variant,
                         "chunk": chunk, "ms": round(statistics.median(t) * 1000, 1),
                         "vs_autograd": round(statistics.median(t) / autograd_s, 3),
                         "steps_ms": [round(x * 1000, 1) for x in t]})
        rows.append({"hidden": hidden, "ops_ms": ops_table(hidden, args)})
    print(f"{'hidden':>6} {'variant':16} {'chunk':>6} {'ms':>8} {'vs autograd':>11}")
    for row in rows:
        if "ops_ms" in row:
            print(f"{row['hidden']:>6} one op, fresh tensor vs buffer (ms): "
                  + ", ".join(f"{k} {v['fresh']} vs {v['buffer']}" for k, v in row["ops_ms"].items()))
        else:
            print(f"{row['hidden']:>6} {row['variant']:16} {row['chunk']:>6} {row['ms']:>8} {row['vs_autograd']:>11}")
    result = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
