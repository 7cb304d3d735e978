"""The icl-lens command line: flags from the config dataclasses, one-line errors, exit codes."""

import json

import pytest

import icl_lens.models
from helpers import tiny_model
from icl_lens.cli import main, make_parser
from icl_lens.cli.run import expand_cells
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


@pytest.mark.parametrize("argv,level", [
    (["tasks"], "WARNING"),
    (["--log-level", "info", "tasks"], "INFO"),
    (["tasks", "--log-level", "debug"], "DEBUG"),
    (["--log-level", "error", "tasks", "--log-level", "info"], "INFO"),
])
def test_global_flags_before_or_after_the_subcommand(argv, level):
    """The subcommand's copy of a global flag only counts when given there: it never resets a value
    given before the subcommand's name to the default."""
    args = make_parser().parse_args(argv)
    assert args.log_level == level and args.cpu_matmul is None


def test_cpu_matmul_after_the_subcommand():
    assert make_parser().parse_args(["run", "--cpu-matmul", "blas"]).cpu_matmul == "blas"
    assert make_parser().parse_args(["--cpu-matmul", "onednn", "status", "x"]).cpu_matmul == "onednn"


def test_run_and_bench_share_the_model_flags():
    parser = make_parser()
    for argv in (["run"], ["bench"]):
        args = parser.parse_args([*argv, "--model", "a,b", "--device", "cuda:1", "--dtype", "bfloat16",
                                  "--backend", "bridge"])
        assert (args.model, args.device, args.dtype, args.backend) == ("a,b", "cuda:1", "bfloat16", "bridge")
        defaults = parser.parse_args(argv)
        assert (defaults.model, defaults.device, defaults.dtype, defaults.backend) == (None, "cpu", "float32", None)
    assert [c.model for c in expand_cells(parser.parse_args(["run", "--model", "a,b"]))] == ["a", "b"]


@pytest.mark.parametrize("argv,message", [
    (["run", "--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
    (["bench", "--backend", "nope"], "argument --backend: invalid choice: 'nope'"),
    (["run", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["run", "--ft-lr", "fast"], "argument --ft-lr: invalid value 'fast'"),
    (["nope"], "invalid choice: 'nope'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_refused_flags_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("icl-lens: error:") and message in err


def test_bench_times_each_of_several_models(tmp_path, tiny_loader, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "tiny,tiny", "--k", "2", "--n-naive", "1", "--n-fast", "2", "--batch-size",
                 "2", "--json", str(out)]) == 0
    assert capsys.readouterr().out.count("== tiny") == 2
    numbers = json.loads(out.read_text())
    assert isinstance(numbers, list) and [n["n_fast"] for n in numbers] == [2, 2]
