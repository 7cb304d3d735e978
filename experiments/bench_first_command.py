"""The README's first command as a new user meets it: a fresh virtual environment, the newest
dependencies pip resolves today, an empty model cache.

It reads the first set-up command from the README (``pip install ... && icl-lens run ...``), creates a
virtual environment in a temporary folder, runs the install half there and times it, then runs the
job half with an empty ``ICL_LENS_CACHE`` (so the offline model is downloaded and converted, as on a
fresh machine) and times it. It prints the resolved versions of torch, transformers and
TransformerLens, the backend the job ran on, whether the prefix cache's fast path was taken (the log
says when it was not), both wall times and their sum, the cell's own per-phase timings, and this
machine's float32 matrix-product peak (the same wall time means little across machines whose peaks
differ), and writes them as JSON::

    python experiments/bench_first_command.py                  # prints the table
    python experiments/bench_first_command.py --json out.json  # and keeps it
    python experiments/bench_first_command.py --keep /tmp/venv # reuse that venv (install re-timed)

Run it alone on the machine: it times a torch job.
"""

# ruff: noqa: T201  (a script: it prints its measurement)

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FALLBACK_WARNING = "is re-encoded in every sequence"


def first_command(readme: Path) -> tuple[str, str]:
    """The README's first ``pip install ... && icl-lens run ...`` line, split into its two halves."""
    for line in readme.read_text().splitlines():
        line = line.strip()
        if line.startswith("pip install") and "&& icl-lens run" in line:
            install, job = line.split("&&", 1)
            return install.strip(), job.strip()
    raise SystemExit(f"{readme}: no 'pip install ... && icl-lens run ...' line")


def versions(python: Path) -> dict[str, str]:
    script = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps({n: m.version(n) for n in ('torch', 'transformers', 'transformer-lens')}))"
    )
    return json.loads(subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True).stdout)


def matmul_peak_gflops(python: Path) -> dict[str, float]:
    """The float32 CPU matrix-product peak of each kernel, measured by the installed icl_lens."""
    script = (
        "import json, torch\n"
        "from icl_lens.bench import matmul_peaks\n"
        "print(json.dumps({k: round(v / 1e9, 1) for k, v in matmul_peaks('cpu', torch.float32).items()}))"
    )
    run = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the measurement to this file")
    parser.add_argument("--keep", type=Path, help="create (or reuse) the virtual environment here and keep it")
    args = parser.parse_args()

    install, job = first_command(REPO / "README.md")
    with tempfile.TemporaryDirectory() as tmp:
        venv = args.keep or Path(tmp) / "venv"
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        bin_dir = venv / "bin"
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
        env.pop("PYTHONPATH", None)

        t0 = time.perf_counter()
        subprocess.run(shlex.split(install) + ["-q"], cwd=REPO, env=env, check=True)
        install_s = time.perf_counter() - t0

        out = Path(tmp) / "results"
        job_args = shlex.split(job)
        job_args[job_args.index("--out") + 1] = str(out)
        env["ICL_LENS_CACHE"] = str(Path(tmp) / "cache")  # an empty model cache, as on a fresh machine
        t0 = time.perf_counter()
        run = subprocess.run(job_args, cwd=tmp, env=env, capture_output=True, text=True)
        job_s = time.perf_counter() - t0
        if run.returncode != 0:
            sys.stderr.write(run.stdout[-3000:] + run.stderr[-5000:])
            raise SystemExit(f"the job failed with exit status {run.returncode}")
        results = json.loads(next(out.rglob("results.json")).read_text())
        measured = {
            "date": dt.date.today().isoformat(),
            "command": f"{install} && {job}",
            "versions": versions(bin_dir / "python"),
            "backend": results.get("meta", {}).get("backend"),
            "prefix_cache_fast_path": FALLBACK_WARNING not in run.stderr,
            "deprecation_warnings": sorted(set(re.findall(r"FutureWarning: [^\n]*", run.stderr))),
            "accuracy": results.get("accuracy"),
            "phase_seconds": results.get("timing_seconds"),
            "matmul_peak_gflops": matmul_peak_gflops(bin_dir / "python"),
            "install_seconds": round(install_s, 1),
            "job_seconds": round(job_s, 1),
            "total_seconds": round(install_s + job_s, 1),
            "cpu_count": os.cpu_count(),
        }
    for key in ("date", "command", "versions", "backend", "prefix_cache_fast_path", "deprecation_warnings", "accuracy"):
        print(f"{key:24s} {measured[key]}")
    print(f"{'matmul peak (GFLOP/s)':24s} {measured['matmul_peak_gflops']}")
    for phase, seconds in (measured["phase_seconds"] or {}).items():
        print(f"  {phase:38s} {seconds:7.1f} s")
    for key in ("install_seconds", "job_seconds", "total_seconds"):
        minutes, seconds = divmod(measured[key], 60)
        print(f"{key:24s} {measured[key]:7.1f}  ({int(minutes)} min {seconds:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(measured, indent=1))


if __name__ == "__main__":
    main()
