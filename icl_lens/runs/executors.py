"""Run a sweep's cells in worker processes or as SLURM jobs, through ``submitit``.

Three executors, chosen with ``run_cells(..., executor=...)`` or ``icl-lens run --executor``:

* ``inline`` -- one cell after another in the calling process (the default; see :mod:`icl_lens.runs.sweep`).
* ``local`` -- each cell in its own worker process (``submitit.LocalExecutor``), ``workers`` at a
  time. On CUDA every worker gets one GPU of its own (``CUDA_VISIBLE_DEVICES``); on CPU every worker
  gets ``cores // workers`` threads, so the machine is never oversubscribed.
* ``slurm`` -- each cell one task of a SLURM job array (``submitit.SlurmExecutor``), with the
  partition, GPUs, CPUs, memory, time limit, array parallelism and extra sbatch flags of
  :class:`SlurmOptions`.

Every worker runs the same single-cell function as an inline sweep
(:func:`icl_lens.cell.store.run_cell`), so results are written the same way: atomically, with a checksum,
skipped on rerun. A worker also keeps ``<cell>/job_state.json`` up to date (queued / running with
its pid, job id and host / failed with its log paths / finished); ``icl-lens status`` reads it. A
cell whose job failed, was killed or was preempted has no verified ``results.json``, so submitting
the sweep again runs exactly the unfinished cells. Workers share the model cache
(``$ICL_LENS_CACHE``, exported to every job); the one-time conversion is guarded by a file lock.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shlex
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icl_lens.cell.results import atomic_write_text, is_complete
from icl_lens.errors import ConfigError, IclLensError

if TYPE_CHECKING:
    from icl_lens.cell.experiment import ExperimentConfig
    from icl_lens.cell.store import RuntimeOptions

logger = logging.getLogger(__name__)

EXECUTORS = ("inline", "local", "slurm")
STATE_FILE = "job_state.json"
MANIFEST_FILE = "sweep_cells.json"
LOG_DIR = ".submitit"
LOCAL_TIMEOUT_MIN = 60 * 24 * 7  # submitit's local default is 2 minutes; a cell may take hours


class SweepError(IclLensError):
    """Cells of a sweep failed (their jobs crashed, were killed or cancelled); they stay unfinished."""


@dataclass(frozen=True)
class SlurmOptions:
    """What every cell's SLURM job asks for.

    Args:
        partition: the partition (None: the cluster's default).
        gpus_per_job: GPUs per job (``--gpus-per-node``); 0 for CPU jobs.
        cpus_per_job: CPUs per job (``--cpus-per-task``); torch uses this many threads.
        mem: memory per job in sbatch syntax (e.g. ``16G``); None: the cluster's default.
        time_min: time limit per job in minutes.
        array_parallelism: at most this many of the array's jobs run at once.
        extra: further sbatch flags as ``(name, value)`` pairs, e.g. ``(("account", "abc"),)``;
            the value ``True`` gives a bare flag (``--exclusive``).
    """

    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    mem: str | None = None
    time_min: int = 60
    array_parallelism: int = 64
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        for name in ("gpus_per_job", "cpus_per_job", "time_min", "array_parallelism"):
            value = getattr(self, name)
            minimum = 0 if name == "gpus_per_job" else 1
            if not isinstance(value, int) or value < minimum:
                raise ConfigError(f"slurm {name} must be an integer >= {minimum}, got {value!r}")
        for item in self.extra:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and item[0]):
                raise ConfigError(f"slurm extra flags must be (name, value) pairs, got {item!r}")


@dataclass(frozen=True)
class ExecutorOptions:
    """How a sweep's cells are run.

    Args:
        kind: ``inline``, ``local`` or ``slurm``.
        workers: ``local``: cells running at once (each its own process, GPU or share of the cores).
        log_dir: where submitit keeps its pickles and the jobs' stdout/stderr (default
            ``OUT/.submitit``); under ``slurm`` it must be on a file system the nodes share.
        poll_seconds: how often the submitting process checks its jobs.
        slurm: the jobs' resources under ``slurm``.
    """

    kind: str = "inline"
    workers: int = 1
    log_dir: str | None = None
    poll_seconds: float = 1.0
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.kind!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be an integer >= 1, got {self.workers!r}")
        if not self.poll_seconds > 0:
            raise ConfigError(f"poll_seconds must be > 0, got {self.poll_seconds!r}")


# ----------------------------------------------------------------------------- per-cell state


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid from the original)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def write_state(cell_dir: str | Path, state: str, **fields: Any) -> None:
    """Record a cell's job state (atomically) in ``cell_dir/job_state.json``."""
    record = {"state": state, "updated": _now(), **fields}
    atomic_write_text(Path(cell_dir) / STATE_FILE, json.dumps(record, indent=1) + "\n")


