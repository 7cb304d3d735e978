"""Contextual calibration (Zhao et al. 2021), an option of the prediction rule (SPEC §1: off by default).

A small model's label choice is biased by the prompt itself (majority and recency of demonstration
labels, surface form of label words). Contextual calibration measures that bias on a content-free
query ("N/A" in every template field) under the same prefix and model, and removes it:

    calibrated_j = log p(j | x) − log p(j | content-free),   with p normalised over the classes.
"""

from __future__ import annotations

import torch
from jaxtyping import Float

CONTENT_FREE_TEXT = "N/A"


def content_free_row(template_fields: tuple[str, ...], text: str = CONTENT_FREE_TEXT) -> dict[str, str]:
    """A query row whose every template field is the content-free ``text``."""
    return {name: text for name in template_fields}


def calibrate(
    class_scores: Float[torch.Tensor, "n_examples n_classes"],
    content_free_scores: Float[torch.Tensor, "1 n_classes"],
) -> Float[torch.Tensor, "n_examples n_classes"]:
    """Class log-probabilities (normalised over classes) minus the content-free ones."""
    return class_scores.log_softmax(dim=-1) - content_free_scores.log_softmax(dim=-1)
