"""End-to-end comparison cells on tiny random models."""

import math

import numpy as np
import torch
from dataclasses import replace

import pytest

from icl_lens.errors import ConfigError
from icl_lens.cell.experiment import ExperimentConfig, run_experiment
from icl_lens.training.finetune import FinetuneConfig
from icl_lens.metrics import simaou_random_per_example
from icl_lens.cell.nulls import null_seeds, shuffled_pair, wrong_labels
from icl_lens.tasks import get_task

CFG = ExperimentConfig(task="sst2", model="tiny", k=3, limit=6, lr=1e-2, batch_size=3)


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield prefix, float(value)


def test_every_setting_and_metric_is_reported(tiny_llama):
    r = run_experiment(tiny_llama, get_task("sst2"), CFG, progress=False).results
    n_layers = tiny_llama.cfg.n_layers
    assert set(r["accuracy"]) == {"zsl", "icl", "ft", "lcgd"}
    for setting in ("ft", "lcgd"):
        m = r["metrics"][setting]
        for name in ("simaou", "simam", "simam_delta"):
            assert len(m[name]["per_layer"]) == n_layers
            assert m[name]["mean"] == pytest.approx(sum(m[name]["per_layer"]) / n_layers)
            assert all(-1 - 1e-9 <= v <= 1 + 1e-9 for v in m[name]["per_layer"])
        counts = m["prediction_changes"]
        assert counts["n_examples"] == 6
        assert 0 <= m["token_overlap"]["token_overlap"] <= 1
        assert len(r["training"][setting]["grad_norms"]) == 3
    assert 0 < r["metrics"]["alpha"]["mean"] < 1
    assert len(r["examples"]) == 6 and set(r["examples"][0]["prediction"]) == {"zsl", "icl", "ft", "lcgd"}


def test_fast_path_metrics_equal_straightforward_path(tiny_llama):
    """Prefix reuse + batching changes no class score and no metric by more than 1e-4."""
    fast = run_experiment(tiny_llama, get_task("sst2"), CFG, progress=False).results
    slow = run_experiment(tiny_llama, get_task("sst2"), replace(CFG, reuse_prefix=False, batch_size=1),
                          progress=False).results
    fast_values = dict(_flatten({"metrics": fast["metrics"], "examples": fast["examples"],
                                 "accuracy": fast["accuracy"]}))
    slow_values = dict(_flatten({"metrics": slow["metrics"], "examples": slow["examples"],
                                 "accuracy": slow["accuracy"]}))
    assert fast_values.keys() == slow_values.keys()
    worst = max(abs(fast_values[k] - slow_values[k]) for k in fast_values
                if not (math.isnan(fast_values[k]) and math.isnan(slow_values[k])))
    assert worst <= 1e-4


def test_zero_shot_only_run(tiny_gpt):
    r = run_experiment(tiny_gpt, get_task("subj"), replace(CFG, settings=("zsl",), k=0), progress=False).results
    assert set(r["accuracy"]) == {"zsl"} and "ft" not in r["metrics"]


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown settings"):
        ExperimentConfig(settings=("zsl", "gd"))
    with pytest.raises(ConfigError, match="k = 0"):
        ExperimentConfig(k=0)
    cfg = ExperimentConfig(k=4, lr=1e-3)
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_content_free_calibration_shifts_scores_by_a_per_class_constant(tiny_gpt):
    raw = run_experiment(tiny_gpt, get_task("sst2"), replace(CFG, settings=("zsl", "icl"), calibration="none"),
                         progress=False)
    cal = run_experiment(tiny_gpt, get_task("sst2"), replace(CFG, settings=("zsl", "icl"),
                                                             calibration="content_free"), progress=False)
    for setting in ("zsl", "icl"):
        raw_scores = raw.runs[setting].class_scores.log_softmax(-1)
        shift = raw_scores - cal.runs[setting].class_scores
        assert torch.allclose(shift, shift[:1].expand_as(shift), atol=1e-5)  # same offset for every query
        cf = torch.tensor(cal.results["calibration"]["content_free_scores"][setting]).log_softmax(-1)
        assert torch.allclose(shift[0], cf, atol=1e-5)


