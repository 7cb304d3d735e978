"""Time the learning-rate sweep trained one rate at a time against the batched sweep (all rates together).

Both sweeps get the same demonstrations, dev slice and grid (the dev criterion, contextually
calibrated as the runs are); the script prints both wall times (the best of ``--repeat`` runs each:
the machine may be busy), the speed-up, and whether the chosen rate and every rate's score agree. The
batched sweep trains the rates together and scores the dev slice for all of them together (on the
bridge backend, ``--backend bridge``, it scores them one after another).

    python experiments/bench_lr_sweep.py --model gemma3-270m --task sst2 --k 16 --dev-size 32
    python experiments/bench_lr_sweep.py --model gemma3-270m --backend bridge --k 16 --dev-size 64
    python experiments/bench_lr_sweep.py --tiny --k 4 --dev-size 8 --grid 1e-3,1e-2,0.1   # seconds, no download
"""

# ruff: noqa: T201  (a script: it prints its measurement)
from __future__ import annotations

import argparse
import logging
import os
import time

import torch

from icl_lens.calibration import content_free_row
from icl_lens.training.finetune import FinetuneConfig
from icl_lens.training.lcgd import layer_causal_finetune
from icl_lens.training.lr_sweep import DEFAULT_LR_GRID, dev_slice, sweep_learning_rate
from icl_lens.prompts import PromptFormat, encode_prompts
from icl_lens.tasks import get_task, load_split, sample_demonstrations


def tiny_random_model():
    """A 2-layer random Llama-like model with a byte tokenizer (the tests' tiny model)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from helpers import tiny_model

    return tiny_model(gqa=True, n_layers=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument(
        "--backend", default=None, help="hooked or bridge (default: HookedTransformer where TransformerLens has it)"
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of --model (no download)")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=",".join(repr(lr) for lr in DEFAULT_LR_GRID), help="comma-separated rates")
    parser.add_argument("--dev-size", type=int, default=32)
    parser.add_argument("--params", default="kv", help="trained parameter group (FinetuneConfig.params)")
    parser.add_argument("--repeat", type=int, default=1, help="time each sweep this many times, keep the fastest")
    parser.add_argument("--lcgd", action="store_true", help="sweep LCGD's rate (simultaneous schedule) instead of GD's")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    print(f"torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")

    if args.tiny:
        model = tiny_random_model()
    else:
        from icl_lens.models import load_model

        model = load_model(args.model, backend=args.backend)
    grid = tuple(float(x) for x in args.grid.split(","))
    result = time_sweeps(model, args.task, args.k, args.seed, grid, args.dev_size, args.params, args.repeat, args.lcgd)
    for name in ("sequential", "batched"):
        run = result[name]
        print(
            f"{name:>10}: {run['seconds']:8.2f} s ({run['cpu_seconds']:.2f} s CPU)  "
            f"chose lr {run['lr']:g}  scores {run['scores']}"
        )
    print(
        f"speed-up {result['speedup']:.2f}x wall, {result['cpu_speedup']:.2f}x CPU; "
        f"same choice and scores: {result['same_choice_and_scores']}"
    )


def time_sweeps(
    model,
    task_name: str = "sst2",
    k: int = 16,
    seed: int = 0,
    grid: tuple[float, ...] = DEFAULT_LR_GRID,
    dev_size: int = 32,
    params: str = "kv",
    repeat: int = 1,
    lcgd: bool = False,
) -> dict:
    """Both sweeps on the same inputs: each one's wall and CPU seconds (the best of ``repeat``), chosen
    rate and scores, the speed-up, and whether choice and every score agree (also used by
    ``experiments/device_check.py`` on an accelerator)."""
    task = get_task(task_name)
    demos = sample_demonstrations(task, k, seed)
    train = load_split(task, task.train_split)
    dev = dev_slice(train, dev_size, seed, exclude_rows=[d["row_index"] for d in demos])
    fmt = PromptFormat()
    prompts = encode_prompts(model.tokenizer, task, demos, dev, fmt, model.cfg.n_ctx)
    content_free = encode_prompts(
        model.tokenizer, task, [], [content_free_row(task.template_fields)], fmt, model.cfg.n_ctx
    ).queries[0]
    inputs = dict(
        demo_sequences=prompts.demo_sequences,
        answer_lengths=prompts.demo_answer_lengths,
        base=FinetuneConfig(params=params),
        score_prefix=prompts.zsl_prefix,
        score_queries=prompts.queries,
        score_labels=[row["label"] for row in dev],
        label_tokens=prompts.labels,
        grid=tuple(grid),
        n_start=prompts.n_start,
        content_free_query=content_free,
        progress=False,
    )
    if lcgd:
        inputs["trainer"] = layer_causal_finetune
    out: dict = {"grid": list(grid), "k": k, "dev_size": len(dev), "lcgd": lcgd}
    for name, batched in (("sequential", False), ("batched", True)):
        runs, cpu_runs = [], []
        for _ in range(max(1, repeat)):
            start, cpu_start = time.perf_counter(), time.process_time()
            choice = sweep_learning_rate(model, batched=batched, **inputs)
            runs.append(time.perf_counter() - start)
            cpu_runs.append(time.process_time() - cpu_start)
        out[name] = {
            "seconds": round(min(runs), 3),
            "cpu_seconds": round(min(cpu_runs), 3),
            "lr": choice.lr,
            "scores": {repr(lr): score for lr, score in choice.scores.items()},
        }
    seq, bat = out["sequential"], out["batched"]
    out["speedup"] = seq["seconds"] / max(bat["seconds"], 1e-9)
    out["cpu_speedup"] = seq["cpu_seconds"] / max(bat["cpu_seconds"], 1e-9)
    out["same_choice_and_scores"] = seq["lr"] == bat["lr"] and seq["scores"] == bat["scores"]
    return out


if __name__ == "__main__":
    main()
