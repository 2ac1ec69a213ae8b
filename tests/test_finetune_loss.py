"""LLaRA stage-2 objective on sentence-transformers' losses, checked against an independent naive InfoNCE.

The reference never goes through sentence-transformers: it embeds every text with ``LlaraModel`` directly and
computes InfoNCE over the global batch in float64 with a Python loop.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO_ROOT

WORDS = "apt kernel driver python library font icon server client daemon tool shell audio video".split()
QUERY_MAX, PASSAGE_MAX = 72, 88


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(num_queries: int, group_size: int, seed: int = 0) -> list[dict]:
    """sentence-transformers rows: anchor, positive, negative_1 ... negative_{group_size-1}."""
    rng = random.Random(seed)
    rows = []
    for q in range(num_queries):
        row = {"anchor": f"{q} " + " ".join(rng.choices(WORDS, k=rng.randint(1, 4)))}
        row["positive"] = " ".join(rng.choices(WORDS, k=rng.randint(2, 12)))
        for j in range(1, group_size):
            row[f"negative_{j}"] = " ".join(rng.choices(WORDS, k=rng.randint(2, 12)))
        rows.append(row)
    return rows


def _load(model_dir, dropout: float = 0.0, seed: int = 0, lora: bool = True):
    """``(SentenceTransformer, inner model, builder)`` with LoRA weights perturbed so every path carries gradient."""
    from transformers import AutoTokenizer

    from modeling_llara import LlaraInputBuilder, LlaraModel
    from trainers.finetuning.trainer import build_sentence_model
    from trainers.lora import apply_lora

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    torch.manual_seed(seed)
    inner = LlaraModel.from_pretrained(model_dir)
    if lora:
        inner = apply_lora(inner, r=4, alpha=8, dropout=dropout)
        with torch.no_grad():  # LoRA B and the token delta start at zero
            for parameter in inner.parameters():
                if parameter.requires_grad:
                    parameter.add_(torch.randn_like(parameter) * 0.05)
    model = build_sentence_model(inner, tokenizer, model_dir)
    return model, inner, LlaraInputBuilder(tokenizer, inner.config)


def _features(model, rows):
    """What ``LlaraFinetuneTrainer`` feeds its loss: one feature dict per column, in column order."""
    from trainers.finetuning.trainer import LlaraDataCollator

    batch = LlaraDataCollator(preprocess_fn=model.preprocess, max_length={"query": QUERY_MAX, "document": PASSAGE_MAX})(rows)
    columns = list(rows[0])
    return [{key[len(c) + 1:]: value for key, value in batch.items() if key.startswith(c + "_")} for c in columns]


def _naive_embeddings(inner, builder, rows):
    """(queries (n, d), passages (n * group, d) grouped per query, positive first), straight from LlaraModel."""
    columns = list(rows[0])
    queries = builder([r[columns[0]] for r in rows], task="query", max_length=QUERY_MAX)
    passages = builder([r[c] for r in rows for c in columns[1:]], task="document", max_length=PASSAGE_MAX)
    return inner(**queries).pooler_output, inner(**passages).pooler_output


def _naive_info_nce(q: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over queries of -log softmax(q_i . p / t)[positive of i], every passage a candidate; float64 loop."""
    group = p.shape[0] // q.shape[0]
    q, p = q.double(), p.double()
    losses = []
    for i in range(q.shape[0]):
        logits = torch.stack([q[i] @ p[j] for j in range(p.shape[0])]) / temperature
        losses.append(torch.logsumexp(logits, 0) - logits[i * group])
    return torch.stack(losses).mean()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("temperature", [0.01, 0.5])
def test_st_loss_and_gradients_match_naive_info_nce_over_the_global_batch(tiny_llara_dir, temperature):
    from trainers.finetuning.loss import contrastive_loss

    # Given 3 queries with groups of 4 passages and a LoRA-wrapped LLaRA model
    model, inner, builder = _load(tiny_llara_dir)
    model.eval()
    rows = _rows(3, 4, seed=1)
    # When the naive reference embeds with LlaraModel and loops over queries in float64
    expected = _naive_info_nce(*_naive_embeddings(inner, builder, rows), temperature)
    expected.backward()
    expected_grads = _grads(inner)
    inner.zero_grad(set_to_none=True)
    # And sentence-transformers' MultipleNegativesRankingLoss runs on the collated columns
    loss = contrastive_loss(model, temperature=temperature, gather_across_devices=True)(_features(model, rows), None)
    loss.backward()
    # Then the values agree to 1e-5 and the gradients to 1e-5 of their own scale (fp32 against float64: at
    # temperature 0.01 the scores are ~100, so fp32 rounding of the softmax is ~1e-5 of a gradient's size)
    assert abs(loss.item() - expected.item()) < 1e-5
    got = _grads(inner)
    assert set(got) == set(expected_grads) and got
    for name, grad in expected_grads.items():
        error = (got[name].double() - grad).abs().max().item()
        assert error <= 1e-5 * max(1.0, grad.abs().max().item()), (name, error)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gradcache_matches_uncached_loss_and_gradients(tiny_llara_dir, dropout):
    from trainers.finetuning.loss import contrastive_loss

    # Given a batch of 5 queries x 3 passages (dropout on: the replay must reproduce the same masks)
    model, inner, _ = _load(tiny_llara_dir, dropout=dropout)
    model.train()
    rows = _rows(5, 3, seed=3)
    features = _features(model, rows)

    def run(chunk):
        inner.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        loss = contrastive_loss(model, temperature=0.05, gradcache_chunk_size=chunk)(features, None)
        loss.backward()
        return loss.item(), _grads(inner)

    # When the loss runs uncached and with GradCache in mini-batches of 2 rows
    plain_loss, plain = run(None)
    cached_loss, cached = run(2)
    # Then, without dropout, the two agree exactly up to float rounding
    if dropout == 0.0:
        assert abs(plain_loss - cached_loss) < 1e-5
        for name, grad in plain.items():
            assert torch.allclose(cached[name], grad, atol=1e-5, rtol=1e-4), name
    else:
        # With dropout the masks differ between the two set-ups (different forward order), but GradCache's own
        # two passes must agree: its loss equals a second cached run from the same seed
        again_loss, again = run(2)
        assert again_loss == cached_loss
        for name, grad in cached.items():
            assert torch.equal(again[name], grad), name


