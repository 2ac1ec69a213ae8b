"""Statistics helpers of benchmarks/paper_comparison.py (no training here)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "paper_comparison.py"
_spec = importlib.util.spec_from_file_location("paper_comparison", _PATH)
pc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = pc  # dataclasses look their module up there
_spec.loader.exec_module(pc)


def test_one_run_has_no_std():
    assert pc.mean_std([0.5]) == (0.5, None)
    assert pc.format_mean_std([0.5]) == "0.5000 ± n/a"
    assert "± 0.0000" not in pc.format_mean_std([0.25])


def test_sample_std_over_seeds():
    mean, std = pc.mean_std([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2)
    assert std == pytest.approx(np.std([0.1, 0.2, 0.3], ddof=1))
    assert pc.format_mean_std([0.1, 0.2, 0.3]) == "0.2000 ± 0.1000"
    with pytest.raises(ValueError, match="no values"):
        pc.mean_std([])


def test_permutation_identical_inputs_give_p_one():
    x = np.random.default_rng(1).random(50)
    test = pc.paired_permutation_test(x, x.copy(), permutations=2000)
    assert test["p_value"] == pytest.approx(1.0)
    assert test["mean_diff"] == 0.0 and test["wins"] == test["losses"] == 0


def test_permutation_consistent_shift_gives_small_p():
    rng = np.random.default_rng(2)
    y = rng.random(60)
    x = y + 0.05 + 0.01 * rng.standard_normal(60)  # every query better by ~0.05
    test = pc.paired_permutation_test(x, y, permutations=2000)
    assert test["p_value"] < 0.001  # the smallest reachable value is 1/2001
    assert test["wins"] == 60
    assert test["mean_diff"] == pytest.approx(float(np.mean(x - y)))
    # two-sided: the reversed comparison gets the same p and the opposite difference
    reverse = pc.paired_permutation_test(y, x, permutations=2000)
    assert reverse["p_value"] == test["p_value"] and reverse["mean_diff"] == pytest.approx(-test["mean_diff"])


def test_permutation_noise_is_not_significant():
    rng = np.random.default_rng(3)
    y = rng.random(80)
    x = y + rng.choice([-0.1, 0.1], size=80)  # as many queries up as down, on average
    test = pc.paired_permutation_test(x, y, permutations=2000)
    assert test["p_value"] > 0.2 and test["wins"] + test["losses"] == 80


def test_seed_sign_check():
    same = pc.seed_sign_check({0: 0.02, 1: 0.01, 2: 0.005})
    assert same["consistent"] and same["positive"] == 3 and "all 3 seeds (+)" in same["verdict"]
    negative = pc.seed_sign_check({0: -0.02, 1: -0.01})
    assert negative["consistent"] and "(-)" in negative["verdict"]
    mixed = pc.seed_sign_check({0: 0.02, 1: -0.01, 2: 0.0})
    assert not mixed["consistent"] and mixed["verdict"] == "mixed (1+ / 1- / 1 tied)"
    assert mixed["per_seed_diff"] == {"0": 0.02, "1": -0.01, "2": 0.0}
    single = pc.seed_sign_check({0: 0.3})
    assert not single["consistent"] and single["verdict"].startswith("one seed")
    with pytest.raises(ValueError):
        pc.seed_sign_check({})


def test_holm_adjustment():
    adjusted = pc.holm([0.01, 0.04, 0.03, 0.5])
    # sorted: 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> monotone 0.09, 0.5*1=0.5
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert all(a >= p for a, p in zip(adjusted, [0.01, 0.04, 0.03, 0.5]))
    assert pc.holm([0.9, 0.9]) == [1.0, 1.0]
    assert math.isclose(pc.holm([0.2])[0], 0.2)


def test_quick_and_budget_labels():
    args = pc.resolve(pc.make_parser().parse_args(["--budget-scale", "5", "--pretrain-steps", "40"]))
    assert args.budget_label == "budget5x" and args.pretrain_steps_run == 200 and args.seeds == [0, 1, 2]
    quick = pc.resolve(pc.make_parser().parse_args(["--quick"]))
    assert quick.budget_label == "quick" and quick.seeds == [0] and quick.paper_lrs == [5e-5]
    assert quick.pretrain_steps_run == pc.QUICK["pretrain_steps"]
    with pytest.raises(SystemExit):
        pc.resolve(pc.make_parser().parse_args(["--seeds", "1", "1"]))
    tagged = pc.resolve(pc.make_parser().parse_args(["--tag", "rerun2"]))
    assert tagged.budget_label == "budget1x-rerun2"
    with pytest.raises(SystemExit, match="--tag"):
        pc.resolve(pc.make_parser().parse_args(["--tag", "../x"]))


def test_variant_labels_are_unique():
    args = pc.resolve(pc.make_parser().parse_args(["--preprocessing-ablation"]))
    keys = [v.key for v in pc.build_variants(args)]
    assert len(keys) == len(set(keys))
    assert {"b-paper-lr1e-05", "b-paper-lr5e-05", "b-paper-lr2e-04", "b-keepstop", "b-lm", "d-lm"} <= set(keys)


def _fake_runs(args, variants, reference_models, n_queries=12):
    """Results in the layout main() collects: per variant a score level, per query a small seeded jitter."""
    rng = np.random.default_rng(0)
    level = {v.key: 0.1 + 0.8 * i / len(variants) for i, v in enumerate(variants)}
    runs = {d: {} for d in pc.DOMAINS}
    for domain in pc.DOMAINS:
        for v in variants:
            for seed in ([None] if v.key in reference_models else args.seeds):
                scores = np.clip(level[v.key] + rng.normal(0, 0.01, n_queries), 0, 1)
                per_query = {f"q{i}": {"ndcg@10": float(x)} for i, x in enumerate(scores)}
                metrics = {m: float(scores.mean()) for m in pc.METRICS}
                runs[domain][f"{v.key}|{seed}"] = {"metrics": metrics, "per_query": per_query}
    return runs


def _fake_summary(*argv: str) -> dict:
    args = pc.resolve(pc.make_parser().parse_args([*argv, "--permutations", "200"]))
    variants = pc.build_variants(args)
    reference_models = {"bm25": "bm25", "minilm": "m", "a": "init"}
    return pc.summarize(args, variants, _fake_runs(args, variants, reference_models), reference_models)


def test_summary_reports_every_ablation_comparison_and_the_grid():
    report = _fake_summary("--preprocessing-ablation")
    for domain in pc.DOMAINS:
        tests = report["tests"][domain]
        assert [(t["x"], t["y"]) for t in tests["primary"]] == list(pc.PRIMARY)
        assert all("p_holm" in t for t in tests["primary"])
        pairs = [(t["x"], t["y"]) for t in tests["secondary"]]
        ablation_pairs = [pair for pair in pc.SECONDARY if "d-paper" not in pair]  # (d-paper) needs --paper-finetune
        assert pairs[:len(ablation_pairs)] == ablation_pairs
        best = report["paper_lr_grid"][domain]["best"]
        assert pairs[len(ablation_pairs):] == [(best, "a"), ("b", best)]
        rows = report["summary"][domain]
        assert rows["a"]["runs"] == 1 and rows["a"]["formatted"]["ndcg@10"].endswith("n/a")
        assert rows["ebae+lm"]["runs"] == 3 and len(rows["ebae+lm"]["per_seed_ndcg@10"]) == 3
        assert best == max((k for k in rows if k.startswith("b-paper")), key=lambda k: rows[k]["ndcg@10"])
    assert "EBAE + LM (EBAE weight 0.05; released rule 0.1) vs (b-lm) LM term only" in report["markdown"]


def test_summary_without_ablations_compares_the_main_variants_only():
    report = _fake_summary("--no-ablations")
    assert all(report["tests"][d]["secondary"] == [] for d in pc.DOMAINS)
    assert report["paper_lr_grid"] == {}


def _cut_run(seeds: list[str], cut_seed: int):
    """A --no-ablations run cut before (b-lm) and (d-lm) of ``cut_seed``: (args, variants, runs, reference_models)."""
    args = pc.resolve(pc.make_parser().parse_args(["--no-ablations", "--seeds", *seeds, "--permutations", "200"]))
    variants = pc.build_variants(args)
    reference_models = {"bm25": "bm25", "minilm": "m", "a": "init"}
    runs = _fake_runs(args, variants, reference_models)
    for domain in pc.DOMAINS:
        for key in ("b-lm", "d-lm"):
            del runs[domain][f"{key}|{cut_seed}"]
    return args, variants, runs, reference_models


def test_summary_of_an_unfinished_run_lists_the_missing_primary_comparisons():
    # --report-only on a run cut after (b), (c) and (d): the LM-only control and its fine-tuning have no results
    args, variants, runs, reference_models = _cut_run(["0"], cut_seed=0)
    report = pc.summarize(args, variants, runs, reference_models)
    for domain in pc.DOMAINS:
        tests = report["tests"][domain]
        assert [(t["x"], t["y"]) for t in tests["primary"]] == [("b", "a"), ("d", "c")]
        assert tests["primary_missing"] == ["b vs b-lm", "d vs d-lm"]
        assert "b-lm" not in report["summary"][domain] and report["summary"][domain]["d"]["runs"] == 1
    # Holm over the comparisons that ran, both domains in one family, for the query- and the seed-level tests
    family = [t for domain in pc.DOMAINS for t in report["tests"][domain]["primary"]]
    assert [t["p_holm"] for t in family] == pc.holm([t["p_value"] for t in family])
    assert [t["p_holm_seeds"] for t in family] == pc.holm([t["seed_level"]["sign_flip_seeds"]["p_value"] for t in family])
    # one seed: the seed-level bootstrap has no p-value, so it takes no part in its Holm family and reads n/a
    assert all(t["seed_level"]["bootstrap"]["p_value"] is None and "p_holm_bootstrap" not in t for t in family)
    assert "| n/a (one seed) |" in report["markdown"]
    assert "Not available yet (a variant has no results): b vs b-lm, d vs d-lm" in report["markdown"]
    assert "p queries (Holm, 4 primary, both domains)" in report["markdown"]
    full = _fake_summary("--no-ablations")
    assert all(full["tests"][d]["primary_missing"] == [] for d in pc.DOMAINS)
    assert "Not available yet" not in full["markdown"] and "p queries (Holm, 8 primary, both domains)" in full["markdown"]


def _load_compare_reruns():
    path = _PATH.parent / "compare_reruns.py"
    spec = importlib.util.spec_from_file_location("compare_reruns", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # finds paper_comparison in sys.modules (loaded above)
    return module


def _write_result(folder: Path, label: str, per_query: dict[str, float]) -> None:
    import json

    (folder / "results").mkdir(parents=True, exist_ok=True)
    record = {"metrics": {"ndcg@10": float(np.mean(list(per_query.values())))},
              "per_query": {q: {"ndcg@10": v} for q, v in per_query.items()}}
    (folder / "results" / f"{label}.json").write_text(json.dumps(record))


def test_compare_reruns_pairs_variants_seed_by_seed(tmp_path):
    cr = _load_compare_reruns()
    first, second = tmp_path / "first", tmp_path / "second"
    queries = [f"q{i}" for i in range(40)]
    base = {q: (i % 7) / 7 for i, q in enumerate(queries)}
    _write_result(first, "d-s0-debian", base)
    _write_result(second, "d-s0-debian", {q: min(1.0, v + 0.1) for q, v in base.items()})  # better on most queries
    _write_result(first, "c-s0-debian", base)
    _write_result(second, "c-s0-debian", base)  # reproduced exactly
    _write_result(first, "c-s1-debian", base)  # only in the first run: left out
    _write_result(first, "bm25-debian", base)  # a reference, not a trained variant: left out
    _write_result(second, "bm25-debian", base)
    report = cr.compare(first, second, permutations=2000)
    rows = {(r["variant"], r["seed"]): r for r in report["rows"]}
    assert set(rows) == {("c", 0), ("d", 0)}
    assert rows[("c", 0)]["identical_per_query"] and rows[("c", 0)]["diff"] == 0.0
    assert rows[("c", 0)]["p_value"] == 1.0
    d = rows[("d", 0)]
    assert not d["identical_per_query"] and d["diff"] > 0.05 and d["p_value"] < 0.01
    assert d["wins"] == sum(1 for v in base.values() if v < 1.0) and d["losses"] == 0
    assert "| d | 0 |" in cr.markdown(report) and "(identical)" in cr.markdown(report)


def test_compare_reruns_refuses_mismatched_runs(tmp_path):
    cr = _load_compare_reruns()
    first, second = tmp_path / "first", tmp_path / "second"
    _write_result(first, "d-s0-debian", {"q1": 0.5, "q2": 1.0})
    _write_result(second, "d-s0-debian", {"q1": 0.5, "q3": 1.0})
    with pytest.raises(SystemExit, match="different queries"):
        cr.compare(first, second)
    _write_result(second, "c-s1-debian", {"q1": 0.5})
    (second / "results" / "d-s0-debian.json").unlink()
    with pytest.raises(SystemExit, match="share no trained variant"):
        cr.compare(first, second)
    with pytest.raises(SystemExit, match="no results/ folder"):
        cr.compare(tmp_path / "missing", second)


def test_a_cut_run_compares_each_pair_over_the_seeds_both_ran():
    # --report-only on a run cut inside seed 1: (b), (c), (d) have seeds 0 and 1, the LM-only control seed 0 only
    args, variants, runs, reference_models = _cut_run(["0", "1"], cut_seed=1)
    report = pc.summarize(args, variants, runs, reference_models)
    # the same comparisons on a report that only ever had seed 0
    seed0 = pc.resolve(pc.make_parser().parse_args(["--no-ablations", "--seeds", "0", "--permutations", "200"]))
    only0 = {d: {k: r for k, r in runs[d].items() if not k.endswith("|1")} for d in pc.DOMAINS}
    report0 = pc.summarize(seed0, variants, only0, reference_models)
    for domain in pc.DOMAINS:
        tests = {(t["x"], t["y"]): t for t in report["tests"][domain]["primary"]}
        tests0 = {(t["x"], t["y"]): t for t in report0["tests"][domain]["primary"]}
        assert report["tests"][domain]["primary_missing"] == []
        assert tests[("d", "c")]["seeds_compared"] == [0, 1] and tests[("b", "a")]["seeds_compared"] == [0, 1]
        for pair in (("b", "b-lm"), ("d", "d-lm")):
            assert tests[pair]["seeds_compared"] == [0]
            # (b) seed 1 takes no part: mean difference and p equal those of the seed-0 report
            assert tests[pair]["mean_diff"] == pytest.approx(tests0[pair]["mean_diff"], abs=1e-12)
            assert tests[pair]["p_value"] == tests0[pair]["p_value"]
        # a pair with both seeds differs from its seed-0 value (seed 1 is averaged in)
        assert tests[("d", "c")]["mean_diff"] != pytest.approx(tests0[("d", "c")]["mean_diff"], abs=1e-9)
        assert report["summary"][domain]["b"]["runs"] == 2 and report["summary"][domain]["b-lm"]["runs"] == 1
    assert ("Compared over the seeds both variants ran (the run is not complete): (b) EBAE+EBAR (reference) vs "
            "(b-lm) LM term only: seed 0; (d) ft from (b) vs (d-lm) ft from (b-lm): seed 0") in report["markdown"]
    assert "Compared over the seeds" not in report0["markdown"]
    # the seed-level sign flip's floor depends on how many seeds a comparison shares
    assert "2/2^2 = 0.5000 (2/2^k for a comparison over the k seeds both variants ran)." in report["markdown"]
    assert "2/2^1 = 1.0000." in report0["markdown"]


def test_report_names_the_cpu_kind_of_each_seed_and_flags_pairs_that_mix_kinds():
    # seeds 0-1 ran on one kind; at seed 2 (b) ran on AMX, everything else on AVX512-BF16: (d), fine-tuned from
    # that (b), carries both kinds, so every comparison with (d) or (b) at seed 2 mixes them
    args = pc.resolve(pc.make_parser().parse_args(["--no-ablations", "--seeds", "0", "1", "2", "--permutations", "200"]))
    variants = pc.build_variants(args)
    reference_models = {"bm25": "bm25", "minilm": "m", "a": "init"}
    runs = _fake_runs(args, variants, reference_models)
    avx, amx = ["avx512_bf16"], ["amx_bf16", "avx512_bf16"]
    trained = ("b", "b-lm", "c", "d", "d-lm")
    timings = {f"{k}-s{s}": {"train_s": 1.0, "bf16_cpu_flags": avx} for k in trained for s in (0, 1, 2)}
    timings["b-s2"]["bf16_cpu_flags"] = amx
    del timings["c-s1"]["bf16_cpu_flags"]  # recorded before runs named their flags
    report = pc.summarize(args, variants, runs, reference_models, timings=timings)
    assert report["cpu_kinds_by_seed"] == {
        "0": {"AVX512-BF16": list(trained)},
        "1": {"AVX512-BF16": ["b", "b-lm", "d", "d-lm"], "unknown": ["c"]},
        "2": {"AMX-BF16": ["b"], "AVX512-BF16": ["b-lm", "c", "d", "d-lm"]},
    }
    for domain in pc.DOMAINS:
        tests = {(t["x"], t["y"]): t for t in report["tests"][domain]["primary"]}
        assert tests[("d", "c")]["cpu_kinds"] == {"0": ["AVX512-BF16"], "1": ["AVX512-BF16", "unknown"],
                                                  "2": ["AMX-BF16", "AVX512-BF16"]}
        assert tests[("b", "a")]["cpu_kinds"]["2"] == ["AMX-BF16"]  # (a) is untrained: no kind of its own
        assert tests[("d", "d-lm")]["cpu_kinds"]["0"] == ["AVX512-BF16"]
    md = report["markdown"]
    assert "| 2 | AMX-BF16 | b |" in md and "| 2 | AVX512-BF16 | b-lm, c, d, d-lm |" in md
    assert "(d) ft from (b) vs (c) ft from (a) (held-out Debian descriptions) at seed 2" in md
    assert "(b) EBAE+EBAR (reference) vs (b-lm) LM term only (held-out Debian descriptions) at seed 2" in md
    assert "vs (a) init (held-out Debian descriptions) at seed 2" not in md
    assert "at seed 1" not in md  # an unknown kind is not counted as a second kind
    # one kind everywhere: no mixed pair; no timings: no CPU section at all
    same = {k: {**v, "bf16_cpu_flags": avx} for k, v in timings.items()}
    assert "Every comparison pairs runs of one CPU kind at each seed." in pc.summarize(
        args, variants, runs, reference_models, timings=same)["markdown"]
    plain = pc.summarize(args, variants, runs, reference_models)
    assert plain["cpu_kinds_by_seed"] == {} and "CPU kind of each seed" not in plain["markdown"]


def test_paper_finetune_variant_reuses_the_grid_model_or_trains_its_own():
    with_grid = pc.build_variants(pc.resolve(pc.make_parser().parse_args(["--paper-finetune"])))
    by_key = {v.key: v for v in with_grid}
    assert by_key["d-paper"].stage == "finetune" and by_key["d-paper"].base == "b-paper-lr5e-05"
    assert by_key["b-paper-lr5e-05"].group == "paper-grid" and by_key["b-paper-lr5e-05"].keep_model
    assert [v.key for v in with_grid].count("b-paper-lr5e-05") == 1
    assert not by_key["b-paper-lr1e-05"].keep_model  # only (d-paper)'s base is kept
    alone = pc.build_variants(pc.resolve(pc.make_parser().parse_args(
        ["--paper-finetune", "--no-ablations", "--paper-finetune-lr", "2e-4"])))
    by_key = {v.key: v for v in alone}
    base = by_key[by_key["d-paper"].base]
    assert base.key == "b-paper-lr2e-04" and base.group == "paper-ft" and base.keep_model
    assert base.overrides == {"loss_mode": "paper", "learning_rate": 2e-4}
    keys = [v.key for v in alone]
    assert keys.index(base.key) < keys.index("d-paper")  # the base trains first inside its group
    assert "d-paper" not in {v.key for v in pc.build_variants(pc.resolve(pc.make_parser().parse_args([])))}


def test_summary_compares_the_paper_finetune_with_d_and_c():
    report = _fake_summary("--no-ablations", "--paper-finetune")
    for domain in pc.DOMAINS:
        pairs = [(t["x"], t["y"]) for t in report["tests"][domain]["secondary"]]
        assert pairs == [("d-paper", "d"), ("d-paper", "c")]
        assert report["paper_lr_grid"] == {}  # its stage-1 model is not a grid point without the grid
        assert report["summary"][domain]["d-paper"]["runs"] == 3
    assert "(d-paper) ft from (b-paper) lr 5e-05 vs (d) ft from (b)" in report["markdown"]


def _fake_pipeline_run(tmp_path, monkeypatch, have_results: dict[str, bool], argv: list[str],
                       reported: list | None = None, score=None) -> list[tuple[str, str]]:
    """Run main() with the pipeline's stages replaced by recorders; returns the (stage, variant) trained.
    ``reported`` (a list) receives the "variant|seed" keys of the Debian results handed to the report;
    ``score(label)`` gives the nDCG@10 of each evaluation (default 0)."""
    from llara import pipeline as p

    trained: list[tuple[str, str]] = []
    init = tmp_path / "init"
    init.mkdir()
    (init / "config.json").write_text("{}")
    (tmp_path / "out" / "data" / "pydocs").mkdir(parents=True)
    (tmp_path / "out" / "data" / "pydocs" / "corpus.jsonl").write_text("")

    def train(stage):
        def run(cfg, base, data, out=None, **overrides):
            assert p._done(Path(base)), f"{stage} started from a missing model {base}"
            out.mkdir(parents=True)
            (out / "config.json").write_text("{}")
            trained.append((stage, out.name))
            return out
        return run

    monkeypatch.setattr(p, "prepare_data", lambda cfg: {"test": tmp_path, "train": tmp_path / "t", "pretrain": tmp_path})
    monkeypatch.setattr(p, "init_model", lambda cfg: init)
    monkeypatch.setattr(p, "pretrain", train("pretrain"))
    monkeypatch.setattr(p, "finetune", train("finetune"))
    monkeypatch.setattr(p, "mine", lambda cfg, train_path: train_path)
    monkeypatch.setattr(p, "evaluate", lambda cfg, model, beir_dir, label, dataset_name="":
                        {"metrics": {"ndcg@10": score(label) if score else 0.0, "mrr@10": 0.0, "recall@100": 0.0}})
    monkeypatch.setattr(pc, "write_validation", lambda args, root, shared: {d: (tmp_path, d) for d in pc.DOMAINS})
    def summarize(args, variants, runs, reference_models, val_runs=None, timings=None):
        if reported is not None:
            reported.extend(runs["debian"])
        return {"markdown": ""}

    monkeypatch.setattr(pc, "summarize", summarize)
    monkeypatch.setattr(pc, "write_outputs", lambda *a: None)
    monkeypatch.setattr(pc, "write_budgets_table", lambda *a: None)
    (tmp_path / "out" / "data" / "seed0").mkdir(parents=True)
    (tmp_path / "out" / "data" / "seed0" / "train.jsonl").write_text("")
    results = tmp_path / "out" / "quick" / "results"
    results.mkdir(parents=True)
    for key, present in have_results.items():
        if present:
            for domain in pc.DOMAINS:
                (results / f"{key}-s0-{domain}.json").write_text("{}")
    assert pc.main(["--quick", "--out", str(tmp_path / "out"), *argv]) == 0
    return trained


def test_copied_results_without_models_rebuild_only_the_bases_still_needed(tmp_path, monkeypatch):
    # results of (b), (b-lm), (c), (d) present (e.g. copied from another machine), their models gone, (d-lm) to run:
    # (b-lm) is retrained because (d-lm) starts from it; (b) is not, since (d) already has its results
    trained = _fake_pipeline_run(tmp_path, monkeypatch, {"b": True, "b-lm": True, "c": True, "d": True, "d-lm": False},
                                 ["--no-ablations"])
    assert trained == [("pretrain", "b-lm"), ("finetune", "d-lm")]


def test_every_result_present_trains_nothing_and_ablations_run_alone(tmp_path, monkeypatch):
    main = {"b": True, "b-lm": True, "c": True, "d": True, "d-lm": True}
    trained = _fake_pipeline_run(tmp_path, monkeypatch, main, [])
    # only the ablations and the paper grid train (they start from the init model)
    assert trained == [("pretrain", "ebae_lm"), ("pretrain", "ebae"), ("pretrain", "ebar_lm"), ("pretrain", "ebar"),
                       ("pretrain", "b-paper-lr5e-05")]


def test_groups_trains_only_the_named_groups_and_still_reports_the_others(tmp_path, monkeypatch):
    # main variants done, EBAE+LM done, the rest of the ablations not: --groups paper-grid trains the grid alone,
    # and the report still gets every result present (main variants and EBAE+LM), not the missing ablations
    have = {"b": True, "b-lm": True, "c": True, "d": True, "d-lm": True, "ebae+lm": True}
    reported: list[str] = []
    trained = _fake_pipeline_run(tmp_path, monkeypatch, have, ["--groups", "paper-grid"], reported)
    assert trained == [("pretrain", "b-paper-lr5e-05")]
    assert {k.split("|")[0] for k in reported} == {"bm25", "minilm", "a", "b", "b-lm", "c", "d", "d-lm", "ebae+lm",
                                                   "b-paper-lr5e-05"}


def test_only_trains_the_named_variants_and_the_bases_they_need(tmp_path, monkeypatch):
    # (c) and the LM-only controls are left alone; (d) alone still trains its missing stage 1 first
    trained = _fake_pipeline_run(tmp_path, monkeypatch, {}, ["--no-ablations", "--groups", "main", "--only", "b", "d"])
    assert trained == [("pretrain", "b"), ("finetune", "d")]
    (tmp_path / "2").mkdir()
    trained = _fake_pipeline_run(tmp_path / "2", monkeypatch, {}, ["--no-ablations", "--only", "d-lm"])
    assert trained == [("pretrain", "b-lm"), ("finetune", "d-lm")]


def test_only_refuses_an_unknown_variant(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="--only d-best: no such variant"):
        _fake_pipeline_run(tmp_path, monkeypatch, {}, ["--no-ablations", "--only", "d", "d-best"])


def test_groups_of_a_disabled_group_is_refused(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="--groups ablation: no variant of that group"):
        _fake_pipeline_run(tmp_path, monkeypatch, {}, ["--no-ablations", "--groups", "ablation"])


def test_seed_level_tests_floor_and_direction():
    import numpy as np

    rng = np.random.default_rng(0)
    y = rng.uniform(0, 1, size=(5, 60))
    # Given a shift that every seed shares
    shifted = pc.seed_level_tests(y + 0.1, y, boots=2000)
    # Then the exact sign flip over 5 seeds sits at its floor 2/2^5 and the bootstrap is far below it
    assert shifted["sign_flip_seeds"]["p_value"] == shifted["sign_flip_seeds"]["p_floor"] == 2 / 32
    assert shifted["bootstrap"]["p_value"] < 0.01 and shifted["bootstrap"]["ci95"][0] > 0
    assert abs(shifted["mean_diff"] - 0.1) < 1e-12
    # Given identical runs, or a gain that only one seed of five shows
    same = pc.seed_level_tests(y, y.copy(), boots=2000)
    one_seed = y.copy()
    one_seed[0] += 0.3
    lucky = pc.seed_level_tests(one_seed, y, boots=2000)
    # Then nothing is significant: a seed-level test does not count the queries of one lucky run as evidence
    assert same["sign_flip_seeds"]["p_value"] == 1.0 and same["bootstrap"]["p_value"] == 1.0
    assert lucky["sign_flip_seeds"]["p_value"] > 0.05 and lucky["bootstrap"]["p_value"] > 0.05
    query_level = pc.paired_permutation_test(one_seed.mean(0), y.mean(0), permutations=2000)
    assert query_level["p_value"] < 0.01  # ... which the query-level test on seed-averaged scores does


def test_seed_level_bootstrap_of_one_seed_has_no_p_value():
    import numpy as np

    y = np.random.default_rng(1).uniform(0, 1, size=(1, 60))
    # Given one training run with a large query-level gain
    one = pc.seed_level_tests(y + 0.2, y, boots=500)
    # Then the seed-level bootstrap reports nothing (it would only resample the queries) and the sign flip sits at 1
    assert one["bootstrap"]["p_value"] is None and one["bootstrap"]["ci95"] is None
    assert one["sign_flip_seeds"]["p_value"] == 1.0 == one["sign_flip_seeds"]["p_floor"]


# validation scores of the selection candidates (mean of the two domains decides among the LM-free ones)
CANDIDATE_SCORES = {"sel-reference-lr5e-05": (0.9, 0.9), "sel-paper-lr5e-05": (0.5, 0.6), "sel-ebae-lr5e-05": (0.7, 0.5),
                    "sel-ebar-lr5e-05": (0.4, 0.4)}


def _candidate_score(label: str) -> float:
    for key, (debian, pydocs) in CANDIDATE_SCORES.items():
        if label.startswith(key + "-"):
            return debian if label.endswith("-val-debian") else pydocs
    return 0.8 if label.startswith("d-best-") else 0.0


def test_select_trains_candidates_at_one_seed_then_carries_the_best_lm_free_one(tmp_path, monkeypatch):
    main = {"b": True, "b-lm": True, "c": True, "d": True, "d-lm": True}
    labels: list[str] = []

    def score(label):
        labels.append(label)
        return _candidate_score(label)

    trained = _fake_pipeline_run(tmp_path, monkeypatch, main, ["--no-ablations", "--select"], score=score)
    # every candidate trains at the first seed; then the chosen one is not retrained: (b-best) at that seed is the
    # candidate's model, and (d-best) fine-tunes from it
    assert trained == [("pretrain", "sel-paper-lr5e-05"), ("pretrain", "sel-ebae-lr5e-05"),
                       ("pretrain", "sel-ebar-lr5e-05"), ("pretrain", "sel-reference-lr5e-05"), ("finetune", "d-best")]
    work = tmp_path / "out" / "quick"
    selection = __import__("json").loads((work / "selection.json").read_text())
    # the reference recipe scores best overall but is not LM-free; among the LM-free ones ebae (0.6) beats paper (0.55)
    assert selection["selected"]["key"] == "sel-ebae-lr5e-05" and selection["best_overall"] == "sel-reference-lr5e-05"
    assert selection["split"] == "validation" and set(selection["candidates"]) == set(CANDIDATE_SCORES)
    assert (work / "models" / "seed0" / "b-best" / "config.json").is_file()
    assert pc.selected_candidate(pc.resolve(pc.make_parser().parse_args(
        ["--quick", "--select", "--out", str(tmp_path / "out")])))["key"] == "sel-ebae-lr5e-05"
    # a selection made from other candidates is not this run's
    assert pc.selected_candidate(pc.resolve(pc.make_parser().parse_args(
        ["--quick", "--select", "--select-recipes", "paper", "ebar", "--out", str(tmp_path / "out")]))) is None
    # candidates are scored on validation only; the references and the fine-tuned models on both
    assert [x for x in labels if x.startswith("sel-ebae")] == ["sel-ebae-lr5e-05-s0-val-debian", "sel-ebae-lr5e-05-s0-val-pydocs"]
    for key in ("bm25", "a"):
        assert {f"{key}-debian", f"{key}-val-debian", f"{key}-pydocs", f"{key}-val-pydocs"} <= set(labels)
    assert {"d-best-s0-debian", "d-best-s0-val-debian", "b-best-s0-debian", "b-best-s0-val-pydocs"} <= set(labels)


def test_best_group_needs_a_complete_selection(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="selection is not complete"):
        _fake_pipeline_run(tmp_path, monkeypatch, {}, ["--no-ablations", "--select", "--groups", "best"])


def test_validation_summary_decides_the_default(tmp_path):
    args = pc.resolve(pc.make_parser().parse_args(["--quick", "--select", "--seeds", "0", "1", "--out", str(tmp_path)]))
    args.seeds = [0, 1]
    variants = pc.build_variants(args)

    def run(x):
        return {"metrics": {"ndcg@10": x}}

    val = {"debian": {"d|0": run(0.50), "d|1": run(0.52), "d-best|0": run(0.55), "d-best|1": run(0.53)},
           "pydocs": {"d|0": run(0.40), "d-best|0": run(0.41), "d-best|1": run(0.10)}}
    # no selection.json: no (d-best) variant; the decision needs the rows of both
    out = pc.validation_summary(args, variants, val, {})
    assert out["decision"]["switch"] is None and "not complete" in "\n".join(out["markdown"])
    variants += [pc.Variant("d-best", "(d-best)", "finetune", "b-best", group="best", splits=("test", "validation"))]
    out = pc.validation_summary(args, variants, val, {})
    # Debian over seeds 0 and 1: +0.03; docstrings only seed 0 is shared: +0.01 -> beats in both
    assert out["decision"]["per_domain"]["debian"]["seeds"] == ["0", "1"]
    assert out["decision"]["per_domain"]["pydocs"]["seeds"] == ["0"]
    assert out["decision"]["switch"] is True
    val["pydocs"]["d-best|0"] = run(0.39)
    assert pc.validation_summary(args, variants, val, {})["decision"]["switch"] is False


def test_staged_selection_compares_recipes_at_one_lr_then_tunes_the_best_lm_free_one():
    args = pc.resolve(pc.make_parser().parse_args(["--select", "--select-lrs", "5e-5", "1e-5", "2e-4"]))
    val = {d: {} for d in pc.DOMAINS}
    plan, final = pc.selection_plan(args, val, 0)
    assert plan == [(r, 5e-5) for r in ("paper", "ebae", "ebar", "reference")] and not final
    for recipe, score in (("reference", 0.9), ("paper", 0.5), ("ebae", 0.6), ("ebar", 0.4)):
        for d in pc.DOMAINS:
            val[d][f"{pc.candidate_key(recipe, 5e-5)}|0"] = {"metrics": {"ndcg@10": score}}
    plan, final = pc.selection_plan(args, val, 0)
    # the best LM-free recipe at 5e-5 is ebae (reference scores higher but keeps the LM term)
    assert final and plan[3:] == [("ebae", 1e-5), ("ebae", 2e-4), ("reference", 5e-5)]
    assert pc.make_selection(args, val, 0) is None  # its other lrs have no results yet
    for lr, score in ((1e-5, 0.7), (2e-4, 0.2)):
        for d in pc.DOMAINS:
            val[d][f"{pc.candidate_key('ebae', lr)}|0"] = {"metrics": {"ndcg@10": score}}
    selection = pc.make_selection(args, val, 0)
    assert selection["selected"]["key"] == "sel-ebae-lr1e-05" and selection["search"] == "staged"
    assert len(selection["candidates"]) == 6
    grid = pc.resolve(pc.make_parser().parse_args(["--select", "--select-search", "grid"]))
    assert len(pc.selection_plan(grid, val, 0)[0]) == 12
