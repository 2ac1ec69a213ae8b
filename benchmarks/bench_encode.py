"""Encode throughput of LlaraModel against the model-card recipe and the bare backbone (issue: foundation).

Same texts (real Debian long descriptions of mixed length), same weights (SmolLM2-135M converted by
``llara init``), measured side by side in one run, repetitions interleaved so machine noise hits all:

* ``llara``: ``modeling_llara.encode`` (length-sorted batches, right padding, only the last hidden state,
  pooling at the special positions), tokenization included;
* ``card``: the released card recipe (texts in input order, left padding, ``pad_to_multiple_of=8``,
  ``output_hidden_states=True``, ``hidden_states[-1][:, -8:]``), tokenization included;
* ``backbone``: the bare decoder forward on exactly the batches ``llara`` builds (no tokenization, no
  pooling): the floor that LLaRA's own overhead is measured against.

Targets: llara >= 1.5x card, llara >= 0.95x backbone. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "encode_throughput.json"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="LLaRA folder (default: convert the embedded SmolLM2 once into --cache)")
    parser.add_argument("--cache", default="outputs/cache/smollm2-llara", help="where the converted default model is kept")
    parser.add_argument("--texts", type=int, default=128, help="number of documents (default 128)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-text-tokens", type=int, default=256, help="text budget, as the card's max_length")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; the best time counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(RESULTS))
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import torch
    from transformers import AutoModel, AutoTokenizer

    from modeling_llara import LlaraInputBuilder, encode
    from trainers.convert import cached_default_llara
    from trainers.debian_data import load_pairs

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.model or str(cached_default_llara(args.cache))
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    builder = LlaraInputBuilder(tokenizer, model.config)

    pairs = load_pairs()
    random.Random(0).shuffle(pairs)
    texts = [p["document"] for p in pairs[: args.texts]]
    suffix = model.config.suffix_text(model.config.passage_suffix_kind)

    # the batches llara builds, for the bare-backbone floor
    ids = builder.build_ids(texts, task="document", max_text_tokens=args.max_text_tokens)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches = [builder.pad([ids[i] for i in order[s : s + args.batch_size]]) for s in range(0, len(order), args.batch_size)]
    tokens = sum(len(x) for x in ids)

    def run_llara():
        return encode(model, builder, texts, task="document", batch_size=args.batch_size, max_text_tokens=args.max_text_tokens)

    def run_card():
        return card_recipe(model.model, tokenizer, texts, suffix, args.batch_size, args.max_text_tokens)

    def run_backbone():
        with torch.inference_mode():
            for batch in batches:
                model.model(**batch, position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0))

    # correctness first: llara and the card recipe embed the same (RoPE positions differ only by a shift)
    diff = (run_llara() - run_card()).abs().max().item()
    methods = {"llara": run_llara, "card": run_card, "backbone": run_backbone}
    times = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {name: min(ts) for name, ts in times.items()}
    result = {
        "model": str(folder),
        "texts": len(texts),
        "tokens": tokens,
        "batch_size": args.batch_size,
        "max_text_tokens": args.max_text_tokens,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "max_abs_diff_llara_vs_card": diff,
        "seconds": times,
        "texts_per_s": {k: len(texts) / v for k, v in best.items()},
        "tokens_per_s": {k: tokens / v for k, v in best.items()},
        "speedup_vs_card": best["card"] / best["llara"],
        "ratio_vs_backbone": best["backbone"] / best["llara"],
        "targets": {"speedup_vs_card": 1.5, "ratio_vs_backbone": 0.95},
    }
    print(f"{len(texts)} texts, {tokens} tokens (LLaRA inputs), batch {args.batch_size}, {result['threads']} threads")
    print(f"{'method':<10} {'best s':>8} {'texts/s':>9} {'tokens/s':>10}")
    for name in methods:
        print(f"{name:<10} {best[name]:>8.2f} {result['texts_per_s'][name]:>9.1f} {result['tokens_per_s'][name]:>10.0f}")
    print(f"llara vs card: {result['speedup_vs_card']:.2f}x (target >= 1.5); "
          f"llara vs bare backbone: {result['ratio_vs_backbone']:.3f}x (target >= 0.95); "
          f"max |llara - card| = {diff:.2e}")
    from trainers.io import atomic_write_json

    out = Path(args.out)
    atomic_write_json(out, result)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
