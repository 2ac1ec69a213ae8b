"""Training-step time in fp32, bf16 autocast (fp32 master weights) and bf16 weights, both LLaRA stages.

* ``stage1``: the EBAE/EBAR pretraining step (``LlaraForPretraining``, one pass over both suffixes, the
  reference loss with the fused LM term), batch built as ``bench_pretrain_step.py`` builds it;
* ``stage2``: a contrastive step: ``LlaraModel`` embeds ``--batch`` queries and ``--batch`` passages (one
  positive each, in-batch negatives), scored as stage 2 scores them (InfoNCE over fp32 cosine, temperature 0.01);
* ``stage2_lora``: the same step on the model stage 2 trains by default: LoRA (r=64, alpha 16, dropout 0.1 on
  the seven projections, as released; the 16 special-token rows trainable), with the package's CPU dropout
  masks (``trainers.lora.LoraDropout``). Diagnostic rows: ``fp32_torch_dropout`` / ``autocast_torch_dropout``
  use torch's ``nn.Dropout`` (``bernoulli_``, one generator call per element, the same cost in every precision;
  the package's LoRA step before ``LoraDropout``), ``autocast_dropout0`` has no dropout at all (the floor the masks are measured against)
  and ``autocast_plain_casts`` leaves the casts to autocast (frozen weights recast every forward, one input cast per
  projection: the package's LoRA step before ``trainers.lora.use_bf16_cast_cache``).

Precisions, interleaved step by step so machine noise hits all: ``fp32``; ``autocast`` (fp32 weights,
``torch.autocast(dtype=bfloat16)`` around forward + loss, as ``--bf16`` training); ``bf16_weights`` (the
model cast to bf16, no autocast). Time: median seconds of forward + loss + backward (no optimizer step).
``--profile`` prints the top operators of one step per precision (where the time goes).

    python benchmarks/bench_train_precision.py --quick
    python benchmarks/bench_train_precision.py --batch 8 --text-tokens 128 --steps 9
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
sys.path.insert(0, str(REPO / "benchmarks"))

RESULTS = REPO / "benchmarks" / "results" / "train_precision.json"
STAGE_PRECISIONS = {
    "stage1": ("fp32", "autocast", "bf16_weights"),
    "stage2": ("fp32", "autocast", "bf16_weights"),
    "stage2_lora": ("fp32", "autocast", "fp32_torch_dropout", "autocast_torch_dropout", "autocast_dropout0",
                    "autocast_plain_casts"),
}
STAGES = tuple(STAGE_PRECISIONS)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="LLaRA folder with an LM head (default: the embedded SmolLM2, converted once)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-tokens", type=int, default=128, help="text tokens per row (prompt excluded)")
    p.add_argument("--steps", type=int, default=9,
                   help="timed steps per stage and precision, after one warm-up; the median is reported, and three steps are too few on a shared CPU (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--profile", action="store_true", help="print the top operators of one step per stage and precision")
    p.add_argument("--quick", action="store_true", help="batch 4, 64 text tokens, 2 steps")
    p.add_argument("--out", default=str(RESULTS))
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import torch

    import bench_pretrain_step as pretrain_bench
    from modeling_llara import LlaraModel
    from trainers.finetuning.loss import fp32_cos_sim
    from trainers.io import atomic_write_json

    if args.quick:
        args.batch, args.text_tokens, args.steps = 4, 64, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device, args.loss_mode, args.random_init, args.bf16 = "cpu", "reference", False, False
    pretrain, tokenizer = pretrain_bench.load("smollm2", args)
    collator, batch, _ = pretrain_bench.batch_for(tokenizer, pretrain, args)
    embedder = LlaraModel(pretrain.config)
    embedder.model = pretrain.model  # the same backbone weights
    embedder.train()
    queries = collator.builder([f"query {i}: " + " ".join(pretrain_bench.WORDS[i : i + 12]) for i in range(args.batch)], task="query")
    words = pretrain_bench.WORDS
    passages = collator.builder(
        [" ".join(words[(i + j) % len(words)] for j in range(4 * args.text_tokens)) for i in range(args.batch)],
        task="document",
        max_text_tokens=args.text_tokens,
    )
    models = {"stage1": {"fp32": pretrain}, "stage2": {"fp32": embedder}}
    pretrain_bf16 = pretrain_bench.load("smollm2", args)[0].to(torch.bfloat16)
    embedder_bf16 = LlaraModel(pretrain_bf16.config)
    embedder_bf16.model = pretrain_bf16.model
    embedder_bf16.train()
    models["stage1"]["bf16_weights"] = pretrain_bf16
    models["stage2"]["bf16_weights"] = embedder_bf16
    models["stage1"]["autocast"] = pretrain
    models["stage2"]["autocast"] = embedder
    from trainers.lora import apply_lora, drop_bf16_cast_cache

    def lora_embedder(dropout: float, torch_dropout: bool = False, cast_cache: bool = True):
        model = LlaraModel(pretrain.config)
        model.load_state_dict(embedder.state_dict())
        torch.manual_seed(0)  # the same adapters in every model
        model = apply_lora(model, dropout=dropout).train()
        if not cast_cache:  # autocast's own casts: the frozen weights recast every forward
            drop_bf16_cast_cache(model)
        if torch_dropout:  # back to torch's own dropout module
            for module in model.modules():
                if hasattr(module, "lora_A"):
                    for name in list(module.lora_dropout):
                        module.lora_dropout[name] = torch.nn.Dropout(dropout)
        return model

    lora = lora_embedder(0.1)
    torch_dropout = lora_embedder(0.1, torch_dropout=True)
    models["stage2_lora"] = {"fp32": lora, "autocast": lora, "fp32_torch_dropout": torch_dropout,
                             "autocast_torch_dropout": torch_dropout, "autocast_dropout0": lora_embedder(0.0),
                             "autocast_plain_casts": lora_embedder(0.1, cast_cache=False)}

    from trainers.cpu_attention import cpu_bf16_training_attention

    def step(stage: str, precision: str) -> float:
        model = models[stage][precision]
        # as the trainers run a step: bf16 training on CPU computes its attention in fp32 (trainers/cpu_attention.py)
        with cpu_bf16_training_attention(model), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("autocast")):
            if stage == "stage1":
                loss = pretrain_bench._loss("one_pass", model, collator, batch, None, args,
                                            __import__("trainers.pretraining", fromlist=["EbaeEbarLoss"]).EbaeEbarLoss(
                                                args.loss_mode, ignore_ids=collator.ignore_ids), lambda d: d)
            else:
                q = model(**queries).pooler_output
                p = model(**passages).pooler_output
                scores = fp32_cos_sim(q, p) / 0.01  # (batch, batch): the positive of query i is passage i
                loss = torch.nn.functional.cross_entropy(scores, torch.arange(len(q)))
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    losses = {s: {p: step(s, p) for p in ps} for s, ps in STAGE_PRECISIONS.items()}  # warm-up; losses agree
    times = {s: {p: [] for p in ps} for s, ps in STAGE_PRECISIONS.items()}
    for _ in range(args.steps):
        for s in STAGES:
            for p in STAGE_PRECISIONS[s]:
                start = time.perf_counter()
                step(s, p)
                times[s][p].append(time.perf_counter() - start)
    median = {s: {p: statistics.median(v) for p, v in ps.items()} for s, ps in times.items()}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for s in STAGES:
            for p in STAGE_PRECISIONS[s]:
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    step(s, p)
                print(f"== {s} {p}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    result = {
        "batch": args.batch,
        "text_tokens": args.text_tokens,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "losses": losses,
        "seconds": times,
        "median_s": median,
        "speedup_vs_fp32": {s: {p: median[s]["fp32"] / median[s][p] for p in ps} for s, ps in STAGE_PRECISIONS.items()},
        "target_speedup": 2.0,
    }
    print(f"batch {args.batch}, {args.text_tokens} text tokens, {result['threads']} threads, median of {args.steps} steps")
    print(f"{'stage':<12} {'precision':<21} {'median s':>9} {'vs fp32':>8} {'loss':>9}")
    for s in STAGES:
        for p in STAGE_PRECISIONS[s]:
            print(f"{s:<12} {p:<21} {median[s][p]:>9.2f} {result['speedup_vs_fp32'][s][p]:>7.2f}x {losses[s][p]:>9.4f}")
    atomic_write_json(args.out, result)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
