"""Zero-shot vs in-context accuracy over prompt formats, models, tasks and k (issue: foundation §9).

Does the model learn in context at all? The comparison icl_lens exists for needs a model and a
prompt format where ICL beats zero-shot. For every (model, format, task) this scores the same
queries zero-shot and with k = 4, 8, 16 demonstrations (the first k of one seeded draw, so larger
k extends smaller k), and writes one JSON per cell plus a markdown table.

    python experiments/icl_vs_zsl.py --models smollm2-135m,gemma3-270m --limit 200 --out results/icl_vs_zsl

Resumable: finished cells (verified JSON) are skipped on rerun.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from icl_lens.calibration import calibrate, content_free_row
from icl_lens.errors import IclLensError
from icl_lens.evaluation import evaluate
from icl_lens.metrics import accuracy
from icl_lens.models import load_model
from icl_lens.prompts import PromptFormat, encode_prompts, encode_text
from icl_lens.results import is_complete, read_results, write_results
from icl_lens.tasks import BUILTIN_TASK_NAMES, get_task, sample_demonstrations, sample_queries

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


def run_cell(model, task_name: str, variant: dict, ks, limit, seed, batch_size) -> dict:
    fmt = variant["fmt"]
    task = get_task(task_name)
    if variant.get("lower"):
        task = task.with_overrides(label_words=tuple(w.lower() for w in task.label_words))
    demos = sample_demonstrations(task, max(ks), seed, sampling="balanced" if variant.get("balanced") else "random")
    queries = sample_queries(task, limit)
    labels = torch.tensor([q["label"] for q in queries])
    content_free = encode_text(model.tokenizer, task.format_input(content_free_row(task.template_fields)))
    out = {"task": task_name, "label_words": list(task.label_words), "format": fmt.to_dict(), "seed": seed,
           "calibration": "content_free" if variant.get("calibrate") else "none",
           "n_examples": len(queries), "accuracy": {}, "k_used": {}}
    for k in (0, *ks):
        prompts = encode_prompts(model.tokenizer, task, demos[:k], queries, fmt, model.cfg.n_ctx)
        prefix = prompts.icl_prefix if k else prompts.zsl_prefix
        run = evaluate(model, prefix, prompts.queries, prompts.labels, n_start=prompts.n_start,
                       batch_size=batch_size, progress=False)
        scores = run.class_scores
        if variant.get("calibrate"):
            cf = evaluate(model, prefix, [content_free], prompts.labels, n_start=prompts.n_start, progress=False)
            scores = calibrate(scores, cf.class_scores)
        out["accuracy"][str(k)] = accuracy(scores.argmax(-1), labels)
        out["k_used"][str(k)] = prompts.k
        logging.info("%s %s k=%d acc=%.3f", task_name, fmt, k, out["accuracy"][str(k)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--tasks", default=",".join(BUILTIN_TASK_NAMES))
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"any of {list(FORMATS)}")
    parser.add_argument("--ks", default="4,8,16")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="results/icl_vs_zsl")
    parser.add_argument("--table-only", action="store_true", help="only tabulate the finished cells in --out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ks = [int(k) for k in args.ks.split(",")]
    out_dir = Path(args.out)
    rows = []
    for model_name in args.models.split(","):
        model = None
        for fmt_name in args.formats.split(","):
            variant = FORMATS[fmt_name]
            for task_name in args.tasks.split(","):
                path = out_dir / f"{model_name}__{fmt_name}__{task_name}.json"
                if args.table_only and not is_complete(path):
                    continue
                if not is_complete(path):
                    if model is None:
                        model = load_model(model_name)
                    try:
                        cell = run_cell(model, task_name, variant, ks, args.limit, args.seed, args.batch_size)
                    except IclLensError as exc:  # e.g. a start token this tokenizer lacks
                        logging.warning("%s / %s / %s: %s", model_name, fmt_name, task_name, exc)
                        continue
                    cell.update(model=model_name, format_name=fmt_name)
                    write_results(path, cell)
                rows.append(read_results(path))
        del model
    lines = ["| model | format | task | n | ZSL | " + " | ".join(f"ICL k={k}" for k in ks) + " | ICL>ZSL |",
             "|---|---|---|---|---|" + "---|" * len(ks) + "---|"]
    for r in rows:
        acc = r["accuracy"]
        better = sum(acc[str(k)] > acc["0"] for k in ks if str(k) in acc)
        lines.append(f"| {r['model']} | {r['format_name']} | {r['task']} | {r['n_examples']} | {acc['0']:.3f} | " +
                     " | ".join(f"{acc[str(k)]:.3f}" if str(k) in acc else "–" for k in ks) +
                     f" | {better}/{len(ks)} |")
    table = "\n".join(lines) + "\n"
    (out_dir / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
