"""experiments/lcgd_clipping.py beside a findings run, on a tiny model: each seed's clipped LCGD cell
takes that seed's unclipped learning rate, so the clipping claim of ``icl-lens findings`` compares
cells that differ only in the clip (Deutch et al. 2024, LCGD on Subj)."""

import json

import pytest
from helpers import load_experiment_script, tiny_model

import icl_lens.models
from icl_lens.cell.results import read_results
from icl_lens.cli import main as icl_lens_main


@pytest.fixture
def tiny_loader(monkeypatch):
    def loader(name, **kwargs):
        return tiny_model(gqa=True, n_layers=2, name=name)

    monkeypatch.setattr(icl_lens.models, "load_model", loader)


def test_clipped_cells_take_each_seeds_unclipped_rate_and_fill_the_clipping_claim(tmp_path, tiny_loader):
    common = ["--model", "tiny", "--k", "2", "--limit", "4"]
    load_experiment_script("reproduce_tables").main(
        [*common, "--tasks", "sst2", "--seeds", "0,1", "--lr-grid", "0.001,0.1", "--out", str(tmp_path)])
    unclipped = {c["config"]["seed"]: c for c in map(read_results, tmp_path.glob("*/results.json"))}
    clipping = load_experiment_script("lcgd_clipping")
    clipping.main([*common, "--task", "sst2", "--seeds", "0,1", "--variants", "global 12",
                   "--lr-from", str(tmp_path), "--out", str(tmp_path / "clipping")])
    clipped = {c["config"]["seed"]: c for c in map(read_results, (tmp_path / "clipping").glob("*/results.json"))}
    assert sorted(clipped) == [0, 1]
    for seed, cell in clipped.items():
        assert cell["config"]["lr"] == unclipped[seed]["lr"]["lr"]
        assert cell["config"]["finetune"]["clip_global_norm"] == 12.0
        assert cell["query_ids"]["eval"] == unclipped[seed]["query_ids"]["eval"]
    assert "| global 12 (reference clip) | 1 |" in (tmp_path / "clipping" / "clipping.md").read_text()

    assert icl_lens_main(["findings", str(tmp_path), "--n-resamples", "100"]) == 0
    rows = [r for r in json.loads((tmp_path / "findings.json").read_text())["rows"]
            if r["claim"] == "clipping_restores_lcgd_simam"]
    sst2 = next(r for r in rows if r["task"] == "sst2")
    assert not sst2["verdict"].startswith("missing") and sst2["n_seeds"] == 2
    assert "learning rates differ" not in (sst2.get("note") or "")


def test_lr_from_a_folder_without_the_seed_says_which_seeds_are_absent(tmp_path, tiny_loader):
    clipping = load_experiment_script("lcgd_clipping")
    with pytest.raises(SystemExit, match=r"no unclipped sst2 cell of seeds \[0\]"):
        clipping.main(["--model", "tiny", "--task", "sst2", "--lr-from", str(tmp_path), "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="exactly one"):
        clipping.main(["--model", "tiny", "--task", "sst2", "--out", str(tmp_path / "c")])
