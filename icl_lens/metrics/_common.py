"""Private helpers shared by the metric modules: the cosine convention and input checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int

from icl_lens._shapes import shape_checked
from icl_lens.errors import MetricInputError

#: Norms below this are clamped to it before dividing, so a zero vector has cosine 0 with anything.
COSINE_EPS = 1e-12


@shape_checked
def cosine(
    vectors_a: Float[torch.Tensor, "... dim"], vectors_b: Float[torch.Tensor, "... dim"]
) -> Float[torch.Tensor, "..."]:
    """cos(a, b) = a·b / (max(‖a‖, eps) · max(‖b‖, eps)) over the last dimension, in float64.

    Zero-norm convention: a vector with norm below :data:`COSINE_EPS` gives cosine 0.
    """
    a = vectors_a.to(torch.float64)
    b = vectors_b.to(torch.float64)
    dot = (a * b).sum(dim=-1)
    norm_a = a.norm(dim=-1).clamp_min(COSINE_EPS)
    norm_b = b.norm(dim=-1).clamp_min(COSINE_EPS)
    return dot / (norm_a * norm_b)


@shape_checked
def as_label_tensor(values: Int[torch.Tensor, " batch"] | Sequence[int], what: str) -> Int[torch.Tensor, " batch"]:
    """A 1-d integer tensor from a tensor or a sequence of ints (class ids)."""
    tensor = torch.as_tensor(values)
    if tensor.ndim != 1:
        raise MetricInputError(f"{what} must be 1-d (one class id per example), got shape {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise MetricInputError(f"{what} is empty: a metric needs at least one example")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise MetricInputError(f"{what} must hold integer class ids, got dtype {tensor.dtype}")
    return tensor.to(torch.long).cpu()


def require_same_shape(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise :class:`MetricInputError` naming every shape if the named tensors disagree."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name}={shape}" for name, shape in shapes.items())
        raise MetricInputError(f"{what}: shapes must match (same layers, examples and widths), got {listed}")


def require_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise :class:`MetricInputError` if ``tensor`` holds NaN or infinite values."""
    if not torch.isfinite(tensor).all():
        raise MetricInputError(f"{what} holds NaN or infinite values (a masked attention score recorded by mistake?)")


def require_nonempty(tensor: torch.Tensor, what: str) -> None:
    """Raise :class:`MetricInputError` if any dimension of ``tensor`` is 0."""
    if tensor.numel() == 0:
        raise MetricInputError(f"{what} is empty (shape {tuple(tensor.shape)})")