_WORKER = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, os.environ["LLARA_TESTS"])
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformerTrainer
    from test_finetune_loss import _features, _load, _rows
    from trainers.finetuning.loss import contrastive_loss

    class _Wrapping:  # the Trainer's own method, without building a Trainer
        override_model_in_loss = SentenceTransformerTrainer.override_model_in_loss

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, inner, _ = _load(sys.argv[1])
    model.eval()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    rows = _rows(4, 3, seed=7)
    mine = rows[:2] if rank == 0 else rows[2:]
    features = _features(model, mine)
    for chunk in (0, 2):  # plain, then GradCache
        inner.zero_grad(set_to_none=True)
        loss_fn = contrastive_loss(model, temperature=0.05, gradcache_chunk_size=chunk or None)
        # as the Trainer does: the loss is built on the model, then given the DDP-wrapped one
        loss_fn = _Wrapping().override_model_in_loss(loss_fn, ddp)
        loss = loss_fn(features, None)
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        if rank == 0:
            grads = {n: p.grad.contiguous() for n, p in inner.named_parameters() if p.requires_grad}
            save_file(grads, f"{sys.argv[2]}/grads-{chunk}.safetensors")
            with open(f"{sys.argv[2]}/loss-{chunk}.json", "w") as f:
                json.dump({"loss": total.item() / dist.get_world_size()}, f)
    dist.barrier()  # both ranks leave together: tearing gloo down while the peer still writes can abort the process
    dist.destroy_process_group()
    """
)


def test_two_process_gather_matches_one_process_on_the_concatenated_batch(tiny_llara_dir, tmp_path):
    from safetensors.torch import load_file

    from trainers.finetuning.loss import contrastive_loss

    # Given one process on the concatenated batch of 4 queries
    model, inner, _ = _load(tiny_llara_dir)
    model.eval()
    loss = contrastive_loss(model, temperature=0.05)(_features(model, _rows(4, 3, seed=7)), None)
    loss.backward()
    expected = _grads(inner)
    # When two gloo processes each hold 2 queries, gather the other's passages and sync with DDP
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), LLARA_TESTS=str(REPO_ROOT / "tests"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(tiny_llara_dir), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # Then the mean of the two ranks' losses and the DDP-averaged gradients equal the single-process ones,
    # with and without GradCache
    for chunk in (0, 2):
        got = load_file(str(tmp_path / f"grads-{chunk}.safetensors"))
        assert abs(json.loads((tmp_path / f"loss-{chunk}.json").read_text())["loss"] - loss.item()) < 1e-5
        assert set(got) == set(expected)
        for name, grad in expected.items():
            assert torch.allclose(got[name], grad, atol=1e-5, rtol=1e-4), (chunk, name)


def test_scores_are_fp32_under_bf16_autocast():
    from trainers.finetuning.loss import fp32_cos_sim

    # Given two nearly identical passages whose cosine to the query differs by less than bf16's resolution
    q = torch.nn.functional.normalize(torch.randn(1, 64), dim=-1)
    p = torch.cat([q + 1e-3 * torch.randn(1, 64), q + 1.2e-3 * torch.randn(1, 64)])
    exact = torch.nn.functional.cosine_similarity(q.double(), p.double())
    # When scored under bf16 autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = fp32_cos_sim(q, p)
    # Then the scores are fp32 and as accurate as fp32 allows
    assert scores.dtype == torch.float32
    assert torch.allclose(scores[0].double(), exact, atol=1e-6)


def test_loss_configuration_is_the_released_recipe(tiny_llara_dir):
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    from trainers.finetuning.loss import contrastive_loss, loss_config

    model, _, _ = _load(tiny_llara_dir, lora=False)
    plain = contrastive_loss(model)
    assert isinstance(plain, MultipleNegativesRankingLoss) and plain.scale == pytest.approx(100.0)
    assert plain.gather_across_devices and plain.directions == ("query_to_doc",)
    cached = contrastive_loss(model, gradcache_chunk_size=4)
    assert isinstance(cached, CachedMultipleNegativesRankingLoss) and cached.mini_batch_size == 4
    wrapped = contrastive_loss(model, matryoshka_dims=[8, 16])
    assert isinstance(wrapped, MatryoshkaLoss) and list(wrapped.matryoshka_dims) == [16, 8]
    assert loss_config(wrapped)["matryoshka_dims"] == [16, 8] and loss_config(plain)["temperature"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="matryoshka_dims"):
        contrastive_loss(model, matryoshka_dims=[0])
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(model, temperature=0)
