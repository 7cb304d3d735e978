"""The slurm executor on a real single-node SLURM cluster (slurmctld + slurmd + munged on localhost).

A session fixture installs Debian's ``slurm-wlm`` and ``munge`` with apt-get when ``slurmctld`` is
missing (CI runs as root, like the browser fixture's Chromium), writes a minimal ``slurm.conf``
(proctrack/linuxproc, task/none, no cgroups, no accounting database) under a temporary folder,
starts the three daemons in the foreground as children of the test process, waits for the node to
be idle and tears everything down at the end. If the cluster cannot start here, the tests skip
with the reason (the command that failed and the end of its log).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from executor_loaders import hanging_loader, start_hanging_sweep
from helpers import assert_same_results
from sweep_worker import cells, loader

from icl_lens.runs.executors import ExecutorOptions, SlurmOptions, SweepError, read_state, sweep_status
from icl_lens.cell.results import read_results, stable_payload
from icl_lens.cell.store import RuntimeOptions, cell_path
from icl_lens.runs.sweep import run_cells
from helpers import TESTS

pytestmark = pytest.mark.slurm

QUIET = RuntimeOptions(progress=False, attention_examples=1)
SLURM = ExecutorOptions(kind="slurm", poll_seconds=1.0,
                        slurm=SlurmOptions(cpus_per_job=1, time_min=20, array_parallelism=2))


class ClusterUnavailable(RuntimeError):
    pass


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return f"(no {path.name})"


def _install() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable("slurmctld/munged are missing and apt-get needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
        if proc.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(cmd)} exited with {proc.returncode}: "
                                     + " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:]))


def _conf(root: Path) -> str:
    host = "localhost"
    return "\n".join([
        "ClusterName=icllens", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", "MpiDefault=none",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "ReturnToService=2",
        "SchedulerType=sched/backfill", "MinJobAge=600", "KillWait=5", "InactiveLimit=0",
        "SlurmctldPort=16817", "SlurmdPort=16818",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmdSpoolDir={root}/slurmd", f"StateSaveLocation={root}/state",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
        f"NodeName={host} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 "
        "State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", "",
    ])


def _live_job_steps() -> list[int]:
    """Pids of slurmstepd processes that are not zombies."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1: text.rindex(")")], text[text.rindex(")") + 2:]
        if name == "slurmstepd" and not rest.startswith("Z"):
            pids.append(int(stat.parent.name))
    return pids


def _drain_jobs(timeout: float = 60) -> None:
    """Cancel whatever is still queued or running and wait until squeue and the job steps are empty."""
    listed = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    if listed:
        subprocess.run(["scancel", *listed], capture_output=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.strip()
        if not queued and not _live_job_steps():
            return
        time.sleep(1)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster; yields the environment its clients need (SLURM_CONF)."""
    root = tmp_path_factory.mktemp("slurm")
    procs: list[subprocess.Popen] = []
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PYTHONPATH", "OMP_NUM_THREADS")}
    try:
        try:
            _install()
            for sub in ("slurmd", "state"):
                (root / sub).mkdir()
            conf = root / "slurm.conf"
            conf.write_text(_conf(root))
            os.environ["SLURM_CONF"] = str(conf)
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            key = Path("/etc/munge/munge.key")
            if not key.exists():
                key.parent.mkdir(parents=True, exist_ok=True)
                key.write_bytes(os.urandom(1024))
                key.chmod(0o400)
            starts = [
                (["munged", "--force", "-F", "--num-threads=2"], root / "munged.log"),
                (["slurmctld", "-D", "-i", "-f", str(conf)], root / "slurmctld.out"),
                (["slurmd", "-D", "-N", "localhost", "-f", str(conf)], root / "slurmd.out"),
            ]
            for cmd, log in starts:
                procs.append(subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                              start_new_session=True))
                time.sleep(2)
                if procs[-1].poll() is not None:
                    raise ClusterUnavailable(f"{' '.join(cmd)} exited with {procs[-1].returncode}: {_tail(log)}; "
                                             f"slurmctld.log: {_tail(root / 'slurmctld.log')}; "
                                             f"slurmd.log: {_tail(root / 'slurmd.log')}")
            deadline = time.time() + 90
            state = ""
            while time.time() < deadline:
                proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
                state = (proc.stdout or proc.stderr).strip()
                if state == "idle":
                    break
                time.sleep(1)
            else:
                raise ClusterUnavailable(f"the node never became idle (sinfo: {state!r}); slurmctld.log: "
                                         f"{_tail(root / 'slurmctld.log')}; slurmd.log: {_tail(root / 'slurmd.log')}")
        except (ClusterUnavailable, OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"a single-node SLURM cluster could not start here: {exc}")
        os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), str(TESTS)])  # jobs import these
        os.environ["OMP_NUM_THREADS"] = "1"
        yield root
    finally:
        if len(procs) == 3 and all(proc.poll() is None for proc in procs):
            _drain_jobs()  # slurmstepd outlives slurmd: let every job end before the daemons stop
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _payloads(out_dir, which):
    return {cfg.cell_name(): stable_payload(read_results(cell_path(out_dir, cfg))) for cfg in which}


def test_slurm_sweep_gives_the_inline_results(slurm_cluster, tmp_path):
    run_cells(cells(), tmp_path / "inline", QUIET, model_loader=loader)
    run_cells(cells(), tmp_path / "slurm", QUIET, model_loader=loader, executor=SLURM)
    assert_same_results(_payloads(tmp_path / "slurm", cells()), _payloads(tmp_path / "inline", cells()))
    states = [read_state(cell_path(tmp_path / "slurm", cfg).parent) for cfg in cells()]
    assert {s["state"] for s in states} == {"finished"}
    assert {s["executor"] for s in states} == {"slurm"}
    assert len({s["slurm_job_id"].split("_")[0] for s in states}) == 1, "not one job array"
    assert {s for _, s, _ in sweep_status(tmp_path / "slurm")} == {"done"}


def test_cancelled_job_is_completed_by_resubmission(slurm_cluster, tmp_path, monkeypatch):
    cfg = cells()[:1]
    run_cells(cfg, tmp_path / "inline", QUIET, model_loader=loader)
    hang = tmp_path / "hang.pid"
    monkeypatch.setenv("ICL_LENS_TEST_HANG_FILE", str(hang))
    thread, errors = start_hanging_sweep(
        lambda: run_cells(cfg, tmp_path / "out", QUIET, model_loader=hanging_loader, executor=SLURM), hang, poll=0.2)
    state = read_state(cell_path(tmp_path / "out", cfg[0]).parent)
    assert state["state"] == "running" and state["slurm_job_id"]
    assert sweep_status(tmp_path / "out")[0][1] == "running"
    subprocess.run(["scancel", state["slurm_job_id"]], check=True)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], SweepError), errors
    assert "ended without a result" in str(errors[0])
    assert not cell_path(tmp_path / "out", cfg[0]).exists()
    assert sweep_status(tmp_path / "out")[0][1] == "failed"

    run_cells(cfg, tmp_path / "out", QUIET, model_loader=hanging_loader, executor=SLURM)
    assert_same_results(_payloads(tmp_path / "out", cfg), _payloads(tmp_path / "inline", cfg))
    assert sweep_status(tmp_path / "out")[0][1] == "done"
