"""Runs: cells of a sweep on disk, and where they run.

- :mod:`~icl_lens.runs.sweep`: resumable cells, their identity and folders, ``run_cells``;
- :mod:`~icl_lens.runs.executors`: inline, local worker processes and SLURM job arrays (submitit),
  and ``icl-lens status``.

A cell's results file and its layout are :mod:`icl_lens.results`. Submodules load on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_SUBMODULES = ("executors", "sweep")

if TYPE_CHECKING:
    from icl_lens.runs import executors, sweep  # noqa: F401

__all__ = list(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"icl_lens.runs.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'icl_lens.runs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
