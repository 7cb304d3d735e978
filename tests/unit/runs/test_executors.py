"""The local executor with real worker processes (submitit), the per-cell job state and ``icl-lens status``."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from executor_loaders import hanging_loader, start_hanging_sweep
from helpers import assert_same_results
from sweep_worker import cells, loader

from icl_lens.cli import main
from icl_lens.errors import ConfigError
from icl_lens.runs.executors import (
    ExecutorOptions, SlurmOptions, SweepError, local_threads, read_state, sweep_status, write_state,
)
from icl_lens.cell.results import read_results, stable_payload
from icl_lens.cell.store import RuntimeOptions, cell_path
from icl_lens.runs.sweep import run_cells
from helpers import TESTS

QUIET = RuntimeOptions(progress=False, attention_examples=1)


@pytest.fixture
def worker_env(monkeypatch):
    """Workers import this checkout's icl_lens and the tests' loaders, and run single-threaded."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _payloads(out_dir):
    return {cfg.cell_name(): stable_payload(read_results(cell_path(out_dir, cfg))) for cfg in cells()}


def _status(out_dir) -> dict[str, tuple[str, str]]:
    return {name: (status, detail) for name, status, detail in sweep_status(out_dir)}


def test_local_workers_give_the_inline_results(tmp_path, worker_env):
    run_cells(cells(), tmp_path / "inline", QUIET, model_loader=loader)
    seen = []
    out = run_cells(cells(), tmp_path / "local", QUIET, model_loader=loader,
                    on_result=lambda cfg, res: seen.append(cfg.cell_name()),
                    executor=ExecutorOptions(kind="local", workers=2, poll_seconds=0.2))
    assert_same_results(_payloads(tmp_path / "local"), _payloads(tmp_path / "inline"))
    assert sorted(seen) == sorted(cfg.cell_name() for cfg in cells())
    assert [r["config"] for r in out] == [read_results(cell_path(tmp_path / "inline", c))["config"] for c in cells()]
    # every cell ran in its own process (not this one), with a 1-thread share of the cores
    states = [read_state(cell_path(tmp_path / "local", cfg).parent) for cfg in cells()]
    assert {s["state"] for s in states} == {"finished"}
    pids = {s["pid"] for s in states}
    assert os.getpid() not in pids and len(pids) == len(cells())
    assert {s["threads"] for s in states} == {1}
    assert all(Path(s["stdout"]).exists() for s in states)
    assert {v[0] for v in _status(tmp_path / "local").values()} == {"done"}


def test_killed_worker_leaves_its_cell_unfinished_and_resubmission_reruns_only_it(tmp_path, worker_env, monkeypatch):
    reference, out = tmp_path / "reference", tmp_path / "out"
    run_cells(cells(), reference, QUIET, model_loader=loader)
    hang = tmp_path / "hang.pid"
    monkeypatch.setenv("ICL_LENS_TEST_HANG_FILE", str(hang))
    thread, errors = start_hanging_sweep(
        lambda: run_cells(cells(), out, QUIET, model_loader=hanging_loader,
                          executor=ExecutorOptions(kind="local", workers=2, poll_seconds=0.2)), hang)
    pid = int(hang.read_text())
    # the hanging worker shows as running, with its own pid
    running = {name: detail for name, (status, detail) in _status(out).items() if status == "running"}
    assert any(f"(pid {pid})" in detail for detail in running.values()), running
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], SweepError)
    message = str(errors[0])
    assert "1 of 4 cells did not finish" in message
    killed = [cfg for cfg in cells() if not cell_path(out, cfg).exists()]
    assert len(killed) == 1
    state = read_state(cell_path(out, killed[0]).parent)
    assert state["state"] == "failed" and state["stderr"] in message and Path(state["stderr"]).exists()
    status = _status(out)
    assert status[killed[0].cell_name()][0] == "failed"
    assert sorted(s for s, _ in status.values()) == ["done", "done", "done", "failed"]

    mtimes = {c.cell_name(): cell_path(out, c).stat().st_mtime_ns for c in cells() if c != killed[0]}
    run_cells(cells(), out, QUIET, model_loader=hanging_loader,  # the hang file exists: no more hanging
              executor=ExecutorOptions(kind="local", workers=2, poll_seconds=0.2))
    assert {c.cell_name(): cell_path(out, c).stat().st_mtime_ns for c in cells() if c != killed[0]} == mtimes
    assert_same_results(_payloads(out), _payloads(reference))


