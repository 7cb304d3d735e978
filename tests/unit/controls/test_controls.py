"""Controls with known answers (von Oswald et al. 2023; Dherin et al. 2025): the construction is one GD
step, a briefly trained 1-layer LSA aligns with GD, the known mismatches do not, and the context patch
of an MLP block is exact. Tiny seeded training budgets (seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_model
from transformer_lens import ActivationCache

from icl_lens import metrics
from icl_lens.cli import main as cli_main
from icl_lens.controls import ControlConfig, ControlTransformer, RegressionConfig, construction, sample_tasks
from icl_lens.controls.comparators import ComparatorConfig, finetune_kv, ft_comparator, gd_comparator, recorded_cache
from icl_lens.controls.dherin import compare_with_finetuning, context_patch
from icl_lens.controls.suite import SuiteConfig, read_controls, run_controls
from icl_lens.controls.tasks import gd_predictions, gd_weights, tune_eta
from icl_lens.controls.train import TrainConfig, cache_dir_for, load_or_train, train_control, untrained
from icl_lens.errors import ConfigError, ResultsError

TASK = RegressionConfig()
FAST = ComparatorConfig(n_eval=1000, n_dev=1000, n_ft_tasks=200, n_resamples=200)


@pytest.fixture(scope="module")
def eta() -> float:
    return tune_eta(TASK, 1, n_tasks=2000)


def _tiny(name: str, steps: int) -> TrainConfig:
    return TrainConfig(name=name, steps=steps, batch_size=512, lr=1e-2, seed=0)


def test_eta_matches_the_closed_form_minimum():
    # one step: ŷ = η·a with a = (1/N) Σ y_i x_i·x_q, so the loss is minimal at η* = E[a y_q] / E[a²]
    batch = sample_tasks(TASK, 2000, 1, dtype=torch.float64)
    a = gd_predictions(batch, 1.0)
    closed_form = float((a * batch.y_query).sum() / (a * a).sum())
    assert tune_eta(TASK, 1, n_tasks=2000, seed=1) == pytest.approx(closed_form, rel=1e-3)
    assert 5.5 < closed_form < 6.6  # von Oswald et al.'s setting: η ≈ 6


@pytest.mark.parametrize("n_layers", [1, 3])
def test_construction_is_exactly_k_gd_steps(eta, n_layers):
    batch64 = sample_tasks(TASK, 500, 3, dtype=torch.float64)
    reference = gd_predictions(batch64, eta, n_layers)
    exact = construction(eta, n_layers, TASK, torch.float64).predict(batch64.tokens())
    assert (exact - reference).abs().max() < 1e-12
    batch32 = sample_tasks(TASK, 500, 3)
    single = construction(eta, n_layers, TASK).predict(batch32.tokens())
    assert (single.double() - reference).abs().max() < 2e-6


def test_gd_weights_hand_computed_step():
    batch = sample_tasks(RegressionConfig(d=2, n_context=2), 1, 0, dtype=torch.float64)
    x, y = batch.x[0], batch.y[0]
    expected = 0.5 * (y[0] * x[0] + y[1] * x[1])  # (η/N) Σ y_i x_i with η = 1, N = 2
    assert torch.allclose(gd_weights(batch, 1.0)[0], expected)


def test_hooks_carry_transformer_lens_names_and_feed_the_metrics(eta):
    model = construction(eta)
    batch = sample_tasks(TASK, 8, 0)
    _, cache = model.run_with_cache(batch.tokens())
    for name, shape in [
        ("blocks.0.hook_resid_pre", (8, 11, 11)),
        ("blocks.0.hook_attn_out", (8, 11, 11)),
        ("blocks.0.attn.hook_attn_scores", (8, 1, 11, 11)),
        ("blocks.0.hook_resid_post", (8, 11, 11)),
    ]:
        assert tuple(cache[name].shape) == shape
    assert torch.equal(cache.stack_activation("attn_out")[0], cache["blocks.0.hook_attn_out"])
    assert tuple(cache["blocks.0.attn.hook_z"].shape) == (8, 11, 1, 11)
    # keys from the context only: the query's own score is masked (0 in linear attention)
    assert torch.all(cache["blocks.0.attn.hook_pattern"][:, :, -1, -1] == 0)
    zsl, icl = recorded_cache(model, batch.query_tokens()), recorded_cache(model, batch.tokens())
    assert isinstance(icl, ActivationCache)
    assert metrics.simaou(zsl, icl, icl).shape == (1,)
    assert metrics.simam(icl, zsl).shape == (1,)


def test_trained_lsa_aligns_with_one_gd_step(eta):
    trained = train_control(_tiny("lsa-1", 1000))
    result = gd_comparator(trained.model, TASK, eta, 1, FAST)
    assert result["sensitivity_cosine"]["ci"][0] >= 0.99
    assert result["verdict"] == "holds"
    construction_result = gd_comparator(construction(eta), TASK, eta, 1, FAST)
    assert construction_result["sensitivity_cosine"]["ci"][0] > 1 - 1e-6
    assert construction_result["verdict"] == "holds"


@pytest.mark.parametrize(("name", "steps"), [("softmax-1h", 300), ("lsa-3", 300)])
def test_known_mismatches_do_not_hold(eta, name, steps):
    trained = train_control(_tiny(name, steps))
    k = trained.model.cfg.n_layers
    result = gd_comparator(trained.model, TASK, eta if k == 1 else tune_eta(TASK, k, n_tasks=1000), k, FAST)
    assert result["verdict"] == "fails"
    assert result["sensitivity_cosine"]["ci"][0] < 0.99


def test_untrained_model_does_not_hold(eta):
    result = gd_comparator(untrained(_tiny("lsa-1", 1)), TASK, eta, 1, FAST)
    assert result["verdict"] == "fails"
    assert abs(result["sensitivity_cosine"]["mean"]) < 0.3


def test_batched_finetuning_equals_one_task_at_a_time():
    torch.manual_seed(0)
    model = ControlTransformer(ControlConfig(init_scale=2.0))
    batch = sample_tasks(TASK, 3, 0)
    tuned = finetune_kv(model, batch, lr=0.1, steps=2)
    one = sample_tasks(TASK, 3, 0)
    params = {name: p.detach().clone().requires_grad_(True) for name, p in model.kv_parameters().items()}
    for _ in range(2):
        demos = one.demo_tokens()[1][:, None]  # task 1's demonstrations, each alone
        overrides = {name: p[None].expand(demos.shape[0], *p.shape) for name, p in params.items()}
        loss = (0.5 * (model.predict(demos, True, overrides) - one.y[1]) ** 2).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {n: (p - 0.1 * g).detach().requires_grad_(True) for (n, p), g in zip(params.items(), grads)}
    for name, p in params.items():
        assert torch.allclose(tuned[name][1], p.detach(), atol=1e-6)


def test_ft_comparator_reports_the_papers_metrics_and_nulls(eta):
    result = ft_comparator(construction(eta), TASK, FAST)
    assert set(result["claims"]) == {
        "simaou_above_random",
        "simaou_above_shuffled_pair",
        "simaou_above_wrong_label",
        "simaou_above_random_direction",
        "icl_beats_zsl",
    }
    assert all(c["verdict"] in ("holds", "fails", "inconclusive") for c in result["claims"].values())
    assert result["losses"]["icl"] < result["losses"]["zsl"]


def test_training_is_cached_and_checksummed(tmp_path, caplog):
    cfg = TrainConfig(name="lsa-1", steps=5, batch_size=16)
    first = load_or_train(cfg, cache_dir=tmp_path)
    second = load_or_train(cfg, cache_dir=tmp_path)
    assert not first.from_cache and second.from_cache and second.weights_sha256 == first.weights_sha256
    for (n1, p1), (n2, p2) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    weights = cache_dir_for(cfg, tmp_path) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    third = load_or_train(cfg, cache_dir=tmp_path)
    assert not third.from_cache and "damaged" in caplog.text
    assert TrainConfig(name="lsa-1", steps=6).digest != cfg.digest


def test_bad_configs_are_named():
    with pytest.raises(ConfigError, match="unknown control"):
        TrainConfig(name="mlp-9")
    with pytest.raises(ConfigError, match="attention"):
        ControlConfig(attention="relu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rows"):
        SuiteConfig(rows=("nope",))
    with pytest.raises(ConfigError, match="tokens"):
        ControlTransformer(ControlConfig()).predict(torch.zeros(2, 3, 5))


@pytest.mark.parametrize("family", ["gpt", "llama", "gemma"])
def test_dherin_patch_reproduces_the_block_with_context(family):
    model = tiny_model(family=family, n_layers=2)
    tokens = torch.randint(0, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    for layer in range(2):
        patch = context_patch(model.blocks[layer], cache[f"blocks.{layer}.hook_resid_pre"][0], layer)
        assert patch.max_abs_error < 1e-12
        assert float((patch.with_context - patch.unpatched).norm()) > 1e-3  # the context does matter
        assert torch.allclose(patch.with_context.float(), cache[f"blocks.{layer}.hook_resid_post"][0, -1], atol=1e-4)
        for delta in patch.delta_w.values():
            assert torch.linalg.matrix_rank(delta).item() == 1
    with pytest.raises(ConfigError, match="context and query"):
        context_patch(model.blocks[0], cache["blocks.0.hook_resid_pre"][0, :1])


def test_patch_comparison_with_ft_is_exact_for_a_parallel_update():
    model = tiny_model(family="gpt", n_layers=1)
    _, cache = model.run_with_cache(torch.arange(10)[None])
    patch = context_patch(model.blocks[0], cache["blocks.0.hook_resid_pre"][0])
    aligned = compare_with_finetuning(
        [patch, patch], 3.0 * patch.delta_w["W_in"], -patch.delta_w["W_in"], n_resamples=50
    )
    assert aligned["cos_ft"]["mean"] == pytest.approx(1.0)
    assert aligned["cos_null"]["mean"] == pytest.approx(-1.0)
    assert aligned["claims"]["patch_aligned_with_ft_above_null"]["verdict"] == "holds"


def test_control_cli_run_and_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ICL_LENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "controls"
    argv = ["control", "run", "--out", str(out), "--rows", "construction-1,untrained", "--steps", "2",
            "--batch-size", "8", "--n-eval", "200", "--n-dev", "200", "--n-ft-tasks", "50", "--resamples", "50",
            "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "construction-1" in printed and "holds (expected holds)" in printed and "fails (expected fails)" in printed
    results = read_controls(out)
    assert [row["control"] for row in results["rows"]] == ["construction-1", "untrained"]
    assert results["rows"][0]["identity"]["max_abs_difference_to_gd"]["float64"] < 1e-12
    assert cli_main(["control", "report", str(out)]) == 0
    assert json.loads((out / "control_table.json").read_text())["rows"]
    damaged = json.loads((out / "controls.json").read_text())
    damaged["rows"][0]["gd"]["verdict"] = "fails"
    (out / "controls.json").write_text(json.dumps(damaged))
    with pytest.raises(ResultsError, match="checksum"):
        read_controls(out)
    assert np.isfinite(results["etas"]["1"])


def test_run_controls_without_output_folder_returns_results():
    cfg = SuiteConfig(rows=("construction-3",), comparator=ComparatorConfig(n_eval=100, n_dev=100, n_ft_tasks=20))
    results = run_controls(cfg)
    assert results["rows"][0]["gd"]["verdict"] == "holds"
    assert results["rows"][0]["gd"]["gd_steps"] == 3


def test_control_cli_dherin_on_a_local_model(tmp_path, capsys):
    from helpers import save_tiny_hf_llama

    save_tiny_hf_llama(tmp_path / "tiny", max_position_embeddings=1024)
    out = tmp_path / "controls"
    argv = ["control", "dherin", "--model", str(tmp_path / "tiny"), "--k", "2", "--queries", "2", "--out", str(out)]
    assert cli_main(argv) == 0
    study = json.loads((out / "dherin_tiny.json").read_text())
    (layer,) = study["layers"].values()
    assert layer["identity_max_relative_error"] < 1e-10
    assert "| tiny |" in capsys.readouterr().out
    assert cli_main(["control", "dherin", "--model", str(tmp_path / "tiny"), "--layers", "one"]) == 2