def test_lr_sweep_skips_diverging_rates_and_records_its_choice(tiny_gpt):
    cfg = replace(CFG, lr=None, lr_mode="sweep", lr_grid=(1e-3, 1e-2, 1e30), lr_dev_size=6,
                  settings=("zsl", "icl", "ft"), finetune=FinetuneConfig(params="all"))
    r = run_experiment(tiny_gpt, get_task("sst2"), cfg, progress=False).results
    record = r["lr"]
    assert record["mode"] == "sweep" and record["criterion"] == "dev" and record["n_scored"] == 6
    assert record["scores"]["1e+30"] is None  # diverged
    assert record["lr"] in (1e-3, 1e-2)
    best = max(v for v in record["scores"].values() if v is not None)
    assert record["scores"][repr(record["lr"])] == best
    assert r["config"]["finetune"]["lr"] == 1e-3  # the config keeps the base; the run used the sweep's lr
    ids = r["query_ids"]  # chosen on the dev slice, recorded beside the evaluation queries
    assert ids["dev_used_for"] == ["lr"] and len(ids["dev"]) == record["n_scored"] == 6
    assert ids["dev_split"] == "train" and ids["eval_split"] == "validation"
    assert not set(ids["dev"]) & {d["row_index"] for d in r["demonstrations"]}


def test_lcgd_lr_swept_with_lcgd_itself(tiny_gpt, monkeypatch):
    """--lcgd-lr-sweep trains LCGD at every grid rate (not GD) and LCGD runs at the chosen rate."""
    import icl_lens.cell.experiment as experiment

    trained_lcgd_lrs = []
    real = experiment.layer_causal_finetune

    def spy(model, seqs, answers, cfg, schedule="simultaneous", progress=True):
        trained_lcgd_lrs.append(cfg.lr)
        return real(model, seqs, answers, cfg, schedule, progress=progress)

    monkeypatch.setattr(experiment, "layer_causal_finetune", spy)
    cfg = replace(CFG, lr=1e-3, lcgd_lr_sweep=True, lr_grid=(1e-3, 1e30), lr_dev_size=6, settings=("zsl", "icl", "lcgd"),
                  finetune=FinetuneConfig(params="all"))
    r = run_experiment(tiny_gpt, get_task("sst2"), cfg, progress=False).results
    record = r["lcgd_lr"]
    assert record["mode"] == "sweep" and record["scores"]["1e+30"] is None and record["lr"] == 1e-3
    assert trained_lcgd_lrs[:2] == [1e-3, 1e30] and trained_lcgd_lrs[2:] == [1e-3]  # sweep, then the run
    assert r["lr"] == {"lr": 1e-3, "mode": "given"}
    same = run_experiment(tiny_gpt, get_task("sst2"), replace(CFG, lr=1e-3, settings=("zsl", "lcgd")),
                          progress=False).results
    assert same["lcgd_lr"] == {"lr": 1e-3, "mode": "same as ft"}


def test_fields_added_later_keep_finished_cells_valid():
    """A field at its default is left out of the config dict and the cell name's digest."""
    cfg = ExperimentConfig(k=4, lr=1e-3)
    assert "lcgd_lr_sweep" not in cfg.to_dict()
    swept = replace(cfg, lcgd_lr_sweep=True)
    assert swept.to_dict()["lcgd_lr_sweep"] is True and swept.cell_name() != cfg.cell_name()
    assert ExperimentConfig.from_dict(swept.to_dict()) == swept
    with pytest.raises(ConfigError, match="not both"):
        ExperimentConfig(lcgd_lr=1e-3, lcgd_lr_sweep=True)


def _ci_ok(value, ci, tol=1e-9):
    low, high = ci
    assert all(math.isfinite(v) for v in (value, low, high)), (value, ci)
    assert low - tol <= value <= high + tol, (value, ci)


def _summary_ok(summary, n_layers):
    _ci_ok(summary["mean"], summary["ci"])
    assert len(summary["per_layer"]) == len(summary["per_layer_ci"]) == n_layers
    for value, ci in zip(summary["per_layer"], summary["per_layer_ci"]):
        _ci_ok(value, ci)


