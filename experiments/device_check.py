"""Check a GPU against the CPU, and bfloat16 against float32, in one prepared run (about 5 minutes).

(a) ``icl-lens bench`` on the device in float32 and in bfloat16 (throughput; the optimized path must
    agree with the naive loop); (b) one SST-2 cell of the default model on the device (float32)
    against the same cell on the CPU: accuracy within one query in every setting, SimAOU and SimAM_Δ
    (FT and LCGD) within 1e-3; (c) the same cell in bfloat16 against float32 on the device: how far
    every number moves (reported; it passes when every number is finite). The cell is small enough for
    the CPU half to fit the budget: k=8, 32 queries, a fixed learning rate, no lr sweep. (d) The
    learning-rate sweep on the device, one rate at a time against the batched sweep
    (``experiments/bench_lr_sweep.py``, SST-2, ``--sweep-k`` demonstrations, ``--sweep-grid``, a dev slice
    of ``--sweep-dev-size``): it passes when both choose the same rate with the same scores, and reports
    the speed-up (the target is 4x; on 2 CPU cores the FLOPs allow at most about 2.7x). Writes every
    number and a pass/fail per check to one JSON file and exits 1 if any check fails.

    python experiments/device_check.py                      # cuda vs cpu, gemma3-270m
    python experiments/device_check.py --device cpu --model smollm2-135m --limit 8 --k 2   # dry run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from icl_lens.cell.experiment import ExperimentConfig
from icl_lens.cell.results import dig
from icl_lens.cell.store import RuntimeOptions
from icl_lens.runs.sweep import run_cells

METRICS = {  # name -> path in results.json
    "simaou_ft": ("metrics", "ft", "simaou", "mean"),
    "simaou_lcgd": ("metrics", "lcgd", "simaou", "mean"),
    "simam_delta_ft": ("metrics", "ft", "simam_delta", "mean"),
    "simam_delta_lcgd": ("metrics", "lcgd", "simam_delta", "mean"),
}


def compare_cells(a: dict[str, Any], b: dict[str, Any], queries_tolerance: int = 1,
                  metric_tolerance: float = 1e-3) -> dict[str, Any]:
    """Differences between two results of the same cell, and whether they are within tolerance.

    Accuracy may differ by at most ``queries_tolerance`` queries in every setting (a near-tie may
    flip under another device's summation order); SimAOU and SimAM_Δ by at most ``metric_tolerance``.
    """
    n = a["n_examples"]
    if b["n_examples"] != n:
        return {"pass": False, "reason": f"different numbers of queries: {n} vs {b['n_examples']}"}
    checks: dict[str, Any] = {}
    for setting in sorted(set(a["accuracy"]) | set(b["accuracy"])):
        x, y = a["accuracy"].get(setting), b["accuracy"].get(setting)
        if x is None or y is None:
            checks[f"accuracy_{setting}"] = {"a": x, "b": y, "pass": False}
            continue
        flipped = round(abs(x - y) * n)
        checks[f"accuracy_{setting}"] = {"a": x, "b": y, "queries_apart": flipped,
                                         "pass": flipped <= queries_tolerance}
    for name, path in METRICS.items():
        x, y = dig(a, *path), dig(b, *path)
        ok = x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
        diff = abs(x - y) if ok else None
        checks[name] = {"a": x, "b": y, "abs_diff": diff, "pass": ok and diff <= metric_tolerance}
    return {"pass": all(c["pass"] for c in checks.values()), "checks": checks}


def _finite_numbers(results: dict[str, Any]) -> bool:
    values = list(results["accuracy"].values()) + [dig(results, *p) for p in METRICS.values()]
    return all(v is not None and math.isfinite(v) for v in values)


def run_bench(model_name: str, device: str, dtype: str, model_loader: Callable, k: int, n_naive: int,
              n_fast: int) -> dict[str, Any]:
    """``icl-lens bench`` on one device and dtype; passes when it runs and both paths agree."""
    from icl_lens.bench import run_benchmark
    from icl_lens.prompts import PromptFormat, encode_prompts
    from icl_lens.tasks import get_task, sample_demonstrations, sample_queries

    started = time.perf_counter()
    try:
        model = model_loader(model_name, device=device, dtype=dtype)
        task = get_task("sst2")
        queries = sample_queries(task, max(n_naive, n_fast))
        prompts = encode_prompts(model.tokenizer, task, sample_demonstrations(task, k, 0), queries,
                                 PromptFormat(), model.cfg.n_ctx)
        result = run_benchmark(model, prompts, n_naive, n_fast, batch_size=16).to_dict()
    except Exception as exc:  # the check fails and says why; the other checks still run
        return {"pass": False, "error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.perf_counter() - started, 1)
    # bfloat16 rounds at ~4e-3 relative; the naive and optimized paths sum in different orders
    bound = 1e-3 if dtype == "float32" else 5e-2
    result["pass"] = math.isfinite(result["max_abs_diff_scores"]) and result["max_abs_diff_scores"] <= bound
    result["agreement_bound"] = bound
    return result


SWEEP_SPEEDUP_TARGET = 4.0


def run_sweeps(model_name: str, device: str, model_loader: Callable, k: int, grid: tuple[float, ...],
               dev_size: int) -> dict[str, Any]:
    """(d): both sweeps on the device in float32; passes when they choose the same rate with the same scores."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_lr_sweep", Path(__file__).with_name("bench_lr_sweep.py"))
    assert spec is not None and spec.loader is not None
    bench_lr_sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_lr_sweep)
    try:
        model = model_loader(model_name, device=device, dtype="float32")
        result = bench_lr_sweep.time_sweeps(model, "sst2", k, 0, grid, dev_size)
    except Exception as exc:  # the check fails and says why; the other checks still run
        return {"pass": False, "error": f"{type(exc).__name__}: {exc}"}
    result["speedup_target"] = SWEEP_SPEEDUP_TARGET
    result["meets_speedup_target"] = result["speedup"] >= SWEEP_SPEEDUP_TARGET
    result["pass"] = bool(result["same_choice_and_scores"])
    return result


