"""The Shen et al. analyses (icl_lens.analyses) on tiny random models: real properties, not smoke."""

import copy
import math

import pytest
import torch
from helpers import load_experiment_script, tiny_model

from icl_lens.analyses import (
    DemoSweepConfig,
    OrderSensitivityConfig,
    SparsityConfig,
    WeightSpaceConfig,
    attention_inputs,
    context_fit,
    demo_permutations,
    output_agreement,
    pair_agreement,
    run_demo_sweep,
    run_order_sensitivity,
    run_weight_space,
    sparsity_all_models,
    weight_sparsity_analysis,
)
from icl_lens.reporting import figures
from icl_lens.analyses.demo_sweep import skip_path
from icl_lens.analyses.order_sensitivity import dense_distribution
from icl_lens.analyses.weight_space import demo_token_positions
from icl_lens.errors import ConfigError, ModelLoadError
from icl_lens.evaluation import RecordSpec, SettingRun, evaluate
from icl_lens.cell.experiment import ExperimentConfig, run_experiment
from icl_lens.training.finetune import FinetuneConfig
from icl_lens.metrics import HANDBUILT_ICL_GD_SPARSITY
from icl_lens.prompts import PromptFormat, encode_prompts
from icl_lens.cell.results import read_results
from icl_lens.cell.store import RuntimeOptions, cell_path
from icl_lens.tasks import get_task, sample_demonstrations, sample_queries

# --- order sensitivity -----------------------------------------------------------------------


def test_permutations_really_permute_the_same_demonstrations(tiny_gpt):
    perms = demo_permutations(4, 10, seed=3)
    assert len(perms) == 10 and len(set(perms)) == 10  # distinct: 4! = 24 >= 10
    assert all(sorted(p) == [0, 1, 2, 3] for p in perms)
    assert perms == demo_permutations(4, 10, seed=3) and perms != demo_permutations(4, 10, seed=4)
    assert len(set(demo_permutations(12, 50, seed=0))) == 50  # the large-k path, still distinct
    assert demo_permutations(1, 3, seed=0) == [(0,), (0,), (0,)]  # only one order exists
    # the permuted prompts hold the same demonstration tokens in another order
    task = get_task("sst2")
    demos, queries = sample_demonstrations(task, 4, 0), sample_queries(task, 2)
    prompts = [encode_prompts(tiny_gpt.tokenizer, task, [demos[i] for i in p], queries, PromptFormat(), 1024)
               for p in perms[:3]]
    assert len({tuple(p.icl_prefix) for p in prompts}) == 3
    assert len({tuple(sorted(p.icl_prefix)) for p in prompts}) == 1
    assert sorted(map(tuple, prompts[0].demo_sequences)) == sorted(map(tuple, prompts[1].demo_sequences))


def test_dense_distribution_is_the_full_next_token_distribution(tiny_gpt):
    task = get_task("sst2")
    p = encode_prompts(tiny_gpt.tokenizer, task, sample_demonstrations(task, 2, 0), sample_queries(task, 3),
                       PromptFormat(), 1024)
    vocab = tiny_gpt.cfg.d_vocab_out
    run = evaluate(tiny_gpt, p.icl_prefix, p.queries, p.labels, record=RecordSpec(top_k=vocab), progress=False)
    dense = dense_distribution(run, vocab)
    for i, query in enumerate(p.queries):
        expected = tiny_gpt(torch.tensor([p.icl_prefix + query]))[0, -1].softmax(-1)
        assert torch.allclose(dense[i], expected, atol=1e-5)


@pytest.fixture(scope="module")
def order_result():
    model = tiny_model(gqa=False, n_layers=2)
    cfg = OrderSensitivityConfig(k=3, n_permutations=3, limit=4, lr=1e-2, adam_lr=1e-3, batch_sizes=(1, 3))
    return run_order_sensitivity(model, "sst2", cfg, progress=False)


