"""One cell (task × model × k × seed × variant) on disk: its identity, its folder, and running it.

A cell's results are written atomically to ``OUT/<cell>/results.json`` the moment the cell finishes,
with its *identity* (:func:`cell_identity`): the configuration, the resolved task (template, label
words, splits, label field and names), the sha256 of the data files it reads, the dtype, the device
kind (cpu, cuda, mps), the backend and :data:`~icl_lens.cell.results.RESULTS_FORMAT_VERSION`.
:func:`finished_results` accepts a stored file only if it verifies and has the same identity, so a
damaged, partial or differently-identified file is recomputed (the log says why).

Folders: ``OUT/<cfg.cell_name()>`` for float32 on the CPU; other dtypes and devices get a suffix
(``__bfloat16__cuda``), so a bf16 GPU run and a float32 CPU run of the same cell are different
cells and both are kept. An edited task or data file keeps the folder and replaces its results.
Many cells at once: :mod:`icl_lens.runs.sweep`; where they run: :mod:`icl_lens.runs.executors`.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from icl_lens.cell.experiment import ExperimentConfig, apply_task_overrides, run_experiment
from icl_lens.cell.results import (
    RESULTS_FILE,
    RESULTS_FORMAT_VERSION,
    is_complete,
    read_results,
    write_results,
)
from icl_lens.errors import ConfigError, DataFormatError
from icl_lens.models.backends import Model, backend_of, check_backend, installed_version
from icl_lens.models.loading import resolve_dtype
from icl_lens.tasks import (
    Task,
    get_task,
    resolve_data_file,  # the loader's own path rule
)
from icl_lens.viz import save_experiment_attention_maps

logger = logging.getLogger(__name__)

ModelLoader = Callable[..., Model]


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how cells run; not part of a cell's identity (results record them).

    ``attention_examples``: how many queries get their full attention maps (every setting) saved
    beside the results for the HTML report (0: none; about 4 MB per example on SmolLM2).
    ``backend``: ``hooked`` or ``bridge`` (:mod:`icl_lens.models.backends`); None: the installed
    TransformerLens's default. A bridge cell is a cell of its own (identity and folder say so).
    """

    device: str = "cpu"
    dtype: str = "float32"
    progress: bool = True
    attention_examples: int = 2
    backend: str | None = None

    @property
    def resolved_backend(self) -> str:
        return check_backend(self.backend)

    def loader_options(self) -> dict[str, Any]:
        """Keyword arguments every model loader gets (``backend`` only when one was asked for, so a
        custom loader without that argument keeps working)."""
        options: dict[str, Any] = {"device": self.device, "dtype": self.dtype}
        if self.backend is not None:
            options["backend"] = self.backend
        return options


def _dtype_name(dtype: str) -> str:

    return str(resolve_dtype(dtype)).removeprefix("torch.")


def device_kind(device: str) -> str:
    """``cpu``, ``cuda`` or ``mps``: the device's kind, not its index (cuda:0 and cuda:1 agree)."""
    import torch

    return torch.device(device).type


def cell_dir_name(cfg: ExperimentConfig, runtime: RuntimeOptions = RuntimeOptions()) -> str:
    """The cell's folder: ``cfg.cell_name()``, plus ``__<dtype>__<device kind>`` unless float32 on CPU,
    plus ``__bridge`` on the bridge backend."""
    dtype, kind = _dtype_name(runtime.dtype), device_kind(runtime.device)
    suffix = "" if (dtype, kind) == ("float32", "cpu") else f"__{dtype}__{kind}"
    if runtime.resolved_backend != "hooked":
        suffix += f"__{runtime.resolved_backend}"
    return cfg.cell_name() + suffix


