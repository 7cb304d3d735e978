"""Zero-shot vs in-context accuracy over prompt formats, models, tasks and k.

Does the model learn in context at all? The comparison icl_lens exists for needs a model and a
prompt format where ICL beats zero-shot. For every (model, format, task) this scores zero-shot and
with k = 4, 8, 16 demonstrations (the first k of one seeded draw, so larger k extends smaller k) on
two disjoint query sets, and writes one JSON per cell plus ``table.md`` and ``selection.json``:

* a **dev slice** (``--dev-size`` rows of the task's *train* split, drawn by the demonstration seed's
  shuffle after removing every row either demonstration sampling, random or balanced, could use at
  the largest k, and the evaluation queries when a task's eval split is its train split). The format
  (prompt layout, calibration, demonstration sampling) of each model is chosen here: the largest mean
  over tasks of ICL(k_max) − ZSL accuracy, ties to the format listed first; then the model whose
  chosen format gains most.
* the **evaluation queries** (``--limit`` rows of the eval split, as every run uses): only reported,
  never used to choose. The chosen formats' evaluation accuracies are the numbers to quote.

    python experiments/icl_vs_zsl.py --models smollm2-135m,gemma3-270m --limit 200 --out results/icl_vs_zsl

Resumable: finished cells (verified JSON with dev accuracies) are skipped on rerun.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from icl_lens.calibration import calibrate, content_free_row
from icl_lens.errors import IclLensError
from icl_lens.evaluation import evaluate
from icl_lens.training.lr_sweep import dev_slice
from icl_lens.metrics import accuracy
from icl_lens.models import load_model
from icl_lens.prompts import PromptFormat, encode_prompts, encode_text
from icl_lens.cell.results import is_complete, read_results, write_results
from icl_lens.tasks import BUILTIN_TASK_NAMES, get_task, load_split, sample_demonstrations, sample_queries

FORMATS: dict[str, dict] = {
    # name: prompt format, whether label words are lower-cased, whether scores are calibrated
    "spec": {"fmt": PromptFormat(separator="\n", start="bos")},
    "blankline": {"fmt": PromptFormat(separator="\n\n", start="bos")},
    "eos-sep": {"fmt": PromptFormat(separator="<eos>", start="bos")},
    "eos-start": {"fmt": PromptFormat(separator="\n", start="eos")},
    "lowercase": {"fmt": PromptFormat(separator="\n", start="bos"), "lower": True},
    "blankline-lower": {"fmt": PromptFormat(separator="\n\n", start="bos"), "lower": True},
    "endoftext-start": {"fmt": PromptFormat(separator="\n", start="<|endoftext|>")},
    "endoftext-blankline": {"fmt": PromptFormat(separator="\n\n", start="<|endoftext|>")},
    "spec-calibrated": {"fmt": PromptFormat(separator="\n", start="bos"), "calibrate": True},
    "blankline-calibrated": {"fmt": PromptFormat(separator="\n\n", start="bos"), "calibrate": True},
    "balanced": {"fmt": PromptFormat(separator="\n", start="bos"), "balanced": True},
    "balanced-calibrated": {"fmt": PromptFormat(separator="\n", start="bos"), "balanced": True, "calibrate": True},
}


DEV_SOURCE = ("train split, demonstration-seed shuffle, minus the rows of both demonstration samplings "
              "(random, balanced) at the largest k, minus the evaluation queries if they come from the train split")


def selection_rows(task, k_max: int, seed: int, limit: int | None, dev_size: int):
    """The evaluation queries and the dev slice disjoint from them and from every demonstration any
    format of this cell draws (both samplings at ``k_max``, seed ``seed``)."""
    train = load_split(task, task.train_split)
    queries = sample_queries(task, limit)
    demo_rows = {d["row_index"] for sampling in ("random", "balanced")
                 for d in sample_demonstrations(task, k_max, seed, train=train, sampling=sampling)}
    dev = dev_slice(train, dev_size, seed, demo_rows, task=task, query_rows=[q["row_index"] for q in queries])
    return dev, queries


def _cell_record(task_name, task, fmt, variant, seed, dev, queries, dev_size) -> dict:
    return {"task": task_name, "label_words": list(task.label_words), "format": fmt.to_dict(), "seed": seed,
            "calibration": "content_free" if variant.get("calibrate") else "none",
            "n_examples": len(queries), "accuracy": {}, "k_used": {},
            "dev_size": dev_size, "n_dev": len(dev), "dev_accuracy": {}, "dev_source": DEV_SOURCE,
            "dev_rows": [r["row_index"] for r in dev], "query_rows": [q["row_index"] for q in queries]}


def _shared_prompt(variant: dict) -> tuple:
    """What decides a variant's prompts and raw scores: formats equal on it differ only in calibration."""
    return (variant["fmt"], bool(variant.get("lower")), bool(variant.get("balanced")))


