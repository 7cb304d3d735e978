"""PNG figures from results dicts (matplotlib, Agg backend: no display needed).

* :func:`plot_prediction_changes` — stacked bars per task of which predictions ICL and FT change
  (Deutch et al.'s Jaccard partition);
* :func:`plot_layer_metric` — a per-layer metric (SimAOU, SimAM_Δ, …), GD vs LCGD, per task (Fig. 3);
* :func:`plot_alpha` — α per task (Fig. 2);
* :func:`plot_grad_norms` — per-layer gradient norms, layers × demonstration, GD vs LCGD (Fig. 4).
"""

from __future__ import annotations

import logging
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

logger = logging.getLogger(__name__)

PARTITION = [
    ("icl_only_correct", "ICL only, correct", "#4c72b0"),
    ("icl_only_incorrect", "ICL only, incorrect", "#a6bddb"),
    ("ft_only_correct", "FT only, correct", "#dd8452"),
    ("ft_only_incorrect", "FT only, incorrect", "#fdd0a2"),
    ("both_same_correct", "both, same, correct", "#55a868"),
    ("both_same_incorrect", "both, same, incorrect", "#b5e0b0"),
    ("both_different", "both, different", "#8c8c8c"),
]


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write as a 120-dpi PNG (creating folders) and close ``fig``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    logger.info("wrote %s", path)
    return path


def _by_task(results_list: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results_list:
        grouped[r["task"]["name"]].append(r)
    return dict(sorted(grouped.items()))


def plot_prediction_changes(results_list: Sequence[dict[str, Any]], path: str | Path, setting: str = "ft") -> Path:
    """Stacked bars: % of examples whose prediction ICL and/or FT changed from ZSL, by kind."""
    grouped = _by_task(results_list)
    fig, ax = plt.subplots(figsize=(1.4 * len(grouped) + 3, 4))
    bottoms = np.zeros(len(grouped))
    for key, label, color in PARTITION:
        values = []
        for members in grouped.values():
            shares = [
                m["metrics"][setting]["prediction_changes"][key] / m["n_examples"] * 100
                for m in members
                if setting in m.get("metrics", {})
            ]
            values.append(float(np.mean(shares)) if shares else 0.0)
        ax.bar(list(grouped), values, bottom=bottoms, label=label, color=color)
        bottoms += np.array(values)
    ax.set_ylabel("% of examples whose prediction changed")
    ax.set_title(f"Prediction changes vs zero-shot: ICL and {setting.upper()}")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return save_figure(fig, path)


def plot_layer_metric(
    results_list: Sequence[dict[str, Any]],
    path: str | Path,
    metric: str = "simaou",
    settings: Sequence[str] = ("ft", "lcgd"),
    title: str | None = None,
) -> Path:
    """Per-layer ``metric`` for each finetuned setting, one panel per task (mean over seeds)."""
    grouped = _by_task(results_list)
    n = len(grouped)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (task, members) in zip(axes.flat, grouped.items()):
        for setting in settings:
            curves = [m["metrics"][setting][metric]["per_layer"] for m in members if setting in m.get("metrics", {})]
            if curves:
                ax.plot(np.mean(np.array(curves, dtype=float), axis=0), marker=".", label=setting.upper())
        if metric == "simaou":
            base = [m["metrics"]["simaou_random"]["per_layer"] for m in members if "simaou_random" in m["metrics"]]
            if base:
                ax.plot(np.mean(np.array(base, dtype=float), axis=0), color="gray", ls="--", label="random")
        ax.set_title(task)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axhline(0, color="black", lw=0.5)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title or f"{metric} per layer")
    return save_figure(fig, path)


def plot_alpha(results_list: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """α (attention mass on demonstrations, mean over layers) per task, mean ± std over seeds."""
    grouped = _by_task(results_list)
    means, stds = [], []
    for members in grouped.values():
        values = [m["metrics"]["alpha"]["mean"] for m in members if "alpha" in m.get("metrics", {})]
        means.append(float(np.mean(values)) if values else 0.0)
        stds.append(float(np.std(values)) if values else 0.0)
    fig, ax = plt.subplots(figsize=(1.2 * len(grouped) + 2, 3.5))
    ax.bar(list(grouped), means, yerr=stds, color="#4c72b0")
    ax.set_ylabel("α: attention on demonstrations")
    ax.set_ylim(0, 1)
    ax.set_title("α per task")
    return save_figure(fig, path)


_PARAM_GROUP_NAMES = {"kv": "W_K, W_V, b_K, b_V", "q": "W_Q, b_Q", "o": "W_O, b_O", "mlp": "MLP", "all": "all block"}


def grad_norms_caption(results: dict[str, Any]) -> str:
    """What the gradient-norm heatmap shows, and how it differs from the reference's (Deutch et al.
    2024, Fig. 4): ours is the ℓ2 norm of the gradient of the *mean*-per-token loss over the trained
    parameters only (k/v by default), in float32, before clipping; the reference logs loss-scaled,
    token-summed fp16 gradients over all parameters of a layer, so only the pattern is comparable."""
    group = str(results.get("config", {}).get("finetune", {}).get("params", "kv"))
    params = " + ".join(_PARAM_GROUP_NAMES.get(g, g) for g in group.split("+"))
    return (
        f"ℓ2 norm per layer and step of the gradient of the mean-per-token loss (LCGD: the sum of its "
        f"per-layer losses) w.r.t. the trained {params} parameters only, float32, before clipping. "
        f"The reference logs loss-scaled, token-summed fp16 gradients over all parameters of a layer: "
        f"compare patterns, not magnitudes."
    )


def plot_grad_norms(results: dict[str, Any], path: str | Path, settings: Sequence[str] = ("ft", "lcgd")) -> Path:
    """Heatmaps of per-layer gradient ℓ2 norms: layers × demonstration index, log colour scale,
    with :func:`grad_norms_caption` under them."""
    present = [s for s in settings if s in results.get("training", {})]
    fig, axes = plt.subplots(1, max(1, len(present)), figsize=(5 * max(1, len(present)), 4.8), squeeze=False)
    group = str(results.get("config", {}).get("finetune", {}).get("params", "kv"))
    for ax, setting in zip(axes.flat, present):
        norms = np.array(results["training"][setting]["grad_norms"], dtype=float).T  # [layer, step]
        image = ax.imshow(np.log10(np.maximum(norms, 1e-12)), aspect="auto", origin="lower", cmap="viridis")
        ax.set_xlabel("demonstration (step)")
        ax.set_ylabel("layer")
        ax.set_title(f"{'GD' if setting == 'ft' else 'LCGD'}: log10 ‖∇_{group} mean loss‖₂ per layer")
        fig.colorbar(image, ax=ax)
    caption = textwrap.fill(grad_norms_caption(results), width=60 * max(1, len(present)))
    fig.suptitle(f"{results['task']['name']}, {results['config']['model']}\n{caption}", fontsize=8)
    return save_figure(fig, path)