def test_order_sensitivity_settings_and_invariances(order_result):
    r = order_result
    assert [s.setting for s in r.settings] == ["icl", "sgd_bs1", "sgd_bs3", "adam_bs1", "adam_bs3"]
    assert r.k == 3 and r.n_queries == 4 and len(r.permutations) == 3
    for s in r.settings:
        assert len(s.accuracies) == 3 and len(s.per_example_output_std) == 4
        assert s.output_std == pytest.approx(sum(s.per_example_output_std) / 4)
        assert 0 <= s.output_std <= 2 and math.isfinite(s.accuracy_std)
    # ICL and one-demonstration-per-step GD see the order; one batch of all k demos does not
    assert r.setting("icl").output_std > 1e-4
    assert r.setting("sgd_bs1").output_std > 1e-6
    assert r.setting("sgd_bs3").output_std < 1e-5
    assert r.setting("adam_bs3").output_std < 1e-5
    assert r.setting("adam_bs1").lr == 1e-3 and r.setting("sgd_bs1").lr == 1e-2
    d = r.to_dict()
    assert d["n_permutations"] == 3 and d["config"]["lr"] == 1e-2


def test_one_permutation_gives_zero_std(tiny_gpt):
    cfg = OrderSensitivityConfig(k=2, n_permutations=1, limit=3, optimizers=("sgd",), batch_sizes=(1,))
    r = run_order_sensitivity(tiny_gpt, "sst2", cfg, progress=False)
    for s in r.settings:
        assert s.output_std == 0.0 and s.accuracy_std == 0.0


def test_order_sensitivity_config_is_validated(tiny_gpt):
    for bad in (dict(k=0), dict(n_permutations=0), dict(lr=-1.0), dict(optimizers=("rmsprop",)),
                dict(batch_sizes=(0,)), dict(include_icl=False, optimizers=()), dict(unbiased=True, n_permutations=1)):
        with pytest.raises(ConfigError):
            OrderSensitivityConfig(**bad)
    with pytest.raises(ConfigError, match="max_memory_gb"):
        run_order_sensitivity(tiny_gpt, "sst2", OrderSensitivityConfig(k=2, limit=3, max_memory_gb=1e-9),
                              progress=False)


# --- output agreement ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def experiment_output():
    model = tiny_model(gqa=True, n_layers=2)
    cfg = ExperimentConfig(task="sst2", model="tiny", k=2, limit=5, lr=1e-2, settings=("zsl", "icl", "ft"))
    return run_experiment(model, get_task("sst2"), cfg, progress=False)


def _run_with_top_tokens(ids, probs):
    """A SettingRun holding only what pair_agreement reads: the stored top-k tokens."""
    n = len(ids)
    return SettingRun(setting="hand", class_scores=torch.zeros(n, 2), activations=None,
                      key_lengths=torch.zeros(n, dtype=torch.long), demo_attention_mass=None,
                      sink_attention_mass=None, next_token_ids=torch.tensor(ids),
                      next_token_probs=torch.tensor(probs))


