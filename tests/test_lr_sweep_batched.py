"""The batched learning-rate sweep (all rates trained together, frozen weights shared) gives the
sequential sweep's result: the same score at every rate, the same choice, the same trained weights up
to float32 summation order, divergence per rate, chunking invisible, and a logged fallback where it
cannot be exact."""

import logging
from dataclasses import replace
from functools import partial

import pytest
import torch

import icl_lens.lr_sweep as lr_sweep
from icl_lens.batched_training import bytes_per_rate, chunk_size, train_rates, unsupported_reason
from icl_lens.finetune import FinetuneConfig, finetune
from icl_lens.lcgd import layer_causal_finetune
from icl_lens.lr_sweep import sweep_learning_rate
from icl_lens.prompts import PromptFormat, encode_prompts
from icl_lens.tasks import get_task, sample_demonstrations, sample_queries

CONFIGS = {
    "sgd": (FinetuneConfig(), finetune),
    "adam, global clip, batches of 2, 2 epochs": (
        FinetuneConfig(optimizer="adam", weight_decay=0.01, clip_global_norm=0.5, batch_size=2, epochs=2),
        finetune,
    ),
    "kv+q, momentum, value and layer clips, answer loss": (
        FinetuneConfig(params="kv+q", momentum=0.9, clip_value=0.01, clip_norm=0.1, loss_on="answer"),
        finetune,
    ),
    "lcgd simultaneous": (FinetuneConfig(momentum=0.5), partial(layer_causal_finetune, schedule="simultaneous")),
}
GRID = (1e-3, 0.1, 1.0, 10.0)

MAX_ABS_TO_SCALE = 1e-6
"""Bound on max |batched − sequential| over a rate's trained tensors, relative to their largest entry
(measured ≤ 7.6e-7 on these configs, GPT-like and GQA models)."""
MAX_UPDATE_REL = 1e-5
"""Bound on ‖batched − sequential‖ / ‖sequential update‖ over a rate's trained tensors (measured ≤ 3.7e-6)."""


def _inputs(model, k=4, n_queries=8, calibrated=False):
    task = get_task("sst2")
    queries = sample_queries(task, n_queries)
    p = encode_prompts(
        model.tokenizer, task, sample_demonstrations(task, k, 0), queries, PromptFormat(), model.cfg.n_ctx
    )
    content_free = model.tokenizer.encode(" N/A", add_special_tokens=False) if calibrated else None
    return dict(
        demo_sequences=p.demo_sequences,
        answer_lengths=p.demo_answer_lengths,
        score_prefix=p.zsl_prefix,
        score_queries=p.queries,
        score_labels=[q["label"] for q in queries],
        label_tokens=p.labels,
        n_start=p.n_start,
        content_free_query=content_free,
        progress=False,
    )


def _count_batched_trainings(monkeypatch) -> list[int]:
    """How many rates each batched training call got (empty: the sweep went sequential)."""
    sizes = []
    real = lr_sweep.train_rates

    def spy(model, seqs, answers, base, lrs, *args, **kwargs):
        sizes.append(len(lrs))
        return real(model, seqs, answers, base, lrs, *args, **kwargs)

    monkeypatch.setattr(lr_sweep, "train_rates", spy)
    return sizes


@pytest.mark.parametrize("config", list(CONFIGS))
def test_batched_sweep_equals_the_sequential_one(any_tiny, config, monkeypatch):
    cfg, trainer = CONFIGS[config]
    inputs = _inputs(any_tiny, calibrated=config == "sgd")
    sizes = _count_batched_trainings(monkeypatch)
    batched = sweep_learning_rate(any_tiny, base=cfg, grid=GRID, trainer=trainer, **inputs)
    assert sizes == [len(GRID)]  # one chunk, really batched
    sequential = sweep_learning_rate(any_tiny, base=cfg, grid=GRID, trainer=trainer, batched=False, **inputs)
    assert sizes == [len(GRID)]
    assert batched.scores == sequential.scores and batched.lr == sequential.lr
    assert batched.to_dict() == sequential.to_dict()


