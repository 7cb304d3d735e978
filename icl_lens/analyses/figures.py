"""PNG figures of the Shen et al. analyses (matplotlib, Agg backend), drawn from the analyses'
``to_dict()`` outputs so they can be redrawn from the JSON files alone.

* :func:`plot_order_sensitivity` — OS and σ_acc bars: ICL vs SGD vs Adam × batch size, per task;
* :func:`plot_output_agreement` — token overlap and overlap cosine bars per task and pair;
* :func:`plot_sparsity` — sparsity vs threshold per model, with the hand-built 75 % line;
* :func:`plot_demo_sweep` — ICL–GD accuracy gap and SimAOU vs k, per model and task;
* :func:`plot_weight_space` — ‖ΔW_FT‖ and the dual-form cosine per layer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from icl_lens.reporting.figures import save_figure

logger = logging.getLogger(__name__)

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
