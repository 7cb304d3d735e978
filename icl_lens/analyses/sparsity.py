"""Sparsity of the attention projections W_Q, W_K, W_V of real models (Shen et al. 2023).

The hand-built transformers in which ICL implements gradient descent need attention weights that
are about 75 % zeros (:data:`~icl_lens.metrics.HANDBUILT_ICL_GD_SPARSITY`). For each layer l,
projection W ∈ {W_Q, W_K, W_V} and threshold t:

    sparsity(W, t) = #{entries w of W : |w| < t} / #entries(W)

(:func:`icl_lens.metrics.model_weight_sparsity`, all heads of the layer together; GQA keeps the
unexpanded K/V weights, which give the same fraction). ``scale="rms"`` measures t in units of the
matrix's own RMS, #{|w| < t·rms(W)}/#W, so models with different weight scales compare.

Use **unprocessed** weights (``load_model(name, processed=False)``, the default): LayerNorm
folding and centering rewrite W_Q, W_K, W_V. The named offline models are 4-bit GGUF checkpoints
dequantized to float32, so their small-magnitude entries sit on a quantization grid; the fraction
of exact zeros is reported separately for that reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tqdm.auto import tqdm

from icl_lens import metrics
from icl_lens.errors import ConfigError, IclLensError
from icl_lens.metrics.weights import attention_parameter
from icl_lens.models.backends import Model

logger = logging.getLogger(__name__)

#: Log grid 1e-4 … 1e-1, three points per decade.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(float(f"{10 ** (-4 + i / 3):.6g}") for i in range(10))


@dataclass(frozen=True)
class SparsityConfig:
    """Which thresholds and projections the sparsity analysis measures.

    Args:
        thresholds: magnitudes t (absolute, or in units of each matrix's RMS with ``scale="rms"``).
        parameters: attention projections, among ``W_Q``, ``W_K``, ``W_V`` (``W_O`` also accepted).
        scale: ``absolute`` (Shen et al.) or ``rms``.
    """

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    parameters: tuple[str, ...] = metrics.SPARSITY_PARAMETERS
    scale: Literal["absolute", "rms"] = "absolute"

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", tuple(sorted(float(t) for t in self.thresholds)))
        object.__setattr__(self, "parameters", tuple(self.parameters))
        if not self.thresholds or any(not math.isfinite(t) or t < 0 for t in self.thresholds):
            raise ConfigError(f"thresholds must be a non-empty list of finite values >= 0, got {self.thresholds}")
        bad = [p for p in self.parameters if p not in ("W_Q", "W_K", "W_V", "W_O")]
        if bad or not self.parameters:
            raise ConfigError(f"unknown or no parameters {bad}; choose from W_Q, W_K, W_V, W_O")
        if self.scale not in ("absolute", "rms"):
            raise ConfigError(f"scale must be 'absolute' or 'rms', got {self.scale!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["thresholds"] = list(self.thresholds)
        out["parameters"] = list(self.parameters)
        return out


@dataclass
class SparsityResult:
    """Sparsity of one model's attention projections.

    ``per_layer[name][l][j]`` = sparsity of layer l's ``name`` at ``thresholds[j]``;
    ``mean[name][j]`` the mean over layers; ``pooled[j]`` over every entry of every listed
    projection of every layer; ``crossing[name]`` the smallest grid threshold at which the
    layer-mean reaches :data:`handbuilt` (None: never within the grid).
    """

    model: str
    thresholds: list[float]
    scale: str
    per_layer: dict[str, list[list[float]]]
    mean: dict[str, list[float]]
    pooled: list[float]
    exact_zero: dict[str, list[float]]
    rms: dict[str, list[float]]
    crossing: dict[str, float | None]
    handbuilt: float = metrics.HANDBUILT_ICL_GD_SPARSITY

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["analysis"] = "sparsity"
        return out


def _crossing(thresholds: Sequence[float], values: Sequence[float], level: float) -> float | None:
    for t, v in zip(thresholds, values):
        if v >= level:
            return float(t)
    return None


def weight_sparsity_analysis(model: Model, cfg: SparsityConfig = SparsityConfig()) -> SparsityResult:
    """Sparsity of W_Q, W_K, W_V per layer over thresholds, beside the hand-built 75 %."""
    n_layers = model.cfg.n_layers
    per_layer: dict[str, list[list[float]]] = {name: [] for name in cfg.parameters}
    exact_zero: dict[str, list[float]] = {name: [] for name in cfg.parameters}
    rms: dict[str, list[float]] = {name: [] for name in cfg.parameters}
    below = [0] * len(cfg.thresholds)
    total = 0
    for layer in range(n_layers):
        for name in cfg.parameters:
            weight = attention_parameter(model, layer, name).detach().float()
            layer_rms = float(weight.pow(2).mean().sqrt())
            factor = layer_rms if cfg.scale == "rms" else 1.0
            scaled = [t * factor for t in cfg.thresholds]
            fractions = metrics.weight_sparsity(weight, scaled)
            per_layer[name].append([fractions[t] for t in scaled])
            exact_zero[name].append(float((weight == 0).double().mean()))
            rms[name].append(layer_rms)
            magnitudes = weight.abs().flatten()
            for j, t in enumerate(scaled):
                below[j] += int((magnitudes < t).sum())
            total += magnitudes.numel()
    mean = {
        name: [sum(layer[j] for layer in rows) / n_layers for j in range(len(cfg.thresholds))]
        for name, rows in per_layer.items()
    }
    result = SparsityResult(
        model=model.cfg.model_name,
        thresholds=list(cfg.thresholds),
        scale=cfg.scale,
        per_layer=per_layer,
        mean=mean,
        pooled=[b / total for b in below],
        exact_zero=exact_zero,
        rms=rms,
        crossing={
            name: _crossing(cfg.thresholds, values, metrics.HANDBUILT_ICL_GD_SPARSITY) for name, values in mean.items()
        },
    )
    logger.info(
        "%s: threshold where mean sparsity reaches %.0f%%: %s", result.model, 100 * result.handbuilt, result.crossing
    )
    return result


@dataclass
class SparsityReport:
    """Sparsity of every model that loaded; ``skipped`` names the others and why."""

    results: list[SparsityResult]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "analysis": "sparsity",
            "models": [r.to_dict() for r in self.results],
            "skipped": self.skipped,
            "handbuilt": metrics.HANDBUILT_ICL_GD_SPARSITY,
        }


def sparsity_all_models(
    cfg: SparsityConfig = SparsityConfig(),
    models: Sequence[str] | None = None,
    loader: Callable[..., Model] | None = None,
    progress: bool = True,
) -> SparsityReport:
    """:func:`weight_sparsity_analysis` for each model (default: every named offline model,
    :func:`icl_lens.models.list_models`), loaded unprocessed; a model that fails to load is skipped
    with its error recorded."""
    if loader is None:
        from icl_lens.models import load_model

        loader = load_model
    if models is None:
        from icl_lens.models import list_models

        models = [m.name for m in list_models()]
    results, skipped = [], {}
    for name in tqdm(list(models), desc="sparsity", disable=not progress, leave=False):
        try:
            model = loader(name, processed=False)
        except IclLensError as exc:
            logger.warning("skipping %s: %s", name, exc)
            skipped[name] = str(exc)
            continue
        result = weight_sparsity_analysis(model, cfg)
        result.model = name
        results.append(result)
        del model
    return SparsityReport(results=results, skipped=skipped)
