"""The whole comparison on the real offline default model (marked real_model; run by CI)."""

import math

import pytest
import torch

from icl_lens.evaluation import evaluate
from icl_lens.cell.experiment import ExperimentConfig, run_experiment
from icl_lens.prompts import PromptFormat, encode_prompts
from icl_lens.tasks import get_task, sample_demonstrations, sample_queries

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    from icl_lens.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def default_model():
    from icl_lens.cell.experiment import DEFAULT_MODEL
    from icl_lens.models import load_model

    return load_model(DEFAULT_MODEL)


def test_prefix_cache_and_batching_match_the_straightforward_path(smollm2):
    task = get_task("agnews")
    prompts = encode_prompts(smollm2.tokenizer, task, sample_demonstrations(task, 8, 0), sample_queries(task, 6),
                             PromptFormat(), smollm2.cfg.n_ctx)
    fast = evaluate(smollm2, prompts.icl_prefix, prompts.queries, prompts.labels, batch_size=6, progress=False)
    slow = evaluate(smollm2, prompts.icl_prefix, prompts.queries, prompts.labels, batch_size=1,
                    reuse_prefix=False, progress=False)
    assert (fast.class_scores - slow.class_scores).abs().max() <= 1e-4
    for name in fast.activations.keys():
        scale = slow.activations[name].abs().max().clamp_min(1.0)
        assert (fast.activations[name] - slow.activations[name]).abs().max() / scale <= 1e-4, name


def test_full_comparison_cell(default_model):
    cfg = ExperimentConfig(task="sst2", k=4, limit=12, lr=1e-3, batch_size=12)
    out = run_experiment(default_model, get_task("sst2"), cfg, progress=False)
    n_layers = default_model.cfg.n_layers
    r = out.results
    assert r["prompts"]["k_used"] == 4 and r["n_examples"] == 12
    for setting in ("zsl", "icl", "ft", "lcgd"):
        assert 0.0 <= r["accuracy"][setting] <= 1.0
    for setting in ("ft", "lcgd"):
        per_layer = r["metrics"][setting]["simaou"]["per_layer"]
        assert len(per_layer) == n_layers and all(math.isfinite(v) for v in per_layer)
        norms = torch.tensor(r["training"][setting]["grad_norms"])
        assert norms.shape == (4, n_layers) and bool((norms > 0).all())
    # LCGD's first layer sees only its own loss: its gradient norms differ from GD's
    assert r["training"]["ft"]["grad_norms"][0][0] != pytest.approx(r["training"]["lcgd"]["grad_norms"][0][0])
    assert 0.0 < r["metrics"]["alpha"]["mean"] < 1.0
