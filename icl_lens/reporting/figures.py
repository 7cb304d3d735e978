"""Static PNG figures (matplotlib, Agg backend: no display needed) for papers, the README and the
HTML reports; the interactive, in-browser views (circuitsvis) are :mod:`icl_lens.viz`.

From results dicts (one per cell):

* :func:`plot_prediction_changes` — stacked bars per task of which predictions ICL and FT change
  (Deutch et al.'s Jaccard partition);
* :func:`plot_layer_metric` — a per-layer metric (SimAOU, SimAM_Δ, …), GD vs LCGD, per task (Fig. 3);
* :func:`plot_alpha` — α per task (Fig. 2);
* :func:`plot_grad_norms` — per-layer gradient norms, layers × demonstration, GD vs LCGD (Fig. 4).

From the Shen et al. 2023 analyses' ``to_dict()`` outputs (:mod:`icl_lens.analyses`), so they can be
redrawn from the JSON files alone:

* :func:`plot_order_sensitivity` — OS and σ_acc bars: ICL vs SGD vs Adam × batch size, per task;
* :func:`plot_output_agreement` — token overlap and overlap cosine bars per task and pair;
* :func:`plot_sparsity` — sparsity vs threshold per model, with the hand-built 75 % line;
* :func:`plot_demo_sweep` — ICL–GD accuracy gap and SimAOU vs k, per model and task;
* :func:`plot_weight_space` — ‖ΔW_FT‖ and the dual-form cosine per layer.
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

from icl_lens.cell.results import metric_value, per_layer, prediction_changes  # noqa: E402

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
            changes = [(prediction_changes(m, setting), m["n_examples"]) for m in members]
            shares = [c[key] / n * 100 for c, n in changes if c is not None]
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
            curves = [c for c in (per_layer(m, setting, metric) for m in members) if c is not None]
            if curves:
                ax.plot(np.mean(np.array(curves, dtype=float), axis=0), marker=".", label=setting.upper())
        if metric == "simaou":
            base = [c for c in (per_layer(m, None, "simaou_random") for m in members) if c is not None]
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
        values = [v for v in (metric_value(m, None, "alpha") for m in members) if v is not None]
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


# ---------------------------------------------------------------------------------------------
# Shen et al. 2023 analyses

_SETTING_COLOURS = {"icl": "#4c72b0", "sgd": "#dd8452", "adam": "#55a868"}
_PAIR_LABELS = {"icl_vs_ft": "ICL vs FT", "icl_vs_lcgd": "ICL vs LCGD", "zsl_vs_icl": "ZSL vs ICL (ref.)"}


def _setting_colour(setting: dict[str, Any]) -> tuple[str, float]:
    if setting["method"] == "icl":
        return _SETTING_COLOURS["icl"], 1.0
    shade = {1: 1.0, 2: 0.7, 4: 0.45}.get(setting["batch_size"], 0.3)
    return _SETTING_COLOURS.get(setting["optimizer"], "#8c8c8c"), shade


def plot_order_sensitivity(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars per task: OS (Σ_v std over orders, mean over queries) and σ_acc, per setting."""
    tasks = [r["task"] for r in results]
    names = list(dict.fromkeys(s["setting"] for r in results for s in r["settings"]))
    width = 0.8 / max(1, len(names))
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 1.6 * len(tasks) * 2 + 3), 3.8))
    for ax, key, label in (
        (axes[0], "output_std", "Σ_v std over orders of p(v)"),
        (axes[1], "accuracy_std", "std of accuracy over orders"),
    ):
        for j, name in enumerate(names):
            values, style = [], None
            for r in results:
                match = [s for s in r["settings"] if s["setting"] == name]
                values.append(match[0][key] if match else np.nan)
                style = style or (match[0] if match else None)
            colour, alpha = _setting_colour(style) if style else ("#8c8c8c", 1.0)
            ax.bar(
                np.arange(len(tasks)) + (j - (len(names) - 1) / 2) * width,
                values,
                width,
                color=colour,
                alpha=alpha,
                label=name.upper() if name == "icl" else name.replace("_", " "),
            )
        ax.set_xticks(np.arange(len(tasks)), tasks)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    first = results[0] if results else {}
    fig.suptitle(
        f"Order sensitivity over {first.get('n_permutations', '?')} orders of k={first.get('k', '?')} "
        f"demonstrations ({first.get('model', '')})"
    )
    return save_figure(fig, path)


