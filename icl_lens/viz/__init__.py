"""Attention maps of ZSL, ICL, FT and LCGD side by side: recording, files, notebook views, offline HTML."""

from icl_lens.viz.attention import (
    attention_difference_view,
    attention_panel,
    attention_view,
    compare_panels,
    compare_settings,
    difference_panel,
)
from icl_lens.viz.html import Panel, PanelGroup, panels_page
from icl_lens.viz.maps import (
    SavedAttentionMaps,
    has_attention_maps,
    load_attention_maps,
    record_attention_maps,
    record_experiment_maps,
    save_attention_maps,
    save_experiment_attention_maps,
    token_strings,
)

__all__ = [
    "Panel",
    "PanelGroup",
    "SavedAttentionMaps",
    "attention_difference_view",
    "attention_panel",
    "attention_view",
    "compare_panels",
    "compare_settings",
    "difference_panel",
    "has_attention_maps",
    "load_attention_maps",
    "panels_page",
    "record_attention_maps",
    "record_experiment_maps",
    "save_attention_maps",
    "save_experiment_attention_maps",
    "token_strings",
]