def test_results_carry_intervals_tests_nulls_and_per_example_values(tiny_llama):
    cfg = replace(CFG, limit=8, bootstrap_resamples=200)
    r = run_experiment(tiny_llama, get_task("sst2"), cfg, progress=False).results
    n_layers, n = tiny_llama.cfg.n_layers, 8
    assert r["uncertainty"] == {"method": "percentile bootstrap over queries", "n_resamples": 200,
                                "confidence": 0.95, "seed": 0}
    for setting in ("zsl", "icl", "ft", "lcgd"):
        _ci_ok(r["accuracy"][setting], r["accuracy_ci"][setting])
        correct = r["per_example"]["correct"][setting]
        assert len(correct) == n and sum(correct) / n == pytest.approx(r["accuracy"][setting])
    for name in ("alpha", "simam_zsl", "simaou_random"):
        _summary_ok(r["metrics"][name], n_layers)
    for setting in ("ft", "lcgd"):
        m = r["metrics"][setting]
        for name in ("simaou", "simam", "simam_delta"):
            _summary_ok(m[name], n_layers)
            per_example = r["per_example"][setting][name]
            assert len(per_example) == n and len(per_example[0]) == n_layers
            assert m[name]["mean"] == pytest.approx(sum(map(sum, per_example)) / (n * n_layers), abs=1e-5)
        assert len(m["rec2ftp_ci"]) == 2 and len(m["prediction_changes"]["jaccard_ci"]) == 2
        for name in ("token_overlap", "overlap_cosine"):
            _ci_ok(m["token_overlap"][name], m["token_overlap"][f"{name}_ci"])
        nulls = r["nulls"][setting]
        expected_nulls = {"shuffled_pair", "random_direction", "jaccard_independence"} | (
            {"wrong_label", "wrong_label_answer_loss", "gradient_span"} if setting == "ft" else set())
        assert set(nulls) == expected_nulls
        for null in expected_nulls - {"jaccard_independence"}:
            for name in ("simaou", "simam_delta"):
                _summary_ok(nulls[null][name], n_layers)
                assert len(r["per_example"]["nulls"][setting][null][name]) == n
        assert set(nulls["jaccard_independence"]) == {"expected", "observed", "observed_ci"}
    for null in ("wrong_label", "wrong_label_answer_loss"):
        _ci_ok(r["nulls"]["ft"][null]["accuracy"], r["nulls"]["ft"][null]["accuracy_ci"])
    for null in ("wrong_label", "wrong_label_answer_loss", "gradient_span", "random_direction"):
        assert r["timing_seconds"][f"null_ft_{null}"] > 0
    assert r["timing_seconds"]["null_lcgd_random_direction"] > 0
    assert set(r["tests"]) == {"icl_vs_zsl", "ft_vs_zsl", "lcgd_vs_zsl", "lcgd_vs_ft_simaou", "lcgd_vs_ft_simam_delta"}
    for name in ("icl_vs_zsl", "ft_vs_zsl", "lcgd_vs_zsl"):
        test = r["tests"][name]
        a = name.split("_vs_")[0]
        assert test["test"] == "mcnemar_exact" and 0 <= test["p_value"] <= 1
        assert test["difference"] == pytest.approx(r["accuracy"][a] - r["accuracy"]["zsl"])
        assert test["b"] - test["c"] == round(test["difference"] * n)
        _ci_ok(test["difference"], test["ci"])
    simaou_test = r["tests"]["lcgd_vs_ft_simaou"]
    assert simaou_test["difference"] == pytest.approx(
        r["metrics"]["lcgd"]["simaou"]["mean"] - r["metrics"]["ft"]["simaou"]["mean"])
    _ci_ok(simaou_test["difference"], simaou_test["ci"])