def test_the_scores_differ_between_rates_so_the_comparison_can_fail(tiny_gpt):
    """On the tiny GPT with Adam the grid's scores are not all equal, and the choice is not the first rate."""
    cfg, trainer = CONFIGS["adam, global clip, batches of 2, 2 epochs"]
    choice = sweep_learning_rate(tiny_gpt, base=cfg, grid=GRID, trainer=trainer, **_inputs(tiny_gpt))
    assert len(set(choice.scores.values())) > 1
    assert choice.lr == max(GRID, key=lambda lr: (choice.scores[lr], -lr))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_rate_trains_to_the_sequential_weights(any_tiny, config):
    cfg, trainer = CONFIGS[config]
    inputs = _inputs(any_tiny)
    seqs, answers = inputs["demo_sequences"], inputs["answer_lengths"]
    method = "lcgd" if isinstance(trainer, partial) else "gd"
    trained = train_rates(any_tiny, seqs, answers, cfg, GRID, method)
    assert set(trained.params) == set(GRID) and not trained.diverged
    original = dict(any_tiny.named_parameters())
    for lr in GRID:
        student, trace = trainer(any_tiny, seqs, answers, replace(cfg, lr=lr), progress=False)
        own = dict(student.named_parameters())
        names = sorted(trained.params[lr])
        got = torch.cat([trained.params[lr][n].flatten() for n in names])
        want = torch.cat([own[n].detach().flatten() for n in names])
        update = want - torch.cat([original[n].detach().flatten() for n in names])
        assert update.norm() > 0
        assert float((got - want).abs().max()) <= MAX_ABS_TO_SCALE * float(want.abs().max())
        assert float((got - want).norm()) <= MAX_UPDATE_REL * float(update.norm())
        assert trained.losses[lr] == pytest.approx(trace.losses, rel=1e-5)
        for name, param in trained.load(lr).named_parameters():  # frozen weights untouched, trained ones loaded
            expected = trained.params[lr][name] if name in names else original[name]
            assert torch.equal(param, expected)


def test_a_diverging_rate_is_none_while_the_others_score(tiny_llama, monkeypatch):
    """At lr 1e38 the GQA model's training stops on a NaN gradient at step 1; the others train on."""
    inputs = _inputs(tiny_llama)
    grid = (1e-3, 1e-2, 1e38)
    sizes = _count_batched_trainings(monkeypatch)
    batched = sweep_learning_rate(tiny_llama, base=FinetuneConfig(), grid=grid, **inputs)
    sequential = sweep_learning_rate(tiny_llama, base=FinetuneConfig(), grid=grid, batched=False, **inputs)
    assert sizes == [3]
    assert batched.scores[1e38] is None and batched.scores[1e-3] is not None and batched.scores[1e-2] is not None
    assert batched.scores == sequential.scores and batched.lr == sequential.lr
    trained = train_rates(tiny_llama, inputs["demo_sequences"], inputs["answer_lengths"], FinetuneConfig(), grid)
    assert set(trained.diverged) == {1e38} and "at step 1" in trained.diverged[1e38]
    assert len(trained.losses[1e-3]) == len(inputs["demo_sequences"])  # the others trained every step


@pytest.mark.parametrize("max_rates", [1, 2])
def test_chunks_of_rates_give_the_one_chunk_result(tiny_llama, monkeypatch, max_rates):
    inputs = _inputs(tiny_llama)
    grid = (1e-3, 1e-2, 1e38, 1.0, 10.0)
    whole = sweep_learning_rate(tiny_llama, base=FinetuneConfig(), grid=grid, **inputs)
    per_rate = bytes_per_rate(tiny_llama, inputs["demo_sequences"], FinetuneConfig(), "gd")
    sizes = _count_batched_trainings(monkeypatch)
    chunked = sweep_learning_rate(
        tiny_llama, base=FinetuneConfig(), grid=grid, max_batch_bytes=max_rates * per_rate + 1, **inputs
    )
    assert sizes == ([1] * 5 if max_rates == 1 else [2, 2, 1])
    assert chunked.scores == whole.scores and chunked.lr == whole.lr and chunked.scores[1e38] is None


