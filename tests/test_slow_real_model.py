"""Slow checks on the real SmolLM2-135M (30 layers, 49k vocabulary) and on the benchmark scripts.

Run on purpose with ``make test-slow`` (``pytest -m slow``): a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_llara import LlaraForPretraining, LlaraInputBuilder, LlaraModel
from modeling_llara.pretraining_llara import SEGMENT_PREDICT, SEGMENT_SUMMARIZE, SEGMENT_TEXT
from trainers.pretraining import PretrainingCollator

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _debian_texts(n: int) -> list[str]:
    from trainers.debian_data import load_pairs

    return [pair["document"] for pair in load_pairs()[:n]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_one_pass_equals_two_passes_on_smollm2(smollm2_llara_dir, side):
    from transformers import AutoTokenizer

    # Given the real model, real texts of different lengths, and both layouts of the same weights
    tokenizer = AutoTokenizer.from_pretrained(smollm2_llara_dir, trust_remote_code=True)
    model = LlaraForPretraining.from_pretrained(smollm2_llara_dir, attn_implementation="sdpa").eval()
    embedder = LlaraModel.from_pretrained(smollm2_llara_dir, attn_implementation="sdpa").eval()
    texts = _debian_texts(4)
    collator = PretrainingCollator(tokenizer, model.config, max_length=160, padding_side=side)
    builder = LlaraInputBuilder(tokenizer, model.config)
    batch = collator([{"input": t, "next": None} for t in texts])
    # When one dual-suffix pass and two ordinary passes run
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], segment_ids=batch["segment_ids"])
        separate = {
            kind: embedder(**builder(texts, task=kind, max_text_tokens=collator.text_budget, padding_side=side))
            for kind in ("summarize", "predict")
        }
    # Then the pooled embeddings agree through 30 fp32 layers, and so do the suffix states
    torch.testing.assert_close(out.summarize_embeds, separate["summarize"].pooler_output, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.predict_embeds, separate["predict"].pooler_output, atol=1e-4, rtol=0)
    for i in range(len(texts)):
        seg = batch["segment_ids"][i]
        for kind, segment in (("summarize", SEGMENT_SUMMARIZE), ("predict", SEGMENT_PREDICT)):
            ref = separate[kind]
            mine = out.last_hidden_state[i][(seg == SEGMENT_TEXT) | (seg == segment)]
            real = builder(texts, task=kind, max_text_tokens=collator.text_budget, padding_side=side)["attention_mask"][i].bool()
            torch.testing.assert_close(mine, ref.last_hidden_state[i][real], atol=2e-4, rtol=1e-4)


def test_pretrain_step_benchmark_reports_real_memory(tmp_path):
    # Given the step benchmark on the tiny config (a regression test for a probe that once printed 0 MiB)
    out = tmp_path / "step.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_pretrain_step.py"), "--models", "tiny", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    # Then every variant has a measured peak, and full-sequence logits cost more than the BoW path:
    # (batch, seq, 49152) fp32 logits are at least batch * seq * 49152 * 4 bytes
    peaks = {v: row[f"{v}_peak_mib"] for v in ("one_pass", "two_pass", "full_logits")}
    assert all(p is not None and p > 1 for p in peaks.values()), peaks
    logits_mib = row["batch"] * row["one_pass_len"] * 49152 * 4 / 2**20
    assert peaks["full_logits"] - peaks["one_pass"] > 0.5 * logits_mib, (peaks, logits_mib)
