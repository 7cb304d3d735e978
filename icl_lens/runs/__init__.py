"""Runs: cells of a sweep on disk, and where they run.

- :mod:`~icl_lens.cell.store`: one cell on disk: its identity, its folder, ``run_cell``;
- :mod:`~icl_lens.runs.sweep`: resumable sweeps over many cells, ``run_cells``;
- :mod:`~icl_lens.runs.executors`: inline, local worker processes and SLURM job arrays (submitit),
  and ``icl-lens status``.

A cell's results file and its layout are :mod:`icl_lens.cell.results`. Submodules load on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icl_lens._lazy import lazy_attributes

_SUBMODULES = ("executors", "sweep")

if TYPE_CHECKING:
    from icl_lens.runs import executors, sweep  # noqa: F401

__all__ = list(_SUBMODULES)


__getattr__, __dir__ = lazy_attributes(__name__, _SUBMODULES)