def cell_path(out_dir: str | Path, cfg: ExperimentConfig, runtime: RuntimeOptions = RuntimeOptions()) -> Path:
    return Path(out_dir) / cell_dir_name(cfg, runtime) / RESULTS_FILE


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:  # keyed on mtime/size: an edit re-hashes
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise DataFormatError(f"cannot read data file {path}: {exc}") from None
    return _sha256_of(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def task_identity(task: Task) -> dict[str, Any]:
    """Everything that defines a resolved task's rows and prompts, with the sha256 of the data file of
    each split it reads instead of the file's path (a moved folder is the same task). A hub dataset
    (``hf_dataset``) is identified by its name and config only."""
    facts = {k: v for k, v in task.to_dict().items() if k not in ("base_dir", "description", "data_files")}
    if task.data_files:
        facts["data_sha256"] = {
            split: file_sha256(resolve_data_file(task, task.data_files[split]))
            for split in sorted({task.train_split, task.eval_split})
        }
    return facts


def cell_identity(cfg: ExperimentConfig, runtime: RuntimeOptions = RuntimeOptions()) -> dict[str, Any]:
    """What a cell's results depend on; a stored cell is reused only when this is equal (JSON form)."""
    task = apply_task_overrides(get_task(cfg.task), cfg)
    identity = {
        "results_format": RESULTS_FORMAT_VERSION,
        "config": cfg.to_dict(),
        "task": task_identity(task),
        "dtype": _dtype_name(runtime.dtype),
        "device": device_kind(runtime.device),
    }
    if runtime.resolved_backend != "hooked":  # hooked cells keep the identity they had before backends
        identity["backend"] = runtime.resolved_backend
    return _json_roundtrip(identity)


def _differences(stored: Any, wanted: Any, where: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        out = []
        for key in sorted(set(stored) | set(wanted), key=str):
            out += _differences(stored.get(key), wanted.get(key), f"{where}.{key}" if where else str(key))
        return out
    return [] if stored == wanted else [f"{where or 'identity'}: {stored!r} -> {wanted!r}"]


def finished_results(
    path: Path,
    cfg: ExperimentConfig,
    runtime: RuntimeOptions = RuntimeOptions(),
    identity: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The cell's verified results if they exist and have ``cfg``'s identity; None means (re)compute."""
    if not is_complete(path):
        return None
    results = read_results(path)
    identity = cell_identity(cfg, runtime) if identity is None else identity
    stored = results.get("identity")
    if stored != identity or results.get("config") != identity["config"]:
        changed = _differences(stored, identity) if isinstance(stored, dict) else ["no identity (older format)"]
        logger.warning(
            "%s is stale and will be recomputed: %s",
            path,
            "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else ""),
        )
        return None
    return results


def _json_roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def run_cell(
    model: Model,
    cfg: ExperimentConfig,
    out_dir: str | Path,
    runtime: RuntimeOptions,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one cell on a loaded model and write its results; every executor's cells end here.

    The attention maps are written first and ``results.json`` last (atomically, checksummed, with
    the cell's identity, :func:`cell_identity`), so a cell whose results file verifies is complete.
    A model that is not the cell's (another name, or untrained when the cell is not) is a
    :class:`~icl_lens.errors.ConfigError` and nothing is written. Returns the results as read back.
    """
    identity = cell_identity(cfg, runtime) if identity is None else identity
    path = cell_path(out_dir, cfg, runtime)
    if backend_of(model).name != runtime.resolved_backend:
        raise ConfigError(
            f"cell {cfg.cell_name()}: the model loader returned a {backend_of(model).name} model; the run "
            f"asks for the {runtime.resolved_backend} backend"
        )
    output = run_experiment(
        model, get_task(cfg.task), cfg, progress=runtime.progress, keep_models=runtime.attention_examples > 0
    )
    if output.results["config"] != identity["config"]:
        raise ConfigError(
            f"cell {cfg.cell_name()}: the model loader returned a model that is not the "
            f"cell's (recorded {output.results['config']['model']!r}, untrained="
            f"{output.results['config']['untrained']}; the cell asks for {cfg.model!r}, "
            f"untrained={cfg.untrained})"
        )
    if runtime.attention_examples > 0:
        # maps first: a cell whose results.json exists always has its maps
        save_experiment_attention_maps(path.parent, output, model, n_examples=runtime.attention_examples)
    output.models.clear()
    payload = dict(output.results)
    payload["identity"] = identity
    payload["meta"] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": installed_version("transformers"),
        "transformer_lens": installed_version("transformer-lens"),
        "python": platform.python_version(),
        "device": runtime.device,
        "dtype": runtime.dtype,
        "backend": runtime.resolved_backend,
    }
    write_results(path, payload)
    return read_results(path)
