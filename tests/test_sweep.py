"""Resumable sweeps, damaged-file recovery and determinism (on tiny random models)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sweep_worker import cells, loader

from icl_lens.results import read_results, stable_payload
from icl_lens.sweep import RuntimeOptions, cell_path, run_cells

WORKER = Path(__file__).parent / "sweep_worker.py"


def _payloads(out_dir):
    return {cfg.cell_name(): stable_payload(read_results(cell_path(out_dir, cfg))) for cfg in cells()}


def test_same_config_and_seed_give_identical_results(tmp_path):
    run_cells(cells()[:1], tmp_path / "a", RuntimeOptions(progress=False), model_loader=loader)
    run_cells(cells()[:1], tmp_path / "b", RuntimeOptions(progress=False), model_loader=loader)
    a = cell_path(tmp_path / "a", cells()[0])
    b = cell_path(tmp_path / "b", cells()[0])
    assert stable_payload(read_results(a)) == stable_payload(read_results(b))
    # the files differ only in timestamps and timings
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    assert {k for k in ja if ja[k] != jb[k]} <= {"meta", "timing_seconds"}


def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    subprocess.run([sys.executable, str(WORKER), str(reference)], check=True, timeout=600)

    proc = subprocess.Popen([sys.executable, str(WORKER), str(interrupted), "30"])
    first = cell_path(interrupted, cells()[0])
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert first.exists(), "the first cell never finished"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = [cfg for cfg in cells() if cell_path(interrupted, cfg).exists()]
    assert 1 <= len(done_before) < len(cells())
    mtime = first.stat().st_mtime_ns

    subprocess.run([sys.executable, str(WORKER), str(interrupted)], check=True, timeout=600)
    assert first.stat().st_mtime_ns == mtime, "a finished cell was recomputed"
    assert _payloads(interrupted) == _payloads(reference)
    assert not list(interrupted.rglob("*.tmp"))


def test_damaged_cell_is_recomputed_and_others_skipped(tmp_path):
    run_cells(cells()[:2], tmp_path, RuntimeOptions(progress=False), model_loader=loader)
    good, bad = cell_path(tmp_path, cells()[0]), cell_path(tmp_path, cells()[1])
    good_mtime = good.stat().st_mtime_ns
    expected = stable_payload(read_results(bad))
    bad.write_text(bad.read_text()[:200])  # truncated: a partial file
    run_cells(cells()[:2], tmp_path, RuntimeOptions(progress=False), model_loader=loader)
    assert good.stat().st_mtime_ns == good_mtime
    assert stable_payload(read_results(bad)) == expected


def test_cells_differing_in_any_option_get_their_own_file(tmp_path):
    from dataclasses import replace

    cfg = cells()[0]
    changed = replace(cfg, lr=2e-2)
    assert changed.cell_name() != cfg.cell_name()
    assert changed.cell_name().startswith("sst2__tiny__k2__seed0__")


def test_file_from_another_config_is_recomputed(tmp_path):
    from dataclasses import replace

    cfg, other = cells()[0], replace(cells()[0], lr=2e-2)
    run_cells([other], tmp_path, RuntimeOptions(progress=False), model_loader=loader)
    path = cell_path(tmp_path, cfg)
    path.parent.mkdir(parents=True)
    cell_path(tmp_path, other).rename(path)  # a file made with lr=2e-2 where lr=1e-2 belongs
    run_cells([cfg], tmp_path, RuntimeOptions(progress=False), model_loader=loader)
    assert read_results(path)["config"]["lr"] == 1e-2
