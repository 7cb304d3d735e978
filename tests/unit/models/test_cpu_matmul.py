"""Float32 CPU products on oneDNN (icl_lens.models.cpu_matmul): each rerouted product is the exact
product to float32 rounding, forward and backward passes are rerouted, whatever it does not cover
runs as before, the kernel is chosen as documented, and results record which kernel ran."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from helpers import load_experiment_script, tiny_model

from icl_lens.errors import ConfigError
from icl_lens.evaluation import evaluate
from icl_lens.models import cpu_matmul as cm

needs_onednn = pytest.mark.skipif(cm.onednn_unavailable() is not None, reason="this PyTorch has no oneDNN")


@pytest.fixture
def onednn_calls(monkeypatch):
    """The products oneDNN runs, as (a's shape, b's shape); the kernel choice is re-resolved."""
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    real = cm._linear

    def counting(a, b, bias=None):
        seen.append((tuple(a.shape), tuple(b.shape)))
        return real(a, b, bias)

    monkeypatch.setattr(cm, "_linear", counting)
    cm._resolved.cache_clear()
    yield seen
    cm._resolved.cache_clear()


def _operands():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(35, 64, generator=g)
    b = torch.randn(64, 48, generator=g)
    return a, b, torch.randn(48, generator=g), torch.randn(35, 1, generator=g), torch.randn(35, 48, generator=g)


@needs_onednn
def test_each_rerouted_product_is_the_exact_product_to_float32_rounding(onednn_calls):
    a, b, bias, column_bias, acc = _operands()
    exact = a.double() @ b.double()
    wide = torch.randn(35, 80)  # its first 64 columns: a row-major slice with a longer leading dimension
    cases = {
        "mm": (lambda: a @ b, exact),
        "mm of transposed views": (lambda: (b.T @ a.T).T, exact),
        "mm of a column slice": (lambda: wide[:, :64] @ b, wide[:, :64].double() @ b.double()),
        "addmm, bias per column": (lambda: torch.addmm(bias, a, b), exact + bias.double()),
        "addmm, bias per row": (lambda: torch.addmm(column_bias, a, b), exact + column_bias.double()),
        "addmm_": (lambda: acc.clone().addmm_(a, b), exact + acc.double()),
        "linear of a 3-d input": (
            lambda: torch.nn.functional.linear(a.reshape(5, 7, 64), b.T).reshape(35, 48),
            exact,
        ),
        "bmm of one batch": (lambda: torch.bmm(a[None], b[None])[0], exact),
    }
    with cm.forced_kernel("onednn"):
        for name, (product, want) in cases.items():
            before = len(onednn_calls)
            got = product()
            assert len(onednn_calls) == before + 1, name
            assert got.dtype == torch.float32 and got.shape == want.shape, name
            # float32 rounding of 64-term sums: far below 1e-5 of the largest entry
            assert float((got.double() - want).abs().max()) <= 1e-5 * float(want.abs().max()), name


@needs_onednn
def test_products_it_does_not_cover_run_as_before(onednn_calls):
    a, b, bias, _, _ = _operands()
    cases = {
        "float64": lambda: a.double() @ b.double(),
        "bfloat16": lambda: a.bfloat16() @ b.bfloat16(),
        "a broadcast (zero-stride) operand": lambda: a[:1].expand(35, 64) @ b,
        "addmm with beta and alpha": lambda: torch.addmm(bias, a, b, beta=0.5, alpha=2.0),
        "bmm of several batches": lambda: torch.bmm(a.reshape(5, 7, 64), b.expand(5, 64, 48)),
        "an empty product": lambda: a[:0] @ b,
        "a vector": lambda: a @ b[:, 0],
    }
    for name, product in cases.items():
        want = product()
        with cm.forced_kernel("onednn"):
            got = product()
        assert torch.equal(got, want), name
    assert onednn_calls == []
    with cm.forced_kernel("onednn"), pytest.raises(RuntimeError):  # the original's own shape error
        torch.addmm(torch.zeros(3), a, b)


@needs_onednn
def test_training_runs_forward_and_backward_on_onednn_and_matches_the_blas(onednn_calls):
    model = tiny_model(n_layers=2)
    tokens = torch.tensor([[1, 5, 9, 14, 3, 7, 2]])
    grads = {}
    for kernel in ("blas", "onednn"):
        model.zero_grad()
        with cm.forced_kernel(kernel):
            loss = model(tokens, return_type="loss")
            forward_calls = len(onednn_calls)
            loss.backward()
        if kernel == "onednn":
            assert forward_calls > 0 and len(onednn_calls) > forward_calls  # the backward's products too
        else:
            assert len(onednn_calls) == 0
        grads[kernel] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    for name, want in grads["blas"].items():
        got = grads["onednn"][name]
        assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max()) + 1e-7, name


@needs_onednn
def test_the_library_runs_on_the_kernel_the_environment_asks_for(onednn_calls, monkeypatch):
    model = tiny_model(n_layers=2)
    args = (model, [1], [[5, 9, 14], [7, 2]], [[20], [21]])
    scores = {}
    for kernel in ("blas", "onednn"):
        monkeypatch.setenv(cm.ENV_VAR, kernel)
        before = len(onednn_calls)
        scores[kernel] = evaluate(*args, progress=False).class_scores
        ran = len(onednn_calls) - before
        assert (ran > 0) == (kernel == "onednn"), kernel
    torch.testing.assert_close(scores["onednn"], scores["blas"], rtol=1e-5, atol=1e-5)


def test_auto_chooses_onednn_only_where_mkl_takes_its_generic_path(monkeypatch):
    def choice(machine="x86_64", vendor="AuthenticAMD", mkl=True, onednn=None):
        monkeypatch.setattr(cm.platform, "machine", lambda: machine)
        monkeypatch.setattr(cm, "cpu_vendor", lambda: vendor)
        monkeypatch.setattr(cm.torch.backends.mkl, "is_available", lambda: mkl)
        monkeypatch.setattr(cm, "onednn_unavailable", lambda: onednn)
        return cm._auto_choice()[0]

    assert choice() == "onednn"
    assert choice(vendor="HygonGenuine") == "onednn"
    assert choice(machine="AMD64") == "onednn"  # Windows' name for x86-64
    assert choice(vendor="GenuineIntel") == "blas"
    assert choice(vendor=None) == "blas"
    assert choice(machine="aarch64") == "blas"
    assert choice(mkl=False) == "blas"
    assert choice(onednn="this PyTorch was built without oneDNN") == "blas"


def test_a_bad_kernel_request_is_named(monkeypatch):
    monkeypatch.setenv(cm.ENV_VAR, "mkl")
    with pytest.raises(ConfigError, match=r"ICL_LENS_CPU_MATMUL='mkl'.*auto, onednn, blas"):
        cm.cpu_matmul_kernel()
    monkeypatch.setenv(cm.ENV_VAR, "onednn")
    monkeypatch.setattr(cm, "onednn_unavailable", lambda: "this PyTorch was built without oneDNN")
    cm._resolved.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"ICL_LENS_CPU_MATMUL=onednn, but this PyTorch was built without oneDNN"):
            cm.cpu_matmul_kernel()
        with pytest.raises(ConfigError, match="cannot force oneDNN"):
            with cm.forced_kernel("onednn"):
                pass
    finally:
        cm._resolved.cache_clear()


def test_the_cli_sets_and_checks_the_kernel(monkeypatch, capsys):
    from icl_lens.cli import main

    monkeypatch.delenv(cm.ENV_VAR, raising=False)
    assert main(["--cpu-matmul", "blas", "tasks"]) == 0
    assert cm.requested_kernel() == "blas"
    monkeypatch.setenv(cm.ENV_VAR, "fast")
    assert main(["tasks"]) == 2
    assert "ICL_LENS_CPU_MATMUL='fast'" in capsys.readouterr().err


@needs_onednn
def test_a_onednn_that_disagrees_with_the_blas_is_not_used(monkeypatch, caplog):
    monkeypatch.setattr(cm, "_linear", lambda a, b, bias=None: torch.zeros(a.shape[0], b.shape[1]))
    monkeypatch.setenv(cm.ENV_VAR, "onednn")
    cm._resolved.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=cm.__name__):
            assert cm.cpu_matmul_kernel() == "blas"
        assert "disagree with the exact product" in caplog.text
        assert "self-check" in cm.cpu_matmul_facts()["cpu_matmul_reason"]
    finally:
        cm._resolved.cache_clear()


@needs_onednn
def test_models_off_the_cpu_are_not_rerouted_and_nesting_is_free(monkeypatch):
    monkeypatch.setenv(cm.ENV_VAR, "onednn")
    gpu_model = SimpleNamespace(cfg=SimpleNamespace(device="cuda:0"))
    with cm.cpu_matmul(gpu_model) as kernel:
        assert kernel == "blas" and not cm._active()
    assert cm.model_kernel(gpu_model) == "default"
    assert cm.model_kernel(SimpleNamespace(cfg=SimpleNamespace(device="cpu", dtype=torch.bfloat16))) == "default"
    assert cm.model_kernel(SimpleNamespace(cfg=SimpleNamespace(device="cpu", dtype=torch.float32))) == "onednn"
    with cm.cpu_matmul(SimpleNamespace(student=gpu_model)):  # an object holding its model
        assert not cm._active()
    with cm.cpu_matmul(SimpleNamespace(cfg=SimpleNamespace(device="cpu"))) as kernel:
        assert kernel == "onednn" and cm._active()
        depth = len(torch.utils._python_dispatch._get_current_dispatch_mode_stack())
        with cm.cpu_matmul():
            assert len(torch.utils._python_dispatch._get_current_dispatch_mode_stack()) == depth
        with cm.forced_kernel("blas"):
            assert cm.cpu_matmul_kernel() == "blas"
    assert not cm._active()


def test_results_record_the_kernel(monkeypatch):
    from icl_lens.cell.experiment import ExperimentConfig, run_experiment
    from icl_lens.tasks import get_task

    model = tiny_model(n_layers=1, name="smollm2-135m")
    cfg = ExperimentConfig(k=0, limit=2, settings=("zsl",), batch_size=2)
    for kernel in cm.available_cpu_kernels():
        monkeypatch.setenv(cm.ENV_VAR, kernel)
        results = run_experiment(model, get_task("sst2"), cfg, progress=False).results
        assert results["model"]["matmul"] == kernel


def test_the_kernel_benchmark_measures_every_kernel_against_float64():
    script = load_experiment_script("bench_cpu_matmul")
    rows = script.measure(script.products(16, 32, 24, [1, 5]), repeats=1)
    assert [row["name"] for row in rows] == ["MLP in", "MLP in", "MLP out", "lens chunk", "square"]
    assert [row["shape"] for row in rows][:4] == [(1, 16, 32), (5, 16, 32), (5, 32, 16), (24, 16, 5)]
    for row in rows:
        for kernel in cm.available_cpu_kernels():
            rate, error = row[kernel]
            assert rate > 0 and 0 <= error < 1e-5, (row["name"], kernel)
