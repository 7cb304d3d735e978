"""The two backends (HookedTransformer, TransformerBridge) on tiny Hugging Face models.

Both load the same saved Hugging Face directory, so every difference between them is a difference of
the backends. Bounds measured here (float32, CPU): class scores within 5e-7, recorded activations
within 2e-6, finetuned W_K / W_V updates within 2e-5 of each other relative to the update (GD and
both LCGD schedules), or within float32 rounding of the weight for updates of ~1e-5. The tests allow
1e-5 / 1e-5 / 1e-4 of the update plus 1e-6 of the weight.

These tests also run under TransformerLens 4 (no HookedTransformer: the comparisons are skipped and
the bridge checks remain) through tests/integration/test_transformer_lens_4.py.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.metadata
import inspect
import warnings

import pytest
import torch
import transformers
from helpers import save_tiny_hf

from icl_lens.errors import ConfigError
from icl_lens.evaluation import evaluate
from icl_lens.lens import logit_lens
from icl_lens.metrics.weights import attention_parameter
from icl_lens.models import backends as backends_module
from icl_lens.models import load_model
from icl_lens.models.backends import (
    BRIDGE,
    HOOKED,
    backend_of,
    block_parameters,
    bridge_prefix_cache_works,
    check_backend,
    final_residual,
    has_hooked_transformer,
    hf_cache_argument,
)
from icl_lens.reporting.report import build_cell_report
from icl_lens.cell.results import validate_results
from icl_lens.training.finetune import FinetuneConfig, demo_batches, finetune, select_trainable, trained_parameters
from icl_lens.training.lcgd import layer_causal_finetune, layer_causal_losses

FAMILIES = ["llama", "gemma3", "gpt2"]
HOOKED_LOADABLE = ["llama", "gpt2"]  # TransformerLens configures Gemma-3 by hub name, not from a directory
needs_hooked = pytest.mark.skipif(not has_hooked_transformer(), reason="TransformerLens >= 4 has no HookedTransformer")

PREFIX = [1, 40, 41, 42, 43, 44, 45, 46]  # longer than gemma3's window of 4
QUERIES = [[50, 51, 52], [60, 61], [70, 71, 72, 73, 74]]
LABELS = [[80], [81, 82]]  # one single-token and one two-token answer
DEMOS = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14], [15, 16, 17, 18, 19]]
ANSWERS = [1, 2, 1]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_hf")
    dirs = {}
    for family in FAMILIES:
        dirs[family] = root / family
        save_tiny_hf(family, dirs[family])
    return dirs


def _load(hf_dirs, family, backend, **kwargs):
    return load_model(str(hf_dirs[family]), backend=backend, **kwargs)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).detach())


@pytest.mark.parametrize("family", FAMILIES)
def test_bridge_logits_are_the_hugging_face_models(hf_dirs, family):
    from transformers import AutoModelForCausalLM

    model = _load(hf_dirs, family, "bridge")
    assert backend_of(model) is BRIDGE
    reference = AutoModelForCausalLM.from_pretrained(hf_dirs[family], attn_implementation="eager").eval()
    tokens = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22, 23, 24, 25, 26, 27, 28]])
    with torch.no_grad():
        resid = final_residual(model, tokens, torch.ones_like(tokens))
        lens = logit_lens(model, resid)
        expected = reference(tokens).logits
    assert torch.allclose(lens, expected, atol=1e-5, rtol=1e-5)


@needs_hooked
@pytest.mark.parametrize("family", HOOKED_LOADABLE)
def test_backends_give_the_same_scores_and_recordings(hf_dirs, family):
    hooked, bridge = _load(hf_dirs, family, "hooked"), _load(hf_dirs, family, "bridge")
    assert backend_of(hooked) is HOOKED and backend_of(bridge) is BRIDGE
    a = evaluate(hooked, PREFIX, QUERIES, LABELS, progress=False)
    b = evaluate(bridge, PREFIX, QUERIES, LABELS, progress=False)
    assert torch.allclose(a.class_scores, b.class_scores, atol=1e-5)
    assert set(a.activations.keys()) == set(b.activations.keys())
    for name in a.activations.keys():
        assert a.activations[name].shape == b.activations[name].shape, name
        assert torch.allclose(a.activations[name], b.activations[name], atol=1e-5), name
    assert torch.equal(a.key_lengths, b.key_lengths)
    assert torch.allclose(a.demo_attention_mass, b.demo_attention_mass, atol=1e-6)
    assert torch.equal(a.next_token_ids, b.next_token_ids)


TRAINERS = {
    "gd": lambda model, cfg: finetune(model, DEMOS, ANSWERS, cfg, progress=False)[0],
    "lcgd": lambda model, cfg: layer_causal_finetune(model, DEMOS, ANSWERS, cfg, progress=False)[0],
    "lcgd_sequential": lambda model, cfg: layer_causal_finetune(
        model, DEMOS, ANSWERS, cfg, schedule="sequential", progress=False
    )[0],
}


@needs_hooked
@pytest.mark.parametrize("trainer", sorted(TRAINERS))
@pytest.mark.parametrize("family", HOOKED_LOADABLE)
def test_backends_train_the_same_update(hf_dirs, family, trainer):
    hooked, bridge = _load(hf_dirs, family, "hooked"), _load(hf_dirs, family, "bridge")
    cfg = FinetuneConfig(lr=1e-2, momentum=0.9)
    tuned = {name: TRAINERS[trainer](model, cfg) for name, model in (("hooked", hooked), ("bridge", bridge))}
    for layer in range(hooked.cfg.n_layers):
        for weight in ("W_K", "W_V"):
            update_h = attention_parameter(tuned["hooked"], layer, weight) - attention_parameter(hooked, layer, weight)
            update_b = attention_parameter(tuned["bridge"], layer, weight) - attention_parameter(bridge, layer, weight)
            assert update_h.abs().max() > 0
            # 1e-4 of the update, plus a few float32 ulps of the weight the update was added to
            bound = 1e-4 * update_h.abs().max() + 1e-6 * attention_parameter(hooked, layer, weight).abs().max()
            assert (update_b - update_h).abs().max() <= bound, (layer, weight, _relative(update_b, update_h))
    after_h = evaluate(tuned["hooked"], PREFIX[:1], QUERIES, LABELS, progress=False)
    after_b = evaluate(tuned["bridge"], PREFIX[:1], QUERIES, LABELS, progress=False)
    assert torch.allclose(after_h.class_scores, after_b.class_scores, atol=1e-5)


@needs_hooked
@pytest.mark.parametrize("family", HOOKED_LOADABLE)
def test_both_backends_train_the_parameters_the_architecture_has(hf_dirs, family):
    """TransformerLens adds zero b_Q/b_K/b_V/b_O and MLP biases to a model without biases (Llama); they
    are not the model's parameters, so the hooked ``kv`` group leaves them out, as the bridge (which has
    no such tensors) does. GPT-2 has real biases: both train them."""
    hooked, bridge = _load(hf_dirs, family, "hooked"), _load(hf_dirs, family, "bridge")
    names_h, names_b = trained_parameters(hooked, "kv"), trained_parameters(bridge, "kv")
    assert len(names_h) == len(names_b)
    has_bias = family == "gpt2"
    assert any("b_K" in name for name in names_h) == has_bias
    assert any(name.endswith(".bias") for name in names_b) == has_bias
    tuned = finetune(hooked, DEMOS, ANSWERS, FinetuneConfig(lr=1e-2), progress=False)[0]
    bias = tuned.blocks[0].attn._b_V if family == "llama" else tuned.blocks[0].attn.b_V
    assert (float(bias.abs().max()) > 0) == has_bias


@pytest.mark.parametrize("family", FAMILIES)
def test_bridge_prefix_reuse_gives_the_re_encoded_numbers(hf_dirs, family, monkeypatch):
    """Reusing the prefix's cache (when the check passes) or re-encoding it (when it fails, or when
    forced) give the same scores and recordings, sliding-window layers included."""
    model = _load(hf_dirs, family, "bridge")
    inline = evaluate(model, PREFIX, QUERIES, LABELS, progress=False, reuse_prefix=False)
    runs = {"auto": evaluate(model, PREFIX, QUERIES, LABELS, progress=False)}
    monkeypatch.setattr(model, backends_module._CACHE_CHECK_ATTR, False)
    runs["fallback"] = evaluate(model, PREFIX, QUERIES, LABELS, progress=False)
    for run in runs.values():
        assert torch.allclose(run.class_scores, inline.class_scores, atol=1e-5)
        for name in inline.activations.keys():
            assert torch.allclose(run.activations[name], inline.activations[name], atol=1e-5), name
        assert torch.equal(run.key_lengths, inline.key_lengths)


def test_prefix_cache_fast_path_is_taken_on_the_installed_transformers(hf_dirs):
    """The prefix cache reaches the bridge's attention under the name the installed transformers uses
    (``cache`` from 5.24 on, ``past_key_values`` before), so the check passes and the fast path is
    taken on every version the dependency range allows. A rename the library does not know fails here
    instead of silently re-encoding the prefix in every sequence."""
    for family in FAMILIES:
        model = _load(hf_dirs, family, "bridge")
        signature = inspect.signature(model.original_model.forward).parameters
        assert hf_cache_argument(model) == ("cache" if "cache" in signature else "past_key_values")
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # no deprecated keyword handed to transformers
            assert bridge_prefix_cache_works(model) is True, (family, transformers.__version__)
            evaluate(model, PREFIX, QUERIES, LABELS, progress=False)
        assert bridge_prefix_cache_works(model) is True  # remembered on the model


def test_prefix_cache_check_catches_a_cache_that_is_not_read(hf_dirs, monkeypatch):
    """A cache the forward pass ignores (what transformers 5.24 does to the bridge) fails the check,
    and evaluation then re-encodes the prefix: the numbers stay right."""
    from transformers import DynamicCache

    from icl_lens.models.backends import Prefix

    model = _load(hf_dirs, "llama", "bridge")
    inline = evaluate(model, PREFIX, QUERIES, LABELS, progress=False, reuse_prefix=False)
    monkeypatch.setattr(
        backends_module, "_bridge_prefix", lambda m, tokens: Prefix(int(tokens.shape[1]), DynamicCache())
    )
    assert bridge_prefix_cache_works(model) is False
    run = evaluate(model, PREFIX, QUERIES, LABELS, progress=False)
    assert torch.allclose(run.class_scores, inline.class_scores, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_bridge_lcgd_detach_cuts_the_graph(hf_dirs, family):
    """Layer-causal GD on the bridge: the loss of layer l sends no gradient to the layers below it."""
    model = _load(hf_dirs, family, "bridge")
    params = select_trainable(model, "kv")
    tokens, attention, loss_mask = next(demo_batches(DEMOS, ANSWERS, FinetuneConfig(batch_size=3), "cpu"))
    last = model.cfg.n_layers - 1
    (loss,) = layer_causal_losses(model, tokens, attention, loss_mask, only_last=True)
    loss.backward()
    for name, param in params.items():
        layer = int(name.split(".")[1])
        has_gradient = param.grad is not None and float(param.grad.abs().max()) > 0
        assert has_gradient == (layer == last), name


def _grad_tracking_tensors(obj, seen=None, depth=0) -> list[str]:
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 40:
        return []
    seen.add(id(obj))
    if torch.is_tensor(obj):
        return ["tensor"] if obj.grad_fn is not None else []
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else None
    if children is None:
        children = vars(obj).items() if hasattr(obj, "__dict__") and not isinstance(obj, type) else []
    return [f for _, value in list(children) for f in _grad_tracking_tensors(value, seen, depth + 1)]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bridge_copies_are_independent(hf_dirs, family):
    """Finetuning a copy leaves the original bridge untouched: same weights, no tensor of the copy's
    graph written into it (the bridge's block hooks close over their own modules), copyable again."""
    model = _load(hf_dirs, family, "bridge")
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    finetune(model, DEMOS, ANSWERS, FinetuneConfig(lr=1e-1), progress=False)
    assert _grad_tracking_tensors(model) == []
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    copy.deepcopy(model)


def test_untrained_bridge_follows_the_reference_recipe(hf_dirs):
    """q/k/v: xavier-uniform gain 1/√2; o: xavier-uniform; MLP: U(±1/√fan_in); embeddings, norms and
    the unembedding kept. Std per projection within 10% of the recipe's (thousands of entries)."""
    trained = _load(hf_dirs, "llama", "bridge")
    model = _load(hf_dirs, "llama", "bridge", untrained=True, seed=3)
    again = _load(hf_dirs, "llama", "bridge", untrained=True, seed=3)
    hf = model.original_model.model
    for layer in hf.layers:
        for name, module in (
            ("q", layer.self_attn.q_proj),
            ("k", layer.self_attn.k_proj),
            ("v", layer.self_attn.v_proj),
            ("o", layer.self_attn.o_proj),
            ("mlp", layer.mlp.gate_proj),
            ("mlp", layer.mlp.down_proj),
        ):
            fan_out, fan_in = module.weight.shape
            gain = 2**-0.5 if name in "qkv" else 1.0
            expected = gain * (2 / (fan_in + fan_out)) ** 0.5 if name != "mlp" else (3 * fan_in) ** -0.5
            assert abs(float(module.weight.std()) / expected - 1) < 0.1, name
    original = trained.original_model.model
    assert torch.equal(hf.embed_tokens.weight, original.embed_tokens.weight)
    assert torch.equal(hf.layers[0].input_layernorm.weight, original.layers[0].input_layernorm.weight)
    assert torch.equal(model.original_model.lm_head.weight, trained.original_model.lm_head.weight)
    for (name, p), q in zip(model.named_parameters(), again.parameters()):
        assert torch.equal(p, q), name


def test_backend_names_are_checked(monkeypatch):
    with pytest.raises(ConfigError, match="unknown backend"):
        check_backend("jax")
    monkeypatch.setattr(backends_module, "has_hooked_transformer", lambda: False)
    with pytest.raises(ConfigError, match="use --backend bridge"):
        check_backend("hooked")
    assert check_backend(None) == "bridge"
    with pytest.raises(ConfigError, match="HookedTransformer or TransformerBridge"):
        backend_of(torch.nn.Linear(2, 2))


def test_a_cell_runs_end_to_end_on_the_bridge(hf_dirs, tmp_path):
    """``run_cells`` on the bridge: every setting and metric, the backend recorded, the cell in a
    folder and identity of its own (a hooked cell of the same config is another cell)."""
    from icl_lens.cell.experiment import ExperimentConfig
    from icl_lens.cell.store import RuntimeOptions, cell_identity, cell_path
    from icl_lens.runs.sweep import run_cells

    cfg = ExperimentConfig(task="sst2", model=str(hf_dirs["gemma3"]), k=2, limit=4, lr=1e-2, batch_size=4)
    runtime = RuntimeOptions(progress=False, attention_examples=1, backend="bridge")
    (results,) = run_cells([cfg], tmp_path, runtime)
    assert cell_path(tmp_path, cfg, runtime).parent.name.endswith("__bridge")
    assert results["model"]["backend"] == "bridge" and results["meta"]["backend"] == "bridge"
    assert results["identity"]["backend"] == "bridge"
    versions = {name: importlib.metadata.version(name) for name in ("transformers", "transformer-lens")}
    assert results["meta"]["torch"] == torch.__version__  # the exact versions that produced the numbers
    assert results["meta"]["transformers"] == versions["transformers"]
    assert results["meta"]["transformer_lens"] == versions["transformer-lens"]
    page = build_cell_report(cell_path(tmp_path, cfg, runtime).parent, max_examples=1).read_text()
    assert f"transformers {versions['transformers']}" in page
    assert f"TransformerLens {versions['transformer-lens']}" in page
    validate_results(results)  # the documented results layout holds on the bridge too
    assert set(results["accuracy"]) == {"zsl", "icl", "ft", "lcgd"}
    n_layers = results["model"]["n_layers"]
    assert len(results["metrics"]["ft"]["simaou"]["per_layer"]) == n_layers
    if has_hooked_transformer():
        hooked_runtime = RuntimeOptions(progress=False, attention_examples=0, backend="hooked")
        assert cell_identity(cfg, hooked_runtime) != cell_identity(cfg, runtime)
        assert "backend" not in cell_identity(cfg, hooked_runtime)  # hooked cells keep their identity


@needs_hooked
def test_a_hooked_model_is_refused_for_a_bridge_cell(hf_dirs, tmp_path):
    from icl_lens.cell.experiment import ExperimentConfig
    from icl_lens.cell.store import RuntimeOptions
    from icl_lens.runs.sweep import run_cells

    cfg = ExperimentConfig(task="sst2", model=str(hf_dirs["llama"]), k=2, limit=4, lr=1e-2, batch_size=4)
    runtime = RuntimeOptions(progress=False, attention_examples=0, backend="bridge")
    with pytest.raises(ConfigError, match="hooked model"):
        run_cells([cfg], tmp_path, runtime, model_loader=lambda name, backend, **kw: load_model(name, **kw))


@needs_hooked
def test_backends_give_the_same_experiment_results(hf_dirs):
    """The whole pipeline (prompts, four settings, every metric, nulls, tests) agrees across backends."""
    from helpers import assert_same_results

    from icl_lens.cell.experiment import ExperimentConfig, run_experiment
    from icl_lens.tasks import get_task

    cfg = ExperimentConfig(task="sst2", model=str(hf_dirs["llama"]), k=3, limit=6, lr=1e-2, batch_size=3)
    runs = {}
    for backend in ("hooked", "bridge"):
        model = _load(hf_dirs, "llama", backend)
        runs[backend] = run_experiment(model, get_task("sst2"), cfg, progress=False).results
    noisy = {"simam_delta", "lcgd_vs_ft_simam_delta"}
    for key in ("accuracy", "metrics", "nulls", "tests"):
        got, expected = _without(runs["bridge"][key], noisy), _without(runs["hooked"][key], noisy)
        assert_same_results(got, expected, rel=1e-3, abs_tol=1e-4, path=key)
    # SimAM_Δ is a cosine of two attention-map *differences*; where a layer's maps barely move (here
    # layer 0: ~1e-6), float32 rounding of the maps (~5e-8 between backends) moves it by up to ~0.02.
    for setting in ("ft", "lcgd"):
        a = runs["bridge"]["metrics"][setting]["simam_delta"]["per_layer"]
        b = runs["hooked"]["metrics"][setting]["simam_delta"]["per_layer"]
        assert max(abs(x - y) for x, y in zip(a, b)) < 0.05


def _without(tree, keys):
    """``tree`` with every dict entry named in ``keys`` (and its ``*_ci`` companions) removed."""
    if isinstance(tree, dict):
        return {k: _without(v, keys) for k, v in tree.items() if k not in keys and k.removesuffix("_ci") not in keys}
    if isinstance(tree, list):
        return [_without(v, keys) for v in tree]
    return tree


@pytest.mark.parametrize("backend", [None, "bridge"])
def test_the_command_line_runs_on_either_backend(hf_dirs, tmp_path, backend):
    """``icl-lens run`` without ``--backend`` uses the installed TransformerLens's default (hooked
    before 4.0, bridge from 4.0); ``--backend bridge`` always works."""
    import json

    from icl_lens.cli import main
    from icl_lens.models.backends import default_backend

    flags = ["--backend", backend] if backend else []
    argv = ["run", "--task", "sst2", "--model", str(hf_dirs["llama"]), "--k", "2", "--limit", "4", "--lr", "0.01"]
    assert main([*argv, "--out", str(tmp_path), "--attention-examples", "0", "--no-progress", *flags]) == 0
    (path,) = tmp_path.glob("*/results.json")
    assert json.loads(path.read_text())["model"]["backend"] == (backend or default_backend())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_processed_bridge_scores_as_the_unprocessed_one(hf_dirs, family):
    """``processed=True`` (TransformerLens's weight processing in compatibility mode) changes raw
    logits by a per-position constant at most: class scores (log-probabilities) are unchanged."""
    raw = evaluate(_load(hf_dirs, family, "bridge"), PREFIX, QUERIES, LABELS, progress=False)
    processed = evaluate(_load(hf_dirs, family, "bridge", processed=True), PREFIX, QUERIES, LABELS, progress=False)
    assert torch.allclose(raw.class_scores, processed.class_scores, atol=1e-4)


def test_bfloat16_bridge_trains_through_float32_master_weights(hf_dirs):
    """A bf16 bridge finetunes W_K / W_V in float32 masters (as the hooked backend does): the bf16 result
    is the float32 result rounded, within a few bf16 ulps."""
    cfg = FinetuneConfig(lr=1e-1)
    full = _load(hf_dirs, "llama", "bridge")
    half = _load(hf_dirs, "llama", "bridge", dtype="bfloat16")
    tuned_full = finetune(full, DEMOS, ANSWERS, cfg, progress=False)[0]
    tuned_half = finetune(half, DEMOS, ANSWERS, cfg, progress=False)[0]
    for layer in range(full.cfg.n_layers):
        expected = attention_parameter(tuned_full, layer, "W_K")
        got = attention_parameter(tuned_half, layer, "W_K").float()
        assert got.dtype == torch.float32 and attention_parameter(tuned_half, layer, "W_K").dtype == torch.bfloat16
        assert (got - expected).abs().max() <= 4 * 2**-8 * expected.abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_bridge_attention_scores_are_taken_before_the_softmax(hf_dirs, family):
    """``hook_attn_scores`` must hold pre-softmax scores (a generic attention path could pass it the
    pattern): softmax of the recorded scores over the keys is the recorded pattern, on every layer."""
    model = _load(hf_dirs, family, "bridge")
    tokens = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 50, 51]])
    names = lambda name: name.endswith(("hook_attn_scores", "hook_pattern"))  # noqa: E731
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    for layer in range(model.cfg.n_layers):
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert not torch.allclose(scores.nan_to_num(neginf=0.0), pattern)  # not the pattern itself
        assert torch.allclose(scores.float().softmax(dim=-1), pattern.float(), atol=1e-6), layer