def test_pair_agreement_hand_example():
    a = _run_with_top_tokens([[1, 2, 3], [4, 5, 6]], [[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    b = _run_with_top_tokens([[2, 1, 9], [7, 8, 9]], [[0.4, 0.4, 0.2], [0.5, 0.3, 0.2]])
    agreement = pair_agreement(a, b, k=3)
    # example 0 shares tokens 1 and 2: overlap 2/3, cosine of (.5, .3) and (.4, .4); example 1 shares none
    assert agreement.token_overlap == pytest.approx([2 / 3, 0.0])
    cos0 = (0.5 * 0.4 + 0.3 * 0.4) / (math.hypot(0.5, 0.3) * math.hypot(0.4, 0.4))
    assert agreement.overlap_cosine == pytest.approx([cos0, 0.0])
    # top 1 only: token 1 vs token 2 (ties broken by the stored order) share nothing
    assert pair_agreement(a, b, k=1).token_overlap == [0.0, 0.0]
    assert pair_agreement(a, a, k=3).token_overlap == [1.0, 1.0]


def _hand_overlap(run_a, run_b, k):
    """Top-k token overlap and overlap cosine from the stored ids and probabilities, with sets and dicts."""
    overlaps, cosines = [], []
    for ids_a, p_a, ids_b, p_b in zip(run_a.next_token_ids.tolist(), run_a.next_token_probs.tolist(),
                                      run_b.next_token_ids.tolist(), run_b.next_token_probs.tolist()):
        prob_a, prob_b = dict(zip(ids_a[:k], p_a[:k])), dict(zip(ids_b[:k], p_b[:k]))
        shared = set(prob_a) & set(prob_b)
        overlaps.append(len(shared) / k)
        dot = sum(prob_a[t] * prob_b[t] for t in shared)
        norm = math.sqrt(sum(prob_a[t] ** 2 for t in shared)) * math.sqrt(sum(prob_b[t] ** 2 for t in shared))
        cosines.append(dot / norm if shared else 0.0)
    return overlaps, cosines


def test_output_agreement_of_an_experiment(experiment_output):
    agreement = output_agreement(experiment_output)
    assert [p.name for p in agreement.pairs] == ["icl_vs_ft", "zsl_vs_icl"]
    assert agreement.skipped == ["icl_vs_lcgd"]  # LCGD was not run
    runs = experiment_output.runs
    for pair, (a, b) in (("icl_vs_ft", ("icl", "ft")), ("zsl_vs_icl", ("zsl", "icl"))):
        overlaps, cosines = _hand_overlap(runs[a], runs[b], k=10)
        assert agreement.pair(a, b).token_overlap == pytest.approx(overlaps)
        assert agreement.pair(a, b).overlap_cosine == pytest.approx(cosines)
    # the experiment's own summary is the mean of the same per-example values
    overlaps, cosines = _hand_overlap(runs["icl"], runs["ft"], k=10)
    reference = experiment_output.results["metrics"]["ft"]["token_overlap"]
    assert reference["token_overlap"] == pytest.approx(sum(overlaps) / len(overlaps))
    assert reference["overlap_cosine"] == pytest.approx(sum(cosines) / len(cosines))
    d = agreement.to_dict()
    assert d["task"] == "sst2" and set(d["pairs"]) == {"icl_vs_ft", "zsl_vs_icl"}


# --- sparsity --------------------------------------------------------------------------------


def _hand_made(model):
    model = copy.deepcopy(model)
    with torch.no_grad():
        for block in model.blocks:
            for name in ("W_Q", "W_K", "W_V"):
                weight = getattr(block.attn, name)
                values = torch.tensor([0.0, 0.0, 0.005, 0.5]).repeat(weight.numel() // 4)  # 50% zeros
                weight.copy_(values.reshape(weight.shape))
    return model


def test_sparsity_of_a_hand_made_weight(tiny_gpt):
    model = _hand_made(tiny_gpt)
    cfg = SparsityConfig(thresholds=(1e-4, 1e-2, 1.0))
    r = weight_sparsity_analysis(model, cfg)
    for name in ("W_Q", "W_K", "W_V"):
        assert r.per_layer[name] == [[0.5, 0.75, 1.0]] * model.cfg.n_layers
        assert r.mean[name] == [0.5, 0.75, 1.0]
        assert r.exact_zero[name] == [0.5] * model.cfg.n_layers
        assert r.crossing[name] == 1e-2  # the first grid threshold reaching the hand-built 75 %
    assert r.pooled == [0.5, 0.75, 1.0] and r.handbuilt == HANDBUILT_ICL_GD_SPARSITY
    # rms scale: rms = sqrt((0.005² + 0.5²)/4) ≈ 0.25; thresholds 0.1·rms ≈ 0.025 and 3·rms ≈ 0.75
    rel = weight_sparsity_analysis(model, SparsityConfig(thresholds=(0.1, 3.0), scale="rms"))
    assert rel.mean["W_K"] == [0.75, 1.0]


def test_sparsity_all_models_records_failures(tiny_gpt):
    def loader(name, **kwargs):
        assert kwargs == {"processed": False}  # unprocessed weights
        if name == "broken":
            raise ModelLoadError("no such model")
        return tiny_gpt

    report = sparsity_all_models(SparsityConfig(), models=["a", "broken"], loader=loader, progress=False)
    assert [r.model for r in report.results] == ["a"] and "no such model" in report.skipped["broken"]
    assert report.to_dict()["handbuilt"] == 0.75
    with pytest.raises(ConfigError):
        SparsityConfig(thresholds=(-1.0,))


# --- weight space ----------------------------------------------------------------------------


def test_attention_inputs_are_what_the_keys_are_computed_from(tiny_llama):
    """ln1(resid_pre), not ln1.hook_normalized (taken before the norm's scale on unprocessed weights)."""
    model = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        for block in model.blocks:
            block.ln1.w.uniform_(0.5, 2.0)  # a non-trivial norm scale
    tokens = list(range(5, 17))
    inputs = attention_inputs(model, tokens)
    _, cache = model.run_with_cache(torch.tensor([tokens]))
    for layer in range(model.cfg.n_layers):
        attn = model.blocks[layer].attn
        keys = torch.einsum("pd,hde->phe", inputs[layer].float(), attn._W_K) + attn._b_K
        assert torch.allclose(keys, cache[f"blocks.{layer}.attn.hook_k"][0], atol=1e-4)
        assert not torch.allclose(inputs[layer].float(), cache[f"blocks.{layer}.ln1.hook_normalized"][0], atol=1e-3)


@pytest.fixture(scope="module")
def weight_result():
    model = tiny_model(gqa=True, n_layers=3)
    cfg = WeightSpaceConfig(k=3, n_queries=3, finetune=FinetuneConfig(lr=1e-2))
    return model, cfg, run_weight_space(model, "sst2", cfg, progress=False)


def test_weight_space_after_finetuning(weight_result):
    model, _, r = weight_result
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for name in ("W_K", "W_V"):
        assert len(r.update_norms[name]) == n_layers and all(v > 0 for v in r.update_norms[name])
        assert all(0 < v < 1 for v in r.relative_update_norms[name])
    for values in (r.dual_cosine, r.icl_vs_zsl_cosine, r.ft_vs_zsl_cosine):
        assert len(values) == n_layers and all(math.isfinite(v) and -1 <= v <= 1 for v in values)
    assert all(len(h) == n_heads for h in r.dual_cosine_per_head)  # GQA: cosines per query head
    assert all(v > 0 for v in r.ft_update_norm + r.icl_update_norm)
    assert r.n_demo_tokens > 0 and r.lr == 1e-2 and -1 <= r.to_dict()["mean_dual_cosine"] <= 1


def test_weight_space_of_an_unchanged_copy_is_zero(weight_result):
    model, cfg, _ = weight_result
    r = run_weight_space(model, "sst2", cfg, tuned=copy.deepcopy(model), progress=False)
    assert all(v == 0 for name in ("W_K", "W_V") for v in r.update_norms[name])
    assert r.dual_cosine == [0.0] * model.cfg.n_layers  # a zero update has cosine 0
    assert r.ft_update_norm == [0.0] * model.cfg.n_layers


def test_demo_token_positions(tiny_gpt):
    task = get_task("sst2")
    p = encode_prompts(tiny_gpt.tokenizer, task, sample_demonstrations(task, 2, 0), sample_queries(task, 1),
                       PromptFormat(), 1024)
    spans = demo_token_positions(p, "spans")
    prefix = demo_token_positions(p, "prefix")
    assert set(spans) < set(prefix) and prefix == list(range(1, len(p.icl_prefix)))
    assert len(prefix) - len(spans) == 2  # the two newline separators


# --- demonstration sweep ---------------------------------------------------------------------


def _sweep_loader(calls):
    def loader(name, **kwargs):
        calls.append(name)
        return tiny_model(gqa=True, n_layers=2, n_ctx=1024)

    return loader


def test_demo_sweep_skips_k_that_do_not_fit_and_records_why(tmp_path):
    base = ExperimentConfig(settings=("zsl", "icl", "ft"), limit=2, lr=1e-2, batch_size=4)
    cfg = DemoSweepConfig(tasks=("sst2",), models=("tiny",), ks=(1, 2, 64), seeds=(0,), base=base)
    calls = []
    result = run_demo_sweep(cfg, tmp_path, RuntimeOptions(progress=False), model_loader=_sweep_loader(calls))
    assert calls == ["tiny"]  # loaded once, for planning and running
    assert [row["k"] for row in result.rows] == [1, 2]
    assert [s["k"] for s in result.skipped] == [64]
    assert "demonstrations fit in the context of 1024 tokens" in result.skipped[0]["reason"]
    skipped_cfg = cfg.cells("tiny")[2]
    assert read_results(skip_path(tmp_path, skipped_cfg))["reason"] == result.skipped[0]["reason"]
    assert not cell_path(tmp_path, skipped_cfg).exists()
    for row in result.rows:
        assert row["k_used"] == row["k"]
        assert row["gap_accuracy"] == pytest.approx(row["accuracy"]["icl"] - row["accuracy"]["ft"])
        assert -1 <= row["simaou_ft"] <= 1
    assert [s["k"] for s in result.summary] == [1, 2]
    # a rerun finds everything done or skipped: loads no model, same numbers
    again = run_demo_sweep(cfg, tmp_path, RuntimeOptions(progress=False), model_loader=_sweep_loader(calls))
    assert calls == ["tiny"] and again.rows == result.rows and again.skipped == result.skipped


def test_context_fit_respects_max_context(tiny_llama):
    cfg = ExperimentConfig(k=2, limit=2)
    assert context_fit(tiny_llama, cfg) is None
    assert context_fit(tiny_llama, cfg, max_context=400).startswith("only 1 of 2 demonstrations fit in the "
                                                                     "context of 400 tokens")
    assert "a query does not fit" in context_fit(tiny_llama, cfg, max_context=50)
    assert "train split has" in context_fit(tiny_llama, ExperimentConfig(k=10**6, limit=2))
    with pytest.raises(ConfigError):
        DemoSweepConfig(ks=(0,))
    with pytest.raises(ConfigError):
        DemoSweepConfig(base=ExperimentConfig(settings=("zsl", "icl")))
    assert DemoSweepConfig().base.nulls == ()  # the sweep reports the gap; the costly nulls are the findings run's
    assert len(DemoSweepConfig().seeds) >= 5  # the gap's slope gets a t interval over seeds


# --- figures and the experiment script -------------------------------------------------------


def test_figures_are_written(tmp_path, order_result, experiment_output, weight_result, tiny_gpt):
    sparsity = sparsity_all_models(models=["a"], loader=lambda name, **kw: tiny_gpt, progress=False)
    sweep = {"summary": [{"model": "m", "task": "sst2", "k": k, "gap_accuracy": 0.1 * k, "gap_accuracy_std": 0.0,
                          "simaou_ft": 0.2, "simaou_ft_std": 0.01, "simaou_random": 0.0} for k in (1, 2, 4)],
             "skipped": [{"k": 8}]}
    paths = [
        figures.plot_order_sensitivity([order_result.to_dict()], tmp_path / "order.png"),
        figures.plot_output_agreement([output_agreement(experiment_output).to_dict()], tmp_path / "agree.png"),
        figures.plot_sparsity(sparsity.to_dict(), tmp_path / "sparsity.png"),
        figures.plot_demo_sweep(sweep, tmp_path / "sweep.png"),
        figures.plot_weight_space([weight_result[2].to_dict()], tmp_path / "weights.png"),
    ]
    for path in paths:
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_script_writes_json_and_png_and_resumes(tmp_path, monkeypatch, tiny_gpt):
    script = load_experiment_script("shen_analyses")
    monkeypatch.setattr(script._LazyModel, "get", lambda self: tiny_gpt)
    argv = ["order", "--k", "2", "--permutations", "2", "--limit", "3", "--batch-sizes", "1",
            "--out", str(tmp_path)]
    script.main(argv)
    result_file = tmp_path / "order" / "sst2__gemma3-270m__k2__P2.json"
    assert read_results(result_file)["settings"][0]["setting"] == "icl"
    assert (tmp_path / "order_sensitivity.png").exists()
    mtime = result_file.stat().st_mtime_ns
    monkeypatch.setattr(script, "run_order_sensitivity", lambda *a, **k: pytest.fail("recomputed"))
    script.main(argv)
    assert result_file.stat().st_mtime_ns == mtime
    script.main(["weights", "--k", "2", "--queries", "2", "--out", str(tmp_path)])
    assert read_results(tmp_path / "weights" / "sst2__gemma3-270m__k2.json")["analysis"] == "weight_space"
    assert (tmp_path / "weight_space.png").exists()
