"""Reporting: everything that turns results dicts into numbers, tables, figures and verdicts.

- :mod:`~icl_lens.reporting.aggregate`: across-seed means, sample stds and two-level bootstrap
  intervals, and the markdown Tables 1–2 beside the reference numbers;
- :mod:`~icl_lens.reporting.tables`: the one table renderer (plain text, markdown and HTML from the
  same rows) and the interval format ``0.855 [0.805, 0.900]``;
- :mod:`~icl_lens.reporting.summary`: the per-cell tables ``icl-lens run`` prints;
- :mod:`~icl_lens.reporting.figures`: static PNG figures (matplotlib); the interactive views are
  :mod:`icl_lens.viz`;
- :mod:`~icl_lens.reporting.report`: the self-contained HTML reports (``icl-lens report``);
- :mod:`~icl_lens.reporting.findings`: a verdict per claim of the papers (``icl-lens findings``).

The published numbers a run is held against are data, in the leaf module :mod:`icl_lens.papers`.
The layout of a results dict these read is defined in :mod:`icl_lens.cell.results`. Submodules load on
first access (``icl_lens.reporting.findings``), so importing the package stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icl_lens._lazy import lazy_attributes

_SUBMODULES = ("aggregate", "calibration", "claims", "figures", "findings", "report", "summary", "tables", "verdicts")

if TYPE_CHECKING:
    from icl_lens.reporting import (  # noqa: F401
        aggregate,
        calibration,
        claims,
        figures,
        findings,
        report,
        summary,
        tables,
        verdicts,
    )

__all__ = list(_SUBMODULES)


__getattr__, __dir__ = lazy_attributes(__name__, _SUBMODULES)
