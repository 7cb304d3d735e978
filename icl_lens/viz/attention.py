"""Notebook views of the recorded attention maps (circuitsvis widgets that display inline).

``maps`` arguments accept what :func:`~icl_lens.viz.maps.record_attention_maps` returns for one
query (a dict with ``pattern``/``scores``/...), a dict ``setting → that``, or what
:func:`~icl_lens.viz.maps.load_attention_maps` returns per setting (``setting → list over
examples``, pick one with ``example=``). ``tokens`` is the example's token strings (or the list
over examples).

Colours: circuitsvis colours a value ``v ≥ 0`` by mixing ``positive_color`` with white by
``v / max_value`` and ``v < 0`` by mixing ``negative_color`` by ``v / min_value``, clamped to
[0, 1]: values beyond the range saturate (they are not clipped in the tooltip, which shows the
true value). Its defaults are ``min_value=-1, max_value=1``. So negative differences render as
they are, no rescaling: the views pass an explicit range — ``[0, 1]`` for patterns, a symmetric
``[-m, m]`` with ``m`` the largest magnitude of the layer for pre-softmax scores and differences.
Entries above the diagonal (causally masked) are greyed out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from icl_lens.viz.html import Panel, PanelGroup
from icl_lens.viz.maps import SETTING_ORDER, AttentionMap

MapKind = Literal["pattern", "scores"]
POSITIVE_COLOR = "#1f5fbf"  # blue
NEGATIVE_COLOR = "#c0392b"  # red
LABELS = {"zsl": "ZSL", "icl": "ICL", "ft": "FT", "lcgd": "LCGD"}


def setting_label(setting: str) -> str:
    return LABELS.get(setting, setting.upper())


def _one_map(maps: Any, setting: str | None, example: int) -> AttentionMap:
    if isinstance(maps, Sequence) and not isinstance(maps, Mapping):
        maps = maps[example]
    if isinstance(maps, Mapping) and "pattern" in maps:
        return maps  # type: ignore[return-value]
    if not isinstance(maps, Mapping):
        raise TypeError(f"expected a map dict or setting → maps, got {type(maps).__name__}")
    if setting is None:
        raise ValueError(f"maps hold several settings {list(maps)}: say which with setting=")
    if setting not in maps:
        raise KeyError(f"no maps for setting {setting!r}; have {list(maps)}")
    return _one_map(maps[setting], None, example)


def _one_tokens(tokens: Sequence[Any], example: int) -> list[str]:
    if tokens and not isinstance(tokens[0], str):
        return [str(t) for t in tokens[example]]
    return [str(t) for t in tokens]


def _layer(map_: AttentionMap, kind: MapKind, layer: int) -> torch.Tensor:
    if kind not in ("pattern", "scores"):
        raise ValueError(f"kind must be 'pattern' or 'scores', got {kind!r}")
    values = map_[kind]
    n_layers = values.shape[0]
    if not -n_layers <= layer < n_layers:
        raise IndexError(f"layer {layer} out of range for {n_layers} layers")
    return values[layer].float()  # [head, q, q]


def _symmetric_range(values: torch.Tensor) -> float:
    q = values.shape[-1]
    lower = values[..., torch.ones(q, q, dtype=torch.bool).tril()]
    m = float(lower.abs().max()) if lower.numel() else 0.0
    return math.ceil(m * 1e4) / 1e4 if m > 0 else 1.0  # rounded up like the shown values (4 decimals)


def _rounded(values: torch.Tensor, decimals: int = 4) -> list:
    return torch.round(values.float(), decimals=decimals).tolist()


def _panel(
    values: torch.Tensor,
    tokens: list[str],
    layer: int,
    head: int | None,
    title: str,
    note: str,
    min_value: float,
    max_value: float,
) -> Panel:
    """AttentionHeads (all heads of the layer) or AttentionPattern (one head)."""
    if values.shape[-1] != len(tokens):
        raise ValueError(f"maps have {values.shape[-1]} positions but {len(tokens)} tokens were given")
    common = {
        "tokens": tokens,
        "minValue": min_value,
        "maxValue": max_value,
        "negativeColor": NEGATIVE_COLOR,
        "positiveColor": POSITIVE_COLOR,
        "maskUpperTri": True,
    }
    if head is None:
        names = [f"L{layer}H{h}" for h in range(values.shape[0])]
        return Panel(
            "AttentionHeads",
            {"attention": _rounded(values), "attentionHeadNames": names, **common},
            title=title,
            note=note,
        )
    if not -values.shape[0] <= head < values.shape[0]:
        raise IndexError(f"head {head} out of range for {values.shape[0]} heads")
    return Panel(
        "AttentionPattern",
        {"attention": _rounded(values[head]), "showAxisLabels": True, **common},
        title=f"{title}, head {head}",
        note=note,
    )


def attention_panel(
    maps: Any,
    tokens: Sequence[Any],
    layer: int,
    setting: str | None = None,
    *,
    kind: MapKind = "pattern",
    head: int | None = None,
    example: int = 0,
) -> Panel:
    """The :class:`~icl_lens.viz.html.Panel` behind :func:`attention_view`."""
    map_ = _one_map(maps, setting, example)
    values = _layer(map_, kind, layer)
    name = setting_label(setting) if setting else "attention"
    if kind == "pattern":
        lo, hi = 0.0, 1.0
        note = "post-softmax, query keys only (mass on the prefix is not shown)"
    else:
        hi = _symmetric_range(values)
        lo = -hi
        note = f"pre-softmax scores, colour range ±{hi:.3g}"
    return _panel(values, _one_tokens(tokens, example), layer, head, f"{name} · layer {layer} · {kind}", note, lo, hi)


def difference_panel(
    maps_a: Any,
    maps_b: Any,
    tokens: Sequence[Any],
    layer: int,
    *,
    kind: MapKind = "pattern",
    head: int | None = None,
    setting_a: str | None = None,
    setting_b: str | None = None,
    example: int = 0,
    value_range: float | None = None,
) -> Panel:
    """The :class:`~icl_lens.viz.html.Panel` behind :func:`attention_difference_view`."""
    a = _layer(_one_map(maps_a, setting_a, example), kind, layer)
    b = _layer(_one_map(maps_b, setting_b, example), kind, layer)
    if a.shape != b.shape:
        raise ValueError(f"maps do not align: {tuple(a.shape)} vs {tuple(b.shape)} (same example?)")
    diff = a - b
    m = value_range or _symmetric_range(diff)
    name = f"{setting_label(setting_a) if setting_a else 'A'} − {setting_label(setting_b) if setting_b else 'B'}"
    note = f"{kind} difference; blue > 0 > red, colour range ±{m:.3g}"
    return _panel(diff, _one_tokens(tokens, example), layer, head, f"{name} · layer {layer} · {kind}", note, -m, m)


def attention_view(
    maps: Any,
    tokens: Sequence[Any],
    layer: int,
    setting: str | None = None,
    *,
    kind: MapKind = "pattern",
    head: int | None = None,
    example: int = 0,
):
    """One setting's attention at ``layer`` over the query tokens, as a circuitsvis widget.

    Args:
        maps: one example's map dict, or ``setting → map dict`` / ``setting → list of map dicts``.
        tokens: the example's token strings (or one list per example).
        layer: which layer.
        setting: which setting when ``maps`` holds several (``zsl``, ``icl``, ``ft``, ``lcgd``).
        kind: ``"pattern"`` (post-softmax; range [0, 1]) or ``"scores"`` (pre-softmax; symmetric
            range from the data).
        head: one head (``AttentionPattern``) or None for every head of the layer (``AttentionHeads``:
            hover a thumbnail to zoom, click to lock).
        example: which example when ``maps``/``tokens`` are lists over examples.

    ICL rows do not sum to 1: the mass on the demonstrations (``demo_mass``) and on the start
    token (``start_mass``) is outside the shown keys.
    """
    return attention_panel(maps, tokens, layer, setting, kind=kind, head=head, example=example).to_circuitsvis()


def attention_difference_view(
    maps_a: Any,
    maps_b: Any,
    tokens: Sequence[Any],
    layer: int,
    *,
    kind: MapKind = "pattern",
    head: int | None = None,
    setting_a: str | None = None,
    setting_b: str | None = None,
    example: int = 0,
):
    """``maps_a − maps_b`` at ``layer`` (e.g. ICL − ZSL, FT − ZSL) as a circuitsvis widget.

    Differences are signed: positive cells are blue, negative red, on a symmetric range ``±m``
    (``m`` = the largest |difference| in the layer's lower triangle), so nothing saturates and
    no rescaling of values is needed; the tooltip shows the true difference.
    """
    return difference_panel(
        maps_a, maps_b, tokens, layer, kind=kind, head=head, setting_a=setting_a, setting_b=setting_b, example=example
    ).to_circuitsvis()


def compare_panels(
    maps_by_setting: Mapping[str, Any],
    tokens: Sequence[Any],
    layer: int,
    *,
    kind: MapKind = "pattern",
    head: int | None = None,
    baseline: str = "zsl",
    example: int = 0,
) -> list[Panel]:
    """Panels of every setting, then every setting minus ``baseline`` (shared difference range)."""
    settings = [s for s in SETTING_ORDER if s in maps_by_setting]
    settings += [s for s in maps_by_setting if s not in settings]
    panels = [
        attention_panel(maps_by_setting, tokens, layer, s, kind=kind, head=head, example=example) for s in settings
    ]
    others = [s for s in settings if s != baseline]
    if baseline in maps_by_setting and others:
        base = _layer(_one_map(maps_by_setting, baseline, example), kind, layer)
        m = max(_symmetric_range(_layer(_one_map(maps_by_setting, s, example), kind, layer) - base) for s in others)
        panels += [
            difference_panel(
                maps_by_setting,
                maps_by_setting,
                tokens,
                layer,
                kind=kind,
                head=head,
                setting_a=s,
                setting_b=baseline,
                example=example,
                value_range=m,
            )
            for s in others
        ]
    return panels


def compare_settings(
    maps_by_setting: Mapping[str, Any],
    tokens: Sequence[Any],
    layer: int,
    *,
    kind: MapKind = "pattern",
    head: int | None = None,
    baseline: str = "zsl",
    example: int = 0,
) -> PanelGroup:
    """All views of one example at ``layer``: each setting, then ICL − ZSL, FT − ZSL, LCGD − ZSL.

    Returns a :class:`~icl_lens.viz.html.PanelGroup`: it displays inline in Jupyter with the
    circuitsvis bundle inlined once (works offline), ``.views`` gives each panel as a circuitsvis
    object and ``.save(path)`` writes a self-contained page.
    """
    panels = compare_panels(maps_by_setting, tokens, layer, kind=kind, head=head, baseline=baseline, example=example)
    return PanelGroup(panels, title=f"layer {layer}, {kind}")
