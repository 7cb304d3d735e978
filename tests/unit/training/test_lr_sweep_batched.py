"""The batched learning-rate sweep (all rates trained together, frozen weights shared) gives the
sequential sweep's result: the same score at every rate, the same choice, the same trained weights up
to float32 summation order, divergence per rate, chunking invisible, and a logged fallback where it
cannot be exact. The dev slice is scored for all rates together (``score_rates``): each rate's class
scores are the ones ``evaluate`` (+ contextual calibration) gives that rate's model alone."""

import logging
from dataclasses import replace
from functools import partial

import pytest
import torch

import icl_lens.training.batched as batched_training
import icl_lens.training.lr_sweep as lr_sweep
from icl_lens.training.batched import (
    BatchedTraining,
    bytes_per_rate,
    chunk_size,
    score_rates,
    scoring_bytes_per_rate,
    train_rates,
    unsupported_reason,
)
from icl_lens.calibration import calibrate, content_free_scores
from icl_lens.evaluation import evaluate
from icl_lens.training.finetune import FinetuneConfig, finetune
from icl_lens.training.lcgd import layer_causal_finetune
from icl_lens.training.lr_sweep import sweep_learning_rate
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

MAX_ABS_TO_SCALE = 4e-6
"""Bound on max |batched − sequential| over a rate's trained tensors, relative to their largest entry
(measured ≤ 7.6e-7 on these configs, GPT-like and GQA models, at 1 torch thread and 1.1e-6 at 2: the
summation order follows the thread count; 4e-6 is ~30 float32 ulps of the largest entry)."""
MAX_UPDATE_REL = 1e-5
"""Bound on ‖batched − sequential‖ / ‖sequential update‖ over a rate's trained tensors (measured ≤ 3.7e-6)."""
MAX_SCORE_DIFF = 5e-6
"""Bound on max |batched − per-rate evaluate| over a rate's class scores (mean log-probabilities of
magnitude ~5, float32; measured ≤ 1.2e-6 on the GPT-like, GQA and Gemma-like tiny models, with and
without prefix, calibration and multi-token labels): the frozen weights run on more rows at once."""


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
    with caplog.at_level(logging.INFO, logger="icl_lens.training.lr_sweep"):
        fallback = sweep_learning_rate(tiny_gpt, base=cfg, grid=grid, trainer=trainer, **inputs)
    assert sizes == []
    assert any("one rate at a time" in r.message and reason in r.message for r in caplog.records)
    sequential = sweep_learning_rate(tiny_gpt, base=cfg, grid=grid, trainer=trainer, batched=False, **inputs)
    assert fallback.scores == sequential.scores and fallback.lr == sequential.lr


def test_half_precision_and_foreign_models_are_not_batched(tiny_gpt):
    import copy

    half = copy.deepcopy(tiny_gpt).to(torch.bfloat16)
    assert "dtype" in unsupported_reason(half, FinetuneConfig(), finetune)
    assert "neither a HookedTransformer nor a TransformerBridge" in unsupported_reason(torch.nn.Linear(2, 2), FinetuneConfig(), finetune)
    assert unsupported_reason(tiny_gpt, FinetuneConfig(params="kv+q"), layer_causal_finetune) is None


@pytest.mark.real_model
@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_real_model_batched_sweep_chooses_as_the_sequential_one(backend, monkeypatch):
    """Gemma-3-270M, 3 rates, k=4, 8 dev queries, on either backend: the same scores and the same choice."""
    from icl_lens.models import load_model

    model = load_model("gemma3-270m", backend=backend)
    inputs = _inputs(model, k=4, n_queries=8, calibrated=True)
    grid = (1e-4, 1e-3, 1e-2)
    sizes = _count_batched_trainings(monkeypatch)
    batched = sweep_learning_rate(model, base=FinetuneConfig(), grid=grid, **inputs)
    assert sizes == [len(grid)]  # really batched
    sequential = sweep_learning_rate(model, base=FinetuneConfig(), grid=grid, batched=False, **inputs)
    assert batched.scores == sequential.scores and batched.lr == sequential.lr


SCORED_GRID = (1e-3, 1.0, 10.0)


@pytest.fixture(scope="module")
def trained_rates(tiny_gpt, tiny_llama):
    """Per tiny model: the prompts and the grid trained together (kv+q, so Q is per-rate too)."""
    out = {}
    for name, model in (("gpt", tiny_gpt), ("llama", tiny_llama)):
        inputs = _inputs(model, n_queries=7, calibrated=True)
        trained = train_rates(
            model, inputs["demo_sequences"], inputs["answer_lengths"], FinetuneConfig(params="kv+q"), SCORED_GRID
        )
        out[name] = (model, inputs, trained)
    return out