def run_cells(model, task_name: str, variants: dict[str, dict], ks, limit, seed, batch_size,
              dev_size: int = 100) -> dict[str, dict]:
    """One cell per variant (format name -> cell), all sharing one prompt layout and demonstration
    sampling, so one evaluation serves them all: a calibrated variant adds only the content-free
    query's scores."""
    first = next(iter(variants.values()))
    if len({_shared_prompt(v) for v in variants.values()}) != 1:
        raise ValueError("run_cells takes variants that differ only in calibration")
    fmt = first["fmt"]
    task = get_task(task_name)
    if first.get("lower"):
        task = task.with_overrides(label_words=tuple(w.lower() for w in task.label_words))
    demos = sample_demonstrations(task, max(ks), seed, sampling="balanced" if first.get("balanced") else "random")
    dev, queries = selection_rows(task, max(ks), seed, limit, dev_size)
    n_dev = len(dev)
    labels = torch.tensor([q["label"] for q in dev + queries])
    content_free = encode_text(model.tokenizer, task.format_input(content_free_row(task.template_fields)))
    cells = {name: _cell_record(task_name, task, fmt, v, seed, dev, queries, dev_size) for name, v in variants.items()}
    for k in (0, *ks):
        # dev and evaluation queries share one encoding, so both see the same (truncated) prefix
        prompts = encode_prompts(model.tokenizer, task, demos[:k], dev + queries, fmt, model.cfg.n_ctx)
        prefix = prompts.icl_prefix if k else prompts.zsl_prefix
        run = evaluate(model, prefix, prompts.queries, prompts.labels, n_start=prompts.n_start,
                       batch_size=batch_size, progress=False)
        cf = None
        for name, variant in variants.items():
            scores = run.class_scores
            if variant.get("calibrate"):
                if cf is None:
                    cf = evaluate(model, prefix, [content_free], prompts.labels, n_start=prompts.n_start,
                                  progress=False)
                scores = calibrate(scores, cf.class_scores)
            predictions = scores.argmax(-1)
            out = cells[name]
            out["dev_accuracy"][str(k)] = accuracy(predictions[:n_dev], labels[:n_dev]) if n_dev else None
            out["accuracy"][str(k)] = accuracy(predictions[n_dev:], labels[n_dev:])
            out["k_used"][str(k)] = prompts.k
            logging.info("%s %s k=%d dev=%s eval=%.3f", task_name, name, k, out["dev_accuracy"][str(k)],
                         out["accuracy"][str(k)])
    return cells


def run_cell(model, task_name: str, variant: dict, ks, limit, seed, batch_size, dev_size: int = 100) -> dict:
    """The cell of one format variant (see :func:`run_cells`)."""
    return run_cells(model, task_name, {"_": variant}, ks, limit, seed, batch_size, dev_size)["_"]


def dev_gain(cell: dict, k_max: int) -> float | None:
    """ICL(k_max) − ZSL accuracy on the cell's dev slice (None without a dev slice)."""
    dev = cell.get("dev_accuracy") or {}
    if dev.get(str(k_max)) is None or dev.get("0") is None:
        return None
    return dev[str(k_max)] - dev["0"]