def test_memory_estimate_counts_the_optimizer_state_of_each_rate(tiny_gpt):
    """Per rate: Adam keeps two float32 moments more than plain SGD of every trained entry."""
    seqs = _inputs(tiny_gpt)["demo_sequences"]
    # tiny GPT: 2 layers × (W_K, W_V: 4 heads × 32 × 8; b_K, b_V: 4 × 8)
    n_trained = 2 * (2 * 4 * 32 * 8 + 2 * 4 * 8)
    sgd = bytes_per_rate(tiny_gpt, seqs, FinetuneConfig(), "gd")
    adam = bytes_per_rate(tiny_gpt, seqs, FinetuneConfig(optimizer="adam"), "gd")
    momentum = bytes_per_rate(tiny_gpt, seqs, FinetuneConfig(momentum=0.9), "gd")
    assert adam - sgd == 2 * 4 * n_trained and momentum - sgd == 4 * n_trained
    assert chunk_size(sgd, 3 * sgd) == 3 and chunk_size(sgd, 1) == 1


@pytest.mark.parametrize(
    ("cfg", "trainer", "reason"),
    [
        (FinetuneConfig(params="o"), finetune, "parameter group 'o'"),
        (FinetuneConfig(params="kv+mlp"), finetune, "parameter group 'kv+mlp'"),
        (FinetuneConfig(), partial(layer_causal_finetune, schedule="sequential"), "neither finetune"),
    ],
)
def test_unsupported_configurations_fall_back_with_a_logged_reason(tiny_gpt, monkeypatch, caplog, cfg, trainer, reason):
    inputs = _inputs(tiny_gpt, n_queries=4)
    grid = (1e-3, 1.0)
    sizes = _count_batched_trainings(monkeypatch)
    with caplog.at_level(logging.INFO, logger="icl_lens.lr_sweep"):
        fallback = sweep_learning_rate(tiny_gpt, base=cfg, grid=grid, trainer=trainer, **inputs)
    assert sizes == []
    assert any("one rate at a time" in r.message and reason in r.message for r in caplog.records)
    sequential = sweep_learning_rate(tiny_gpt, base=cfg, grid=grid, trainer=trainer, batched=False, **inputs)
    assert fallback.scores == sequential.scores and fallback.lr == sequential.lr


def test_half_precision_and_foreign_models_are_not_batched(tiny_gpt):
    import copy

    half = copy.deepcopy(tiny_gpt).to(torch.bfloat16)
    assert "dtype" in unsupported_reason(half, FinetuneConfig(), finetune)
    assert "not a HookedTransformer" in unsupported_reason(torch.nn.Linear(2, 2), FinetuneConfig(), finetune)
    assert unsupported_reason(tiny_gpt, FinetuneConfig(params="kv+q"), layer_causal_finetune) is None


@pytest.mark.real_model
def test_real_model_batched_sweep_chooses_as_the_sequential_one():
    """Gemma-3-270M, 3 rates, k=4, 8 dev queries: the same scores and the same choice."""
    from icl_lens.models import load_model

    model = load_model("gemma3-270m")
    inputs = _inputs(model, k=4, n_queries=8, calibrated=True)
    grid = (1e-4, 1e-3, 1e-2)
    batched = sweep_learning_rate(model, base=FinetuneConfig(), grid=grid, **inputs)
    sequential = sweep_learning_rate(model, base=FinetuneConfig(), grid=grid, batched=False, **inputs)
    assert batched.scores == sequential.scores and batched.lr == sequential.lr
