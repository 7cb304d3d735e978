"""Small sweeps on tiny random models in their own processes (for the interruption tests).

    python sweep_worker.py OUT_DIR                      # run cells() into OUT_DIR
    python sweep_worker.py kills OUT_ROOT SEED [SEED ...]

``kills`` imports torch once, then forks one child per run (nothing has run torch in the parent, so
forking is safe): a reference run of :func:`kill_cells` counting the *moments* it passes (``cell:*``:
an evaluation or a finetuning starts; ``write:*``: an atomic write has half its bytes in the
temporary file, or has them all but is not yet renamed), then per seed a run that SIGKILLs itself
at a seeded random moment (odd seeds: a write moment, even seeds: a cell moment), a snapshot of
what it left, and a resumed run that records which cells it computed. The test reads the JSON
files and checks them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parents[1]))  # this checkout's icl_lens, not an installed copy

from helpers import tiny_model  # noqa: E402

from icl_lens.cell.experiment import ExperimentConfig  # noqa: E402
from icl_lens.models.untrained import reinitialize_untrained  # noqa: E402
from icl_lens.cell.store import RuntimeOptions  # noqa: E402
from icl_lens.runs.sweep import run_cells  # noqa: E402


def cells() -> list[ExperimentConfig]:
    return [ExperimentConfig(task=task, model="tiny", k=2, limit=4, seed=seed, lr=1e-2, batch_size=4)
            for task in ("sst2", "subj") for seed in (0, 1)]


TEXTS = [("a fine film", 1), ("dull", 0), ("great fun", 1), ("awful", 0), ("lovely", 1), ("boring", 0),
         ("superb", 1), ("bad", 0), ("warm", 1), ("weak", 0)]


def write_kill_task(root: Path) -> Path:
    """A small user task (ten rows), so the killed sweeps spend their time in cells, not in data."""
    root.mkdir(parents=True, exist_ok=True)
    rows = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in TEXTS)
    (root / "train.jsonl").write_text(rows)
    (root / "test.jsonl").write_text(rows)
    path = root / "mine.json"
    path.write_text(json.dumps({"name": "mine", "template": "{text} =", "label_words": ["no", "yes"],
                                "data_files": {"train": "train.jsonl", "test": "test.jsonl"}}))
    return path


def kill_cells(task_file: Path) -> list[ExperimentConfig]:
    return [ExperimentConfig(task=str(task_file), model="tiny", k=k, limit=3, seed=seed, lr=1e-2, batch_size=4,
                             settings=("zsl", "icl", "ft"))
            for k, seed in ((2, 0), (2, 1), (3, 0))]


KILL_RUNTIME = RuntimeOptions(progress=False, attention_examples=1)


def loader(name, **kwargs):
    model = tiny_model(gqa=True, n_layers=2, name=name)
    if not kwargs.get("untrained"):
        return model
    return reinitialize_untrained(model, kwargs.get("seed", 0), init=kwargs.get("untrained_init", "reference"))


class Moments:
    """Counts the moments a run passes; SIGKILLs the process at moment ``kill_at`` (1-based)."""

    def __init__(self, kill_at: int | None = None, record: Path | None = None):
        self.kinds: list[str] = []
        self.kill_at = kill_at
        self.record = record

    def __call__(self, kind: str) -> None:
        self.kinds.append(kind)
        if len(self.kinds) == self.kill_at:
            self.record.write_text(json.dumps({"moment": self.kill_at, "kind": kind}))
            os.kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:
        import icl_lens.cell.experiment
        import icl_lens.cell.results

        def before(kind, fn):
            def wrapped(*args, **kwargs):
                self(kind)
                return fn(*args, **kwargs)
            return wrapped

        icl_lens.cell.experiment.evaluate = before("cell:evaluate", icl_lens.cell.experiment.evaluate)
        icl_lens.cell.experiment.finetune = before("cell:finetune", icl_lens.cell.experiment.finetune)
        real_fdopen, real_replace = os.fdopen, os.replace

        class HalfThenRest:
            def __init__(self, handle):
                self.handle = handle

            def write(self, data):
                half = len(data) // 2
                self.handle.write(data[:half])
                self.handle.flush()
                moments("write:half")
                return half + self.handle.write(data[half:])

            def __getattr__(self, name):
                return getattr(self.handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self.handle.__exit__(*exc)

        moments = self

        def fdopen(fd, mode="r", *args, **kwargs):
            handle = real_fdopen(fd, mode, *args, **kwargs)
            return HalfThenRest(handle) if mode == "wb" else handle

        def replace(src, dst, *args, **kwargs):
            if str(src).endswith(".tmp"):
                self("write:before-rename")
            return real_replace(src, dst, *args, **kwargs)

        icl_lens.cell.results.os.fdopen = fdopen
        icl_lens.cell.results.os.replace = replace


def _in_child(fn) -> int:
    """Run ``fn`` in a forked child; return its wait status (negative: killed by that signal)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _snapshot(out: Path) -> dict:
    from icl_lens.cell.results import ResultsError, read_results

    finished, damaged = {}, []
    for path in sorted(out.rglob("results.json")):
        try:
            read_results(path)
            finished[path.parent.name] = path.stat().st_mtime_ns
        except ResultsError:
            damaged.append(path.parent.name)
    return {"finished": finished, "damaged": damaged,
            "temp_files": [str(p.relative_to(out)) for p in out.rglob("*.tmp")]}


def kills(root: Path, seeds: list[int]) -> None:
    task_file = write_kill_task(root / "task")

    def reference():
        moments = Moments()
        moments.install()
        run_cells(kill_cells(task_file), root / "reference", KILL_RUNTIME, model_loader=loader)
        (root / "moments.json").write_text(json.dumps(moments.kinds))

    assert _in_child(reference) == 0, "the reference run failed"
    kinds = json.loads((root / "moments.json").read_text())
    for seed in seeds:
        folder = root / f"seed{seed}"
        folder.mkdir()
        wanted = "write:" if seed % 2 else "cell:"
        kill_at = random.Random(seed).choice([i for i, k in enumerate(kinds, 1) if k.startswith(wanted)])

        def interrupted():
            Moments(kill_at, folder / "kill.json").install()
            run_cells(kill_cells(task_file), folder / "out", KILL_RUNTIME, model_loader=loader)

        status = _in_child(interrupted)
        before = _snapshot(folder / "out")

        def resumed():
            import icl_lens.cell.store

            computed = []
            real = icl_lens.cell.store.run_experiment

            def recording(model, task, cfg, **kwargs):
                computed.append(cfg.cell_name())
                return real(model, task, cfg, **kwargs)

            icl_lens.cell.store.run_experiment = recording
            run_cells(kill_cells(task_file), folder / "out", KILL_RUNTIME, model_loader=loader)
            (folder / "computed.json").write_text(json.dumps(computed))

        resume_status = _in_child(resumed)
        (folder / "state.json").write_text(json.dumps(
            {"kill_at": kill_at, "status": status, "before": before, "resume_status": resume_status}))


if __name__ == "__main__":
    if sys.argv[1] == "kills":
        kills(Path(sys.argv[2]), [int(s) for s in sys.argv[3:]])
    else:
        run_cells(cells(), sys.argv[1], RuntimeOptions(progress=False), model_loader=loader)
