"""experiments/reproduce_tables.py end to end on a tiny model: lr chosen once per task, reused."""

import json

import pytest

import icl_lens.models
from helpers import load_experiment_script, tiny_model
from icl_lens.models.untrained import reinitialize_untrained
from icl_lens.results import read_results


@pytest.fixture
def loads(monkeypatch):
    calls = []

    def loader(name, untrained=False, seed=0, **kwargs):
        calls.append((name, untrained, seed))
        model = tiny_model(gqa=True, n_layers=2, name=name)
        return reinitialize_untrained(model, seed, init=kwargs.get("untrained_init", "reference")) if untrained else model

    monkeypatch.setattr(icl_lens.models, "load_model", loader)
    return calls


def test_lr_swept_on_first_seed_and_reused(tmp_path, loads):
    script = load_experiment_script("reproduce_tables")
    argv = ["--model", "tiny", "--tasks", "sst2,cb", "--seeds", "0,1", "--k", "2", "--limit", "4",
            "--lr-grid", "0.001,0.1", "--untrained", "--out", str(tmp_path)]
    script.main(argv)
    cells = [read_results(p) for p in sorted(tmp_path.glob("*/results.json"))]
    assert len(cells) == 2 * 2 + 2  # tasks × seeds trained, + untrained on the first seed only
    swept = {c["task"]["name"]: c["lr"] for c in cells if c["config"]["seed"] == 0 and not c["config"]["untrained"]}
    assert all(v["mode"] == "sweep" and set(v["scores"]) == {"0.001", "0.1"} for v in swept.values())
    for c in cells:
        if c["config"]["seed"] == 1 or c["config"]["untrained"]:
            assert c["lr"] == {"lr": swept[c["task"]["name"]]["lr"], "mode": "given"}
    assert [c["config"]["untrained_seed"] for c in cells if c["config"]["untrained"]] == [0, 0]
    table = (tmp_path / "tables.md").read_text()
    assert "sst2" in table and "cb" in table
    aggregate = json.loads((tmp_path / "aggregate.json").read_text())
    assert {row["untrained"] for row in aggregate} == {True, False}
    for png in ["prediction_changes", "simaou_per_layer", "simam_delta_per_layer", "alpha", "grad_norms_sst2",
                "untrained_simaou_per_layer"]:
        assert (tmp_path / f"{png}.png").read_bytes()[:4] == b"\x89PNG", png
    # a rerun computes nothing and loads no model
    loads.clear()
    script.main(argv)
    assert loads == []
