"""The icl-lens command line: flags from the config dataclasses, one-line errors, exit codes."""

import json

import pytest

import icl_lens.models
from helpers import tiny_model
from icl_lens.cli import expand_cells, main, make_parser
from icl_lens.errors import ModelLoadError


@pytest.fixture
def tiny_loader(monkeypatch):
    def loader(name, **kwargs):
        if name != "tiny":
            raise ModelLoadError(f"unknown model {name!r}")
        return tiny_model(gqa=True, n_layers=2)

    monkeypatch.setattr(icl_lens.models, "load_model", loader)


def test_flags_build_the_config():
    args = make_parser().parse_args(
        ["run", "--task", "sst2,mr", "--seed", "0,1", "--k", "4", "--separator", "\n\n", "--ft-optimizer", "adam",
         "--ft-clip-value", "12", "--settings", "zsl,icl", "--lr", "0.01", "--no-alpha-include-sink",
         "--record-position", "prompt_end"])
    cells = expand_cells(args)
    assert [(c.task, c.seed) for c in cells] == [("sst2", 0), ("sst2", 1), ("mr", 0), ("mr", 1)]
    c = cells[0]
    assert c.k == 4 and c.prompt.separator == "\n\n" and c.finetune.optimizer == "adam"
    assert c.finetune.clip_value == 12.0 and c.settings == ("zsl", "icl") and c.lr == 0.01
    assert c.record.position == "prompt_end" and c.alpha_include_sink is False


def test_run_writes_results_and_prints_tables(tmp_path, tiny_loader, capsys):
    code = main(["run", "--task", "sst2", "--model", "tiny", "--k", "2", "--limit", "4", "--lr", "0.01",
                 "--batch-size", "4", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "ZSL" in out and "SimAOU FT" in out
    (cell,) = tmp_path.glob("sst2__tiny__k2__seed0__*")
    results = json.loads((cell / "results.json").read_text())
    assert set(results["accuracy"]) == {"zsl", "icl", "ft", "lcgd"}
    assert len(results["examples"]) == 4


@pytest.mark.parametrize("argv,message", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--model", "missing-model"], "unknown model 'missing-model'"),
    (["--task", "cb", "--k", "300"], "k=300 demonstrations requested but the train split has 250 rows"),
    (["--k", "0"], "k = 0 leaves nothing to learn from"),
    (["--lr", "-1"], "ExperimentConfig.lr must be > 0, got -1.0"),
    (["--label-words", "Good,Good"], "label words repeat"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_loader, capsys, argv, message):
    base = ["run", "--model", "tiny", "--k", "2", "--limit", "2", "--lr", "0.01", "--out", str(tmp_path),
            "--no-progress"]
    code = main(base + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("icl-lens: error:")
    assert message in err


def test_tasks_and_models_listings(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "agnews" in out and "Technology" in out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "Apache-2.0" in out and "gemma3-270m" in out


def test_unavailable_cuda_device_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    code = main(["run", "--device", "cuda", "--k", "2", "--limit", "2", "--lr", "0.01", "--out", str(tmp_path),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "has no CUDA GPU" in err and len(err.splitlines()) == 1