def main(argv: list[str] | None = None, model_loader: Callable | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the device under test (default: cuda)")
    parser.add_argument("--reference-device", default="cpu", help="what (b) compares it with (default: cpu)")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--limit", type=int, default=32, help="queries of the cell")
    parser.add_argument("--lr", type=float, default=1e-3, help="fixed FT/LCGD learning rate (no sweep)")
    parser.add_argument("--n-naive", type=int, default=4, help="bench: queries of the naive loop")
    parser.add_argument("--n-fast", type=int, default=32, help="bench: queries of the optimized path")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--sweep-k", type=int, default=16, help="(d): demonstrations of the sweep")
    parser.add_argument("--sweep-grid", default="1e-4,1e-3,3e-3,3e-2,0.08", help="(d): comma-separated rates")
    parser.add_argument("--sweep-dev-size", type=int, default=64, help="(d): dev-slice queries")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--out", default="device_check.json")
    parser.add_argument("--work-dir", default=None, help="where the cells' results go (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if model_loader is None:
        from icl_lens.models import load_model as model_loader

    import torch

    started = time.perf_counter()
    report: dict[str, Any] = {"device": args.device, "reference_device": args.reference_device, "model": args.model,
                              "torch": torch.__version__, "checks": {}}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    if not args.skip_bench:
        for dtype in ("float32", "bfloat16"):
            logging.info("(a) bench on %s in %s", args.device, dtype)
            report["checks"][f"bench_{dtype}"] = run_bench(args.model, args.device, dtype, model_loader, args.k,
                                                           args.n_naive, args.n_fast)

    cfg = ExperimentConfig(task="sst2", model=args.model, k=args.k, limit=args.limit, seed=0, lr=args.lr)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="icl_lens_device_check_"))
    cells: dict[str, dict[str, Any]] = {}
    for label, device, dtype in (("device_float32", args.device, "float32"),
                                 ("reference_float32", args.reference_device, "float32"),
                                 ("device_bfloat16", args.device, "bfloat16")):
        logging.info("cell on %s in %s", device, dtype)
        t0 = time.perf_counter()
        try:
            cells[label] = run_cells([cfg], work / label, RuntimeOptions(device=device, dtype=dtype, progress=False,
                                                                         attention_examples=0),
                                     model_loader=model_loader)[0]
        except Exception as exc:  # recorded; the comparisons that need this cell fail
            report["checks"][f"cell_{label}"] = {"pass": False, "error": f"{type(exc).__name__}: {exc}"}
            continue
        report[f"cell_{label}_seconds"] = round(time.perf_counter() - t0, 1)
    if "device_float32" in cells and "reference_float32" in cells:
        report["checks"]["device_vs_reference_float32"] = compare_cells(cells["device_float32"],
                                                                        cells["reference_float32"])
    if "device_float32" in cells and "device_bfloat16" in cells:
        moved = compare_cells(cells["device_bfloat16"], cells["device_float32"])
        moved["within_float32_tolerances"] = moved.pop("pass")
        moved["pass"] = _finite_numbers(cells["device_bfloat16"])  # informational: how far bf16 moves
        report["checks"]["bfloat16_vs_float32"] = moved
    if not args.skip_sweep:
        logging.info("(d) learning-rate sweep on %s: one rate at a time vs batched", args.device)
        grid = tuple(float(x) for x in args.sweep_grid.split(","))
        report["checks"]["lr_sweep_batched_vs_sequential"] = run_sweeps(
            args.model, args.device, model_loader, args.sweep_k, grid, args.sweep_dev_size
        )
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["pass"] = bool(report["checks"]) and all(c["pass"] for c in report["checks"].values())
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for name, check in report["checks"].items():
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {name}" + (f"  ({check['error']})" if "error" in check else ""))
    print(f"{'PASS' if report['pass'] else 'FAIL'}: all checks in {report['seconds']} s -> {args.out}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
