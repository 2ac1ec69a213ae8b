"""EBAE/EBAR training step: one pass (both suffixes, 4D mask) vs two separate passes; BoW loss memory.

Variants, measured side by side on the same model, batch and texts (text length 128 tokens by default):

* ``one_pass``       - LlaraForPretraining: one forward over prefix + text + both suffixes, LM-head logits
                        only at the 16 special positions (+ the chunked LM term in ``reference`` mode);
* ``two_pass``       - two ordinary causal passes (text + summarize suffix, text + predict suffix), logits
                        at the special positions of each (+ the LM term from the first pass, by autograd on
                        its (tokens, vocab) logits: the ordinary way). The 0.65 target is against this one;
* ``two_pass_fused`` - the same two passes, but the LM term through the one-pass model's own fused chunked
                        loss: one pass vs two with everything else equal, the saving of the layout alone;
* ``full_logits``    - one pass, but LM-head logits materialized over the whole sequence (batch, seq, vocab)
                        in fp32 before the losses pick their positions (what a naive implementation does).

``--train-step`` measures something else: whole training steps of ``one_pass`` as the pretraining trainer runs them
(forward, backward, gradient clipping at 1.0, fused AdamW, gradients set to None), each allocator setting in its own
process: ``glibc_default`` and ``keep_freed_memory`` (:mod:`trainers.allocator`, what the ``llara`` command
applies). Reported per setting: median step seconds, kernel (sys) seconds and minor page faults per step, and the
process's peak resident memory (weights, gradients and AdamW states included). Writes
benchmarks/results/pretrain_train_step.json (``--out`` to change). This is the cost a large tied vocabulary adds:
with Gemma 3 270M (``--models gemma3=<llara folder>``) every vocabulary-sized product is 0.3-0.7 GB.

Time: median seconds per training step (forward + loss + backward), variants interleaved. Peak memory:
each variant runs in a fresh subprocess; on CPU (Linux) the figure is the kernel's peak RSS over one step, reset just before it,
minus the RSS before it (see ``memory_probe``); on CUDA ``torch.cuda.max_memory_allocated``.
Prints a table and writes benchmarks/results/pretrain_step.json.

    python benchmarks/bench_pretrain_step.py --quick
    python benchmarks/bench_pretrain_step.py --batch 8 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import memprobe  # noqa: E402
from trainers.io import atomic_write_json  # noqa: E402
VARIANTS = ("one_pass", "two_pass", "two_pass_fused", "full_logits")
ALLOCATORS = ("glibc_default", "keep_freed_memory")
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LLARA_KEEP_FREED_MEMORY")
WORDS = ("retrieval models embed passages so that relevant queries land near them in vector space while the "
         "language model adapts its final hidden states to summarize a text and to predict the next one").split()


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="LLaRA folder with an LM head (default: the embedded SmolLM2, converted once into outputs/cache/smollm2-llara)")
    p.add_argument("--models", default="tiny,tiny-bytes,smollm2",
                   help="comma list of: tiny (hidden 64, 2 layers, SmolLM2 vocab), tiny-bytes (the test suite's tiny "
                        "LLaMA: hidden 32, 2 layers, byte-level vocab of 276), smollm2, or LABEL=FOLDER (a LLaRA folder "
                        "with an LM head, pretrained weights, LABEL in the results)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-tokens", type=int, default=128, help="text tokens per row (prompt excluded)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (after one warm-up)")
    p.add_argument("--loss-mode", default="reference", choices=["reference", "paper"])
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--random-init", action="store_true",
                   help="build --model's architecture with random weights (time and memory do not depend on the weights; "
                        "a folder with config + tokenizer and no weights is enough)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast around forward + loss (fp32 weights), as `--bf16` training")
    p.add_argument("--quick", action="store_true", help="batch 4, 2 steps")
    p.add_argument("--train-step", action="store_true",
                   help="whole training steps (with AdamW) under each allocator setting instead of the four variants")
    p.add_argument("--out", default=None, help="results file (default: benchmarks/results/pretrain_step.json, "
                                               "pretrain_train_step.json with --train-step)")
    p.add_argument("--_train_step", default=None, help=argparse.SUPPRESS)  # internal: one allocator setting
    p.add_argument("--_memory", default=None, help=argparse.SUPPRESS)  # internal: one variant in a subprocess
    return p


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load(name: str, args):
    import torch
    from transformers import AutoTokenizer

    from modeling_llara import LlaraConfig, LlaraForPretraining

    if name == "tiny-bytes":
        return _tiny_bytes(args)
    if "=" in name:
        name, source = name.split("=", 1)
    else:
        source = args.model or str(__import__("trainers.convert", fromlist=["cached_default_llara"]).cached_default_llara())
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
    config = LlaraConfig.from_pretrained(source)
    if name == "tiny":
        text = dict(config.to_dict()["text_config"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=2, head_dim=32)
        config = LlaraConfig(**{**config.to_dict(), "text_config": text})
    if name == "tiny" or args.random_init:
        torch.manual_seed(0)
        config._attn_implementation = "sdpa"
        model = LlaraForPretraining(config)
    else:
        model = LlaraForPretraining.from_pretrained(source, attn_implementation="sdpa")
    return model.to(args.device).train(), tokenizer


def _tiny_bytes(args):
    """The tests' tiny random LLaMA (tests/conftest.py) converted to LLaRA in a temporary folder."""
    import tempfile

    from transformers import AutoTokenizer

    from modeling_llara import LlaraForPretraining
    from trainers.convert import convert

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import save_tiny_base

    with tempfile.TemporaryDirectory() as tmp:
        folder = convert(str(save_tiny_base(Path(tmp) / "base")), Path(tmp) / "llara")
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        model = LlaraForPretraining.from_pretrained(folder, attn_implementation="sdpa")
    return model.to(args.device).train(), tokenizer


