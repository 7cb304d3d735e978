"""The verdict rule's calibration, simulated (icl_lens.reporting.calibration): the 95 % interval covers
the truth at least 93 % of the time and a false claim "holds" at most 5 % of the time (plus simulation
error), in every scenario; and the simulation applies the same rule as the findings, row by row."""

import math

import numpy as np
import pytest

from icl_lens.reporting import calibration
from icl_lens.reporting.aggregate import Quantity
from icl_lens.reporting.verdicts import estimate_row, pooled_random, task_estimate

REPLICATES = 4000
#: three simulation standard errors of a 5 % rate over REPLICATES draws
SLACK = 3 * math.sqrt(0.05 * 0.95 / REPLICATES)


@pytest.mark.parametrize("scenario", calibration.SCENARIOS, ids=lambda s: f"{s.name} · {s.n_seeds} seeds")
def test_coverage_and_false_holds_of_each_scenario(scenario):
    outcome = calibration.run_scenario(scenario, REPLICATES, seed=0)
    assert outcome.coverage >= 0.93, outcome
    assert outcome.false_holds <= 0.05 + SLACK, outcome
    if scenario.alternative > scenario.null:
        assert outcome.holds_alternative > 0.5, outcome  # the rule still finds a real effect


def test_the_previous_rule_under_covers_when_the_seed_spread_dominates():
    [seed_dominant] = [s for s in calibration.SCENARIOS if s.bootstrap and "seed spread" in s.name]
    outcome = calibration.run_scenario(seed_dominant, REPLICATES, seed=0)
    assert outcome.previous_coverage < 0.9 and outcome.previous_false_holds > 0.05 + SLACK
    assert outcome.coverage >= 0.93


def test_tasks_as_a_random_effect_cover_the_population_of_tasks():
    pooled = calibration.pooled_random_effect(REPLICATES, seed=0)
    assert pooled["random coverage"] >= 0.93 and pooled["random false holds"] <= 0.05 + SLACK
    # holding the tasks fixed answers another question ("these tasks") and over-claims about tasks like them
    assert pooled["fixed coverage"] < 0.8


def test_holm_keeps_a_family_of_false_claims_at_five_percent():
    family = calibration.holm_family(REPLICATES, seed=0)
    assert family["holm"] <= 0.05 + SLACK < family["raw"]


def test_equivalence_at_the_margin_holds_at_most_five_percent():
    rates = calibration.equivalence_at_margin(REPLICATES, seed=0)
    assert rates["at margin"] <= 0.05 + SLACK and rates["at 0"] > 0.5


SEED_VALUES = Quantity(per_example=lambda r: None, value=lambda r: r["value"], needs="value")


def _cells(values):
    return [{"config": {"seed": i}, "value": float(v)} for i, v in enumerate(values)]


def test_the_simulation_applies_the_findings_rule():
    rng = np.random.default_rng(5)
    values, _ = calibration.hierarchical_draws(0.12, 0.3, 3)(rng, 5, 0.1)
    mean, low, high, p = calibration.seed_rule(values, 0.0)
    for i, row_values in enumerate(values):
        est = task_estimate(_cells(row_values), SEED_VALUES, 10, 0.95, np.random.default_rng(0))
        row = estimate_row("s", "c", "c", "", "t", est, 0.0, ">", 0.95)
        assert row.effect == pytest.approx(mean[i]) and row.interval == pytest.approx([low[i], high[i]])
        assert row.p_value == pytest.approx(p[i])
    # a proportion: the hull with Clopper–Pearson of the summed counts, and the larger p
    values, (k, trials) = calibration.proportion_draws(5, 3)(rng, 5, 90.0)
    mean, low, high, p = calibration.seed_rule(values, 50.0, (k, trials), 100.0)
    for i in range(5):
        cells = [{**c, "counts": (int(a), int(b))} for c, a, b in zip(_cells(values[i]), k[i], trials[i])]
        est = task_estimate(cells, SEED_VALUES, 10, 0.95, np.random.default_rng(0), lambda r: r["counts"], 100.0)
        row = estimate_row("s", "c", "c", "", "t", est, 50.0, ">", 0.95)
        assert row.interval == pytest.approx([low[i], high[i]]) and row.p_value == pytest.approx(p[i])
    # pooled over tasks as a random effect: the same t rule over the task values
    tasks = {f"t{i}": task_estimate(_cells(v), SEED_VALUES, 10, 0.95, np.random.default_rng(0)) for i, v in
             enumerate(rng.normal(size=(4, 3)))}
    pooled = estimate_row("s", "c", "c", "", "pooled", pooled_random(tasks), 0.0, ">", 0.95)
    task_values = np.asarray([[e.value for e in tasks.values()]])
    _, low, high, p = calibration.seed_rule(task_values, 0.0)
    assert pooled.interval == pytest.approx([low[0], high[0]]) and pooled.p_value == pytest.approx(p[0])


def test_the_calibration_table_prints(capsys):
    from icl_lens.cli import main

    assert main(["findings", "--calibration"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### Calibration of the verdict rule") and "| scenario | seeds | coverage % |" in out
    assert out.count("\n| ") == 1 + len(calibration.SCENARIOS) + 3  # the header, a row per scenario, 3 more