def plot_output_agreement(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Bars per task: mean top-10 token overlap and overlap cosine of each pair of settings."""
    tasks = [r["task"] for r in results]
    pairs = list(dict.fromkeys(p for r in results for p in r["pairs"]))
    width = 0.8 / max(1, len(pairs))
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 1.4 * len(tasks) * 2 + 3), 3.8))
    for ax, key, label in (
        (axes[0], "mean_token_overlap", "top-10 token overlap"),
        (axes[1], "mean_overlap_cosine", "overlap cosine"),
    ):
        for j, pair in enumerate(pairs):
            values = [r["pairs"][pair][key] if pair in r["pairs"] else np.nan for r in results]
            ax.bar(
                np.arange(len(tasks)) + (j - (len(pairs) - 1) / 2) * width,
                values,
                width,
                label=_PAIR_LABELS.get(pair, pair),
                hatch="//" if pair.startswith("zsl") else None,
                alpha=0.6 if pair.startswith("zsl") else 1.0,
            )
        ax.set_xticks(np.arange(len(tasks)), tasks)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle("Agreement of next-token distributions")
    return save_figure(fig, path)


def plot_sparsity(report: dict[str, Any], path: str | Path) -> Path:
    """One panel per model: layer-mean sparsity vs threshold (log x) of W_Q, W_K, W_V, a band over
    layers (min–max), and the ~75 % the hand-built ICL = GD constructions need."""
    models = report["models"]
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(4.5 * max(1, len(models)), 3.6), squeeze=False)
    for ax, result in zip(axes.flat, models):
        thresholds = np.array(result["thresholds"])
        for name, mean in result["mean"].items():
            layers = np.array(result["per_layer"][name])
            (line,) = ax.plot(thresholds, mean, marker=".", label=name)
            ax.fill_between(thresholds, layers.min(0), layers.max(0), color=line.get_color(), alpha=0.15)
        ax.axhline(result["handbuilt"], color="black", ls="--", lw=1, label="hand-built ICL=GD (~75%)")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        unit = " × RMS(W)" if result["scale"] == "rms" else ""
        ax.set_xlabel(f"threshold t{unit}")
        ax.set_ylabel("fraction |w| < t")
        ax.set_title(result["model"])
    axes.flat[0].legend(fontsize=7)
    return save_figure(fig, path)


def plot_demo_sweep(result: dict[str, Any], path: str | Path) -> Path:
    """ICL–GD accuracy gap and SimAOU (GD, and random baseline) vs k, one line per model × task."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in result["summary"]:
        groups.setdefault((entry["model"], entry["task"]), []).append(entry)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (model, task), entries in sorted(groups.items()):
        entries = sorted(entries, key=lambda e: e["k"])
        ks = [e["k"] for e in entries]
        label = f"{model} / {task}"
        axes[0].errorbar(
            ks,
            [e["gap_accuracy"] for e in entries],
            yerr=[e["gap_accuracy_std"] for e in entries],
            marker="o",
            capsize=3,
            label=label,
        )
        line = axes[1].errorbar(
            ks,
            [e["simaou_ft"] for e in entries],
            yerr=[e["simaou_ft_std"] for e in entries],
            marker="o",
            capsize=3,
            label=label,
        )
        if all(e.get("simaou_random") is not None for e in entries):
            axes[1].plot(ks, [e["simaou_random"] for e in entries], ls=":", color=line[0].get_color())
    for ax, label in ((axes[0], "accuracy ICL − accuracy GD"), (axes[1], "SimAOU (GD); dotted: random")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k demonstrations")
        ax.set_ylabel(label)
        ax.axhline(0, color="black", lw=0.5)
    axes[0].legend(fontsize=7)
    if result.get("skipped"):
        fig.text(0.01, 0.01, f"{len(result['skipped'])} cell(s) skipped (context); see JSON", fontsize=7)
    fig.suptitle("ICL–GD gap vs number of demonstrations")
    return save_figure(fig, path)


def plot_weight_space(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Per layer: ‖ΔW_FT‖_F of W_K and W_V (left) and cos(ΔW_FT, ΔW_ICL) of the dual form with its
    references cos(ΔW_ICL, W_ZSL), cos(ΔW_FT, W_ZSL) (right); one row per task."""
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.2 * max(1, len(results))), squeeze=False)
    for row, result in zip(axes, results):
        for name, values in result["update_norms"].items():
            row[0].plot(values, marker=".", label=f"‖Δ{name}‖")
        row[0].set_ylabel("Frobenius norm")
        row[0].set_title(f"{result['task']}: finetuning update (lr={result['lr']:g}, k={result['k']})")
        row[0].legend(fontsize=7)
        layers = np.arange(len(result["dual_cosine"]))
        mean, std = np.array(result["dual_cosine"]), np.array(result["dual_cosine_std"])
        row[1].plot(layers, mean, marker=".", label="cos(ΔW_FT, ΔW_ICL)")
        row[1].fill_between(layers, mean - std, mean + std, alpha=0.2)
        row[1].plot(layers, result["icl_vs_zsl_cosine"], ls="--", label="cos(ΔW_ICL, W_ZSL)")
        row[1].plot(layers, result["ft_vs_zsl_cosine"], ls=":", label="cos(ΔW_FT, W_ZSL)")
        row[1].axhline(0, color="black", lw=0.5)
        row[1].set_ylim(-1.05, 1.05)
        row[1].set_title(f"{result['task']}: dual-form cosine ({result['n_queries']} queries)")
        row[1].legend(fontsize=7)
        for ax in row:
            ax.set_xlabel("layer")
    return save_figure(fig, path)
