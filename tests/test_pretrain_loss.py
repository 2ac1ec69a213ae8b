"""EBAE/EBAR bag-of-words loss vs a naive loop; loss modes; the pretraining collator."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from modeling_llara.pretraining_llara import SEGMENT_PREDICT, SEGMENT_SUMMARIZE, SEGMENT_TEXT
import trainers.pretraining.loss as loss_impl
from trainers.pretraining import EbaeEbarLoss, PretrainingCollator, bow_loss_from_logits
from trainers.pretraining.collator import clean_target_text, english_stopwords


def _naive_bow(logits, targets, ignore):
    """The released code's loss, one example at a time."""
    losses = []
    for row in range(logits.shape[0]):
        ids = targets[row][targets[row] >= 0]
        ids = torch.unique(ids)
        ids = ids[~torch.isin(ids, ignore)]
        if ids.numel() == 0:
            continue
        log_probs = torch.log_softmax(logits[row].max(dim=0).values, dim=-1)
        losses.append(-log_probs[ids].mean())
    return torch.stack(losses).mean()


def test_vectorized_bow_loss_matches_naive_loop():
    # Given logits at 8 positions and targets with repeats, padding, ignored ids and an empty row
    torch.manual_seed(0)
    logits = torch.randn(5, 8, 50, requires_grad=True)
    targets = torch.tensor(
        [
            [4, 4, 4, 9, 1, -1, -1],
            [0, 49, 3, 3, 2, 7, 7],
            [1, 2, -1, -1, -1, -1, -1],  # only ignored ids: no target
            [-1, -1, -1, -1, -1, -1, -1],
            [10, 11, 12, 13, 14, 15, 10],
        ]
    )
    ignore = torch.tensor([1, 2])
    # When the vectorized loss runs
    loss, has_target = bow_loss_from_logits(logits, targets, ignore)
    grad = torch.autograd.grad(loss, logits)[0]
    # Then value and gradient equal the loop, and empty rows are left out of the mean
    ref = _naive_bow(logits, targets, ignore)
    ref_grad = torch.autograd.grad(ref, logits)[0]
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)
    assert has_target.tolist() == [True, True, False, False, True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_pool_gradient_equals_amax_with_ties(dtype):
    # Given logits (fp32, or bf16 as under autocast) where some vocabulary entries tie across 2 or 3 positions
    torch.manual_seed(0)
    logits = torch.randn(3, 8, 40).to(dtype)
    logits[:, 5, :10] = logits[:, 2, :10]  # two-way ties (maxima for some entries)
    logits[0, 7, :4] = logits[0, 2, :4]  # three-way
    logits[1, :, 20] = 1.0  # all eight equal
    upstream = torch.randn(3, 40)
    # When pooled by the loss's max-over-positions and by autograd's amax
    mine, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    pooled = loss_impl._MaxOverPositions.apply(mine.float())
    (pooled * upstream).sum().backward()
    expected = ref.float().amax(dim=1)
    (expected * upstream).sum().backward()
    # Then values and gradients are the same, ties sharing the gradient evenly
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)
    torch.testing.assert_close(mine.grad, ref.grad, rtol=0, atol=1e-7)
    assert mine.grad[1, :, 20].unique().numel() == 1 and mine.grad[1, 0, 20] != 0


def test_bow_loss_without_any_target_is_zero_and_connected():
    logits = torch.randn(2, 8, 20, requires_grad=True)
    loss, has_target = bow_loss_from_logits(logits, torch.full((2, 3), -1))
    loss.backward()
    assert loss.item() == 0.0 and not has_target.any() and logits.grad is not None


def test_loss_modes():
    torch.manual_seed(1)
    out = SimpleNamespace(
        summarize_logits=torch.randn(3, 8, 30), predict_logits=torch.randn(3, 8, 30), lm_loss=torch.tensor(2.5)
    )
    ebae_t, ebar_t = torch.randint(0, 30, (3, 6)), torch.randint(0, 30, (3, 6))
    ebae = bow_loss_from_logits(out.summarize_logits, ebae_t)[0]
    ebar = bow_loss_from_logits(out.predict_logits, ebar_t)[0]
    reference, parts = EbaeEbarLoss("reference")(out, ebae_t, ebar_t)
    torch.testing.assert_close(reference, 2.5 + (ebae / 10 + ebar / 10) / 2)
    assert set(parts) == {"ebae", "ebar", "lm"}
    paper, parts = EbaeEbarLoss("paper")(out, ebae_t, ebar_t)
    torch.testing.assert_close(paper, ebae + ebar)
    assert set(parts) == {"ebae", "ebar"}
    custom, _ = EbaeEbarLoss("paper", ebar_weight=0.0, lm_weight=2.0)(out, ebae_t, ebar_t)
    torch.testing.assert_close(custom, ebae + 5.0)
    with pytest.raises(ValueError, match="loss mode"):
        EbaeEbarLoss("other")
    assert EbaeEbarLoss().get_config_dict()["ebae_weight"] == 0.05 and "2312.15503" in EbaeEbarLoss().citation


