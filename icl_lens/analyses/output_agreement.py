"""Agreement of next-token output distributions between settings (Shen et al. 2023).

For two settings a, b on the same queries, with TopK(p) the 10 most likely next tokens at the
prediction position (kept by every run, :class:`icl_lens.evaluation.SettingRun`):

    token overlap_i  = |Top10(p_a,i) ∩ Top10(p_b,i)| / 10
    overlap cosine_i = cos(p_a,i[O_i], p_b,i[O_i]),   O_i = Top10(p_a,i) ∩ Top10(p_b,i)

(:func:`icl_lens.metrics.token_overlap`, :func:`icl_lens.metrics.overlap_cosine`), per example
and averaged. Pairs: ICL vs FT and ICL vs LCGD (the comparison), ZSL vs ICL (a reference point:
how far the demonstrations move the distribution at all).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from icl_lens import metrics
from icl_lens.cell.experiment import ExperimentOutput
from icl_lens.errors import ConfigError, MetricInputError
from icl_lens.evaluation import SettingRun

logger = logging.getLogger(__name__)

DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (("icl", "ft"), ("icl", "lcgd"), ("zsl", "icl"))


@dataclass
class PairAgreement:
    """Agreement of two settings' next-token distributions (per example and mean)."""

    a: str
    b: str
    k: int
    token_overlap: list[float]
    overlap_cosine: list[float]

    @property
    def name(self) -> str:
        return f"{self.a}_vs_{self.b}"

    @property
    def mean_token_overlap(self) -> float:
        return float(sum(self.token_overlap) / len(self.token_overlap))

    @property
    def mean_overlap_cosine(self) -> float:
        return float(sum(self.overlap_cosine) / len(self.overlap_cosine))

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "k": self.k,
            "mean_token_overlap": self.mean_token_overlap,
            "mean_overlap_cosine": self.mean_overlap_cosine,
            "token_overlap": self.token_overlap,
            "overlap_cosine": self.overlap_cosine,
        }


@dataclass
class OutputAgreement:
    """Top-k agreement for every available pair of settings of one run."""

    pairs: list[PairAgreement]
    task: str | None = None
    model: str | None = None
    k_demos: int | None = None
    n_examples: int = 0
    skipped: list[str] = field(default_factory=list)

    def pair(self, a: str, b: str) -> PairAgreement:
        for p in self.pairs:
            if (p.a, p.b) == (a, b):
                return p
        raise KeyError(f"no pair {a} vs {b}; have {[p.name for p in self.pairs]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "analysis": "output_agreement",
            "task": self.task,
            "model": self.model,
            "k": self.k_demos,
            "n_examples": self.n_examples,
            "skipped_pairs": self.skipped,
            "pairs": {p.name: p.to_dict() for p in self.pairs},
        }


def _distribution(run: SettingRun) -> metrics.TopKDistribution:
    return metrics.TopKDistribution(run.next_token_ids, run.next_token_probs)


def pair_agreement(
    run_a: SettingRun, run_b: SettingRun, k: int = metrics.DEFAULT_TOP_K, a: str | None = None, b: str | None = None
) -> PairAgreement:
    """Token overlap and overlap cosine of two runs over the same queries (top ``k``)."""
    if run_a.n_examples != run_b.n_examples:
        raise MetricInputError(f"runs cover different queries: {run_a.n_examples} vs {run_b.n_examples}")
    dist_a, dist_b = _distribution(run_a), _distribution(run_b)
    return PairAgreement(
        a=a or run_a.setting,
        b=b or run_b.setting,
        k=k,
        token_overlap=[float(v) for v in metrics.token_overlap(dist_a, dist_b, k=k)],
        overlap_cosine=[float(v) for v in metrics.overlap_cosine(dist_a, dist_b, k=k)],
    )


def output_agreement(
    output: ExperimentOutput | Mapping[str, SettingRun],
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    k: int = metrics.DEFAULT_TOP_K,
) -> OutputAgreement:
    """Top-``k`` token overlap and overlap cosine for each pair whose settings were run.

    Args:
        output: a :func:`~icl_lens.cell.experiment.run_experiment` output (or its ``runs`` dict).
        pairs: (a, b) setting pairs; a pair with a setting that was not run is skipped (and listed).
        k: top-k size (≤ the runs' ``RecordSpec.top_k``; reference 10).
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    runs = output.runs if isinstance(output, ExperimentOutput) else dict(output)
    results, skipped = [], []
    for a, b in pairs:
        if a not in runs or b not in runs:
            skipped.append(f"{a}_vs_{b}")
            continue
        results.append(pair_agreement(runs[a], runs[b], k=k, a=a, b=b))
    if not results:
        raise MetricInputError(f"none of the pairs {list(pairs)} has both settings among {sorted(runs)}")
    if skipped:
        logger.info("skipped pairs without both settings: %s", skipped)
    info: dict[str, Any] = {}
    if isinstance(output, ExperimentOutput):
        info = {
            "task": output.results["task"]["name"],
            "model": output.results["model"]["name"],
            "k_demos": output.prompts.k,
        }
    return OutputAgreement(pairs=results, n_examples=next(iter(runs.values())).n_examples, skipped=skipped, **info)
