"""Choosing the finetuning learning rate per task and model (Dai et al. 2023; Deutch et al. 2024).

The reference learning rates were tuned for a 1.3B model; a small model needs its own. The sweep
finetunes a copy of the model at every rate of a grid (starting from the reference rates) and keeps
the rate with the best criterion, ties going to the smaller rate; diverged rates (training stopped on a
NaN/inf, or trained weights or scores that are not finite) are recorded as None and skipped.
Criteria: ``dev`` — FT accuracy on a held-out slice of the train split (:func:`dev_slice`) that
shares no row with the demonstrations nor, for a task whose queries come from its train split, with
the evaluation queries (default); ``demos`` — FT accuracy on the demonstrations themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from icl_lens.errors import ConfigError, NonFiniteError, TrainingDivergedError
from icl_lens.models.backends import Model, block_parameters
from icl_lens.models.cpu_matmul import uses_cpu_matmul
from icl_lens.papers import REFERENCE_LRS
from icl_lens.tasks import shuffled_indices
from icl_lens.training.batched import (
    DEFAULT_MAX_BATCH_BYTES,
    bytes_per_rate,
    chunk_size,
    evaluated_class_scores,
    score_rates,
    train_rates,
    trainer_method,
    unsupported_reason,
)
from icl_lens.training.finetune import FinetuneConfig, finetune

logger = logging.getLogger(__name__)

DEFAULT_LR_GRID: tuple[float, ...] = tuple(sorted({*REFERENCE_LRS.values(), 1e-4, 1e-3, 1e-2, 3e-2}))

Criterion = Literal["dev", "demos"]


def dev_slice(
    train,
    size: int,
    seed: int,
    exclude_rows: Iterable[int] = (),
    *,
    task=None,
    query_rows: Iterable[int] = (),
    query_inputs: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``size`` train rows (with ``row_index``) for choosing something, disjoint from what is reported.

    Rows come in the order of the seeded train shuffle (:func:`icl_lens.tasks.shuffled_indices`, the
    one demonstrations are drawn from), skipping ``exclude_rows`` (the demonstrations) and, when
    ``task`` draws its evaluation queries from its train split, ``query_rows`` too; with ``task``, a
    row whose input (``task.format_input``) is one of ``query_inputs`` (the evaluation queries'
    inputs) is skipped as well, so a text both splits hold (SST-5's "hey arnold !" is a train row and
    two validation rows) is never chosen on: nothing chosen on this slice has seen a reported query
    or a demonstration.
    """

    excluded = set(int(i) for i in exclude_rows)
    if task is not None and task.eval_split == task.train_split:
        excluded |= set(int(i) for i in query_rows)
    reported = set(query_inputs) if task is not None else set()
    chosen: list[dict[str, Any]] = []
    for i in shuffled_indices(len(train), seed):
        if len(chosen) == size:
            break
        if i in excluded:
            continue
        row = dict(train[i], row_index=i)
        if reported and task.format_input(row) in reported:
            continue
        chosen.append(row)
    return chosen


Trainer = Callable[..., tuple[Model, Any]]
"""``trainer(model, demo_sequences, answer_lengths, cfg, progress=...) -> (tuned copy, trace)``:
:func:`icl_lens.training.finetune.finetune` or a layer-causal schedule of
:func:`icl_lens.training.lcgd.layer_causal_finetune`."""


@dataclass
class LearningRateChoice:
    """The sweep's outcome: the chosen rate and every rate's score (None = diverged)."""

    lr: float
    criterion: str
    scores: dict[float, float | None] = field(default_factory=dict)
    n_scored: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "mode": "sweep",
            "criterion": self.criterion,
            "n_scored": self.n_scored,
            "scores": {repr(lr): score for lr, score in self.scores.items()},
        }


