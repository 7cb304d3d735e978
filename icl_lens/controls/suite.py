"""The full control run: every control against both comparators, one results file.

Rows (von Oswald et al. 2023 and the mismatches Shen et al. 2023 point to):

=================  ===========================================  ====================
control            what it is                                   GD claim expected
=================  ===========================================  ====================
construction-1     Appendix A.1 weights, 1 layer                holds (exact)
construction-3     A.1 weights stacked, 3 layers vs 3 steps     holds (exact)
lsa-1              trained 1-layer linear self-attention        holds
softmax-2h         trained 1-layer softmax attention, 2 heads   (reported)
softmax-1h         trained 1-layer softmax attention, 1 head    fails
lsa-3              trained 3 layers vs 3 plain GD steps         fails (learns GD++)
untrained          lsa-1 at its initialisation                  fails
=================  ===========================================  ====================

Each row has the GD comparator's metrics and verdict and the FT comparator's Dai-style metrics,
nulls and verdicts (:mod:`icl_lens.controls.comparators`). The results file ``controls.json``
carries every control's config digest and weights SHA-256, the run's own config digest and a
checksum of the payload (as the cells' ``results.json`` do).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from icl_lens._validation import AT_LEAST_ONE, POSITIVE, SEED, validate_fields
from icl_lens._version import __version__
from icl_lens.cell.results import atomic_write_text, checksum
from icl_lens.controls.comparators import (
    COSINE_THRESHOLD,
    GAP_THRESHOLD,
    ComparatorConfig,
    ft_comparator,
    gd_comparator,
)
from icl_lens.controls.models import ControlTransformer, construction
from icl_lens.controls.tasks import RegressionConfig, gd_predictions, sample_tasks, tune_eta
from icl_lens.controls.train import CONTROLS, TrainConfig, load_or_train, untrained
from icl_lens.errors import ConfigError, ResultsError

logger = logging.getLogger(__name__)

RESULTS_NAME = "controls.json"
ROWS = ("construction-1", "construction-3", "lsa-1", "softmax-2h", "softmax-1h", "lsa-3", "untrained")
EXPECTED = {
    "construction-1": "holds",
    "construction-3": "holds",
    "lsa-1": "holds",
    "softmax-2h": None,
    "softmax-1h": "fails",
    "lsa-3": "fails",
    "untrained": "fails",
}
"""What von Oswald et al. 2023 report for the GD claim of each row (None: not a claim here)."""


@dataclass(frozen=True)
class SuiteConfig:
    """A control run.

    Args:
        rows: which rows of the table (names of ``ROWS``).
        steps: Adam steps per trained control (the reference: 5000).
        batch_size: fresh tasks per training step (the reference: 2048).
        lr: Adam learning rate (the reference: 1e-3).
        train_seed: seeds each control's initial weights and task stream.
        comparator: the comparators' settings.
        task: the task family.
    """

    rows: tuple[str, ...] = ROWS
    steps: int = 5000
    batch_size: int = 2048
    lr: float = 1e-3
    train_seed: int = 0
    comparator: ComparatorConfig = field(default_factory=ComparatorConfig)
    task: RegressionConfig = field(default_factory=RegressionConfig)

    def __post_init__(self) -> None:
        validate_fields(self, {"steps": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "lr": POSITIVE, "train_seed": SEED})
        unknown = [row for row in self.rows if row not in ROWS]
        if unknown or not self.rows:
            raise ConfigError(f"unknown control rows {unknown or '(none given)'}; choose from {', '.join(ROWS)}")

    def train_config(self, name: str) -> TrainConfig:
        return TrainConfig(name, self.steps, self.batch_size, self.lr, seed=self.train_seed, task=self.task)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def construction_exactness(eta: float, task: RegressionConfig, n_layers: int, n_tasks: int = 1000) -> dict[str, float]:
    """max |ŷ_construction − ŷ_GD| over ``n_tasks`` tasks in float32 and in float64."""
    out = {}
    for dtype in (torch.float32, torch.float64):
        batch = sample_tasks(task, n_tasks, 7, dtype=dtype)
        with torch.no_grad():
            prediction = construction(eta, n_layers, task, dtype).predict(batch.tokens())
        reference = gd_predictions(sample_tasks(task, n_tasks, 7, dtype=torch.float64), eta, n_layers)
        out[str(dtype).removeprefix("torch.")] = float((prediction.double() - reference).abs().max())
    return out


def _control(row: str, cfg: SuiteConfig, etas: dict[int, float], cache_dir: Path | None, progress: bool):
    """The row's model, its GD step count and its identity (training time, digest, SHA-256)."""
    if row.startswith("construction-"):
        n_layers = int(row.split("-")[1])
        model = construction(etas[n_layers], n_layers, cfg.task)
        exact = construction_exactness(etas[n_layers], cfg.task, n_layers)
        return model, n_layers, {"name": row, "trained": False, "max_abs_difference_to_gd": exact}
    if row == "untrained":
        train_cfg = cfg.train_config("lsa-1")
        return untrained(train_cfg), 1, {"name": row, "trained": False, "init_of": train_cfg.digest}
    trained = load_or_train(cfg.train_config(row), cache_dir=cache_dir, progress=progress)
    identity = trained.identity() | {
        "trained": True,
        "train_seconds": trained.seconds,
        "from_cache": trained.from_cache,
        "final_train_loss": trained.final_loss,
    }
    return trained.model, CONTROLS[row].n_layers, identity


