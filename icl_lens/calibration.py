"""Contextual calibration (Zhao et al. 2021) of the prediction rule (the package default; the papers'
reference rule is uncalibrated, ``calibration="none"``).

A small model's label choice is biased by the prompt itself (majority and recency of demonstration
labels, surface form of label words). Contextual calibration measures that bias on a content-free
query ("N/A" in every template field) under the same prefix and model, and removes it:

    calibrated_j = log p(j | x) − log p(j | content-free),   with p normalised over the classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float

from icl_lens._shapes import shape_checked
from icl_lens.errors import MetricInputError
from icl_lens.evaluation import evaluate
from icl_lens.models.backends import Model, Prefix
from icl_lens.models.cpu_matmul import uses_cpu_matmul

CONTENT_FREE_TEXT = "N/A"


def content_free_row(template_fields: tuple[str, ...], text: str = CONTENT_FREE_TEXT) -> dict[str, str]:
    """A query row whose every template field is the content-free ``text``."""
    return {name: text for name in template_fields}


@shape_checked
def calibrate(
    class_scores: Float[torch.Tensor, "n_examples n_classes"],
    content_free_scores: Float[torch.Tensor, "1 n_classes"],
) -> Float[torch.Tensor, "n_examples n_classes"]:
    """Class log-probabilities (normalised over classes) minus the content-free ones."""
    if class_scores.ndim != 2 or content_free_scores.shape != (1, class_scores.shape[-1]):
        raise MetricInputError(
            f"calibrate needs class scores [n_examples, n_classes] and one content-free row [1, n_classes], "
            f"got {tuple(class_scores.shape)} and {tuple(content_free_scores.shape)}"
        )
    return class_scores.log_softmax(dim=-1) - content_free_scores.log_softmax(dim=-1)


@shape_checked
@uses_cpu_matmul
def content_free_scores(
    model: Model,
    prefix: Sequence[int],
    content_free_query: Sequence[int],
    labels: Sequence[Sequence[int]],
    n_start: int = 1,
    encoded_prefix: Prefix | None = None,
) -> Float[torch.Tensor, "1 n_classes"]:
    """Class scores of the content-free query under ``prefix`` and ``model``: the bias that
    :func:`calibrate` removes from every real query scored the same way. ``encoded_prefix``: the
    prefix's cache from :func:`~icl_lens.evaluation.encode_prefix`, so an in-context prefix is not
    encoded a second time."""
    return evaluate(
        model, prefix, [content_free_query], labels, n_start=n_start, progress=False, encoded_prefix=encoded_prefix
    ).class_scores
