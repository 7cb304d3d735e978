"""No selection on evaluation queries: the format is chosen on a dev slice disjoint from the reported
queries and from every demonstration (experiments/icl_vs_zsl.py), and the lr sweep's dev slice too."""

from __future__ import annotations

import json

import pytest

from helpers import load_experiment_script, tiny_model
from icl_lens.training.lr_sweep import dev_slice
from icl_lens.tasks import get_task, load_split, sample_demonstrations


def _task_file(tmp_path, same_split: bool, n: int = 60) -> str:
    words = ["red", "blue", "green", "cat", "dog", "sun", "rain", "tree"]
    rows = [{"text": f"{words[i % 8]} {words[(i * 3) % 8]} {i}", "label": i % 2} for i in range(n)]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "other.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:20]) + "\n")
    files = {"train": "rows.jsonl"} if same_split else {"train": "rows.jsonl", "test": "other.jsonl"}
    spec = {"name": "tiny", "template": "Text: {text} Label:", "label_words": ["no", "yes"],
            "data_files": files, "eval_split": "train" if same_split else "test"}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.mark.parametrize("same_split", [True, False])
def test_selection_dev_slice_is_disjoint_from_queries_and_every_demo(tmp_path, same_split):
    script = load_experiment_script("icl_vs_zsl")
    task = get_task(_task_file(tmp_path, same_split))
    dev, queries = script.selection_rows(task, k_max=8, seed=3, limit=12, dev_size=20)
    dev_rows = {r["row_index"] for r in dev}
    assert len(dev) == len(dev_rows) == 20
    for sampling in ("random", "balanced"):
        demos = {d["row_index"] for d in sample_demonstrations(task, 8, 3, sampling=sampling)}
        assert not dev_rows & demos, sampling
    if same_split:  # queries are train rows too: never in the dev slice
        assert not dev_rows & {q["row_index"] for q in queries}
    assert all(r["label"] in (0, 1) and "text" in r for r in dev)


def test_lr_sweep_dev_slice_excludes_queries_only_when_they_share_the_train_split(tmp_path):
    train_task = get_task(_task_file(tmp_path, same_split=True))
    train = load_split(train_task, "train")
    full = [r["row_index"] for r in dev_slice(train, 60, 0)]
    assert sorted(full) == list(range(60))
    demos, queries = full[:5], full[5:15]
    same = {r["row_index"] for r in dev_slice(train, 60, 0, demos, task=train_task, query_rows=queries)}
    assert same == set(full) - set(demos) - set(queries)
    other_task = get_task(_task_file(tmp_path, same_split=False))
    # row indices of another split name other rows: nothing of the train split is removed for them
    other = {r["row_index"] for r in dev_slice(train, 60, 0, demos, task=other_task, query_rows=queries)}
    assert other == set(full) - set(demos)


def test_run_experiment_lr_sweep_never_scores_a_query_or_demo(tmp_path, monkeypatch, tiny_llama):
    import icl_lens.cell.experiment as experiment
    from icl_lens.cell.experiment import ExperimentConfig, run_experiment

    seen = []

    def spy(*args, **kwargs):
        rows = dev_slice(*args, **kwargs)
        seen.append([r["row_index"] for r in rows])
        return rows

    monkeypatch.setattr(experiment, "dev_slice", spy)
    path = _task_file(tmp_path, same_split=True)
    cfg = ExperimentConfig(task=path, k=2, limit=10, settings=("zsl", "icl", "ft"), lr_grid=(1e-3,),
                           lr_dev_size=100, calibration="none", batch_size=8)
    out = run_experiment(tiny_llama, get_task(path), cfg, progress=False)
    (scored,) = seen
    queries = {e["row_index"] for e in out.results["examples"]}
    demos = {d["row_index"] for d in out.results["demonstrations"]}
    assert len(scored) == 60 - len(queries | demos) and not set(scored) & (queries | demos)


def test_format_is_chosen_on_dev_accuracies_only(tmp_path, monkeypatch):
    script = load_experiment_script("icl_vs_zsl")
    monkeypatch.setattr(script, "load_model", lambda name, **kw: tiny_model(gqa=True, n_layers=2))
    task = _task_file(tmp_path, same_split=True)
    out = tmp_path / "out"
    argv = ["--models", "tiny", "--tasks", task, "--formats", "spec,balanced-calibrated", "--ks", "2,4",
            "--limit", "8", "--dev-size", "10", "--out", str(out)]
    script.main(argv)
    cells = {p.name: json.loads(p.read_text()) for p in out.glob("tiny__*.json")}
    assert len(cells) == 2
    for cell in cells.values():
        assert cell["n_dev"] == 10 and cell["n_examples"] == 8
        assert not set(cell["dev_rows"]) & set(cell["query_rows"])
        assert set(cell["dev_accuracy"]) == set(cell["accuracy"]) == {"0", "2", "4"}
    gains = {c["format_name"]: c["dev_accuracy"]["4"] - c["dev_accuracy"]["0"] for c in cells.values()}
    selection = json.loads((out / "selection.json").read_text())
    best = max(gains.values())
    assert selection["per_model"]["tiny"]["format"] == next(f for f in ("spec", "balanced-calibrated")
                                                            if gains[f] == best)
    assert selection["model"] == "tiny"

    # rig the files: evaluation accuracies favour "spec", dev accuracies favour "balanced-calibrated"
    for name, cell in cells.items():
        favoured = cell["format_name"] == "spec"
        cell["accuracy"] = {"0": 0.0, "2": 1.0 if favoured else 0.0, "4": 1.0 if favoured else 0.0}
        cell["dev_accuracy"] = {"0": 0.5, "2": 0.5, "4": 0.5 if favoured else 0.9}
        from icl_lens.cell.results import write_results
        write_results(out / name, cell)
    script.main(argv + ["--table-only"])
    selection = json.loads((out / "selection.json").read_text())
    assert selection["per_model"]["tiny"]["format"] == "balanced-calibrated"
    table = (out / "table.md").read_text()
    assert "| tiny | balanced-calibrated* |" in table and "| tiny | spec |" in table


def test_calibration_variants_share_one_evaluation_and_match_separate_runs(tmp_path, monkeypatch):
    """Formats differing only in calibration are scored from one evaluation; each cell equals the
    cell its format gives when run alone, and the calibrated cell really is calibrated."""
    script = load_experiment_script("icl_vs_zsl")
    model = tiny_model(gqa=True, n_layers=2)
    task = _task_file(tmp_path, same_split=True)
    variants = {name: script.FORMATS[name] for name in ("spec", "spec-calibrated")}
    calls = []
    evaluate = script.evaluate

    def counting(*args, **kwargs):
        calls.append(len(args[2]))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(script, "evaluate", counting)
    together = script.run_cells(model, task, variants, [2, 4], 8, 0, 8, dev_size=10)
    # per k: one evaluation of the 18 dev + eval queries, one of the content-free query
    assert calls == [18, 1] * 3
    for name, variant in variants.items():
        alone = script.run_cell(model, task, variant, [2, 4], 8, 0, 8, dev_size=10)
        assert together[name] == alone
    assert together["spec"]["calibration"] == "none"
    assert together["spec-calibrated"]["calibration"] == "content_free"
    with pytest.raises(ValueError, match="only in calibration"):
        script.run_cells(model, task, {n: script.FORMATS[n] for n in ("spec", "balanced")}, [2], 8, 0, 8)
