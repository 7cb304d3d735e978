"""Named presets: a whole setting in one name (``--preset`` on the command line).

* ``reference``: the setting of the reference code of Dai et al. 2023 / Deutch et al. 2024 — EOS
  after every demonstration (``input + " " + label + EOS``; the query has none), random (not
  label-balanced) demonstrations, no calibration, k = 32 (truncated to the context, the true k is
  recorded as ``prompts.k_used``) and the papers' per-task learning rates.
* ``default``: the package's defaults (:class:`~icl_lens.cell.experiment.ExperimentConfig` as it is).

Explicit values win over the preset's: ``preset_config("reference", k=16)`` has k = 16 and
everything else of the reference preset. The preset's name is recorded in the config
(``config["preset"]``).

A preset also names the demonstration seeds a findings run (``experiments/reproduce_tables.py``)
uses per task: :data:`PRESET_SEEDS`, five for both presets. An interval over seeds (a t interval
over the seed means, df = seeds − 1) needs that many to be of any use: with three its t quantile is
4.30, with five 2.78. A run of the six tasks is then 30 cells (each with its own learning-rate
sweep, ZSL, ICL, FT, LCGD and every null), 60 with the untrained baseline on every seed; the
CHANGELOG records what a cell measured.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from icl_lens.cell.experiment import ExperimentConfig
from icl_lens.errors import ConfigError
from icl_lens.evaluation import RecordSpec
from icl_lens.prompts import PromptFormat
from icl_lens.training.finetune import FinetuneConfig

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "reference": {
        "prompt": {"separator": "<eos>"},
        "demo_sampling": "random",
        "calibration": "none",
        "k": 32,
        "lr_mode": "reference",
    },
}
"""Preset name -> the config values it sets; nested configs (``prompt``) as dicts of their fields."""

FINDINGS_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
"""The demonstration seeds of a findings run (one cell per task and seed)."""

PRESET_SEEDS: dict[str, tuple[int, ...]] = {"default": FINDINGS_SEEDS, "reference": FINDINGS_SEEDS}
"""Preset name -> the demonstration seeds a findings run of that preset uses by default."""

_NESTED = {"prompt": PromptFormat, "record": RecordSpec, "finetune": FinetuneConfig}


def preset_values(name: str) -> dict[str, Any]:
    """A copy of the values preset ``name`` sets (nested configs as field dicts)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return {key: dict(value) if isinstance(value, dict) else value for key, value in PRESETS[name].items()}


def preset_seeds(name: str) -> tuple[int, ...]:
    """The demonstration seeds a findings run of preset ``name`` uses by default."""
    if name not in PRESET_SEEDS:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESET_SEEDS)}")
    return PRESET_SEEDS[name]


def preset_config(name: str, **overrides: Any) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of preset ``name`` with ``overrides`` on top.

    A nested override given as a dict (``prompt={"start": "eos"}``) changes only those fields of
    the preset's nested config; given as an object (``prompt=PromptFormat(...)``) it replaces it.
    """
    values = preset_values(name)
    for key, value in overrides.items():
        if key in _NESTED and isinstance(value, dict):
            values[key] = {**values.get(key, {}), **value}
        else:
            values[key] = value
    for key, kind in _NESTED.items():
        if isinstance(values.get(key), dict):
            values[key] = kind(**values[key])
    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config fields {unknown}")
    values["preset"] = name
    return ExperimentConfig(**values)


__all__ = ["FINDINGS_SEEDS", "PRESETS", "PRESET_SEEDS", "preset_config", "preset_seeds", "preset_values"]
