"""The one table renderer of icl_lens: a :class:`Table` (header, rows of cells, caption) rendered as
aligned plain text (what ``icl-lens run`` prints), markdown (the reproduction tables, the findings)
or HTML (the reports), and the number formats its cells use.

A number with a bootstrap interval prints as ``0.855 [0.805, 0.900]`` (:func:`format_interval`);
a mean over seeds as ``0.855 ± 0.020 [0.805, 0.900]`` (:func:`format_mean_std`); a per-layer
summary (``{"mean", "ci", ...}``, see :mod:`icl_lens.cell.results`) as its mean over layers with its
interval (:func:`format_summary`); a missing or NaN number as ``–``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MISSING = "–"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _bracket(ci: Sequence[float] | None, digits: int, scale: float) -> str:
    """`` [low, high]`` of a finite two-number interval, else the empty string."""
    if ci is not None and len(ci) == 2 and all(_is_number(v) for v in ci):
        return f" [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"
    return ""


def format_interval(value: Any, ci: Sequence[float] | None, digits: int = 3, scale: float = 1.0) -> str:
    """``value [low, high]`` (each times ``scale``, ``digits`` decimals), or the bare value when
    there is no (finite) interval, e.g. in results written before intervals existed; ``–`` for a
    missing or NaN value. The one formatter of intervals in the printed tables, the HTML reports
    and the findings."""
    if value is None or isinstance(value, bool) or (isinstance(value, float) and value != value):
        return MISSING
    return f"{scale * value:.{digits}f}" + _bracket(ci, digits, scale)


def format_summary(summary: Mapping[str, Any] | None, digits: int = 3, scale: float = 1.0) -> str:
    """A summary dict (``mean`` and its ``ci``: a per-layer summary of a cell, or a quantity
    aggregated over seeds) as its mean with the interval; ``–`` when there is none."""
    if not summary:
        return MISSING
    return format_interval(summary.get("mean"), summary.get("ci"), digits, scale)


def format_mean_std(stats: Mapping[str, Any] | None, scale: float = 1.0, digits: int = 3) -> str:
    """A quantity over seeds (``mean``, sample ``std``, optional ``ci``) as ``mean ± std [low, high]``."""
    if not stats:
        return MISSING
    text = f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"
    return text + (_bracket(stats["ci"], digits, scale) if stats.get("ci") else "")


def format_value(value: Any, digits: int = 3) -> str:
    """A plain cell: ``–`` for None, ``NaN``, a float with ``digits`` decimals, anything else as str."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "NaN" if value != value else f"{value:.{digits}f}"
    return str(value)


class Html(str):
    """A cell that is already HTML (e.g. a link): written as is in :meth:`Table.html`, never escaped."""


@dataclass(frozen=True)
class Table:
    """A table as data: the header, the rows (cells as strings, or :class:`Html`) and a caption.

    The same rows render as aligned text (:meth:`text`), markdown (:meth:`markdown`) or an HTML
    ``<table>`` (:meth:`html`), so a table printed by the CLI and shown in a report cannot differ.
    """

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""

    def text(self) -> str:
        """Right-aligned columns separated by two spaces, a dashed rule under the header."""
        widths = [max(len(str(c)) for c in col) for col in zip(self.header, *self.rows)]
        line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))
        return "\n".join([line(self.header), line(["-" * w for w in widths]), *(line(r) for r in self.rows)])

    def markdown(self) -> str:
        """A GitHub-flavoured markdown table (``|`` inside a cell escaped); the caption is not written."""
        line = lambda cells: "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
        return "\n".join([line(self.header), "|" + "---|" * len(self.header), *(line(r) for r in self.rows)])

    def html(self) -> str:
        """An HTML table in a horizontally scrolling ``div.table-wrap``; cells escaped unless :class:`Html`."""
        esc = lambda c: c if isinstance(c, Html) else html.escape(str(c))
        cap = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        head = "".join(f"<th>{esc(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
