"""Resumable sweeps, damaged-file recovery and determinism (on tiny random models)."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sweep_worker import cells, kill_cells, loader

import icl_lens.cell.store
from icl_lens.errors import ConfigError
from icl_lens.cell.experiment import ExperimentConfig
from icl_lens.cell.results import RESULTS_FORMAT_VERSION, read_results, stable_payload
from icl_lens.cell.store import RuntimeOptions, cell_path
from icl_lens.runs.sweep import run_cells
from helpers import TESTS

WORKER = TESTS / "sweep_worker.py"


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


KILL_SEEDS = list(range(10))


@pytest.fixture(scope="module")
def killed_sweeps(tmp_path_factory):
    """Ten sweeps SIGKILLed at seeded random moments (mid-cell and mid-write), each resumed."""
    root = tmp_path_factory.mktemp("kills")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(WORKER), "kills", str(root), *map(str, KILL_SEEDS)], check=True,
                   timeout=600, env=env)
    return root


def _stable_files(out_dir):
    """Per cell folder: the stable results payload and the attention-map tensors."""
    from icl_lens.viz import load_attention_maps

    files = {}
    for path in sorted(Path(out_dir).rglob("results.json")):
        maps = load_attention_maps(path.parent).maps_by_setting
        files[path.parent.name] = (stable_payload(read_results(path)),
                                   {s: [{k: v.tolist() for k, v in m.items()} for m in ms] for s, ms in maps.items()})
    return files


def test_sweeps_killed_at_random_moments_resume_to_the_uninterrupted_result(killed_sweeps):
    reference = _stable_files(killed_sweeps / "reference")
    cells_run = kill_cells(killed_sweeps / "task" / "mine.json")
    assert len(reference) == len(cells_run)
    kinds = set()
    left_temp_files = 0
    for seed in KILL_SEEDS:
        folder = killed_sweeps / f"seed{seed}"
        state = json.loads((folder / "state.json").read_text())
        kill = json.loads((folder / "kill.json").read_text())
        assert state["status"] == -signal.SIGKILL and kill["moment"] == state["kill_at"], seed
        kinds.add(kill["kind"])
        before = state["before"]
        assert before["damaged"] == [], f"seed {seed}: a damaged results file sits at its final path"
        left_temp_files += len(before["temp_files"])
        assert state["resume_status"] == 0, seed
        computed = json.loads((folder / "computed.json").read_text())
        names = {cfg.cell_name() for cfg in cells_run}
        # every finished cell kept, none recomputed; every other cell computed exactly once
        assert sorted(computed) == sorted(names - set(before["finished"])), seed
        out = folder / "out"
        for name, mtime in before["finished"].items():
            assert (out / name / "results.json").stat().st_mtime_ns == mtime, f"seed {seed}: {name} rewritten"
        assert not list(out.rglob("*.tmp")), f"seed {seed}: temporary files left after the resume"
        assert _stable_files(out) == reference, seed
    # the seeds did hit both kinds of moment, and some kills did leave temporary files to clean up
    assert {k.split(":")[0] for k in kinds} == {"cell", "write"}
    assert {"write:half", "write:before-rename"} <= kinds
    assert left_temp_files > 0


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


# --- a cell's identity: task, data, dtype, device kind, results format --------------------------------


def _user_task(root, label_words=("no", "yes"), rows=None):
    root.mkdir(parents=True, exist_ok=True)
    rows = rows or [("good fun", 1), ("dull", 0), ("great", 1), ("bad", 0), ("fine", 1), ("awful", 0)]
    (root / "train.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    (root / "test.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows[:3]))
    task = {"name": "mine", "template": "{text} =", "label_words": list(label_words),
            "data_files": {"train": "train.jsonl", "test": "test.jsonl"}}
    path = root / "mine.json"
    path.write_text(json.dumps(task))
    return path


def _counting_loader(calls):
    def load(name, dtype="float32", **kwargs):
        calls.append(dtype)
        model = loader(name, **kwargs)
        return model.to(getattr(torch, dtype), print_details=False) if dtype != "float32" else model
    return load


ZSL_ICL = dict(model="tiny", k=2, limit=3, lr=1e-2, batch_size=3, settings=("zsl", "icl"))
QUIET = RuntimeOptions(progress=False, attention_examples=0)


def test_same_identity_is_skipped_and_an_edited_task_or_data_file_recomputed(tmp_path, caplog):
    task_file = _user_task(tmp_path / "task")
    cfg = ExperimentConfig(task=str(task_file), **ZSL_ICL)
    calls = []
    run_cells([cfg], tmp_path / "out", QUIET, model_loader=_counting_loader(calls))
    path = cell_path(tmp_path / "out", cfg)
    first = read_results(path)
    assert first["identity"]["results_format"] == RESULTS_FORMAT_VERSION
    assert first["identity"]["task"]["label_words"] == ["no", "yes"]

    run_cells([cfg], tmp_path / "out", QUIET, model_loader=_counting_loader(calls))  # nothing changed
    assert calls == ["float32"] and read_results(path) == first

    _user_task(tmp_path / "task", label_words=("nope", "yes"))  # edit the task's label words
    with caplog.at_level(logging.WARNING, logger="icl_lens.runs"):
        run_cells([cfg], tmp_path / "out", QUIET, model_loader=_counting_loader(calls))
    assert len(calls) == 2 and "task.label_words" in caplog.text
    relabelled = read_results(path)
    assert relabelled["task"]["label_words"] == ["nope", "yes"]

    rows = [("good fun", 1), ("dull", 0), ("great", 1), ("bad", 0), ("fine", 1), ("terrible", 0)]
    _user_task(tmp_path / "task", label_words=("nope", "yes"), rows=rows)  # edit one data row
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="icl_lens.runs"):
        run_cells([cfg], tmp_path / "out", QUIET, model_loader=_counting_loader(calls))
    assert len(calls) == 3 and "task.data_sha256.train" in caplog.text
    assert read_results(path)["identity"]["task"]["data_sha256"]["train"] != \
        relabelled["identity"]["task"]["data_sha256"]["train"]
    run_cells([cfg], tmp_path / "out", QUIET, model_loader=_counting_loader(calls))
    assert len(calls) == 3


def test_another_dtype_is_another_cell_and_both_are_kept(tmp_path):
    cfg = ExperimentConfig(task="sst2", **ZSL_ICL)
    calls = []
    run_cells([cfg], tmp_path, QUIET, model_loader=_counting_loader(calls))
    bf16 = RuntimeOptions(progress=False, attention_examples=0, dtype="bfloat16")
    run_cells([cfg], tmp_path, bf16, model_loader=_counting_loader(calls))
    assert calls == ["float32", "bfloat16"]
    fp32_file, bf16_file = cell_path(tmp_path, cfg), cell_path(tmp_path, cfg, bf16)
    assert bf16_file.parent.name == cfg.cell_name() + "__bfloat16__cpu" and fp32_file.parent.name == cfg.cell_name()
    assert read_results(fp32_file)["identity"]["dtype"] == "float32"
    assert read_results(bf16_file)["identity"]["dtype"] == "bfloat16"
    assert read_results(bf16_file)["model"]["dtype"] == "bfloat16"
    # a float32 file put where the bf16 cell belongs is not reused
    bf16_file.write_bytes(fp32_file.read_bytes())
    run_cells([cfg], tmp_path, bf16, model_loader=_counting_loader(calls))
    assert calls == ["float32", "bfloat16", "bfloat16"]
    assert read_results(bf16_file)["identity"]["dtype"] == "bfloat16"
    run_cells([cfg], tmp_path, bf16, model_loader=_counting_loader(calls))
    run_cells([cfg], tmp_path, QUIET, model_loader=_counting_loader(calls))
    assert len(calls) == 3


def test_device_kind_not_index_names_the_cell():
    cfg = cells()[0]
    cuda0, cuda1 = RuntimeOptions(device="cuda:0"), RuntimeOptions(device="cuda")
    assert cell_path("out", cfg, cuda0) == cell_path("out", cfg, cuda1)
    assert cell_path("out", cfg, cuda0).parent.name == cfg.cell_name() + "__float32__cuda"
    assert cell_path("out", cfg, RuntimeOptions(device="cpu")).parent.name == cfg.cell_name()


def test_another_results_format_version_is_recomputed(tmp_path, monkeypatch):
    cfg = ExperimentConfig(task="sst2", **ZSL_ICL)
    calls = []
    run_cells([cfg], tmp_path, QUIET, model_loader=_counting_loader(calls))
    monkeypatch.setattr(icl_lens.cell.store, "RESULTS_FORMAT_VERSION", RESULTS_FORMAT_VERSION + 1)
    run_cells([cfg], tmp_path, QUIET, model_loader=_counting_loader(calls))
    assert len(calls) == 2
    assert read_results(cell_path(tmp_path, cfg))["identity"]["results_format"] == RESULTS_FORMAT_VERSION + 1


def test_a_loader_returning_another_model_is_refused(tmp_path):
    cfg = ExperimentConfig(task="sst2", **{**ZSL_ICL, "model": "smollm2-135m"})
    with pytest.raises(ConfigError, match="smollm2-135m"):
        run_cells([cfg], tmp_path, QUIET, model_loader=lambda name, **kw: loader("tiny", **kw))
    assert not cell_path(tmp_path, cfg).exists()


def test_a_sweep_without_a_dev_row_is_refused_before_any_model_loads(tmp_path):
    """A task whose evaluation queries are its whole train split leaves the lr sweep nothing to score."""
    from dataclasses import replace

    from icl_lens.runs.sweep import check_cells

    rows = [{"text": f"row {i}", "label": i % 2} for i in range(12)]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "tiny.json").write_text(json.dumps({
        "name": "tiny", "template": "Text: {text} Label:", "label_words": ["no", "yes"],
        "data_files": {"train": "rows.jsonl"}, "eval_split": "train"}))
    cfg = ExperimentConfig(task=str(tmp_path / "tiny.json"), model="tiny", k=2, limit=None)

    def never(*args, **kwargs):
        raise AssertionError("no model may load")

    with pytest.raises(ConfigError, match="the learning-rate sweep has no dev row"):
        run_cells([cfg], tmp_path / "out", RuntimeOptions(progress=False), model_loader=never)
    check_cells([replace(cfg, lr=1e-3), replace(cfg, lr_criterion="demos"), replace(cfg, settings=("zsl", "icl"))])
    check_cells([replace(cfg, limit=6)])  # rows left over for a dev slice