def read_state(cell_dir: str | Path) -> dict[str, Any] | None:
    path = Path(cell_dir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def job_alive(state: dict[str, Any]) -> bool | None:
    """Whether the job or process a state names still exists (None: cannot tell from this host)."""
    slurm_id = state.get("slurm_job_id")
    if slurm_id:
        try:
            proc = subprocess.run(
                ["squeue", "-h", "-j", str(slurm_id), "-o", "%T"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        states = proc.stdout.split()
        return proc.returncode == 0 and any(
            s not in ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY")
            for s in states
        )
    pid = state.get("pid")
    if pid is None or state.get("host") != socket.gethostname():
        return None
    started = _process_start(int(pid))
    return started is not None and started == state.get("pid_start", started)


def cell_status(cell_dir: str | Path) -> tuple[str, str]:
    """``(status, detail)`` of one cell folder: done, running, queued, failed or not started."""
    cell_dir = Path(cell_dir)
    from icl_lens.cell.results import RESULTS_FILE

    if is_complete(cell_dir / RESULTS_FILE):
        return "done", ""
    state = read_state(cell_dir)
    if state is None:
        return "not started", ""
    where = f"job {state.get('job_id')} on {state.get('host', '?')}"
    if state.get("pid"):
        where += f" (pid {state['pid']})"
    logs = f"log: {state.get('stderr') or state.get('stdout') or '?'}"
    if state["state"] in ("running", "queued"):
        alive = job_alive(state)
        if alive is False:
            return "failed", f"stale: {where} is gone; {logs}"
        suffix = "" if alive else " (cannot check from this host)"
        return state["state"], where + suffix
    if state["state"] == "failed":
        return "failed", f"{state.get('error', '?')}; {logs}"
    return "not started", f"state {state['state']!r} but no verified results.json"


def sweep_status(out_dir: str | Path) -> list[tuple[str, str, str]]:
    """``(cell, status, detail)`` for every cell of the sweep(s) submitted to ``out_dir``: the cells
    listed in its manifest plus every sub-folder holding results or a job state."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ConfigError(f"results folder {out_dir} does not exist")
    names = set(_read_manifest(out_dir))
    for child in out_dir.iterdir():
        if child.is_dir() and ((child / STATE_FILE).exists() or (child / "results.json").exists()):
            names.add(child.name)
    return [(name, *cell_status(out_dir / name)) for name in sorted(names)]


def _read_manifest(out_dir: Path) -> list[str]:
    try:
        return list(json.loads((out_dir / MANIFEST_FILE).read_text())["cells"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _write_manifest(out_dir: Path, names: Sequence[str]) -> None:
    known = _read_manifest(out_dir)
    merged = known + [n for n in names if n not in known]
    atomic_write_text(out_dir / MANIFEST_FILE, json.dumps({"cells": merged}, indent=1) + "\n")


# ----------------------------------------------------------------------------- the worker


def _job_fields(job_id: str, executor: str, paths: Any) -> dict[str, Any]:
    """What a cell's state file says of the job running it: id, executor, host and log paths (and the
    SLURM job id, which ``icl-lens status`` checks with squeue)."""
    fields: dict[str, Any] = {
        "job_id": job_id,
        "executor": executor,
        "host": socket.gethostname(),
        "stdout": str(paths.stdout),
        "stderr": str(paths.stderr),
    }
    if executor == "slurm":
        fields["slurm_job_id"] = job_id
    return fields


def cell_job(
    cfg: ExperimentConfig, out_dir: str, runtime: RuntimeOptions, model_loader: Callable | None, threads: int | None
) -> str:
    """One cell in a worker process (local or SLURM): load the model, run the cell, write its results.

    Records running / failed / finished in the cell's state file; returns the cell's name.
    """
    # deferred: `icl-lens status` imports this module and needs neither torch nor the cell's code
    import submitit
    import torch

    from icl_lens.cell.store import cell_path, finished_results, run_cell

    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    env = submitit.JobEnvironment()
    cell_dir = cell_path(out_dir, cfg, runtime).parent
    info = _job_fields(env.job_id, env.cluster, env.paths)
    info.update(pid=os.getpid(), pid_start=_process_start(os.getpid()), threads=torch.get_num_threads())
    write_state(cell_dir, "running", **info)
    try:
        if finished_results(cell_path(out_dir, cfg, runtime), cfg, runtime) is None:
            if model_loader is None:
                from icl_lens.models import load_model

                model_loader = load_model
            init: dict[str, Any] = {"untrained_init": cfg.untrained_init} if cfg.untrained else {}
            model = model_loader(
                cfg.model,
                **runtime.loader_options(),
                untrained=cfg.untrained,
                seed=cfg.untrained_seed,
                **init,
            )
            run_cell(model, cfg, out_dir, runtime)
    except BaseException as exc:
        write_state(cell_dir, "failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0], **info)
        raise
    write_state(cell_dir, "finished", **info)
    return cfg.cell_name()


# ----------------------------------------------------------------------------- the submitter


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def local_threads(workers: int) -> int:
    """Threads per local CPU worker: an equal share of the cores, at most ``$OMP_NUM_THREADS`` if set."""
    share = max(1, _cpu_count() // workers)
    env = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(env)) if env.isdigit() and int(env) > 0 else share


def visible_gpus() -> list[int]:
    """The GPU indices this process may use (``CUDA_VISIBLE_DEVICES`` if set, else all)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        try:
            return [int(x) for x in env.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"the local executor needs GPU indices in CUDA_VISIBLE_DEVICES, got {env!r}") from None
    import torch

    return list(range(torch.cuda.device_count()))


def _setup_lines(threads: int | None) -> list[str]:
    from icl_lens.models import default_cache_dir

    lines = [f"export ICL_LENS_CACHE={shlex.quote(str(default_cache_dir()))}"]
    if threads:
        lines += [f"export OMP_NUM_THREADS={threads}", f"export MKL_NUM_THREADS={threads}"]
    return lines


def _slurm_executor(folder: Path, options: SlurmOptions):
    import submitit

    executor = submitit.SlurmExecutor(folder=folder)
    params: dict[str, Any] = dict(
        cpus_per_task=options.cpus_per_job,
        time=options.time_min,
        array_parallelism=options.array_parallelism,
        setup=_setup_lines(options.cpus_per_job),
        additional_parameters=dict(options.extra),
        ntasks_per_node=1,
        nodes=1,
        job_name="icl_lens",
    )
    if options.partition:
        params["partition"] = options.partition
    if options.gpus_per_job:
        params["gpus_per_node"] = options.gpus_per_job
    if options.mem:
        params["mem"] = options.mem
    executor.update_parameters(**params)
    return executor


def run_with_executor(
    cells: Sequence[ExperimentConfig],
    todo: Sequence[int],
    results: list[dict[str, Any] | None],
    out_dir: Path,
    runtime: RuntimeOptions,
    model_loader: Callable | None,
    on_result: Callable | None,
    options: ExecutorOptions,
) -> list[dict[str, Any]]:
    """Run the cells ``todo`` (indices into ``cells``) as local workers or SLURM jobs; fill ``results``.

    Shows a progress bar as cells finish. Raises :class:`SweepError` naming every failed cell and
    its log files after the others are done; the finished cells' files stay.
    """
    # deferred: `icl-lens status` imports this module and needs neither torch nor the cell's code
    from tqdm.auto import tqdm

    from icl_lens.cell.store import cell_dir_name, cell_path, finished_results

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_manifest(out_dir, [cell_dir_name(cfg, runtime) for cfg in cells])
    folder = Path(options.log_dir) if options.log_dir else out_dir / LOG_DIR
    folder = folder.resolve()
    worker_runtime = replace(runtime, progress=False)
    failures: list[str] = []
    submit_order = list(todo)
    for index in list(submit_order):  # cells another submission is still running
        state = read_state(cell_path(out_dir, cells[index], runtime).parent)
        if state and state.get("state") in ("running", "queued") and job_alive(state):
            submit_order.remove(index)
            failures.append(
                f"{cells[index].cell_name()}: still running in job {state.get('job_id')} on "
                f"{state.get('host')}; not submitted again (rerun when it is over)"
            )
    bar = tqdm(
        total=len(submit_order), desc=f"cells ({options.kind})", disable=not runtime.progress or not submit_order
    )
    running: dict[Any, tuple[int, int]] = {}  # job -> (cell index, worker slot)

    def record(job, index: int, queued: bool) -> None:
        cfg = cells[index]
        if queued:
            fields = _job_fields(job.job_id, options.kind, job.paths)
            if options.kind != "slurm":  # a local job's id is its process id
                fields.update(pid=int(job.job_id), pid_start=_process_start(int(job.job_id)))
            write_state(cell_path(out_dir, cfg, runtime).parent, "queued", **fields)
            return
        error = None
        if options.kind == "slurm" and not job.paths.result_pickle.exists():
            error = "the SLURM job ended without a result (cancelled, killed, preempted or out of time)"
        else:
            try:
                job.result()
            except Exception as exc:  # submitit's FailedJobError / UncompletedJobError, or the cell's own
                error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        done = finished_results(cell_path(out_dir, cfg, runtime), cfg, runtime)
        if done is None:
            error = error or "the job ended without a verified results.json"
            logs = f"{job.paths.stderr} / {job.paths.stdout}"
            state = read_state(cell_path(out_dir, cfg, runtime).parent) or {}
            if state.get("state") != "failed":
                write_state(
                    cell_path(out_dir, cfg, runtime).parent,
                    "failed",
                    error=error,
                    job_id=job.job_id,
                    host=state.get("host", socket.gethostname()),
                    stdout=str(job.paths.stdout),
                    stderr=str(job.paths.stderr),
                )
            failures.append(f"{cfg.cell_name()}: {error}; logs: {logs}")
            logger.error("cell %s failed: %s (logs: %s)", cfg.cell_name(), error, logs)
        else:
            results[index] = done
            if on_result is not None:
                on_result(cfg, done)
        bar.update(1)

    gone_polls: dict[str, int] = {}

    def finished(job) -> bool:
        """Local: the worker exited. SLURM: a result exists, or squeue has not listed the job for
        two polls (no accounting database needed, unlike ``sacct``)."""
        if options.kind != "slurm":
            return job.done()
        if job.paths.result_pickle.exists():
            return True
        if job_alive({"slurm_job_id": job.job_id}) is False:
            gone_polls[job.job_id] = gone_polls.get(job.job_id, 0) + 1
            return gone_polls[job.job_id] >= 2 or job.paths.result_pickle.exists()
        return False

    jobs = []
    try:
        if options.kind == "slurm":
            executor = _slurm_executor(folder, options.slurm)
            jobs = executor.map_array(
                cell_job,
                [cells[i] for i in submit_order],
                [str(out_dir.resolve())] * len(submit_order),
                [worker_runtime] * len(submit_order),
                [model_loader] * len(submit_order),
                [options.slurm.cpus_per_job] * len(submit_order),
            )
            for job, index in zip(jobs, submit_order):
                running[job] = (index, 0)
                record(job, index, queued=True)
            logger.info(
                "submitted %d cells as SLURM job array %s", len(jobs), jobs[0].job_id.split("_")[0] if jobs else "-"
            )
            pending: deque[int] = deque()
            free_slots: list[int] = []
        else:
            import submitit

            executor = submitit.LocalExecutor(folder=folder)
            on_gpu = worker_runtime.device.startswith("cuda")
            gpus = visible_gpus() if on_gpu else []
            if on_gpu and options.workers > len(gpus):
                raise ConfigError(
                    f"--workers {options.workers} needs as many GPUs, but {len(gpus)} are visible ({gpus})"
                )
            if on_gpu:
                worker_runtime = replace(worker_runtime, device="cuda")  # each worker sees one GPU: cuda:0
            threads = None if on_gpu else local_threads(options.workers)
            pending = deque(submit_order)
            free_slots = list(range(options.workers))
        while pending or running:
            while pending and free_slots:
                slot, index = free_slots.pop(0), pending.popleft()
                params: dict[str, Any] = {"timeout_min": LOCAL_TIMEOUT_MIN, "setup": _setup_lines(threads)}
                if on_gpu:
                    params.update(gpus_per_node=1, visible_gpus=[gpus[slot]])
                executor.update_parameters(**params)
                job = executor.submit(
                    cell_job, cells[index], str(out_dir.resolve()), worker_runtime, model_loader, threads
                )
                jobs.append(job)
                running[job] = (index, slot)
                record(job, index, queued=True)
            for job in [j for j in running if finished(j)]:
                index, slot = running.pop(job)
                free_slots.append(slot)
                bar.set_postfix_str(cells[index].cell_name())
                record(job, index, queued=False)
            if pending or running:
                time.sleep(options.poll_seconds)
    except BaseException:
        for job in running:
            try:
                job.cancel(check=False)
            except Exception:  # best effort: the job may be gone already
                pass
        raise
    finally:
        bar.close()
    if failures:
        raise SweepError(
            f"{len(failures)} of {len(todo)} cells did not finish (finished cells are saved; "
            f"run the same sweep again to run only these):\n  " + "\n  ".join(failures)
        )
    return [r for r in results if r is not None]