def choose(rows: list[dict], formats: list[str], tasks: list[str], k_max: int) -> dict[str, Any]:
    """Per model, the format with the largest mean dev gain over ``tasks`` (formats missing a task are
    not eligible; ties to the earlier format); then the model whose chosen format gains most. Only
    dev accuracies are read."""
    by_key = {(r["model"], r["format_name"], r["task"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    per_model: dict[str, Any] = {}
    for model in models:
        candidates = {}
        for fmt in formats:
            gains = [dev_gain(by_key[(model, fmt, t)], k_max) if (model, fmt, t) in by_key else None for t in tasks]
            if gains and all(g is not None for g in gains):
                candidates[fmt] = sum(gains) / len(gains)
        if not candidates:
            continue
        best = max(candidates.values())
        chosen = next(f for f in formats if candidates.get(f) == best)
        per_model[model] = {"format": chosen, "dev_mean_gain": best, "candidates": candidates}
    best_model = None
    if per_model:
        top = max(v["dev_mean_gain"] for v in per_model.values())
        best_model = next(m for m in models if m in per_model and per_model[m]["dev_mean_gain"] == top)
    return {"k_max": k_max, "criterion": "mean over tasks of dev ICL(k_max) - dev ZSL accuracy",
            "dev_source": DEV_SOURCE, "per_model": per_model, "model": best_model}


def tables(rows: list[dict], selection: dict[str, Any], ks) -> str:
    """The dev-slice table the choice was made on, then the evaluation table (chosen formats marked)."""
    chosen = {m: v["format"] for m, v in selection["per_model"].items()}
    k_max = selection["k_max"]
    lines = [f"Selection (dev slice; criterion: {selection['criterion']}):", "",
             "| model | format | mean dev gain | chosen |", "|---|---|---|---|"]
    for model, v in selection["per_model"].items():
        for fmt, gain in v["candidates"].items():
            mark = "**format**" if chosen[model] == fmt else ""
            if fmt == chosen[model] and model == selection["model"]:
                mark = "**format, model**"
            lines.append(f"| {model} | {fmt} | {gain:+.3f} | {mark} |")
    fmt_dev = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines += ["", "Evaluation queries (reported only; * = the format chosen on the dev slice):", "",
              "| model | format | task | n | n dev | dev ZSL | dev ICL k=" + str(k_max) + " | ZSL | " +
              " | ".join(f"ICL k={k}" for k in ks) + " | ICL>ZSL |",
              "|---|---|---|---|---|---|---|---|" + "---|" * len(ks) + "---|"]
    for r in rows:
        acc, dev = r["accuracy"], r.get("dev_accuracy") or {}
        better = sum(acc[str(k)] > acc["0"] for k in ks if str(k) in acc)
        star = "*" if chosen.get(r["model"]) == r["format_name"] else ""
        lines.append(f"| {r['model']} | {r['format_name']}{star} | {r['task']} | {r['n_examples']} | "
                     f"{r.get('n_dev', 0)} | {fmt_dev(dev.get('0'))} | {fmt_dev(dev.get(str(k_max)))} | "
                     f"{acc['0']:.3f} | " +
                     " | ".join(f"{acc[str(k)]:.3f}" if str(k) in acc else "–" for k in ks) +
                     f" | {better}/{len(ks)} |")
    return "\n".join(lines) + "\n"


def _file_label(task_name: str) -> str:
    """A task name, or a task file's stem, safe inside a file name."""
    return task_name.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".json").removesuffix(".toml")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--tasks", default=",".join(BUILTIN_TASK_NAMES))
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"any of {list(FORMATS)}")
    parser.add_argument("--ks", default="4,8,16")
    parser.add_argument("--limit", type=int, default=200, help="evaluation queries per task (reported)")
    parser.add_argument("--dev-size", type=int, default=100,
                        help="dev-slice rows per task (train split, disjoint from demos and queries; the choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="results/icl_vs_zsl")
    parser.add_argument("--table-only", action="store_true", help="only tabulate the finished cells in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ks = [int(k) for k in args.ks.split(",")]
    formats, tasks = args.formats.split(","), args.tasks.split(",")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        parser.error(f"unknown formats {unknown}; choose from {list(FORMATS)}")
    out_dir = Path(args.out)
    rows = []
    for model_name in args.models.split(","):
        model = None
        groups: dict[tuple, list[str]] = {}  # formats differing only in calibration share one evaluation
        for fmt_name in formats:
            groups.setdefault(_shared_prompt(FORMATS[fmt_name]), []).append(fmt_name)
        for task_name in tasks:
            for group in groups.values():
                paths = {f: out_dir / f"{model_name}__{f}__{_file_label(task_name)}.json" for f in group}
                done = {f for f, path in paths.items()
                        if is_complete(path) and read_results(path).get("dev_size") == args.dev_size}
                todo = [f for f in group if f not in done]
                if todo and not args.table_only:
                    if model is None:
                        model = load_model(model_name)
                    try:
                        cells = run_cells(model, task_name, {f: FORMATS[f] for f in todo}, ks, args.limit,
                                          args.seed, args.batch_size, args.dev_size)
                    except IclLensError as exc:  # e.g. a start token this tokenizer lacks
                        logging.warning("%s / %s / %s: %s", model_name, ",".join(todo), task_name, exc)
                        cells = {}
                    for fmt_name, cell in cells.items():
                        cell.update(model=model_name, format_name=fmt_name)
                        write_results(paths[fmt_name], cell)
                        done.add(fmt_name)
                rows += [read_results(paths[f]) for f in group if f in done]
        del model
    order = {(m, f, t): i for i, (m, f, t) in enumerate(
        (m, f, t) for m in args.models.split(",") for f in formats for t in tasks)}
    rows.sort(key=lambda r: order.get((r["model"], r["format_name"], r["task"]), len(order)))
    selection = choose(rows, formats, tasks, max(ks))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "selection.json").write_text(json.dumps(selection, indent=1))
    table = tables(rows, selection, ks)
    (out_dir / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