def test_wrong_label_finetuning_trains_on_wrong_labels_and_nulls_can_be_turned_off(tiny_gpt, monkeypatch):
    import icl_lens.cell.experiment as experiment

    trained_on = []
    real = experiment.finetune

    def spy(model, sequences, answer_lengths, cfg, progress=True):
        trained_on.append(([list(s) for s in sequences], list(answer_lengths), cfg.lr, cfg.loss_on))
        return real(model, sequences, answer_lengths, cfg, progress)

    monkeypatch.setattr(experiment, "finetune", spy)
    cfg = replace(CFG, k=4, settings=("zsl", "icl", "ft"), bootstrap_resamples=50)
    out = run_experiment(tiny_gpt, get_task("sst2"), cfg, progress=False)
    (true_seqs, true_answers, lr, loss), (wrong_seqs, wrong_answers, wrong_lr, wrong_loss), answer_only = trained_on
    assert loss == wrong_loss == "all" and answer_only[3] == "answer"  # FT's own loss, then the label tokens only
    assert answer_only[:3] == (wrong_seqs, wrong_answers, lr)  # the same wrong labels and rate
    assert wrong_lr == lr and len(wrong_seqs) == len(true_seqs) == out.prompts.k
    labels = out.prompts.labels
    for seq, n_answer, wrong_seq, n_wrong in zip(true_seqs, true_answers, wrong_seqs, wrong_answers):
        assert seq[:-n_answer] == wrong_seq[:-n_wrong]  # the same demonstration text
        assert seq[-n_answer:] != wrong_seq[-n_wrong:] and wrong_seq[-n_wrong:] in labels  # another label word
    nulls = out.results["nulls"]["ft"]
    assert nulls["wrong_label"]["n_relabelled"] == out.prompts.k
    assert nulls["wrong_label"]["loss_on"] == "all" and nulls["wrong_label_answer_loss"]["loss_on"] == "answer"
    # the wrong labels are drawn with the cell's own seed, derived from random_seed and the demonstration seed
    true_labels = [d["label"] for d in out.results["demonstrations"]]
    seeds = out.results["null_seeds"]
    assert seeds == null_seeds(cfg.random_seed, cfg.seed)
    assert nulls["wrong_label"]["labels"] == wrong_labels(true_labels, 2, seeds["wrong_label"])
    assert nulls["wrong_label_answer_loss"]["labels"] == nulls["wrong_label"]["labels"]
    # so are the shuffled pair's derangement and the random baseline's vector
    runs = out.runs
    pair = shuffled_pair(runs["zsl"].activations, runs["icl"].activations, runs["ft"].activations,
                         "attn_scores", seeds["shuffled_pair"])
    np.testing.assert_allclose(out.results["per_example"]["nulls"]["ft"]["shuffled_pair"]["simaou"],
                               pair["simaou"].numpy(), atol=1e-6)
    random_baseline = simaou_random_per_example(runs["zsl"].activations, runs["icl"].activations,
                                                seed=seeds["simaou_random"])
    np.testing.assert_allclose(out.results["per_example"]["simaou_random"], random_baseline.numpy(), atol=1e-6)

    trained_on.clear()
    answer_ft = run_experiment(tiny_gpt, get_task("sst2"), replace(cfg, finetune=FinetuneConfig(loss_on="answer"),
                                                                   nulls=("wrong_label", "wrong_label_answer_loss")),
                               progress=False).results
    assert [call[3] for call in trained_on] == ["answer", "answer"]  # FT's loss is the answer's: one null run
    assert answer_ft["nulls"]["ft"]["wrong_label_answer_loss"]["simaou"] == answer_ft["nulls"]["ft"]["wrong_label"]["simaou"]

    trained_on.clear()
    off = run_experiment(tiny_gpt, get_task("sst2"), replace(cfg, nulls=()), progress=False).results
    assert len(trained_on) == 1 and set(off["nulls"]["ft"]) == {"jaccard_independence"}
    assert off["metrics"]["ft"]["simaou"] == out.results["metrics"]["ft"]["simaou"]  # the nulls change no metric
    with pytest.raises(ConfigError, match="unknown nulls"):
        run_experiment(tiny_gpt, get_task("sst2"), replace(cfg, nulls=("bogus",)), progress=False)


def test_summary_tables_print_value_and_interval():
    from icl_lens.reporting.summary import summary

    layer = lambda mean, low, high: {"per_layer": [mean], "mean": mean, "ci": [low, high], "per_layer_ci": [[low, high]]}
    results = {
        "task": {"name": "sst2"}, "config": {"model": "m", "seed": 0}, "prompts": {"k_used": 4},
        "accuracy": {"zsl": 0.855, "icl": 0.9}, "accuracy_ci": {"zsl": [0.805, 0.9], "icl": [0.85, 0.95]},
        "metrics": {"ft": {"simaou": layer(0.2, 0.1, 0.3), "rec2ftp": 50.0, "rec2ftp_ci": [25.0, 75.0],
                           "prediction_changes": {"jaccard": 0.25, "jaccard_ci": [0.1, 0.4]}}},
        "nulls": {"ft": {"shuffled_pair": {"simaou": layer(0.05, 0.0, 0.1)},
                         "jaccard_independence": {"expected": 0.125, "observed": 0.25, "observed_ci": [0.1, 0.4]}}},
    }
    text = summary([results])
    assert "0.855 [0.805, 0.900]" in text and "0.900 [0.850, 0.950]" in text
    assert "50.0 [25.0, 75.0]" in text and "25.0 [10.0, 40.0]" in text
    assert "0.200 [0.100, 0.300]" in text and "0.050 [0.000, 0.100]" in text and "expected 12.5" in text