def test_reference_mode_with_one_bag_of_words_term_uses_it_alone():
    # Given the released combination: average the bag-of-words losses that are present, each divided by 10
    def released(lm, terms):
        return lm + sum(term / 10 for term in terms) / len(terms)

    torch.manual_seed(2)
    out = SimpleNamespace(
        summarize_logits=torch.randn(3, 8, 30), predict_logits=torch.randn(3, 8, 30), lm_loss=torch.tensor(1.5)
    )
    ebae_t, ebar_t = torch.randint(0, 30, (3, 6)), torch.randint(0, 30, (3, 6))
    ebae = bow_loss_from_logits(out.summarize_logits, ebae_t)[0]
    ebar = bow_loss_from_logits(out.predict_logits, ebar_t)[0]
    # When one term is switched off in reference mode ("EBAE + LM", "EBAR + LM")
    ebae_lm, parts = EbaeEbarLoss("reference", ebar_weight=0.0)(out, ebae_t, ebar_t)
    ebar_lm, _ = EbaeEbarLoss("reference", ebae_weight=0.0)(out, ebae_t, ebar_t)
    # Then the other counts alone, as in the released code; both present stay averaged; explicit weights win
    torch.testing.assert_close(ebae_lm, released(1.5, [ebae]))
    torch.testing.assert_close(ebar_lm, released(1.5, [ebar]))
    torch.testing.assert_close(EbaeEbarLoss("reference")(out, ebae_t, ebar_t)[0], released(1.5, [ebae, ebar]))
    assert EbaeEbarLoss("reference", ebar_weight=0.0, ebae_weight=0.3).ebae_weight == 0.3
    assert EbaeEbarLoss("reference", ebae_weight=0.0, ebar_weight=0.0).get_config_dict()["lm_weight"] == 1.0


@pytest.fixture(scope="module")
def tokenizer(tiny_llara_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llara_dir, trust_remote_code=True)


@pytest.fixture(scope="module")
def config(tiny_llara_dir):
    from modeling_llara import LlaraConfig

    return LlaraConfig.from_pretrained(tiny_llara_dir)


def test_collator_truncates_text_before_suffixes(tokenizer, config):
    # Given a text far longer than the row budget
    collator = PretrainingCollator(tokenizer, config, max_length=140, padding_side="left")
    long_text = "x" * 500
    batch = collator([{"input": long_text, "next": "next passage"}, {"input": "ab", "next": None}])
    # Then the long row is exactly max_length, its text cut to the budget, both suffixes whole
    seg = batch["segment_ids"]
    assert batch["input_ids"].shape[1] == 140
    builder = collator.builder
    n_prefix, n_sum, n_pred = len(builder.prefix_ids), len(builder.suffix_ids["summarize"]), len(builder.suffix_ids["predict"])
    assert (seg[0] == SEGMENT_TEXT).sum() == n_prefix + collator.text_budget
    assert batch["input_ids"][0][seg[0] == SEGMENT_SUMMARIZE].tolist() == builder.suffix_ids["summarize"]
    assert batch["input_ids"][0][seg[0] == SEGMENT_PREDICT].tolist() == builder.suffix_ids["predict"]
    assert n_prefix + collator.text_budget + n_sum + n_pred == 140
    # And left padding fills the front of the short row
    assert seg[1, 0] == 0 and seg[1, -1] == SEGMENT_PREDICT
    assert torch.equal(batch["attention_mask"], (seg != 0).long())
    # And the EBAE target is the text the model sees; a missing next passage has no EBAR target
    ebae = batch["ebae_target_ids"][0]
    assert ebae[ebae >= 0].tolist() == tokenizer("x" * collator.text_budget, add_special_tokens=False)["input_ids"]
    assert (batch["ebar_target_ids"][1] < 0).all()
    # And lm labels predict the next token of prefix + text
    row, labels = batch["input_ids"][1], batch["lm_labels"][1]
    positions = (labels != -100).nonzero().flatten()
    assert torch.equal(labels[positions], row[positions + 1])


def test_collator_targets_drop_specials_and_stopwords(tokenizer, config):
    collator = PretrainingCollator(tokenizer, config, max_length=200, remove_stopwords=True)
    nxt = "The cats, and THE dogs!! <s1> </s>"
    assert clean_target_text(nxt, english_stopwords()) == "cats dogs s1"
    batch = collator([{"input": "Of the river.", "next": nxt, "summarize_target": "bridges of stone"}])
    ebar = batch["ebar_target_ids"][0]
    expected = tokenizer("cats dogs s1", add_special_tokens=False)["input_ids"]
    assert ebar[ebar >= 0].tolist() == expected
    ebae = batch["ebae_target_ids"][0]
    assert ebae[ebae >= 0].tolist() == tokenizer("bridges stone", add_special_tokens=False)["input_ids"]
    plain = PretrainingCollator(tokenizer, config, max_length=200)
    raw = plain([{"input": "a", "next": "x <s1></s>"}])["ebar_target_ids"][0]
    # special-token strings in text are plain text; real special ids never are targets
    assert not set(raw.tolist()) & set(plain.ignore_ids)


def test_collator_rejects_bad_records(tokenizer, config):
    collator = PretrainingCollator(tokenizer, config, max_length=200)
    with pytest.raises(TypeError, match="record 1"):
        collator([{"input": "ok", "next": None}, {"input": None}])
    with pytest.raises(ValueError, match="no room for text"):
        PretrainingCollator(tokenizer, config, max_length=50)
