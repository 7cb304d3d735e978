"""The regression task family of von Oswald et al. 2023 and plain gradient descent on it.

A task draws w ~ N(0, I_d); its N context pairs and its query have x ~ U(−r, r)^d and y = w·x
(no noise by default). The tokens a transformer reads are e_j = (x_j, y_j) ∈ R^{d+1} for the context
and (x_q, 0) for the query; the model's prediction is minus the query token's last entry after the
last layer (:func:`icl_lens.controls.models.ControlTransformer.predict`).

The comparator of von Oswald et al. is GD on the linear model ŷ = W x from W0 = 0 on
L(W) = (1/2N) Σ_i ‖W x_i − y_i‖², whose gradient is (1/N) Σ_i (W x_i − y_i) x_iᵀ; one step gives
ΔW = (η/N) Σ_i y_i x_iᵀ. The step size η is tuned on dev tasks (:func:`tune_eta`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from icl_lens._validation import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, validate_fields
from icl_lens.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegressionConfig:
    """The task family (von Oswald et al. 2023, §4: d = 10, N = 10, x ~ U(−0.5, 0.5)).

    Args:
        d: input dimension.
        n_context: context pairs per task (N).
        x_range: inputs are drawn from U(−x_range, x_range).
        noise: standard deviation of Gaussian noise on every y (0: noiseless, the reference).
    """

    d: int = 10
    n_context: int = 10
    x_range: float = 0.5
    noise: float = 0.0

    def __post_init__(self) -> None:
        validate_fields(
            self, {"d": AT_LEAST_ONE, "n_context": AT_LEAST_ONE, "x_range": POSITIVE, "noise": NON_NEGATIVE}
        )

    @property
    def d_token(self) -> int:
        """Token width: the input and its target, d + 1."""
        return self.d + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RegressionBatch:
    """A batch of tasks: context pairs, the query and its target, and each task's true w."""

    x: Float[torch.Tensor, "batch n_context d"]
    y: Float[torch.Tensor, "batch n_context"]
    x_query: Float[torch.Tensor, "batch d"]
    y_query: Float[torch.Tensor, " batch"]
    w: Float[torch.Tensor, "batch d"]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def tokens(self) -> Float[torch.Tensor, "batch n_tokens d_token"]:
        """The transformer's input: the N context tokens (x_i, y_i), then the query token (x_q, 0)."""
        return context_tokens(self.x, self.y, self.x_query)

    def query_tokens(self) -> Float[torch.Tensor, "batch 1 d_token"]:
        """The query alone, (x_q, 0): the zero-shot input."""
        return torch.cat([self.x_query, torch.zeros_like(self.y_query)[:, None]], dim=-1)[:, None]

    def demo_tokens(self) -> Float[torch.Tensor, "batch n_context d_token"]:
        """Each context pair in zero-shot form, (x_i, 0): the finetuning inputs, targets ``y``."""
        return torch.cat([self.x, torch.zeros_like(self.y)[..., None]], dim=-1)

    def with_targets(self, y: Float[torch.Tensor, "batch n_context"]) -> RegressionBatch:
        """The same tasks with other context targets (e.g. permuted: the wrong-label null)."""
        return RegressionBatch(self.x, y, self.x_query, self.y_query, self.w)


def context_tokens(
    x: Float[torch.Tensor, "batch n_context d"],
    y: Float[torch.Tensor, "batch n_context"],
    x_query: Float[torch.Tensor, "batch d"],
) -> Float[torch.Tensor, "batch n_tokens d_token"]:
    """Tokens (x_i, y_i) for i = 1..N followed by (x_q, 0)."""
    context = torch.cat([x, y[..., None]], dim=-1)
    query = torch.cat([x_query, torch.zeros_like(x_query[:, :1])], dim=-1)
    return torch.cat([context, query[:, None]], dim=1)


def sample_tasks(
    cfg: RegressionConfig,
    n_tasks: int,
    generator: torch.Generator | int,
    dtype: torch.dtype = torch.float32,
) -> RegressionBatch:
    """``n_tasks`` fresh tasks drawn from a seeded generator (an int seeds a new one)."""
    if n_tasks < 1:
        raise ConfigError(f"n_tasks must be >= 1, got {n_tasks}")
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    w = torch.randn(n_tasks, cfg.d, generator=generator, dtype=torch.float64)
    x_all = (
        torch.rand(n_tasks, cfg.n_context + 1, cfg.d, generator=generator, dtype=torch.float64) * 2 - 1
    ) * cfg.x_range
    y_all = torch.einsum("bnd,bd->bn", x_all, w)
    if cfg.noise:
        y_all = y_all + cfg.noise * torch.randn(y_all.shape, generator=generator, dtype=torch.float64)
    return RegressionBatch(
        x_all[:, :-1].to(dtype), y_all[:, :-1].to(dtype), x_all[:, -1].to(dtype), y_all[:, -1].to(dtype), w.to(dtype)
    )


def gd_weights(batch: RegressionBatch, eta: float, steps: int = 1) -> Float[torch.Tensor, "batch d"]:
    """Each task's linear weights after ``steps`` plain GD steps of size η from W0 = 0 on
    L(W) = (1/2N) Σ_i (W x_i − y_i)²: W_{k+1} = W_k − (η/N) Σ_i (W_k x_i − y_i) x_iᵀ."""
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    weights = torch.zeros_like(batch.x[:, 0])
    n = batch.x.shape[1]
    for _ in range(steps):
        residual = torch.einsum("bnd,bd->bn", batch.x, weights) - batch.y
        weights = weights - (eta / n) * torch.einsum("bn,bnd->bd", residual, batch.x)
    return weights


def gd_predictions(batch: RegressionBatch, eta: float, steps: int = 1) -> Float[torch.Tensor, " batch"]:
    """ŷ_GD = W_K x_q with W_K from :func:`gd_weights`; its sensitivity ∂ŷ/∂x_q is W_K itself."""
    return torch.einsum("bd,bd->b", gd_weights(batch, eta, steps), batch.x_query)


def tune_eta(
    cfg: RegressionConfig, steps: int = 1, n_tasks: int = 10_000, seed: int = 1, grid_size: int = 400
) -> float:
    """η minimising the mean query loss ½(ŷ_GD − y_q)² of ``steps`` GD steps on ``n_tasks`` dev tasks.

    A grid over (0, η_max] (η_max = 4 / the largest mean eigenvalue of the data covariance, past
    which GD diverges), then a finer grid around the best point; float64 throughout.
    """
    batch = sample_tasks(cfg, n_tasks, seed, dtype=torch.float64)
    second_moment = cfg.x_range**2 / 3  # E[x_k²] of U(−r, r)
    eta_max = 4.0 / second_moment
    grid = np.linspace(eta_max / grid_size, eta_max, grid_size)
    for _ in range(2):
        losses = [float(((gd_predictions(batch, float(eta), steps) - batch.y_query) ** 2).mean()) for eta in grid]
        best = int(np.nanargmin(losses))
        step = grid[1] - grid[0]
        grid = np.linspace(max(grid[best] - step, step / 100), grid[best] + step, 101)
    logger.info("tuned eta for %d GD step(s): %.4f", steps, grid[50])
    return float(grid[50])