BATCHED_SWEEPS = {
    "gd, kv+q, adam": (FinetuneConfig(params="kv+q", optimizer="adam", weight_decay=0.01), finetune),
    "lcgd simultaneous, momentum": (
        FinetuneConfig(momentum=0.5),
        functools.partial(layer_causal_finetune, schedule="simultaneous"),
    ),
}
SWEEP_GRID = (1e-3, 0.1, 1.0, 10.0)


@pytest.mark.parametrize("sweep", sorted(BATCHED_SWEEPS))
@pytest.mark.parametrize("family", FAMILIES)
def test_bridge_trains_the_sweeps_rates_together_as_one_at_a_time(hf_dirs, family, sweep, monkeypatch):
    """The bridge's batched sweep (per-rate Hugging Face projections, one pass for all rates) gives the
    sequential sweep's scores and choice, and every rate the weights its own training gives (identical to
    the bit on some machines, within 1e-7 of the largest entry on others; the bound is
    test_lr_sweep_batched's)."""
    from icl_lens.training import lr_sweep
    from icl_lens.training.batched import train_rates, unsupported_reason

    cfg, trainer = BATCHED_SWEEPS[sweep]
    model = _load(hf_dirs, family, "bridge")
    assert unsupported_reason(model, cfg, trainer) is None
    sizes = []
    real = lr_sweep.train_rates
    monkeypatch.setattr(
        lr_sweep,
        "train_rates",
        lambda m, s, a, b, lrs, *r, **k: sizes.append(len(lrs)) or real(m, s, a, b, lrs, *r, **k),
    )
    inputs = dict(
        score_prefix=PREFIX[:1],
        score_queries=QUERIES,
        score_labels=[0, 1, 0],
        label_tokens=LABELS,
        content_free_query=[90],
        progress=False,
        trainer=trainer,
        grid=SWEEP_GRID,
    )
    batched = lr_sweep.sweep_learning_rate(model, DEMOS, ANSWERS, cfg, **inputs)
    sequential = lr_sweep.sweep_learning_rate(model, DEMOS, ANSWERS, cfg, batched=False, **inputs)
    assert sizes == [len(SWEEP_GRID)]  # one chunk, really batched
    assert batched.to_dict() == sequential.to_dict()
    method = "gd" if trainer is finetune else "lcgd"
    trained = train_rates(model, DEMOS, ANSWERS, cfg, SWEEP_GRID, method)
    original = block_parameters(model)
    for lr in SWEEP_GRID:
        student, _ = trainer(model, DEMOS, ANSWERS, dataclasses.replace(cfg, lr=lr), progress=False)
        own = block_parameters(student)
        names = sorted(trained.params[lr])
        assert names and all(".attn." in name for name in names)
        # The key bias's gradient is zero in exact arithmetic (softmax ignores q·b_K, the same for every key),
        # so Adam's scale-free step turns float32 rounding into steps of either sign up to lr: no two
        # summation orders agree there (seen: 22 of GPT-2's 64 key-bias entries on one 2-core machine).
        if cfg.optimizer == "adam":
            names = [n for n in names if not n.endswith(("k.bias", "b_K"))]
        got = torch.cat([trained.params[lr][n].flatten() for n in names])
        want = torch.cat([own[n].detach().flatten() for n in names])
        update = want - torch.cat([original[n].detach().flatten() for n in names])
        assert update.norm() > 0
        assert float((got - want).abs().max()) <= 4e-6 * float(want.abs().max())
        assert float((got - want).norm()) <= 1e-5 * float(update.norm())
        loaded = block_parameters(trained.load(lr))
        assert all(torch.equal(loaded[n], trained.params[lr][n]) for n in names)


def test_bridge_sweep_falls_back_where_its_rates_cannot_be_batched(hf_dirs, monkeypatch):
    from icl_lens.training.batched import unsupported_reason

    model = _load(hf_dirs, "llama", "bridge")
    assert "parameter group 'o'" in unsupported_reason(model, FinetuneConfig(params="o"), finetune)
    assert "processed" in unsupported_reason(
        _load(hf_dirs, "llama", "bridge", processed=True), FinetuneConfig(), finetune
    )
    half = _load(hf_dirs, "llama", "bridge", dtype="bfloat16")
    assert "dtype" in unsupported_reason(half, FinetuneConfig(), finetune)
    # a projection module the forward pass never calls (as where an attention computes its keys from
    # the weights directly) cannot be made per-rate
    from icl_lens.training import batched

    real = batched._bridge_projection_modules

    def stray_k(model, names):
        modules = real(model, names)
        modules["blocks.1.attn.k."] = copy.deepcopy(modules["blocks.1.attn.k."])
        return modules

    monkeypatch.setattr(batched, "_bridge_projection_modules", stray_k)
    assert "does not call blocks.1.attn.k once per forward pass" in unsupported_reason(
        model, FinetuneConfig(), finetune
    )
