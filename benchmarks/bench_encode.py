"""Encode throughput of LlaraModel against the model-card recipe and the bare backbone.

Same texts (real Debian long descriptions of mixed length), same weights (SmolLM2-135M converted by
``llara init``), measured side by side in one run, repetitions interleaved so machine noise hits all:

* ``llara``: ``encode`` below, ``LlaraModel`` called directly (length-sorted batches, right padding, only the
  last hidden state, pooling at the special positions), tokenization included;
* ``card``: the released card recipe (texts in input order, left padding, ``pad_to_multiple_of=8``,
  ``output_hidden_states=True``, ``hidden_states[-1][:, -8:]``), tokenization included;
* ``backbone``: the bare decoder forward on exactly the batches ``llara`` builds (no tokenization, no
  pooling): the floor that LLaRA's own overhead is measured against.

Precision (same run, same texts):

* ``st_fp32`` / ``st_bf16``: what a user runs, ``SentenceTransformer(...).encode_document`` with the model
  in fp32 / bf16 (``model_kwargs={"dtype": ...}``; this checkout's module code), tokenization included;
* ``llara_bf16``: ``encode`` on the bf16 model;
* ``backbone_bf16``: the bare bf16 decoder forward on the ``llara`` batches (the bf16 floor).

Reported besides tokens/s: bf16 / fp32 ratios, the model FLOP rate (linear layers + causal attention over
the real tokens, padding not counted) and its share of the bf16 ``layer`` rate of
``benchmarks/results/gemm.json`` (``bench_gemm.py``, run it first with the same threads), and the cosine
of the bf16 embeddings to the fp32 ones.

Targets: llara >= 1.5x card, llara >= 0.95x backbone; st_bf16 >= 2.5x st_fp32 and >= 50% of the bf16
GEMM rate in model FLOPs; cosine(st_bf16, st_fp32) >= 0.999. Prints a table, writes JSON.

    python benchmarks/bench_gemm.py && python benchmarks/bench_encode.py
    python benchmarks/bench_encode.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "encode_throughput.json"
GEMM_RESULTS = REPO / "benchmarks" / "results" / "gemm.json"
VARIANTS = ("llara", "card", "backbone", "st_fp32", "st_bf16", "llara_bf16", "backbone_bf16")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="LLaRA folder (default: convert the embedded SmolLM2 once into --cache)")
    parser.add_argument("--cache", default="outputs/cache/smollm2-llara", help="where the converted default model is kept")
    parser.add_argument("--texts", type=int, default=128, help="number of documents (default 128)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-text-tokens", type=int, default=256, help="text budget, as the card's max_length")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; the median counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--gemm", default=str(GEMM_RESULTS), help="bench_gemm.py result to compare FLOP rates with")
    parser.add_argument("--quick", action="store_true", help="32 texts, 2 repeats: a smoke run of every variant")
    parser.add_argument("--out", default=str(RESULTS))
    return parser


def encode(model, builder, texts, task=None, batch_size=32, max_length=None, max_text_tokens=None):
    """Embed ``texts`` with ``LlaraModel`` in length-sorted batches; returns (len(texts), hidden) float32 (the
    tests' raw-model reference, ``tests/conftest.py``)."""
    import torch

    ids = builder.build_ids(texts, task=task, max_length=max_length, max_text_tokens=max_text_tokens)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    device = next(model.parameters()).device
    out = torch.empty((len(ids), model.config.get_text_config().hidden_size), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = builder.pad([ids[i] for i in chunk])
            out[chunk] = model(**{k: v.to(device) for k, v in batch.items()}).pooler_output.float().cpu()
    return out


def card_recipe(backbone, tokenizer, texts, suffix, batch_size, max_length):
    """The released recipe, written from its description: left padding, multiple of 8, hidden_states[-1][:, -8:]."""
    import torch

    prefix_ids = tokenizer('"', add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        prefix_ids = [tokenizer.bos_token_id] + prefix_ids
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    tokenizer.padding_side = "left"
    out = []
    for start in range(0, len(texts), batch_size):
        features = []
        for text in texts[start : start + batch_size]:
            ids = tokenizer(text, add_special_tokens=False, max_length=max_length, truncation=True)["input_ids"]
            ids = prefix_ids + ids + suffix_ids
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
        batch = tokenizer.pad(features, padding=True, pad_to_multiple_of=8, return_tensors="pt")
        with torch.inference_mode():
            hidden = backbone(**batch, output_hidden_states=True).hidden_states[-1]
        out.append(torch.nn.functional.normalize(hidden[:, -8:].mean(1), dim=-1))
    tokenizer.padding_side = "right"
    return torch.cat(out)


def model_flops(config, lengths: list[int]) -> float:
    """Forward FLOPs over real tokens: 2 x linear weights per token + causal attention (QK^T and AV)."""
    text = config.get_text_config()
    hidden, layers = text.hidden_size, text.num_hidden_layers
    head_dim = getattr(text, "head_dim", None) or hidden // text.num_attention_heads
    q_width = text.num_attention_heads * head_dim
    kv_width = text.num_key_value_heads * head_dim
    per_layer = hidden * q_width * 2 + hidden * kv_width * 2 + 3 * hidden * text.intermediate_size
    tokens = sum(lengths)
    attention = sum(2 * 2 * q_width * n * (n + 1) / 2 for n in lengths)  # per layer, causal
    return float(layers * (2 * per_layer * tokens + attention))


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from modeling_llara import LlaraInputBuilder, LlaraModel
    from modeling_llara.sentence_llara import LlaraSentenceEncoder
    from trainers.convert import cached_default_llara
    from trainers.debian_data import load_pairs
    from trainers.io import atomic_write_json, path_for_record

    if args.quick:
        args.texts, args.repeats = 32, 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.model or str(cached_default_llara(args.cache))
    model = LlaraModel.from_pretrained(folder, dtype=torch.float32).eval()
    model_bf16 = LlaraModel.from_pretrained(folder, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    builder = LlaraInputBuilder(tokenizer, model.config)
    # sentence-transformers around this checkout's module (the folder's copy of the code may be older)
    st = {
        name: SentenceTransformer(modules=[LlaraSentenceEncoder(folder, model=m, tokenizer=tokenizer)], device="cpu")
        for name, m in (("st_fp32", model), ("st_bf16", model_bf16))
    }

    pairs = load_pairs()
    random.Random(0).shuffle(pairs)
    texts = [p["document"] for p in pairs[: args.texts]]
    suffix = model.config.suffix_text(model.config.passage_suffix_kind)

    # the batches llara builds, for the bare-backbone floor
    ids = builder.build_ids(texts, task="document", max_text_tokens=args.max_text_tokens)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches = [builder.pad([ids[i] for i in order[s : s + args.batch_size]]) for s in range(0, len(order), args.batch_size)]
    lengths = [len(x) for x in ids]
    tokens = sum(lengths)
    flops = model_flops(model.config, lengths)

    def run_encode(m):
        return lambda: encode(m, builder, texts, task="document", batch_size=args.batch_size, max_text_tokens=args.max_text_tokens)

    def run_card():
        return card_recipe(model.model, tokenizer, texts, suffix, args.batch_size, args.max_text_tokens)

    def run_backbone(m):
        def run():
            with torch.inference_mode():
                for batch in batches:
                    m.model(**batch, position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0))
        return run

    def run_st(name):
        st[name].max_seq_length = args.max_text_tokens
        return lambda: st[name].encode_document(texts, batch_size=args.batch_size, convert_to_tensor=True)

    methods = {
        "llara": run_encode(model),
        "card": run_card,
        "backbone": run_backbone(model),
        "st_fp32": run_st("st_fp32"),
        "st_bf16": run_st("st_bf16"),
        "llara_bf16": run_encode(model_bf16),
        "backbone_bf16": run_backbone(model_bf16),
    }
    methods = {k: v for k, v in methods.items() if k in variants}

    # correctness first (also the warm-up): llara and the card recipe embed the same (RoPE positions differ
    # only by a shift); bf16 embeddings against fp32 ones
    reference = run_encode(model)()
    checks = {"max_abs_diff_llara_vs_card": (reference - run_card()).abs().max().item()}
    cos = torch.nn.functional.cosine_similarity
    if "st_bf16" in methods:
        st_cos = cos(run_st("st_bf16")().float().cpu(), run_st("st_fp32")().float().cpu())
        checks.update(cosine_st_bf16_vs_fp32_min=st_cos.min().item(), cosine_st_bf16_vs_fp32_mean=st_cos.mean().item())
    if "llara_bf16" in methods:
        checks["cosine_llara_bf16_vs_fp32_min"] = cos(run_encode(model_bf16)(), reference).min().item()
    for name in methods:
        if name.startswith("backbone"):
            methods[name]()
    times = {name: [] for name in methods}
    # CPU seconds and page faults per call (this process): a fault-heavy allocator shows in sys time and
    # minor faults even when other processes make the wall clock noisy.
    usage = {name: {"user_s": [], "sys_s": [], "minor_faults": []} for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
            usage[name]["user_s"].append(after.ru_utime - before.ru_utime)
            usage[name]["sys_s"].append(after.ru_stime - before.ru_stime)
            usage[name]["minor_faults"].append(after.ru_minflt - before.ru_minflt)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    gemm_rate = None
    if Path(args.gemm).is_file():
        gemm = json.loads(Path(args.gemm).read_text())
        gemm_rate = gemm["gflops"]["layer"]["bfloat16"]
        if gemm.get("threads") != torch.get_num_threads():
            print(f"warning: {args.gemm} was measured with {gemm.get('threads')} threads, this run uses {torch.get_num_threads()}")
    gflops = {k: flops / v / 1e9 for k, v in median.items()}

    def ratio(a, b):
        return median[b] / median[a] if a in median and b in median else None

    result = {
        "model": path_for_record(folder, REPO),
        "texts": len(texts),
        "tokens": tokens,
        "model_gflop": flops / 1e9,
        "batch_size": args.batch_size,
        "max_text_tokens": args.max_text_tokens,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "machine": platform.platform(),
        **checks,
        "seconds": times,
        "median_usage": {k: {m: statistics.median(v) for m, v in u.items()} for k, u in usage.items()},
        "allocator": {k: os.environ.get(k) for k in ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")},
        "texts_per_s": {k: len(texts) / v for k, v in median.items()},
        "tokens_per_s": {k: tokens / v for k, v in median.items()},
        "model_gflops_per_s": gflops,
        "gemm_bf16_layer_gflops_per_s": gemm_rate,
        "share_of_bf16_gemm_rate": {k: v / gemm_rate for k, v in gflops.items()} if gemm_rate else None,
        "speedup_vs_card": ratio("llara", "card"),
        "ratio_vs_backbone": ratio("llara", "backbone"),
        "st_bf16_over_st_fp32": ratio("st_bf16", "st_fp32"),
        "backbone_bf16_over_backbone": ratio("backbone_bf16", "backbone"),
        "st_bf16_over_backbone_bf16": ratio("st_bf16", "backbone_bf16"),
        "targets": {
            "speedup_vs_card": 1.5,
            "ratio_vs_backbone": 0.95,
            "st_bf16_over_st_fp32": 2.5,
            "st_bf16_share_of_bf16_gemm_rate": 0.5,
            "cosine_st_bf16_vs_fp32_min": 0.999,
        },
    }
    print(f"{len(texts)} texts, {tokens} tokens (LLaRA inputs), {flops / 1e9:.0f} model GFLOP, batch {args.batch_size}, "
          f"{result['threads']} threads, median of {args.repeats}")
    print(f"{'method':<14} {'median s':>9} {'texts/s':>9} {'tokens/s':>10} {'GFLOP/s':>9} {'% bf16 GEMM':>12} "
          f"{'sys s':>6} {'faults':>8}")
    for name in methods:
        share = f"{100 * gflops[name] / gemm_rate:>11.0f}%" if gemm_rate else f"{'-':>12}"
        use = result["median_usage"][name]
        print(f"{name:<14} {median[name]:>9.2f} {result['texts_per_s'][name]:>9.1f} {result['tokens_per_s'][name]:>10.0f} "
              f"{gflops[name]:>9.1f} {share} {use['sys_s']:>6.2f} {use['minor_faults']:>8.0f}")
    for key in ("speedup_vs_card", "ratio_vs_backbone", "st_bf16_over_st_fp32", "backbone_bf16_over_backbone",
                "st_bf16_over_backbone_bf16"):
        if result[key] is not None:
            print(f"{key}: {result[key]:.3f}")
    for key, value in checks.items():
        print(f"{key}: {value:.6g}")
    atomic_write_json(args.out, result)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