def test_status_counts_a_running_state_whose_process_is_gone_as_failed(tmp_path, capsys):
    import socket

    cfg = cells()[0]
    run_cells([cfg], tmp_path, QUIET, model_loader=loader)
    alive, dead = cells()[1], cells()[2]
    write_state(cell_path(tmp_path, alive).parent, "running", host=socket.gethostname(), pid=os.getpid(),
                job_id="7", stderr="/logs/7.err")
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_state(cell_path(tmp_path, dead).parent, "running", host=socket.gethostname(),
                pid=int(gone.stdout), job_id="8", stderr="/logs/8.err")
    status = _status(tmp_path)
    assert status[cfg.cell_name()] == ("done", "")
    assert status[alive.cell_name()][0] == "running"
    assert status[dead.cell_name()][0] == "failed" and "/logs/8.err" in status[dead.cell_name()][1]
    assert main(["status", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "1 done, 1 running, 0 queued, 1 failed, 0 not started" in printed
    assert main(["status", str(tmp_path / "missing")]) == 2


def test_cpu_workers_share_the_cores_without_oversubscribing(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [local_threads(n) for n in (1, 2, 3, 4, 16, 32)] == [16, 8, 5, 4, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert local_threads(2) == 2


def test_bad_executor_options_are_config_errors():
    with pytest.raises(ConfigError, match="'gpu'"):
        ExecutorOptions(kind="gpu")
    with pytest.raises(ConfigError, match="workers"):
        ExecutorOptions(kind="local", workers=0)
    with pytest.raises(ConfigError, match="cpus_per_job"):
        SlurmOptions(cpus_per_job=0)


def test_device_check_dry_run_cpu_vs_cpu(tmp_path):
    """The prepared GPU check, dry-run on CPU against CPU on a tiny model: every check runs and passes
    (the same cell on the same device agrees exactly), and the JSON holds every number."""
    import json

    from helpers import load_experiment_script

    device_check = load_experiment_script("device_check")
    out = tmp_path / "check.json"
    code = device_check.main(["--device", "cpu", "--model", "tiny", "--k", "2", "--limit", "4", "--n-naive", "2",
                              "--n-fast", "4", "--sweep-k", "2", "--sweep-dev-size", "4", "--sweep-grid", "1e-3,1e-2",
                              "--out", str(out), "--work-dir", str(tmp_path / "cells")],
                             model_loader=loader)
    report = json.loads(out.read_text())
    assert code == 0 and report["pass"] is True
    assert set(report["checks"]) == {"bench_float32", "bench_bfloat16", "device_vs_reference_float32",
                                     "bfloat16_vs_float32", "lr_sweep_batched_vs_sequential"}
    sweep = report["checks"]["lr_sweep_batched_vs_sequential"]
    assert sweep["same_choice_and_scores"] and sweep["grid"] == [1e-3, 1e-2] and sweep["speedup"] > 0
    assert sweep["batched"]["scores"] == sweep["sequential"]["scores"] and len(sweep["batched"]["scores"]) == 2
    same = report["checks"]["device_vs_reference_float32"]["checks"]
    assert all(c.get("abs_diff", 0) == 0 and c.get("queries_apart", 0) == 0 for c in same.values())
    assert report["checks"]["bench_float32"]["fast_examples_per_s"] > 0


def test_device_check_comparison_flags_a_second_flipped_query_and_a_metric_gap():
    from helpers import load_experiment_script

    compare = load_experiment_script("device_check").compare_cells
    metrics = {"ft": {"simaou": {"mean": 0.5}, "simam_delta": {"mean": 0.1}},
               "lcgd": {"simaou": {"mean": 0.4}, "simam_delta": {"mean": 0.2}}}
    a = {"n_examples": 32, "accuracy": {"icl": 0.75, "ft": 0.5}, "metrics": metrics}
    one_flip = {**a, "accuracy": {"icl": 0.75 + 1 / 32, "ft": 0.5}}
    assert compare(a, one_flip)["pass"] is True
    two_flips = {**a, "accuracy": {"icl": 0.75 + 2 / 32, "ft": 0.5}}
    result = compare(a, two_flips)
    assert result["pass"] is False and result["checks"]["accuracy_icl"]["queries_apart"] == 2
    import copy

    shifted = copy.deepcopy(a)
    shifted["metrics"]["lcgd"]["simam_delta"]["mean"] = 0.2 + 2e-3
    result = compare(a, shifted)
    assert result["pass"] is False and not result["checks"]["simam_delta_lcgd"]["pass"]
    assert result["checks"]["simaou_ft"]["pass"]


def test_cli_executor_flags_become_options():
    from icl_lens.cli import make_parser
    from icl_lens.cli.common import executor_options

    args = make_parser().parse_args(["run", "--executor", "slurm", "--slurm-partition", "gpu", "--slurm-gpus", "1",
                                     "--slurm-cpus", "8", "--slurm-mem", "32G", "--slurm-time", "120",
                                     "--slurm-flag", "account=abc", "--slurm-flag", "exclusive"])
    options = executor_options(args)
    assert options.kind == "slurm"
    assert options.slurm == SlurmOptions(partition="gpu", gpus_per_job=1, cpus_per_job=8, mem="32G", time_min=120,
                                         extra=(("account", "abc"), ("exclusive", True)))
    assert main(["run", "--executor", "local", "--workers", "0"]) == 2
