"""The cell: one comparison of ICL and GD on a task × model × k × seed × variant, and everything about it.

- :mod:`~icl_lens.cell.experiment`: its configuration (:class:`ExperimentConfig`) and its run
  (:func:`run_experiment`): prompts, the ZSL / ICL / FT / LCGD runs, every metric, the paired tests;
- :mod:`~icl_lens.cell.nulls`: the null models its similarities are held against;
- :mod:`~icl_lens.cell.presets`: named configurations (the default and the papers' reference setting);
- :mod:`~icl_lens.cell.results`: the layout of its ``results.json``, how it is checked, written and read;
- :mod:`~icl_lens.cell.store`: the cell on disk: its identity, its folder, running it once (``run_cell``).

Many cells at once are :mod:`icl_lens.runs`. Submodules load on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icl_lens._lazy import lazy_attributes

_SUBMODULES = ("experiment", "nulls", "presets", "results", "store")

if TYPE_CHECKING:
    from icl_lens.cell import experiment, nulls, presets, results, store  # noqa: F401

__all__ = list(_SUBMODULES)


__getattr__, __dir__ = lazy_attributes(__name__, _SUBMODULES)
