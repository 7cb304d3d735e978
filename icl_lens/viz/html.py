"""Self-contained HTML for circuitsvis widgets: no network request when opened from disk.

``str()`` of a circuitsvis object imports its JavaScript from a CDN (unpkg), which fails offline;
its "local" rendering inlines the whole 1.3 MB bundle once *per widget*. Here a page inlines the
bundle shipped inside the installed circuitsvis package (``circuitsvis/dist/cdn/iife.js``, which
defines the global ``CircuitsVis``) exactly once, in a classic ``<script>``, and every panel is a
``<div>`` filled by ``CircuitsVis.render(id, CircuitsVis.<Component>, props)`` — the call
circuitsvis' own local rendering makes. The bundle's ``sourceMappingURL`` comment is dropped (no
source-map fetch) and ``</script`` inside it is escaped so that the inlined code cannot close its tag.
"""

from __future__ import annotations

import functools
import html
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_lens.cell.results import atomic_write_text

BUNDLE_RELATIVE_PATH = Path("dist") / "cdn" / "iife.js"
BUNDLE_MARKER = "/* circuitsvis bundle (inlined by icl_lens) */"

PAGE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; }
h1, h2, h3 { font-weight: 600; }
.icl-panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 18px; }
.icl-panel { border: 1px solid #ddd; border-radius: 6px; padding: 8px 10px; background: #fff;
             min-width: 0; position: relative; overflow: hidden; }
.icl-panel > div[id] { padding: 0 16px; }  /* circuitsvis' grid rows have -15px side margins */
.icl-panel h3 { margin: 2px 0 6px 0; font-size: 15px; }
.icl-panel .icl-note { font-size: 12px; color: #666; margin: 0 0 6px 0; }
"""


def bundle_path() -> Path:
    """Path of the JavaScript bundle inside the installed circuitsvis package."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / BUNDLE_RELATIVE_PATH
    if not path.exists():
        raise FileNotFoundError(f"circuitsvis bundle not found at {path}; reinstall circuitsvis")
    return path


@functools.lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The circuitsvis bundle, safe to inline in a ``<script>`` element."""
    source = bundle_path().read_text(encoding="utf-8")
    source = re.sub(r"^//# sourceMappingURL=.*$", "", source, flags=re.MULTILINE)
    # "</script" only occurs inside string literals of the bundle, where "<\/script" means the same.
    return source.replace("</script", "<\\/script")


def bundle_script() -> str:
    """The ``<script>`` element inlining the bundle (defines the global ``CircuitsVis``)."""
    return f"<script>{BUNDLE_MARKER}\n{circuitsvis_bundle()}\n</script>"


def js_json(value: Any) -> str:
    """JSON usable inside an inline ``<script>`` (no ``<``, ``>`` or ``&`` characters)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _new_id() -> str:
    return "icl-vis-" + uuid.uuid4().hex[:12]


@dataclass
class Panel:
    """One circuitsvis widget: a React component of the bundle and its props (camelCase keys)."""

    component: str
    props: dict[str, Any]
    title: str = ""
    note: str = ""
    element_id: str = field(default_factory=_new_id)

    def clean_props(self) -> dict[str, Any]:
        """Props as circuitsvis' ``convert_props`` sends them (None dropped, tensors → lists)."""
        from circuitsvis.utils.convert_props import convert_prop_type

        return {k: convert_prop_type(v) for k, v in self.props.items() if v is not None}

    def to_circuitsvis(self):
        """The same widget as a circuitsvis ``RenderedHTML`` (inline display in notebooks)."""
        from circuitsvis.utils.render import render

        return render(self.component, **self.props)

    def div(self) -> str:
        head = f"<h3>{html.escape(self.title)}</h3>" if self.title else ""
        note = f'<p class="icl-note">{html.escape(self.note)}</p>' if self.note else ""
        return f'<div class="icl-panel">{head}{note}<div id="{self.element_id}"></div></div>'

    def render_call(self) -> str:
        return (
            f"CircuitsVis.render({json.dumps(self.element_id)}, CircuitsVis.{self.component}, "
            f"{js_json(self.clean_props())});"
        )


def _check(panels: Sequence[Panel]) -> None:
    for p in panels:
        if not re.fullmatch(r"[A-Za-z][\w-]*", p.element_id):
            raise ValueError(f"element id {p.element_id!r} is not a valid CSS id")
        if not re.fullmatch(r"[A-Za-z]\w*", p.component):
            raise ValueError(f"invalid component name {p.component!r}")


def panels_grid(panels: Sequence[Panel]) -> str:
    """The panels' containers (no script)."""
    _check(panels)
    return '<div class="icl-panels">\n' + "\n".join(p.div() for p in panels) + "\n</div>"


def render_calls(panels: Sequence[Panel]) -> str:
    """JavaScript rendering every panel into its container (needs the bundle loaded first)."""
    _check(panels)
    return "\n".join(p.render_call() for p in panels)


def panels_fragment(panels: Sequence[Panel]) -> str:
    """An HTML fragment (e.g. a notebook output): the panels, the bundle once, then the render calls."""
    return f"{panels_grid(panels)}\n{bundle_script()}\n<script>\n{render_calls(panels)}\n</script>"


def page(title: str, body: str, scripts: Iterable[str] = (), css: str = "", include_bundle: bool = True) -> str:
    """A complete HTML document: ``body``, then the bundle (once), then ``scripts`` (inline JavaScript)."""
    for source in scripts:
        if "</script" in source.lower():
            raise ValueError("inline script contains '</script'")
    extra = "\n".join(f"<script>\n{s}\n</script>" for s in scripts)
    bundle = bundle_script() if include_bundle else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{PAGE_CSS}{css}</style>\n</head>\n<body>\n"
        f"{body}\n{bundle}\n{extra}\n</body>\n</html>\n"
    )


def panels_page(panels: Sequence[Panel], title: str = "attention", intro_html: str = "") -> str:
    """A self-contained page showing ``panels`` (the bundle inlined once, however many panels)."""
    body = f"<h1>{html.escape(title)}</h1>\n{intro_html}\n{panels_grid(panels)}"
    return page(title, body, scripts=[render_calls(panels)])


class PanelGroup:
    """Several panels that display together inline in Jupyter (bundle inlined once) or save as a page."""

    def __init__(self, panels: Sequence[Panel], title: str = ""):
        self.panels = list(panels)
        self.title = title

    def _repr_html_(self) -> str:
        head = f"<h3>{html.escape(self.title)}</h3>" if self.title else ""
        return f"<style>{PAGE_CSS}</style>{head}{panels_fragment(self.panels)}"

    def __html__(self) -> str:
        return self._repr_html_()

    def __len__(self) -> int:
        return len(self.panels)

    def __iter__(self):
        return iter(self.panels)

    @property
    def views(self) -> dict[str, Any]:
        """Each panel as a circuitsvis object, by title."""
        return {p.title or p.element_id: p.to_circuitsvis() for p in self.panels}

    def to_html(self) -> str:
        return panels_page(self.panels, title=self.title or "attention")

    def save(self, path: str | Path) -> Path:
        """Write a self-contained page (atomic)."""

        atomic_write_text(path, self.to_html())
        return Path(path)
