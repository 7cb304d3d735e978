"""Finetuning a bfloat16/float16 model trains float32 master weights (icl_lens.training.finetune.MasterWeights).

Reference for every check: the same training run in float32 from the same (half-representable)
starting weights, its result rounded to the half dtype.
"""

import copy

import pytest
import torch

from helpers import tiny_model
from icl_lens.training.finetune import FinetuneConfig, finetune
from icl_lens.training.lcgd import layer_causal_finetune
from icl_lens.prompts import PromptFormat, encode_prompts
from icl_lens.tasks import get_task, sample_demonstrations, sample_queries

MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10}


def _demos(model, k=4):
    t = get_task("sst2")
    p = encode_prompts(model.tokenizer, t, sample_demonstrations(t, k, 0), sample_queries(t, 2), PromptFormat(),
                       model.cfg.n_ctx)
    return p.demo_sequences, p.demo_answer_lengths


def _ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` numbers at |x| (at the smallest normal for x = 0)."""
    _, exponent = torch.frexp(x.float().abs().clamp_min(torch.finfo(dtype).tiny))  # x = m · 2^e, m in [0.5, 1)
    return torch.pow(2.0, (exponent - 1 - MANTISSA_BITS[dtype]).float())


def _train(trainer, model, seqs, answers, cfg):
    if trainer == "gd":
        return finetune(model, seqs, answers, cfg, progress=False)
    return layer_causal_finetune(model, seqs, answers, cfg, trainer.removeprefix("lcgd-"), progress=False)


def _half_and_reference(gqa: bool, dtype: torch.dtype):
    half = tiny_model(gqa=gqa, n_layers=2).to(dtype)
    return half, copy.deepcopy(half).to(torch.float32)


def _trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if n.split(".")[-1] in ("W_K", "W_V", "_W_K", "_W_V")}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gqa", [False, True])
@pytest.mark.parametrize("trainer, options", [
    ("gd", {}),
    ("gd", {"momentum": 0.9, "weight_decay": 0.01}),
    ("gd", {"optimizer": "adam", "lr": 1e-4}),
    ("lcgd-simultaneous", {}),
    ("lcgd-sequential", {}),
])
def test_half_precision_steps_follow_the_float32_steps(dtype, gqa, trainer, options):
    half, reference = _half_and_reference(gqa, dtype)
    seqs, answers = _demos(half)
    cfg = FinetuneConfig(**{"lr": 3e-3, "epochs": 2, **options})
    tuned_half, trace_half = _train(trainer, half, seqs, answers, cfg)
    tuned_ref, trace_ref = _train(trainer, reference, seqs, answers, cfg)
    start = _trained(half)
    ref = {n: p.to(dtype) for n, p in _trained(tuned_ref).items()}
    for name, weights in _trained(tuned_half).items():
        assert weights.dtype == dtype
        update_ref = ref[name].float() - start[name].float()
        # rounding of the result (2 ulps) plus a 5 % error of the update (its gradients came from a
        # half-precision forward pass); momentum and Adam amplify that error on a rare entry
        tolerance = 2 * _ulp(ref[name], dtype) + 0.05 * update_ref.abs()
        within = float(((weights.float() - ref[name].float()).abs() <= tolerance).float().mean())
        assert within >= (1.0 if cfg.optimizer == "sgd" and cfg.momentum == 0 else 0.995), (name, within)
        changed_half = float((weights != start[name]).float().mean())
        changed_ref = float((ref[name] != start[name]).float().mean())
        assert changed_ref > 0.02 and abs(changed_half - changed_ref) <= 0.1 * changed_ref, name
    # the recorded gradient norms are float32 norms of the same gradients
    assert torch.allclose(torch.tensor(trace_half.grad_norms), torch.tensor(trace_ref.grad_norms), rtol=0.03)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("trainer", ["gd", "lcgd-simultaneous", "lcgd-sequential"])
def test_updates_below_half_an_ulp_accumulate(dtype, trainer):
    """Each step's update rounds to no change in the half dtype, yet many steps move the weights."""
    half, reference = _half_and_reference(True, dtype)
    seqs, answers = _demos(half, k=1)
    lr = 1e-4 if dtype == torch.bfloat16 else 1e-5
    one_step, _ = _train(trainer, reference, seqs, answers, FinetuneConfig(lr=lr))
    start = _trained(half)
    # a naive half-precision step (w ← round(w − lr·g)) can move only the entries whose update reaches
    # half an ulp: here under 1 % of them (the few weights near zero)
    movable = [((w - start[n].float()).abs() >= 0.5 * _ulp(start[n], dtype)).float() for n, w in _trained(one_step).items()]
    naive_fraction = float(torch.cat([m.flatten() for m in movable]).mean())
    assert naive_fraction < 0.01
    epochs = 40
    tuned_half, _ = _train(trainer, half, seqs, answers, FinetuneConfig(lr=lr, epochs=epochs))
    tuned_ref, _ = _train(trainer, reference, seqs, answers, FinetuneConfig(lr=lr, epochs=epochs))
    ref = _trained(tuned_ref)
    changed = {n: float((w != start[n]).float().mean()) for n, w in _trained(tuned_half).items()}
    changed_ref = {n: float((w.to(dtype) != start[n]).float().mean()) for n, w in ref.items()}
    assert sum(changed.values()) / len(changed) > max(0.05, 10 * naive_fraction)
    for name in changed:
        assert abs(changed[name] - changed_ref[name]) <= 0.1 * changed_ref[name] + 0.01, name


def test_float32_training_is_unchanged_by_master_weights(tiny_gpt):
    """A float32 model trains its own parameters: the result is the plain SGD update, bit for bit."""
    seqs, answers = _demos(tiny_gpt, k=1)
    tuned, _ = finetune(tiny_gpt, seqs, answers, FinetuneConfig(lr=0.05), progress=False)
    tuned_again, _ = finetune(tiny_gpt, seqs, answers, FinetuneConfig(lr=0.05), progress=False)
    for (name, p), q in zip(tuned.named_parameters(), tuned_again.parameters()):
        assert p.dtype == torch.float32 and torch.equal(p, q), name


@pytest.mark.parametrize("trainer", ["gd", "lcgd-simultaneous"])
def test_an_update_the_half_model_cannot_hold_is_reported(trainer, caplog):
    """No silent no-op: one step far below half an ulp leaves the bf16 model as it was, and says so."""
    half, _ = _half_and_reference(True, torch.bfloat16)
    seqs, answers = _demos(half, k=1)
    with caplog.at_level("WARNING", logger="icl_lens.training.finetune"):
        _train(trainer, half, seqs, answers, FinetuneConfig(lr=1e-6))
    assert any("below the resolution of bfloat16" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="icl_lens.training.finetune"):
        _train(trainer, half, seqs, answers, FinetuneConfig(lr=0.1))
    assert not any("below the resolution" in r.getMessage() for r in caplog.records)