def batch_for(tokenizer, model, args):
    from trainers.pretraining import PretrainingCollator

    collator = PretrainingCollator(tokenizer, model.config, max_length=10**6)
    collator.text_budget = args.text_tokens
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(4 * args.text_tokens)) for i in range(2 * args.batch)]
    records = [{"input": texts[i], "next": texts[i + args.batch]} for i in range(args.batch)]
    batch = collator(records)
    two = {kind: collator.builder(texts[: args.batch], task=kind, max_text_tokens=args.text_tokens) for kind in ("summarize", "predict")}
    return collator, batch, two


def step(variant: str, model, collator, batch, two, args, optimizer=None):
    import torch

    from trainers.pretraining import EbaeEbarLoss

    loss_fn = EbaeEbarLoss(args.loss_mode, ignore_ids=collator.ignore_ids)
    dev = lambda d: {k: v.to(args.device) for k, v in d.items()}  # noqa: E731
    b = dev(batch)
    from trainers.cpu_attention import cpu_bf16_training_attention

    # as the pretraining trainer runs a step (bf16 training on CPU computes its attention in fp32)
    with cpu_bf16_training_attention(model), \
            torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
        loss = _loss(variant, model, collator, b, two, args, loss_fn, dev)
    loss.backward()
    if optimizer is not None:  # a whole training step, as the Trainer runs it (clipping at its default 1.0)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return float(loss.detach())


def _loss(variant, model, collator, b, two, args, loss_fn, dev):
    import torch

    from trainers.pretraining import bow_loss_from_logits

    if variant == "one_pass":
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], segment_ids=b["segment_ids"],
                    lm_labels=b["lm_labels"] if loss_fn.uses_lm else None)
        loss, _ = loss_fn(out, b["ebae_target_ids"], b["ebar_target_ids"])
    elif variant == "full_logits":
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], segment_ids=b["segment_ids"])
        logits = model.lm_head(out.last_hidden_state).float()  # (batch, seq, vocab): the naive way
        k = model.config.num_pooled_tokens
        s_ids = torch.tensor(model.config.summarize_token_ids, device=args.device)
        p_ids = torch.tensor(model.config.predict_token_ids, device=args.device)
        s_logits = logits[torch.isin(b["input_ids"], s_ids)].view(-1, k, logits.shape[-1])
        p_logits = logits[torch.isin(b["input_ids"], p_ids)].view(-1, k, logits.shape[-1])
        ignore = torch.tensor(collator.ignore_ids)
        loss = loss_fn.ebae_weight * bow_loss_from_logits(s_logits, b["ebae_target_ids"], ignore)[0]
        loss = loss + loss_fn.ebar_weight * bow_loss_from_logits(p_logits, b["ebar_target_ids"], ignore)[0]
        if loss_fn.uses_lm:
            lm = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["lm_labels"].flatten(), ignore_index=-100)
            loss = loss + loss_fn.lm_weight * lm
    else:
        loss = 0.0
        for kind, target, weight in (("summarize", "ebae_target_ids", loss_fn.ebae_weight), ("predict", "ebar_target_ids", loss_fn.ebar_weight)):
            inputs = dev(two[kind])
            hidden = model.model(**inputs, use_cache=False).last_hidden_state  # (batch, seq, hidden)
            mask = torch.isin(inputs["input_ids"], torch.tensor(model.config.suffix_token_ids(kind), device=args.device))
            logits = model.lm_head(hidden[mask]).view(mask.shape[0], -1, model.config.get_text_config().vocab_size)
            loss = loss + weight * bow_loss_from_logits(logits, b[target], torch.tensor(collator.ignore_ids))[0]
            if kind == "summarize" and loss_fn.uses_lm:
                # the LM term from the first pass: same labels as the one-pass layout (text part only)
                labels = torch.full_like(inputs["input_ids"], -100)
                n_text = (b["segment_ids"] == 1).sum(-1)  # (batch,) prefix + text lengths
                for row in range(labels.shape[0]):
                    labels[row, : n_text[row] - 1] = inputs["input_ids"][row, 1 : n_text[row]]
                if variant == "two_pass_fused":
                    from modeling_llara.pretraining_llara import default_lm_chunk_size

                    chunk = default_lm_chunk_size(model.config.get_text_config().vocab_size)  # the one-pass default
                    lm, _ = model._chunked_lm_loss(hidden, labels, chunk)
                else:
                    keep = labels != -100
                    lm = torch.nn.functional.cross_entropy(model.lm_head(hidden[keep]).float(), labels[keep])
                loss = loss + loss_fn.lm_weight * lm
    return loss