@uses_cpu_matmul
def sweep_learning_rate(
    model: Model,
    demo_sequences: Sequence[Sequence[int]],
    answer_lengths: Sequence[int],
    base: FinetuneConfig,
    score_prefix: Sequence[int],
    score_queries: Sequence[Sequence[int]],
    score_labels: Sequence[int],
    label_tokens: Sequence[Sequence[int]],
    grid: Sequence[float] = DEFAULT_LR_GRID,
    criterion: Criterion = "dev",
    n_start: int = 1,
    batch_size: int = 16,
    progress: bool = True,
    content_free_query: Sequence[int] | None = None,
    trainer: Trainer = finetune,
    batched: bool = True,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
) -> LearningRateChoice:
    """Train with ``trainer`` at each rate of ``grid``; score its accuracy on the given queries; pick
    the best.

    With ``content_free_query`` the scores are contextually calibrated first, as the run's
    predictions are (:mod:`icl_lens.calibration`). ``trainer`` is plain GD by default; LCGD's own
    rate is swept by passing a layer-causal trainer (its per-layer losses sum over every layer, so
    GD's rate is not LCGD's).

    ``batched`` (default) trains the grid's rates together, sharing the frozen weights
    (:mod:`icl_lens.training.batched`), in chunks of rates whose estimated memory stays under
    ``max_batch_bytes`` (:func:`~icl_lens.training.batched.bytes_per_rate`), then scores every
    trained rate of a chunk on the queries together (:func:`~icl_lens.training.batched.score_rates`:
    the class scores :func:`~icl_lens.evaluation.evaluate` gives each rate's model, in passes of rates
    under the same bound, one rate per pass on a CPU; a bridge's rates by ``evaluate`` itself). Where
    that cannot be exact (a parameter group other than ``kv``/``q``, LCGD's sequential schedule,
    another trainer, half precision, ...) it logs why and trains one rate at a time, as
    ``batched=False`` does.
    """
    if not score_queries:
        raise ConfigError("the learning-rate sweep has no query to score")
    if isinstance(max_batch_bytes, bool) or not isinstance(max_batch_bytes, int) or max_batch_bytes < 1:
        raise ConfigError(f"max_batch_bytes must be a positive integer, got {max_batch_bytes!r}")
    rates = sorted(grid)
    score_inputs: dict[str, Any] = dict(
        score_prefix=score_prefix,
        score_queries=score_queries,
        score_labels=score_labels,
        label_tokens=label_tokens,
        n_start=n_start,
        batch_size=batch_size,
        content_free_query=content_free_query,
    )
    reason = unsupported_reason(model, base, trainer) if batched else None
    if batched and reason is not None:
        logger.info("learning-rate sweep trains one rate at a time: %s", reason)
    if batched and reason is None:
        scores = _batched_scores(
            model, demo_sequences, answer_lengths, base, trainer, rates, max_batch_bytes, progress, score_inputs
        )
    else:
        scores = {}
        for lr in tqdm(rates, desc="lr sweep", disable=not progress, leave=False):
            try:
                student, _ = trainer(model, demo_sequences, answer_lengths, replace(base, lr=lr), progress=False)
                scores[lr] = _score_model(student, lr, **score_inputs)
            except (TrainingDivergedError, NonFiniteError) as exc:
                logger.info("lr %g diverged: %s", lr, exc)
                scores[lr] = None
                continue
            logger.info("lr %g: %s accuracy %.3f", lr, criterion, scores[lr])
    finite = [(score, -lr) for lr, score in scores.items() if score is not None]
    if not finite:
        raise TrainingDivergedError(f"every learning rate of the sweep diverged: {sorted(grid)}")
    best_score, neg_lr = max(finite)
    return LearningRateChoice(lr=-neg_lr, criterion=criterion, scores=scores, n_scored=len(score_queries))


def _batched_scores(
    model, demo_sequences, answer_lengths, base, trainer, rates, max_batch_bytes, progress, score_inputs
) -> dict[float, float | None]:
    """Every rate's score (None: diverged), training chunks of rates together."""
    method = trainer_method(trainer)
    assert method is not None, "called only when unsupported_reason() found none"
    per_rate = bytes_per_rate(model, demo_sequences, base, method)
    size = chunk_size(per_rate, max_batch_bytes)
    if size < len(rates):
        logger.info(
            "learning-rate sweep: %d rates in chunks of %d (about %.0f MiB per rate, limit %.0f MiB)",
            len(rates),
            size,
            per_rate / 2**20,
            max_batch_bytes / 2**20,
        )
    scores: dict[float, float | None] = {}
    chunks = [rates[i : i + size] for i in range(0, len(rates), size)]
    labels = torch.tensor(list(score_inputs["score_labels"]))
    for chunk in tqdm(chunks, desc="lr sweep (batched)", disable=not progress or len(chunks) == 1, leave=False):
        trained = train_rates(model, demo_sequences, answer_lengths, base, chunk, method, progress=progress)
        class_scores = score_rates(
            trained,
            score_inputs["score_prefix"],
            score_inputs["score_queries"],
            score_inputs["label_tokens"],
            n_start=score_inputs["n_start"],
            batch_size=score_inputs["batch_size"],
            content_free_query=score_inputs["content_free_query"],
            max_batch_bytes=max_batch_bytes,
        )
        for lr in chunk:
            rate_scores = class_scores.get(lr)  # absent: diverged in training; None: non-finite weights or scores
            scores[lr] = None if rate_scores is None else _accuracy(rate_scores, labels)
            if scores[lr] is not None:
                logger.info("lr %g: accuracy %.3f", lr, scores[lr])
    return scores


def _accuracy(
    class_scores: Float[torch.Tensor, "n_queries n_classes"], labels: Int[torch.Tensor, " n_queries"]
) -> float:
    """The fraction of queries whose highest-scoring class is their label."""
    return float((class_scores.argmax(-1) == labels).float().mean())


def _score_model(
    student: Model,
    lr: float,
    score_prefix: Sequence[int],
    score_queries: Sequence[Sequence[int]],
    score_labels: Sequence[int],
    label_tokens: Sequence[Sequence[int]],
    n_start: int,
    batch_size: int,
    content_free_query: Sequence[int] | None,
) -> float:
    """Accuracy of ``student``, the model trained at ``lr``.

    Raises:
        NonFiniteError: the trained weights, or the (calibrated) class scores, are not finite.
    """
    for name, param in block_parameters(student).items():
        if not bool(torch.isfinite(param).all()):
            raise NonFiniteError(f"lr {lr:g}: trained parameter {name} is not finite")
    scores_tensor = evaluated_class_scores(
        student, score_prefix, score_queries, label_tokens, n_start, batch_size, content_free_query
    )
    if not bool(torch.isfinite(scores_tensor).all()):
        raise NonFiniteError(f"lr {lr:g}: the trained model's class scores are not finite")
    return _accuracy(scores_tensor, torch.tensor(list(score_labels)))