def run_controls(
    cfg: SuiteConfig, out_dir: str | Path | None = None, cache_dir: str | Path | None = None, progress: bool = False
) -> dict[str, Any]:
    """Train (or load) every control of ``cfg.rows``, run both comparators, and write ``controls.json``."""
    start = time.perf_counter()
    step_counts = sorted({1} | {int(r.split("-")[1]) for r in cfg.rows if r in ("construction-3", "lsa-3")} | {3})
    etas = {k: tune_eta(cfg.task, k, cfg.comparator.n_dev, cfg.comparator.seed + 1) for k in step_counts}
    rows = []
    for row in cfg.rows:
        model, gd_steps, identity = _control(row, cfg, etas, Path(cache_dir) if cache_dir else None, progress)
        model = _frozen(model)
        logger.info("control %s: comparing", row)
        rows.append(
            {
                "control": row,
                "identity": identity,
                "expected_gd_verdict": EXPECTED[row],
                "gd": gd_comparator(model, cfg.task, etas[gd_steps], gd_steps, cfg.comparator),
                "ft": ft_comparator(model, cfg.task, cfg.comparator),
            }
        )
    results = {
        "kind": "icl_lens controls",
        "version": __version__,
        "config": cfg.to_dict(),
        "config_digest": cfg.digest,
        "etas": {str(k): v for k, v in etas.items()},
        "thresholds": {"sensitivity_cosine_low": COSINE_THRESHOLD, "relative_gap_high": GAP_THRESHOLD},
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }
    if out_dir is not None:
        write_controls(Path(out_dir) / RESULTS_NAME, results)
    return results


def _frozen(model: ControlTransformer) -> ControlTransformer:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def write_controls(path: Path, results: dict[str, Any]) -> None:
    """``controls.json`` with the checksum of its payload (timings left out of the checksum)."""
    payload = dict(results)
    payload["checksum"] = checksum({k: v for k, v in payload.items() if k != "seconds"})
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def read_controls(path: str | Path) -> dict[str, Any]:
    """Load ``controls.json`` (or a folder holding it) and verify its checksum."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"cannot read control results {path}: {exc}") from None
    recorded = results.pop("checksum", None)
    if recorded != checksum({k: v for k, v in results.items() if k != "seconds"}):
        raise ResultsError(f"control results {path} are damaged: checksum mismatch")
    return results