def _sync(args):
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def memory_probe(name: str, variant: str, args) -> float:
    """Peak extra memory (MiB) of one step of ``variant`` (runs in its own process).

    CUDA: ``max_memory_allocated`` over the step minus what was allocated before it. CPU (Linux): one warm-up
    step, then freed heap pages are handed back (``malloc_trim``), the kernel's peak-RSS mark is reset
    (``/proc/self/clear_refs`` = 5) and the figure is the new peak ``VmHWM`` minus ``VmRSS`` before the step.
    (``ru_maxrss`` cannot be reset: loading the weights set a higher mark than a step reaches, so it read 0.)
    """
    import gc

    import torch

    model, tokenizer = load(name, args)
    collator, batch, two = batch_for(tokenizer, model, args)
    step(variant, model, collator, batch, two, args)  # warm-up: lazy kernels, thread pools
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(variant, model, collator, batch, two, args)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = memprobe.reset_peak()
    step(variant, model, collator, batch, two, args)
    return memprobe.peak_mib() - base


def train_step_probe(name: str, allocator: str, args) -> dict:
    """Whole ``one_pass`` training steps under one allocator setting (runs in its own process, see --train-step)."""
    import resource

    import torch

    from trainers.allocator import keep_freed_memory

    if allocator == "keep_freed_memory" and not keep_freed_memory():
        raise RuntimeError("keep_freed_memory() did not apply (not glibc, or a MALLOC_* variable is set)")
    model, tokenizer = load(name, args)
    collator, batch, two = batch_for(tokenizer, model, args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # the Trainer's default: adamw_torch_fused

    def train_step():
        step("one_pass", model, collator, batch, two, args, optimizer)

    train_step()  # warm-up: the AdamW states exist from here on
    times, sys_s, faults = [], [], []
    for _ in range(args.steps):
        before = resource.getrusage(resource.RUSAGE_SELF)
        _sync(args)
        start = time.perf_counter()
        train_step()
        _sync(args)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        sys_s.append(after.ru_stime - before.ru_stime)
        faults.append(after.ru_minflt - before.ru_minflt)
    return {"allocator": allocator, "step_s": statistics.median(times), "steps_s": [round(t, 3) for t in times],
            "sys_s_per_step": statistics.median(sys_s), "minor_faults_per_step": int(statistics.median(faults)),
            "peak_rss_mib": memprobe.peak_mib(), "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": model.config.get_text_config().vocab_size}


def _probe(flag: str, name: str, what: str, args, env: dict | None = None) -> dict | None:
    """Run this script with the internal ``flag`` (--_memory / --_train_step) for ``name:what`` in a fresh process
    with ``args``' shape settings; its last JSON line, or None when it failed (stderr is printed)."""
    cmd = [sys.executable, __file__, flag, f"{name}:{what}", "--models", name, "--batch", str(args.batch),
           "--text-tokens", str(args.text_tokens), "--loss-mode", args.loss_mode, "--device", args.device,
           "--steps", str(args.steps)]
    cmd += ["--model", args.model] * bool(args.model) + ["--random-init"] * args.random_init + ["--bf16"] * args.bf16
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        print(f"{name} / {what} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def run_train_steps(args) -> list[dict]:
    """--train-step: each model under each allocator setting, one process each; ratios side by side."""
    import torch

    env = {k: v for k, v in os.environ.items() if k not in _MALLOC_ENV}  # glibc's defaults unless asked otherwise
    rows = []
    for name in args.models.split(","):
        row = {"model": name.split("=")[0], "batch": args.batch,
               "text_tokens": args.text_tokens, "loss_mode": args.loss_mode, "bf16": args.bf16, "device": args.device,
               "threads": torch.get_num_threads(), "steps": args.steps}
        for allocator in ALLOCATORS:
            row[allocator] = _probe("--_train_step", name, allocator, args, env)
            if row[allocator] is None:
                raise RuntimeError(f"--train-step: {name} under {allocator} failed (its error is above)")
        default, kept = row["glibc_default"], row["keep_freed_memory"]
        row["kept_over_default_time"] = kept["step_s"] / default["step_s"]
        row["kept_over_default_peak"] = kept["peak_rss_mib"] / default["peak_rss_mib"]
        rows.append(row)
        print(f"{row['model']:12} {'allocator':18} {'step s':>7} {'sys s':>6} {'faults':>9} {'peak MiB':>9}")
        for allocator in ALLOCATORS:
            r = row[allocator]
            print(f"{row['model']:12} {allocator:18} {r['step_s']:7.2f} {r['sys_s_per_step']:6.2f} "
                  f"{r['minor_faults_per_step']:9d} {r['peak_rss_mib']:9.0f}")
        print(f"{row['model']:12} keep/default: time {row['kept_over_default_time']:.2f}, peak {row['kept_over_default_peak']:.2f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.quick:
        args.batch, args.steps = min(args.batch, 4), min(args.steps, 2)
    if args._memory:
        name, variant = args._memory.rsplit(":", 1)
        print(json.dumps({"peak_mib": memory_probe(name, variant, args)}))
        return 0
    if args._train_step:
        name, allocator = args._train_step.rsplit(":", 1)
        print(json.dumps(train_step_probe(name, allocator, args)))
        return 0
    results_dir = REPO / "benchmarks" / "results"
    if args.train_step:
        from trainers.run_records import environment

        rows = run_train_steps(args)
        out = args.out or str(results_dir / "pretrain_train_step.json")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, {"environment": environment(), "rows": rows})
        return 0
    import torch

    results = []
    for name in args.models.split(","):
        model, tokenizer = load(name, args)
        collator, batch, two = batch_for(tokenizer, model, args)
        times = {v: [] for v in VARIANTS}
        for v in VARIANTS:  # warm-up
            step(v, model, collator, batch, two, args)
        for _ in range(args.steps):
            for v in VARIANTS:  # interleaved: machine load drifts hit all variants alike
                _sync(args)
                start = time.perf_counter()
                step(v, model, collator, batch, two, args)
                _sync(args)
                times[v].append(time.perf_counter() - start)
        del model
        row = {"model": name.split("=")[0], "batch": args.batch, "text_tokens": args.text_tokens, "one_pass_len": batch["input_ids"].shape[1],
               "two_pass_len": two["summarize"]["input_ids"].shape[1], "loss_mode": args.loss_mode, "device": args.device,
               "weights": "random" if name.startswith("tiny") or args.random_init else "pretrained", "bf16": args.bf16,
               "threads": torch.get_num_threads(),
               "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
        for v in VARIANTS:
            row[f"{v}_s"] = statistics.median(times[v])
            row[f"{v}_steps_s"] = [round(t, 4) for t in times[v]]
            probe = _probe("--_memory", name, v, args)
            row[f"{v}_peak_mib"] = probe["peak_mib"] if probe else None
        row["one_vs_two_time"] = row["one_pass_s"] / row["two_pass_s"]
        row["one_vs_two_fused_time"] = row["one_pass_s"] / row["two_pass_fused_s"]
        row["one_pass_vs_full_logits_peak"] = row["one_pass_peak_mib"] / row["full_logits_peak_mib"] if row["full_logits_peak_mib"] else None
        results.append(row)
    header = f"{'model':10} {'variant':14} {'step s':>8} {'peak MiB':>9}"
    print(header)
    for row in results:
        for v in VARIANTS:
            peak = row[f"{v}_peak_mib"]
            print(f"{row['model']:10} {v:14} {row[f'{v}_s']:8.3f} {peak if peak is None else round(peak, 1):>9}")
        print(f"{row['model']:10} one/two time ratio: {row['one_vs_two_time']:.3f} (target <= 0.65); "
              f"one/two_fused (same LM kernel): {row['one_vs_two_fused_time']:.3f}")
    out = args.out or str(results_dir / "pretrain_step.json")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
