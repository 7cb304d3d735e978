"""Published numbers a reproduction is held against (Deutch et al. 2024, Tables 1–2).

Deutch et al. 2024 (1.3B fairseq GPT, k = 32, mean of 3 seeds): SimAOU and SimAM_Δ for GD and
LCGD, the untrained-model baseline, and Table 1 (accuracy ZSL / FT / ICL and the Jaccard index, %).
Small models give other numbers; the *directions* are what a small-model run is compared with.
Also the per-task learning rates of the reference code, and the sparsity the hand-built ICL = GD
constructions need (Shen et al. 2023). This module
imports nothing, so any layer of icl_lens (the metrics included) may take its numbers from here.
"""

from __future__ import annotations

REFERENCE_SIMILARITY: dict[str, dict[str, float | None]] = {
    "agnews": {
        "simaou_ft": 0.308,
        "simaou_lcgd": 0.327,
        "simam_delta_ft": 0.505,
        "simam_delta_lcgd": 0.432,
        "untrained_simaou": None,
        "untrained_simam_delta": None,
    },
    "cb": {
        "simaou_ft": 0.205,
        "simaou_lcgd": 0.344,
        "simam_delta_ft": 0.246,
        "simam_delta_lcgd": 0.382,
        "untrained_simaou": 0.012,
        "untrained_simam_delta": 0.054,
    },
    "mr": {
        "simaou_ft": 0.216,
        "simaou_lcgd": 0.328,
        "simam_delta_ft": 0.139,
        "simam_delta_lcgd": 0.263,
        "untrained_simaou": 0.246,
        "untrained_simam_delta": 0.177,
    },
    "sst2": {
        "simaou_ft": 0.111,
        "simaou_lcgd": 0.223,
        "simam_delta_ft": 0.150,
        "simam_delta_lcgd": 0.299,
        "untrained_simaou": 0.114,
        "untrained_simam_delta": 0.085,
    },
    "sst5": {
        "simaou_ft": 0.092,
        "simaou_lcgd": 0.107,
        "simam_delta_ft": 0.308,
        "simam_delta_lcgd": 0.326,
        "untrained_simaou": 0.062,
        "untrained_simam_delta": 0.034,
    },
    "subj": {
        "simaou_ft": 0.177,
        "simaou_lcgd": 0.345,
        "simam_delta_ft": 0.254,
        "simam_delta_lcgd": 0.322,
        "untrained_simaou": 0.202,
        "untrained_simam_delta": 0.160,
    },
}

REFERENCE_ACCURACY: dict[str, dict[str, float]] = {
    "cb": {"zsl": 37.5, "ft": 57.1, "icl": 50.0, "jaccard": 80.0},
    "sst2": {"zsl": 70.5, "ft": 74.0, "icl": 92.7, "jaccard": 16.4},
    "sst5": {"zsl": 39.3, "ft": 39.4, "icl": 45.0, "jaccard": 3.4},
    "subj": {"zsl": 72.6, "ft": 77.8, "icl": 90.0, "jaccard": 36.2},
    "mr": {"zsl": 65.9, "ft": 72.6, "icl": 89.1, "jaccard": 34.0},
    "agnews": {"zsl": 46.2, "ft": 66.7, "icl": 79.2, "jaccard": 48.0},
}

REFERENCE_RANDOM_SIMAOU = (0.001, 0.004)

HANDBUILT_ICL_GD_SPARSITY = 0.75
"""Fraction of (near-)zero entries of W_Q, W_K, W_V that the hand-built ICL = GD constructions need
(Shen et al. 2023, "~75 %"; *unverified* exact figure)."""

REFERENCE_LRS: dict[str, float] = {
    "sst2": 5e-4,
    "sst5": 1.6e-4,
    "mr": 3e-3,
    "subj": 3e-3,
    "agnews": 0.2,
    "cb": 0.08,
}
"""Per-task reference learning rates of Dai et al. 2023 / Deutch et al. 2024 for a 1.3B GPT."""
