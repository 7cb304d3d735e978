"""experiments/reproduce_tables.py end to end on a tiny model: lr swept per seed, untrained on every seed."""

import json

import pytest

import icl_lens.models
from helpers import load_experiment_script, tiny_model
from icl_lens.models.untrained import reinitialize_untrained
from icl_lens.cell.results import read_results


@pytest.fixture
def loads(monkeypatch):
    calls = []

    def loader(name, untrained=False, seed=0, **kwargs):
        calls.append((name, untrained, seed))
        model = tiny_model(gqa=True, n_layers=2, name=name)
        return reinitialize_untrained(model, seed, init=kwargs.get("untrained_init", "reference")) if untrained else model

    monkeypatch.setattr(icl_lens.models, "load_model", loader)
    return calls


def test_lr_swept_on_every_seed_and_untrained_on_every_seed(tmp_path, loads):
    script = load_experiment_script("reproduce_tables")
    argv = ["--model", "tiny", "--tasks", "sst2", "--seeds", "0,1", "--k", "2", "--limit", "4",
            "--lr-grid", "0.001,0.1", "--untrained", "--out", str(tmp_path)]
    script.main(argv)
    cells = [read_results(p) for p in sorted(tmp_path.glob("*/results.json"))]
    assert len(cells) == 2 * 2  # seeds, trained and untrained
    for c in cells:  # each cell chose its own rate on its own seed's dev slice
        assert c["lr"]["mode"] == "sweep" and set(c["lr"]["scores"]) == {"0.001", "0.1"}
        assert c["query_ids"]["dev_used_for"] == ["lr"] and len(c["query_ids"]["dev"]) == c["lr"]["n_scored"]
    dev = {(c["task"]["name"], c["config"]["seed"], c["config"]["untrained"]): c["query_ids"]["dev"] for c in cells}
    assert dev[("sst2", 0, False)] != dev[("sst2", 1, False)] and dev[("sst2", 0, False)] == dev[("sst2", 0, True)]
    untrained = sorted((c["task"]["name"], c["config"]["seed"], c["config"]["untrained_seed"])
                       for c in cells if c["config"]["untrained"])
    assert untrained == [("sst2", 0, 0), ("sst2", 1, 1)]
    assert "sst2" in (tmp_path / "tables.md").read_text()
    aggregate = json.loads((tmp_path / "aggregate.json").read_text())
    assert {row["untrained"] for row in aggregate} == {True, False}
    for png in ["prediction_changes", "simaou_per_layer", "simam_delta_per_layer", "alpha", "grad_norms_sst2",
                "untrained_simaou_per_layer"]:
        assert (tmp_path / f"{png}.png").read_bytes()[:4] == b"\x89PNG", png
    # a rerun computes nothing and loads no model
    loads.clear()
    script.main(argv)
    assert loads == []


def test_lr_once_reuses_the_first_seeds_rate(tmp_path, loads):
    script = load_experiment_script("reproduce_tables")
    script.main(["--model", "tiny", "--tasks", "sst2", "--seeds", "0,1", "--k", "2", "--limit", "4",
                 "--lr-grid", "0.001,0.1", "--lr-once", "--out", str(tmp_path)])
    cells = {c["config"]["seed"]: c for c in map(read_results, tmp_path.glob("*/results.json"))}
    assert cells[0]["lr"]["mode"] == "sweep" and cells[1]["lr"] == {"lr": cells[0]["lr"]["lr"], "mode": "given"}
    assert cells[1]["query_ids"]["dev_used_for"] == []

