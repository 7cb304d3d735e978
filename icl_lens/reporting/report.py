"""Self-contained HTML reports of a results folder: ``icl-lens report RESULTS_DIR``.

For every cell folder holding a verified ``results.json`` this writes ``report.html`` beside it:

* the metric tables (accuracy per setting; Rec2FTP, Jaccard and the prediction-change partition
  for FT and LCGD; per-layer SimAOU / SimAM / SimAM_Δ / α), every number with its bootstrap
  interval when the results carry one (``0.855 [0.805, 0.900]``,
  :func:`icl_lens.reporting.tables.format_interval`);
* the nulls (SimAOU and SimAM_Δ of FT and LCGD beside the uniform-random, shuffled-pair,
  wrong-label and random-direction nulls; Jaccard beside its independence expectation) and the
  paired tests (exact McNemar vs ZSL; paired bootstrap of LCGD − GD);
* the figures of :mod:`icl_lens.reporting.figures` (per-layer SimAOU and SimAM_Δ, GD vs LCGD; prediction
  changes; gradient-norm heatmaps), written beside as ``report_*.png`` and embedded as data URIs;
* when the cell has ``attention_maps.safetensors`` (:func:`icl_lens.viz.save_attention_maps`),
  an interactive attention section: ``<select>`` elements pick the example, layer, head (or all
  heads) and map kind, and re-render circuitsvis panels for each setting and for each setting
  minus ZSL. The state is also read from and written to the URL fragment
  (``report.html#example=1&layer=3&head=all&kind=scores``).

Pages make no network request: images are data URIs and the circuitsvis bundle is inlined once
(:mod:`icl_lens.viz.html`). The maps are embedded as base64 float16 (lower triangle only, the
upper one is causally masked), decoded in the page on demand; whole examples are embedded while
they fit in a size budget (``--max-mb``, 24 MB by default: a typical cell — 4 examples of ~30
tokens, 30 layers × 9 heads, 4 settings, pattern and scores — makes a ~13 MB page, 1.3 MB of which
is the circuitsvis bundle). ``RESULTS_DIR/index.html`` is a dashboard of all cells: the findings
(a verdict per claim, :mod:`icl_lens.reporting.findings`), cross-cell tables with intervals, per-layer
figures across tasks, and links to every cell's report.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from icl_lens.cell.results import (
    FINETUNED,
    LAYER_METRICS,
    RESULTS_FILE,
    SETTINGS,
    accuracy,
    accuracy_interval,
    atomic_write_text,
    dig,
    jaccard_independence,
    metric_interval,
    metric_summary,
    metric_value,
    null_summary,
    paired_test,
    per_layer,
    prediction_changes,
    read_results,
)
from icl_lens.errors import ResultsError
from icl_lens.reporting import figures
from icl_lens.reporting.aggregate import aggregate, group_label
from icl_lens.reporting.figures import PARTITION
from icl_lens.reporting.findings import (
    FINDINGS_HEADER,
    evaluate_findings,
    find_analyses,
    matrix_tables,
    table_rows,
)
from icl_lens.reporting.tables import Html, Table, format_interval, format_summary, format_value
from icl_lens.viz.html import js_json, page
from icl_lens.viz.maps import has_attention_maps, load_attention_maps

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
INDEX_FILE = "index.html"
KINDS = ("pattern", "scores")
DEFAULT_MAX_MB = 24.0  # embedded attention maps per page; a typical cell (4 examples, q ≈ 30, 30 layers) needs ~12
SETTING_LABELS = {"zsl": "ZSL", "icl": "ICL", "ft": "FT", "lcgd": "LCGD"}

REPORT_CSS = """
table { border-collapse: collapse; margin: 8px 0 18px 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
.facts { color: #444; font-size: 14px; }
nav a { margin-right: 14px; }
figure { display: inline-block; margin: 6px 12px 12px 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; }
#attention-controls { position: sticky; top: 0; z-index: 2000; background: #fafafa; padding: 8px 10px;
                      border: 1px solid #ddd; border-radius: 6px; margin-bottom: 12px; }
#attention-controls label { margin-right: 16px; font-size: 14px; }
#attention-controls select { font-size: 14px; margin-left: 4px; }
.icl-panels.wide { grid-template-columns: 1fr; }
.icl-panels.wide .icl-panel > div[id] { max-width: 1000px; }
.table-wrap { overflow-x: auto; }
.example-text { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap;
                background: #f7f7f7; padding: 6px; border-radius: 4px; }
"""

REPORT_JS = r"""
(() => {
  "use strict";
  const DATA = JSON.parse(document.getElementById("icl-attention-data").textContent);
  const LABELS = {zsl: "ZSL", icl: "ICL", ft: "FT", lcgd: "LCGD"};
  const POS = "#1f5fbf", NEG = "#c0392b";
  const CONTROLS = [["example", "sel-example"], ["layer", "sel-layer"], ["head", "sel-head"],
                    ["kind", "sel-kind"], ["scale", "sel-scale"]];
  const decoded = {};
  let panelCount = 0, renderCount = 0;

  const label = (s) => LABELS[s] || s.toUpperCase();
  const round = (v) => Math.round(v * 1e4) / 1e4;
  function halfToFloat(h) {
    const sign = (h & 0x8000) ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    if (e === 0) return sign * f * Math.pow(2, -24);
    if (e === 31) return f ? NaN : sign * Infinity;
    return sign * (1 + f / 1024) * Math.pow(2, e - 15);
  }
  function decode(b64) {  // base64 of little-endian float16 -> Float32Array
    const bin = atob(b64), out = new Float32Array(bin.length >> 1);
    for (let i = 0; i < out.length; i++) out[i] = halfToFloat(bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8));
    return out;
  }
  function values(ex, setting, key) {
    const id = ex + "/" + setting + "/" + key;
    if (!(id in decoded)) decoded[id] = decode(DATA.examples[ex].maps[setting][key]);
    return decoded[id];
  }
  function matrix(ex, setting, kind, layer, head) {  // packed lower triangle -> q x q rows (zeros above)
    const q = DATA.examples[ex].tokens.length, flat = values(ex, setting, kind), rows = [];
    let k = (layer * DATA.n_heads + head) * (q * (q + 1) / 2);
    for (let i = 0; i < q; i++) {
      const row = new Array(q).fill(0);
      for (let j = 0; j <= i; j++) row[j] = round(flat[k++]);
      rows.push(row);
    }
    return rows;
  }
  const minus = (a, b) => a.map((row, i) => row.map((v, j) => round(v - b[i][j])));
  function maxAbs(mats) {  // over the lower triangles
    let m = 0;
    for (const mat of mats) {
      mat.forEach((row, i) => { for (let j = 0; j <= i; j++) m = Math.max(m, Math.abs(row[j])); });
    }
    return m > 0 ? m : 1;
  }
  function mass(ex, setting, key, layer, heads) {  // per token, mean over the shown heads
    const q = DATA.examples[ex].tokens.length, flat = values(ex, setting, key), out = new Array(q).fill(0);
    for (const h of heads) {
      const base = (layer * DATA.n_heads + h) * q;
      for (let i = 0; i < q; i++) out[i] += flat[base + i] / heads.length;
    }
    return out.map(round);
  }
  function state() {
    const st = {};
    for (const [key, id] of CONTROLS) st[key] = document.getElementById(id).value;
    st.example = Number(st.example);
    st.layer = Number(st.layer);
    return st;
  }
  function addPanel(container, title, note, component, props) {
    const box = document.createElement("div"), h = document.createElement("h3"), p = document.createElement("p");
    const target = document.createElement("div");
    box.className = "icl-panel";
    h.textContent = title;
    p.className = "icl-note";
    p.textContent = note;
    target.id = "icl-att-panel-" + (++panelCount);
    box.append(h, p, target);
    container.appendChild(box);
    CircuitsVis.render(target.id, CircuitsVis[component], props);
  }
  function attentionProps(mats, heads, layer, tokens, lo, hi) {
    const props = {tokens: tokens, minValue: lo, maxValue: hi, negativeColor: NEG, positiveColor: POS,
                   maskUpperTri: true};
    if (heads.length === 1) return ["AttentionPattern", {...props, attention: mats[0], showAxisLabels: true}];
    return ["AttentionHeads", {...props, attention: mats, attentionHeadNames: heads.map((h) => "L" + layer + "H" + h)}];
  }
  function render() {
    const st = state(), ex = DATA.examples[st.example], tokens = ex.tokens, shared = st.scale === "shared";
    const heads = st.head === "all" ? [...Array(DATA.n_heads).keys()] : [Number(st.head)];
    const where = " · layer " + st.layer + " · " + (st.head === "all" ? "all heads" : "head " + st.head);
    const container = document.getElementById("attention-panels");
    container.replaceChildren();
    container.classList.toggle("wide", heads.length > 1);
    document.getElementById("example-text").textContent = ex.text || tokens.join("");
    const maps = {};
    for (const s of DATA.settings) maps[s] = heads.map((h) => matrix(st.example, s, st.kind, st.layer, h));
    const all = DATA.settings.flatMap((s) => maps[s]);
    for (const s of DATA.settings) {
      let lo = 0, hi = 1, note;
      if (st.kind === "pattern") {
        hi = shared ? 1 : maxAbs(maps[s]);
        note = "post-softmax pattern, colour range [0, " + hi.toPrecision(3) + "]";
      } else {
        hi = maxAbs(shared ? all : maps[s]);
        lo = -hi;
        note = "pre-softmax scores, colour range ±" + hi.toPrecision(3);
      }
      const [component, props] = attentionProps(maps[s], heads, st.layer, tokens, lo, hi);
      addPanel(container, label(s) + where, note, component, props);
    }
    const base = DATA.baseline;
    if (maps[base]) {
      const others = DATA.settings.filter((s) => s !== base), diffs = {};
      for (const s of others) diffs[s] = maps[s].map((m, i) => minus(m, maps[base][i]));
      const common = maxAbs(others.flatMap((s) => diffs[s]));
      for (const s of others) {
        const m = shared ? common : maxAbs(diffs[s]);
        const [component, props] = attentionProps(diffs[s], heads, st.layer, tokens, -m, m);
        addPanel(container, label(s) + " − " + label(base) + where,
                 st.kind + " difference: blue > 0 > red, colour range ±" + m.toPrecision(3), component, props);
      }
    }
    if (maps.icl && ex.maps.icl.demo_mass) {
      addPanel(container, "ICL attention on the demonstrations" + where,
               "per query token: the pattern mass on demonstration keys (mean over the shown heads), range [0, 1]",
               "ColoredTokens", {tokens: tokens, values: mass(st.example, "icl", "demo_mass", st.layer, heads),
                                 minValue: 0, maxValue: 1, positiveColor: POS, negativeColor: NEG});
    }
    container.setAttribute("data-rendered", String(++renderCount));
    const hash = "#" + CONTROLS.map(([key]) => key + "=" + encodeURIComponent(st[key])).join("&");
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }
  function applyHash() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    for (const [key, id] of CONTROLS) {
      const value = params.get(key), select = document.getElementById(id);
      if (value !== null && Array.from(select.options).some((o) => o.value === value)) select.value = value;
    }
  }
  for (const [, id] of CONTROLS) document.getElementById(id).addEventListener("change", render);
  window.addEventListener("hashchange", () => { applyHash(); render(); });
  applyHash();
  render();
})();
"""


def _label(setting: str) -> str:
    return SETTING_LABELS.get(setting, setting.upper())


def _title(results: dict[str, Any]) -> str:
    cfg = results.get("config", {})
    k = dig(results, "prompts", "k_used")
    untrained = " (untrained)" if cfg.get("untrained") else ""
    k = k if k is not None else cfg.get("k")
    return f"{dig(results, 'task', 'name')} · {cfg.get('model')}{untrained} · k={k} · seed {cfg.get('seed')}"


def _uncertainty_note(results: dict[str, Any]) -> str:
    u = results.get("uncertainty")
    if not u:
        return ""
    return (
        f'<p class="facts">Brackets: {100 * float(u.get("confidence", 0.95)):g} % interval, '
        f"{html.escape(str(u.get('method', 'bootstrap')))}, {u.get('n_resamples')} resamples "
        f"(seed {u.get('seed')}), the same resamples for every number of this cell.</p>"
    )


def metric_tables(results: dict[str, Any]) -> str:
    """The cell's metrics as HTML tables; every number carries its interval when the results have
    one (``0.855 [0.805, 0.900]``), the bare value otherwise (results written before intervals)."""
    parts = [_uncertainty_note(results)]
    settings = [s for s in SETTINGS if s in (results.get("accuracy") or {})]
    rows = [[_label(s), format_interval(accuracy(results, s), accuracy_interval(results, s))] for s in settings]
    parts.append("<h3>Accuracy</h3>" + Table(["setting", "accuracy"], rows).html())
    metrics = results.get("metrics", {})
    tuned = [s for s in FINETUNED if s in metrics]
    if tuned:
        rows = []
        for s in tuned:
            value = lambda metric, digits=3, scale=1.0, s=s: format_interval(
                metric_value(results, s, metric), metric_interval(results, s, metric), digits, scale
            )
            rows.append(
                [
                    _label(s),
                    value("rec2ftp", 1),
                    value("jaccard", 1, 100),
                    format_value(metric_value(results, s, "jaccard_correct")),
                    format_value(metric_value(results, s, "jaccard_incorrect")),
                    *(format_summary(metric_summary(results, s, metric)) for metric in LAYER_METRICS),
                    value("token_overlap"),
                    value("overlap_cosine"),
                ]
            )
        parts.append(
            "<h3>ICL vs finetuning (means over layers)</h3>"
            + Table(
                [
                    "setting",
                    "Rec2FTP %",
                    "Jaccard %",
                    "Jaccard correct",
                    "Jaccard incorrect",
                    "SimAOU",
                    "SimAM",
                    "SimAM_Δ",
                    "token overlap",
                    "overlap cosine",
                ],
                rows,
            ).html()
        )

        partition = [(key, name.replace("FT", "tuned")) for key, name, _ in PARTITION]
        partition += [("n_icl_changed", "ICL changed"), ("n_ft_changed", "tuned changed"), ("n_examples", "examples")]
        rows = [
            [_label(s), *(format_value(dig(prediction_changes(results, s), k)) for k, _ in partition)] for s in tuned
        ]
        parts.append(
            "<h3>Predictions changed from zero-shot: ICL vs the tuned setting (FT or LCGD)</h3>"
            + Table(["tuned setting", *(name for _, name in partition)], rows).html()
        )
    parts.append(nulls_tables(results))
    parts.append(tests_table(results))
    columns: list[tuple[str, dict[str, Any]]] = []
    for name, setting, metric in [
        ("SimAOU FT", "ft", "simaou"),
        ("SimAOU LCGD", "lcgd", "simaou"),
        ("SimAOU random", None, "simaou_random"),
        ("SimAM FT", "ft", "simam"),
        ("SimAM LCGD", "lcgd", "simam"),
        ("SimAM ZSL", None, "simam_zsl"),
        ("SimAM_Δ FT", "ft", "simam_delta"),
        ("SimAM_Δ LCGD", "lcgd", "simam_delta"),
        ("α", None, "alpha"),
    ]:
        summary = metric_summary(results, setting, metric)
        if isinstance(summary, dict) and summary.get("per_layer"):
            columns.append((name, summary))
    if columns:
        parts.append("<h3>Per layer</h3>" + _per_layer_table(columns))
    lr = results.get("lr") or {}
    if lr:
        parts.append(
            f'<p class="facts">learning rate: {html.escape(format_value(lr.get("lr"), 6))} '
            f"({html.escape(str(lr.get('mode', 'sweep')))})</p>"
        )
    return "\n".join(p for p in parts if p)


def _per_layer_table(columns: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Rows = layers (then the mean over layers), columns = per-layer summaries, each value with its
    interval (``per_layer_ci``; ``ci`` for the mean) when recorded."""
    n_layers = max(len(summary["per_layer"]) for _, summary in columns)

    def layer_cell(summary: dict[str, Any], layer: int) -> str:
        values, cis = summary["per_layer"], summary.get("per_layer_ci") or []
        if layer >= len(values):
            return "–"
        return format_interval(values[layer], cis[layer] if layer < len(cis) else None)

    def mean_cell(summary: dict[str, Any]) -> str:
        if summary.get("mean") is not None:
            return format_summary(summary)
        present = [v for v in summary["per_layer"] if v is not None]  # old results without a mean
        return format_interval(sum(present) / len(present), None) if present else "–"

    rows = [[str(layer), *(layer_cell(summary, layer) for _, summary in columns)] for layer in range(n_layers)]
    rows.append(["mean", *(mean_cell(summary) for _, summary in columns)])
    return Table(["layer", *(name for name, _ in columns)], rows).html()


#: The nulls of a finetuned setting's similarities (Dai et al. 2023's uniform-random vector, and
#: the shuffled-pair, wrong-label and random-direction nulls of docs/concepts/nulls.md): (key, column header).
NULL_COLUMNS = (
    ("uniform_random", "uniform random"),
    ("shuffled_pair", "shuffled pair"),
    ("wrong_label", "wrong labels"),
    ("random_direction", "random direction"),
)


def nulls_tables(results: dict[str, Any]) -> str:
    """SimAOU and SimAM_Δ of each finetuned setting against each null (overall, then per layer), and
    the Jaccard index against its independence expectation; empty when the results have no nulls."""
    nulls = results.get("nulls") or {}
    if not nulls:
        return ""

    def null_of(setting: str, null: str, metric: str) -> dict[str, Any] | None:
        if null == "uniform_random":  # the reference's baseline: SimAOU only, shared by FT and LCGD
            return metric_summary(results, None, "simaou_random") if metric == "simaou" else None
        return null_summary(results, setting, null, metric)

    rows, per_layer = [], []
    for setting in FINETUNED:
        if setting not in nulls:
            continue
        for metric, name in (("simaou", "SimAOU"), ("simam_delta", "SimAM_Δ")):
            observed = metric_summary(results, setting, metric)
            rows.append(
                [
                    _label(setting),
                    name,
                    format_summary(observed),
                    *(format_summary(null_of(setting, key, metric)) for key, _ in NULL_COLUMNS),
                ]
            )
            columns = [(f"{name} {_label(setting)}", observed)] + [
                (header, null_of(setting, key, metric)) for key, header in NULL_COLUMNS
            ]
            with_layers = [(h, c) for h, c in columns if isinstance(c, dict) and c.get("per_layer")]
            if len(with_layers) > 1:
                per_layer.append(
                    f"<h4>{html.escape(name)} of {_label(setting)} against its nulls, per layer</h4>"
                    + _per_layer_table(with_layers)
                )
    parts = [
        '<h3 id="nulls">Nulls</h3><p>Each similarity of the finetuned model beside the same similarity '
        "for a null (means over layers): the uniform-random vector of Dai et al. 2023, the shuffled pair "
        "(ICL's update of one query against FT's of another), finetuning on the demonstrations with wrong "
        "labels, and a random-direction update of FT's size. A null that reaches the observed value means "
        "the similarity does not need what the null removes.</p>",
        Table(["setting", "metric", "observed", *(h for _, h in NULL_COLUMNS)], rows).html(),
    ]
    wrong = [
        (s, dig(nulls, s, "wrong_label")) for s in FINETUNED if dig(nulls, s, "wrong_label", "accuracy") is not None
    ]
    if wrong:
        parts.append(
            Table(
                ["setting", "accuracy after wrong-label finetuning", "demonstrations relabelled"],
                [
                    [
                        _label(s),
                        format_interval(w.get("accuracy"), w.get("accuracy_ci")),
                        format_value(w.get("n_relabelled")),
                    ]
                    for s, w in wrong
                ],
            ).html()
        )
    independence = [(s, j) for s in FINETUNED if (j := jaccard_independence(results, s))]
    if independence:
        parts.append(
            Table(
                ["setting", "Jaccard % (ICL, tuned changes)", "expected % if independent"],
                [
                    [
                        _label(s),
                        format_interval(j.get("observed"), j.get("observed_ci"), 1, scale=100),
                        format_interval(j.get("expected"), None, 1, scale=100),
                    ]
                    for s, j in independence
                ],
                "the expectation given how many predictions each changed",
            ).html()
        )
    return "\n".join(parts + per_layer)


#: Paired tests on the same queries: (key in results["tests"], label, what is compared).
PAIRED_TESTS = (
    ("icl_vs_zsl", "ICL vs ZSL", "accuracy"),
    ("ft_vs_zsl", "FT vs ZSL", "accuracy"),
    ("lcgd_vs_zsl", "LCGD vs ZSL", "accuracy"),
    ("lcgd_vs_ft_simaou", "LCGD vs GD (FT)", "SimAOU"),
    ("lcgd_vs_ft_simam_delta", "LCGD vs GD (FT)", "SimAM_Δ"),
)


def tests_table(results: dict[str, Any]) -> str:
    """The paired tests of the cell: exact McNemar of accuracy (b: first right, second wrong; c: the
    reverse) and paired bootstrap of LCGD − GD similarities; empty when the results have none."""
    rows = []
    for key, label, quantity in PAIRED_TESTS:
        t = paired_test(results, key)
        if not t:
            continue
        name = {"mcnemar_exact": "exact McNemar", "paired_bootstrap": "paired bootstrap"}.get(
            str(t.get("test")), str(t.get("test"))
        )
        discordant = f"b={t['b']}, c={t['c']}" if "b" in t and "c" in t else "–"
        rows.append(
            [
                label,
                quantity,
                name,
                format_interval(t.get("difference"), t.get("ci")),
                discordant,
                "–" if t.get("p_value") is None else f"{float(t['p_value']):.3g}",
            ]
        )
    if not rows:
        return ""
    return (
        '<h3 id="tests">Paired tests (same queries)</h3>'
        + Table(["comparison", "of", "test", "difference [interval]", "discordant", "p"], rows).html()
    )


def cell_figures(results: dict[str, Any], cell_dir: Path) -> list[tuple[str, Path]]:
    """Write the cell's PNG figures beside its results; returns (caption, path) pairs."""

    metrics = results.get("metrics", {})
    tuned = tuple(s for s in FINETUNED if s in metrics)
    out: list[tuple[str, Path]] = []
    if tuned:
        out.append(
            (
                "SimAOU per layer, GD (FT) vs LCGD; dashed: random baseline",
                figures.plot_layer_metric(
                    [results], cell_dir / "report_simaou.png", metric="simaou", settings=tuned, title="SimAOU per layer"
                ),
            )
        )
        out.append(
            (
                "SimAM_Δ per layer, GD (FT) vs LCGD",
                figures.plot_layer_metric(
                    [results],
                    cell_dir / "report_simam_delta.png",
                    metric="simam_delta",
                    settings=tuned,
                    title="SimAM_Δ per layer",
                ),
            )
        )
        for s in tuned:
            out.append(
                (
                    f"prediction changes from zero-shot: ICL and {_label(s)}",
                    figures.plot_prediction_changes(
                        [results], cell_dir / f"report_prediction_changes_{s}.png", setting=s
                    ),
                )
            )
    trained = tuple(s for s in FINETUNED if dig(results, "training", s, "grad_norms"))
    if trained:
        out.append(
            (
                "per-layer gradient norms (log10), layers × demonstration",
                figures.plot_grad_norms(results, cell_dir / "report_grad_norms.png", settings=trained),
            )
        )
    return out


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _f16_b64(values: torch.Tensor) -> str:
    array = values.detach().to(torch.float16).contiguous().cpu().numpy().astype("<f2")
    return base64.b64encode(array.tobytes()).decode("ascii")


def attention_payload(
    cell_dir: str | Path,
    label_words: Sequence[str] = (),
    max_examples: int | None = None,
    kinds: Sequence[str] = KINDS,
    baseline: str = "zsl",
    max_mb: float | None = DEFAULT_MAX_MB,
) -> dict[str, Any]:
    """The cell's saved attention maps, packed for the page (base64 float16, lower triangles).

    Examples are embedded in order while their maps fit in ``max_mb`` megabytes (at least one;
    None: no limit), and at most ``max_examples`` of them; ``n_saved`` tells how many there were.
    """

    kinds = [k for k in kinds if k in KINDS] or ["pattern"]
    saved = load_attention_maps(cell_dir)
    settings = list(saved.maps_by_setting)
    if not settings or not saved.tokens:
        raise ResultsError(f"attention maps in {cell_dir} hold no example")
    n = len(saved.tokens) if max_examples is None else min(max_examples, len(saved.tokens))
    first = saved.maps_by_setting[settings[0]][0]["pattern"]
    n_layers, n_heads = int(first.shape[0]), int(first.shape[1])
    examples: list[dict[str, Any]] = []
    used = 0
    for i in range(n):
        q = len(saved.tokens[i])
        rows, cols = torch.tril_indices(q, q)
        maps = {}
        for s in settings:
            entry = saved.maps_by_setting[s][i]
            packed = {k: _f16_b64(entry[k][..., rows, cols]) for k in kinds}
            for key in ("demo_mass", "start_mass"):
                if key in entry:
                    packed[key] = _f16_b64(entry[key])
            maps[s] = packed
        size = sum(len(v) for packed in maps.values() for v in packed.values())
        if examples and max_mb is not None and used + size > max_mb * 1e6:
            logger.warning(
                "%s: %d of %d attention examples fit in the page's %g MB budget (--max-mb)",
                cell_dir,
                len(examples),
                len(saved.tokens),
                max_mb,
            )
            break
        used += size
        label = saved.examples[i].get("label")
        name = label_words[label] if isinstance(label, int) and 0 <= label < len(label_words) else str(label)
        examples.append(
            {
                "row_index": saved.examples[i].get("row_index"),
                "label": label,
                "label_name": name,
                "text": saved.examples[i].get("text") or "".join(saved.tokens[i]),
                "tokens": saved.tokens[i],
                "maps": maps,
            }
        )
    return {
        "settings": settings,
        "baseline": baseline,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "kinds": kinds,
        "examples": examples,
        "n_saved": len(saved.tokens),
    }


def _options(pairs: Sequence[tuple[str, str]], selected: str | None = None) -> str:
    return "".join(
        f'<option value="{html.escape(v)}"{" selected" if v == selected else ""}>{html.escape(t)}</option>'
        for v, t in pairs
    )


def attention_section(payload: dict[str, Any]) -> str:
    """Controls, panel container and embedded data of the attention section (needs REPORT_JS)."""

    examples = [
        (str(i), f"#{i}: row {ex['row_index']} (label {ex['label_name']}, {len(ex['tokens'])} tokens)")
        for i, ex in enumerate(payload["examples"])
    ]
    layers = [(str(layer), str(layer)) for layer in range(payload["n_layers"])]
    heads = [("all", "all heads"), *((str(h), str(h)) for h in range(payload["n_heads"]))]
    kind_names = {"pattern": "pattern (post-softmax)", "scores": "scores (pre-softmax)"}
    kinds = [(k, kind_names[k]) for k in payload["kinds"]]
    controls = (
        '<div id="attention-controls">'
        f'<label>Example <select id="sel-example">{_options(examples)}</select></label>'
        f'<label>Layer <select id="sel-layer">{_options(layers)}</select></label>'
        f'<label>Head <select id="sel-head">{_options(heads, "0")}</select></label>'
        f'<label>Map <select id="sel-kind">{_options(kinds)}</select></label>'
        '<label>Colours <select id="sel-scale"><option value="shared">one scale for all panels</option>'
        '<option value="panel">a scale per panel</option></select></label>'
        "</div>"
    )
    explain = (
        "<p>Rows and keys are the query's tokens followed by the answer tokens (class 0's, as in the evaluation). "
        "The prefix keys (start token, and the demonstrations for ICL) are left out so every setting's map lines "
        "up: rows do not sum to 1, ICL's least, since part of its mass went to the demonstrations (last panel). "
        "Hover a cell for its value; with all heads, hover a thumbnail to zoom it, click to lock.</p>"
    )
    left_out = payload.get("n_saved", len(payload["examples"])) - len(payload["examples"])
    if left_out > 0:
        explain += (
            f"<p><b>{left_out} more saved example(s) left out</b> to keep this page small; "
            "rebuild with <code>icl-lens report --max-mb</code> to include them.</p>"
        )
    return (
        f'{explain}\n{controls}\n<div class="example-text" id="example-text"></div>\n'
        '<div class="icl-panels" id="attention-panels"></div>\n'
        f'<script type="application/json" id="icl-attention-data">{js_json(payload)}</script>'
    )


_VERSION_LABELS = (("torch", "torch"), ("transformers", "transformers"), ("transformer_lens", "TransformerLens"))
"""The versions a cell's results record under ``meta``, as the report names them."""


def build_cell_report(
    cell_dir: str | Path,
    results: dict[str, Any] | None = None,
    *,
    max_examples: int | None = None,
    kinds: Sequence[str] = KINDS,
    max_mb: float | None = DEFAULT_MAX_MB,
) -> Path:
    """Write ``cell_dir/report.html`` (and its ``report_*.png`` figures); returns the page's path."""

    cell_dir = Path(cell_dir)
    if results is None:
        results = read_results(cell_dir / RESULTS_FILE)
    title = _title(results)
    meta = results.get("meta", {})
    facts = (
        f"{results.get('n_examples')} queries · {dig(results, 'prompts', 'k_used')} demonstrations · "
        f"template {results.get('task', {}).get('template')!r}"
        + (f" · made {meta.get('created')}" if meta.get("created") else "")
        + "".join(f" · {name} {meta[key]}" for key, name in _VERSION_LABELS if meta.get(key))
        + (f" · {meta['backend']} backend" if meta.get("backend") else "")
    )
    figures_html = "\n".join(_img(path, caption) for caption, path in cell_figures(results, cell_dir))
    scripts: list[str] = []
    if has_attention_maps(cell_dir):
        payload = attention_payload(
            cell_dir,
            results.get("task", {}).get("label_words", ()),
            max_examples=max_examples,
            kinds=kinds,
            max_mb=max_mb,
        )
        attention_html = attention_section(payload)
        scripts.append(REPORT_JS)
    else:
        attention_html = (
            "<p>No attention maps were saved for this cell "
            "(<code>icl_lens.viz.save_experiment_attention_maps</code>).</p>"
        )
    body = (
        f'<h1>{html.escape(title)}</h1>\n<p class="facts">{html.escape(facts)}</p>\n'
        '<nav><a href="../index.html">all cells</a><a href="#metrics">metrics</a><a href="#nulls">nulls</a>'
        '<a href="#tests">paired tests</a><a href="#figures">figures</a>'
        '<a href="#attention">attention</a></nav>\n'
        f'<section id="metrics"><h2>Metrics</h2>\n{metric_tables(results)}</section>\n'
        f'<section id="figures"><h2>Figures</h2>\n{figures_html or "<p>No finetuned setting: no figure.</p>"}'
        "</section>\n"
        f'<section id="attention"><h2>Attention maps</h2>\n{attention_html}</section>'
    )
    path = cell_dir / REPORT_FILE
    atomic_write_text(path, page(title, body, scripts=scripts, css=REPORT_CSS, include_bundle=bool(scripts)))
    logger.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def find_cells(results_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Cell folders under ``results_dir`` (or ``results_dir`` itself) with a verified results file."""
    results_dir = Path(results_dir)
    candidates = [results_dir] if (results_dir / RESULTS_FILE).exists() else []
    if results_dir.is_dir():
        candidates += sorted(p for p in results_dir.iterdir() if p.is_dir() and (p / RESULTS_FILE).exists())
    cells = []
    for cell_dir in candidates:
        try:
            cells.append((cell_dir, read_results(cell_dir / RESULTS_FILE)))
        except ResultsError as exc:
            logger.warning("skipping %s: %s", cell_dir, exc)
    return cells


#: Cross-cell table columns: (header, aggregate scalar name, scale, digits).
DASHBOARD_COLUMNS = (
    ("ZSL %", "acc_zsl", 100, 1),
    ("ICL %", "acc_icl", 100, 1),
    ("FT %", "acc_ft", 100, 1),
    ("LCGD %", "acc_lcgd", 100, 1),
    ("Rec2FTP %", "rec2ftp", 1, 1),
    ("Jaccard %", "jaccard", 100, 1),
    ("SimAOU FT", "simaou_ft", 1, 3),
    ("SimAOU LCGD", "simaou_lcgd", 1, 3),
    ("SimAOU random", "simaou_random", 1, 3),
    ("SimAM_Δ FT", "simam_delta_ft", 1, 3),
    ("SimAM_Δ LCGD", "simam_delta_lcgd", 1, 3),
    ("α", "alpha", 1, 3),
)


def dashboard_tables(all_results: Sequence[dict[str, Any]]) -> str:
    """Cross-cell tables: per task × model × k (× untrained), each quantity's mean over seeds with
    its two-level bootstrap interval (:func:`icl_lens.reporting.aggregate.aggregate`)."""

    agg = aggregate(all_results)
    rows = []
    for (task, model, k, untrained, variant), stats in sorted(agg.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        n = max((v["n"] for v in stats.values()), default=0)
        rows.append(
            [
                task,
                group_label(model, untrained, variant),
                format_value(k),
                str(n),
                *(format_summary(stats.get(name), digits, scale) for _, name, scale, digits in DASHBOARD_COLUMNS),
            ]
        )
    return Table(
        ["task", "model", "k", "seeds", *(h for h, *_ in DASHBOARD_COLUMNS)],
        rows,
        "mean over seeds [interval: resample seeds, then queries within each seed]",
    ).html()


def dashboard_figures(all_results: Sequence[dict[str, Any]], results_dir: Path) -> list[tuple[str, Path]]:
    """Per-layer SimAOU and SimAM_Δ across tasks (GD vs LCGD), one figure pair per trained model."""

    out: list[tuple[str, Path]] = []
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in all_results:
        if not dig(r, "config", "untrained") and r.get("metrics"):
            by_model.setdefault(str(dig(r, "config", "model")), []).append(r)
    for i, (model, members) in enumerate(sorted(by_model.items())):
        for metric, name in (("simaou", "SimAOU"), ("simam_delta", "SimAM_Δ")):
            tuned = tuple(s for s in FINETUNED if all(per_layer(m, s, metric) for m in members))
            if not tuned:
                continue
            caption = f"{model}: {name} per layer and task, mean over seeds" + (
                "; dashed: random baseline" if metric == "simaou" else ""
            )
            out.append(
                (
                    caption,
                    figures.plot_layer_metric(
                        members,
                        results_dir / f"index_{metric}_{i}.png",
                        metric=metric,
                        settings=tuned,
                        title=f"{model}: {name} per layer",
                    ),
                )
            )
    return out


def build_index(
    results_dir: str | Path,
    cells: Sequence[tuple[Path, dict[str, Any]]],
    analyses: Sequence[dict[str, Any]] | None = None,
) -> Path:
    """Write ``results_dir/index.html``: a dashboard of every cell — the findings (a verdict per
    claim, :mod:`icl_lens.reporting.findings`), cross-cell tables with intervals, per-layer figures across
    tasks — and a table linking every cell's report."""

    results_dir = Path(results_dir)
    rows = []
    for cell_dir, results in cells:
        href = (cell_dir / REPORT_FILE).relative_to(results_dir).as_posix()
        rec2ftp, jaccard = metric_value(results, "ft", "rec2ftp"), metric_value(results, "ft", "jaccard")
        cfg = results.get("config", {})
        link = Html(f'<a href="{html.escape(href)}">{html.escape(cell_dir.name or results_dir.name)}</a>')
        values = (
            dig(results, "task", "name"),
            cfg.get("model"),
            dig(results, "prompts", "k_used"),
            cfg.get("seed"),
            results.get("n_examples"),
            *(accuracy(results, s) for s in SETTINGS),
            None if rec2ftp is None else round(float(rec2ftp), 1),
            None if jaccard is None else round(100 * float(jaccard), 1),
        )
        rows.append([link, *(format_value(v) for v in values)])
    header = ["cell", "task", "model", "k", "seed", "n", "ZSL", "ICL", "FT", "LCGD", "Rec2FTP %", "Jaccard %"]
    table = Table(header, rows).html()
    all_results = [r for _, r in cells]
    findings = evaluate_findings(all_results, find_analyses(results_dir) if analyses is None else analyses)
    settings = findings["settings"]
    findings_html = (
        f"<p>{html.escape(findings['verdicts'])}. Intervals: {100 * settings['confidence']:g} %, a t interval "
        "over the seeds within a task; pooled over tasks as a random effect (tasks like these) and with the "
        f"tasks fixed (these tasks); {html.escape(str(settings['multiplicity']))}. "
        "The same table: <code>icl-lens findings</code>.</p>"
        + "".join(matrix.html() for matrix in matrix_tables(findings, bold=False))
        + "<p>Every row, with its test:</p>"
        + Table(list(FINDINGS_HEADER), table_rows(findings)).html()
    )
    figures_html = "\n".join(_img(path, caption) for caption, path in dashboard_figures(all_results, results_dir))
    body = (
        f"<h1>Results: {html.escape(str(results_dir))}</h1>\n<p>{len(cells)} cells.</p>\n"
        '<nav><a href="#findings">findings</a><a href="#across-cells">across cells</a>'
        '<a href="#per-layer">per layer</a><a href="#cells">cells</a></nav>\n'
        f'<section id="findings"><h2>Findings: a verdict per claim</h2>\n{findings_html}</section>\n'
        f'<section id="across-cells"><h2>Across cells</h2>\n{dashboard_tables(all_results)}</section>\n'
        f'<section id="per-layer"><h2>Per layer, across tasks</h2>\n'
        f"{figures_html or '<p>No finetuned setting: no figure.</p>'}</section>\n"
        f'<section id="cells"><h2>Cells</h2>\n{table}</section>'
    )
    path = results_dir / INDEX_FILE
    atomic_write_text(path, page(f"icl_lens results: {results_dir.name}", body, css=REPORT_CSS, include_bundle=False))
    logger.info("wrote %s", path)
    return path


def build_report(
    results_dir: str | Path,
    *,
    max_examples: int | None = None,
    kinds: Sequence[str] = KINDS,
    max_mb: float | None = DEFAULT_MAX_MB,
) -> list[Path]:
    """Write ``report.html`` in every finished cell folder and ``index.html`` in ``results_dir``.

    Returns the cell reports' paths (empty when no cell has a verified ``results.json``; no
    index is written then). ``max_examples`` and ``max_mb`` (a budget for the embedded maps,
    whole examples only, at least one) cap the attention examples per page; ``kinds`` picks the
    map kinds (``pattern``, ``scores``).
    """
    results_dir = Path(results_dir)
    cells = find_cells(results_dir)
    if not cells:
        logger.warning("no cell with a verified %s under %s", RESULTS_FILE, results_dir)
        return []
    paths = [
        build_cell_report(cell_dir, results, max_examples=max_examples, kinds=kinds, max_mb=max_mb)
        for cell_dir, results in cells
    ]
    build_index(results_dir, cells)
    return paths