def _count_scoring_passes(monkeypatch) -> list[int]:
    """How many rates each batched forward pass of the scoring ran (one entry per pass)."""
    passes = []
    real = batched_training._RateProjections.forward

    def spy(self, rate_params, run):
        passes.append(len(rate_params))
        return real(self, rate_params, run)

    monkeypatch.setattr(batched_training._RateProjections, "forward", spy)
    return passes


def _evaluate_each_rate(trained, prefix, queries, labels, n_start, batch_size, content_free):
    """What the sequential sweep computes: every rate's model alone through evaluate (+ calibration)."""
    want = {}
    for lr in sorted(trained.params):
        student = trained.load(lr)
        scores = evaluate(student, prefix, queries, labels, n_start=n_start, batch_size=batch_size, progress=False)
        want[lr] = scores.class_scores
        if content_free is not None:
            want[lr] = calibrate(want[lr], content_free_scores(student, prefix, content_free, labels, n_start))
    return want


def _one_token_labels(inputs):
    """Single-token labels: the byte after each class's leading space ("n" / "p": distinct ids)."""
    labels = [label[1:2] for label in inputs["label_tokens"]]
    assert len({tuple(label) for label in labels}) == len(labels)
    return labels


@pytest.mark.parametrize("model_name", ["gpt", "llama"])
@pytest.mark.parametrize("labels_kind", ["multi-token", "one-token", "mixed"])
@pytest.mark.parametrize("calibrated", [False, True])
@pytest.mark.parametrize("prefix_kind", ["none", "start", "demonstrations"])
def test_batched_scores_equal_each_rates_evaluate(
    trained_rates, monkeypatch, model_name, labels_kind, calibrated, prefix_kind
):
    model, inputs, trained = trained_rates[model_name]
    prefix = {
        "none": [],
        "start": inputs["score_prefix"],
        "demonstrations": inputs["score_prefix"] + inputs["demo_sequences"][0],
    }[prefix_kind]
    n_start = 0 if prefix_kind == "none" else 1
    labels = {
        "multi-token": inputs["label_tokens"],  # the byte tokenizer spells " negative"/" positive" in 9 tokens
        "one-token": _one_token_labels(inputs),
        "mixed": [[5], [7, 8, 9], [11]],  # class 0 one token, a later class of three
    }[labels_kind]
    content_free = inputs["content_free_query"] if calibrated else None
    passes = _count_scoring_passes(monkeypatch)
    got = score_rates(
        trained,
        prefix,
        inputs["score_queries"],
        labels,
        n_start=n_start,
        batch_size=3,
        content_free_query=content_free,
        max_rates_per_pass=len(SCORED_GRID),
    )
    # 7 queries in evaluation batches of 3, 3, 1 (+ the content-free query), each one pass for all
    # rates, plus one continuation pass per multi-token label; plus one pass encoding a prefix.
    per_batch = 1 + sum(len(label) > 1 for label in labels)
    assert passes == [len(SCORED_GRID)] * (bool(prefix) + (3 + calibrated) * per_batch)
    want = _evaluate_each_rate(trained, prefix, inputs["score_queries"], labels, n_start, 3, content_free)
    assert set(got) == set(SCORED_GRID)
    for lr in SCORED_GRID:
        assert got[lr].shape == want[lr].shape == (7, len(labels))
        assert float((got[lr] - want[lr]).abs().max()) <= MAX_SCORE_DIFF
    # the rates' scores differ by far more than the bound, so rows of one rate scored under another would fail
    assert float((want[1e-3] - want[10.0]).abs().max()) > 1000 * MAX_SCORE_DIFF


@pytest.mark.parametrize(("rates_per_pass", "pass_sizes"), [(1, [1] * 9), (2, [1, 1, 1, 2, 2, 2])])
def test_scoring_passes_hold_as_many_rates_as_the_memory_bound_allows(
    trained_rates, monkeypatch, rates_per_pass, pass_sizes
):
    model, inputs, trained = trained_rates["llama"]
    passes = _count_scoring_passes(monkeypatch)
    prefix = inputs["score_prefix"] + inputs["demo_sequences"][0]
    labels = _one_token_labels(inputs)
    longest_row = max(map(len, inputs["score_queries"])) + 1
    per_rate = scoring_bytes_per_rate(model, len(prefix), longest_row, 1, 4)
    bound = (rates_per_pass + 1) * per_rate - 1
    got = score_rates(
        trained, prefix, inputs["score_queries"], labels, batch_size=4, max_batch_bytes=bound, max_rates_per_pass=3
    )
    # per group of rates: the prefix, then the batches of 4 and 3 queries
    assert sorted(passes) == pass_sizes
    want = _evaluate_each_rate(trained, prefix, inputs["score_queries"], labels, 1, 4, None)
    for lr in SCORED_GRID:
        assert float((got[lr] - want[lr]).abs().max()) <= MAX_SCORE_DIFF


def test_on_a_cpu_each_scoring_pass_holds_one_rate(trained_rates, monkeypatch):
    """Wide passes are slower on a CPU (memory-bound attention), so the default there is one rate per pass."""
    model, inputs, trained = trained_rates["gpt"]
    passes = _count_scoring_passes(monkeypatch)
    score_rates(trained, inputs["score_prefix"], inputs["score_queries"], _one_token_labels(inputs))
    assert passes and set(passes) == {1}


def test_a_rate_with_non_finite_scores_is_none_and_the_others_are_unaffected(trained_rates):
    """W_V × 1e38 is finite but overflows the values to inf (NaN after the norm): that rate alone is None,
    as is one with a NaN weight; the other rate, scored in the same passes, keeps evaluate's scores."""
    model, inputs, trained = trained_rates["gpt"]
    good = trained.params[1e-3]
    overflow = {name: value * 1e38 if name.endswith("W_V") else value for name, value in good.items()}
    assert all(bool(torch.isfinite(value).all()) for value in overflow.values())
    nan_weight = {name: value.clone() for name, value in good.items()}
    nan_weight["blocks.0.attn.b_K"][0, 0] = float("nan")
    mixed = BatchedTraining(student=trained.student, params={1e-3: good, 2e-3: overflow, 3e-3: nan_weight})
    for content_free in (None, inputs["content_free_query"]):
        got = score_rates(
            mixed,
            inputs["score_prefix"],
            inputs["score_queries"],
            inputs["label_tokens"],
            content_free_query=content_free,
        )
        assert got[2e-3] is None and got[3e-3] is None
        want = _evaluate_each_rate(
            BatchedTraining(student=trained.student, params={1e-3: good}),
            inputs["score_prefix"],
            inputs["score_queries"],
            inputs["label_tokens"],
            inputs["n_start"],
            16,
            content_free,
        )
        assert float((got[1e-3] - want[1e-3]).abs().max()) <= MAX_SCORE_DIFF


@pytest.mark.parametrize("calibrated", [False, True])
def test_sweep_with_a_demonstration_prefix_and_one_token_labels_equals_the_sequential_one(
    any_tiny, monkeypatch, calibrated
):
    inputs = _inputs(any_tiny, calibrated=calibrated)
    inputs["score_prefix"] = inputs["score_prefix"] + inputs["demo_sequences"][1]
    inputs["label_tokens"] = _one_token_labels(inputs)
    evaluated = []
    real = batched_training.evaluate  # the sequential sweep scores through evaluate
    monkeypatch.setattr(batched_training, "evaluate", lambda *a, **k: evaluated.append(1) or real(*a, **k))
    batched = sweep_learning_rate(any_tiny, base=FinetuneConfig(), grid=GRID, batch_size=3, **inputs)
    assert evaluated == []  # every rate scored in the batched passes
    sequential = sweep_learning_rate(any_tiny, base=FinetuneConfig(), grid=GRID, batch_size=3, batched=False, **inputs)
    assert len(evaluated) == len(GRID)
    assert batched.scores == sequential.scores and batched.lr == sequential.lr


def test_sliding_window_models_score_multi_token_labels_in_full_passes(monkeypatch, caplog):
    """On a Gemma-like model (local attention layers) a label continued after the query's padding would
    see another window, so each label re-runs query + label as evaluate does; the scores still match."""
    from helpers import tiny_model

    model = tiny_model(family="gemma", n_layers=2, window=4)
    inputs = _inputs(model, n_queries=5, calibrated=True)
    trained = train_rates(model, inputs["demo_sequences"], inputs["answer_lengths"], FinetuneConfig(), SCORED_GRID)
    prefix = inputs["score_prefix"] + inputs["demo_sequences"][0]
    labels = inputs["label_tokens"]
    passes = _count_scoring_passes(monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="icl_lens.training.batched"):
        got = score_rates(
            trained,
            prefix,
            inputs["score_queries"],
            labels,
            batch_size=3,
            content_free_query=inputs["content_free_query"],
            max_rates_per_pass=3,
        )
    assert any("sliding-window" in r.message for r in caplog.records)
    assert passes == [3] * (1 + 3 * len(labels))  # prefix; batches of 3, 2 and content-free: one pass per label
    want = _evaluate_each_rate(trained, prefix, inputs["score_queries"], labels, 1, 3, inputs["content_free_query"])
    for lr in SCORED_GRID:
        assert float((got[lr] - want[lr]).abs().max()) <= MAX_SCORE_DIFF


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_rates_per_pass": 0}, "max_rates_per_pass must be None or an integer >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"content_free_query": []}, "query 0"),
    ],
)
def test_bad_scoring_arguments_are_named(trained_rates, kwargs, message):
    from icl_lens.errors import IclLensError

    model, inputs, trained = trained_rates["gpt"]
    with pytest.raises(IclLensError, match=message):
        score_rates(trained, inputs["score_prefix"], inputs["score_queries"], inputs["label_tokens"], **kwargs)
