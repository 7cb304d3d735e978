"""Bad input is refused on creation, with a message naming the field and value (issue 14, items 4-6, 8, 10)."""

import json
import math

import pytest
import torch

import icl_lens.models
from helpers import tiny_model
from icl_lens.cli import main
from icl_lens.errors import ConfigError, DataFormatError, PromptError, TaskError
from icl_lens.evaluation import RecordSpec, evaluate
from icl_lens.cell.experiment import ExperimentConfig
from icl_lens.training.finetune import FinetuneConfig
from icl_lens.prompts import PromptFormat
from icl_lens.tasks import Task, get_task, load_split

# --------------------------------------------------------------------------------------------
# One field validator for every config dataclass
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,message", [
    (lambda: FinetuneConfig(momentum=math.nan), "FinetuneConfig.momentum must be a finite number, got nan"),
    (lambda: FinetuneConfig(weight_decay=math.inf), "FinetuneConfig.weight_decay must be a finite number, got inf"),
    (lambda: FinetuneConfig(momentum=-0.5), "FinetuneConfig.momentum must be >= 0, got -0.5"),
    (lambda: FinetuneConfig(epochs=0), "FinetuneConfig.epochs must be >= 1, got 0"),
    (lambda: FinetuneConfig(clip_norm=0.0), "FinetuneConfig.clip_norm must be > 0, got 0.0"),
    (lambda: FinetuneConfig(lr="1e-3"), "FinetuneConfig.lr must be a finite number, got '1e-3'"),
    (lambda: ExperimentConfig(lr_dev_size=-5), "ExperimentConfig.lr_dev_size must be >= 1, got -5"),
    (lambda: ExperimentConfig(lr_dev_size=0), "ExperimentConfig.lr_dev_size must be >= 1, got 0"),
    (lambda: ExperimentConfig(lr_grid=(1e-3, -1e-2)), "ExperimentConfig.lr_grid must be > 0, got -0.01 in [0.001, -0.01]"),
    (lambda: ExperimentConfig(lr_grid=(1e-3, math.inf)), "ExperimentConfig.lr_grid must be a list, each item a finite"),
    (lambda: ExperimentConfig(lr=math.nan), "ExperimentConfig.lr must be a finite number or None, got nan"),
    (lambda: ExperimentConfig(k="4"), "ExperimentConfig.k must be an integer, got '4'"),
    (lambda: ExperimentConfig(k=True), "ExperimentConfig.k must be an integer, got True"),
    (lambda: ExperimentConfig(k=2.0), "ExperimentConfig.k must be an integer, got 2.0"),
    (lambda: ExperimentConfig(seed=-1), "ExperimentConfig.seed must be >= 0, got -1"),
    (lambda: ExperimentConfig(reuse_prefix="yes"), "ExperimentConfig.reuse_prefix must be true/false, got 'yes'"),
    (lambda: ExperimentConfig(calibration="zhao"), "ExperimentConfig.calibration must be one of 'none', 'content_free'"),
    (lambda: ExperimentConfig(finetune={"lr": 1}), "ExperimentConfig.finetune must be FinetuneConfig"),
    (lambda: RecordSpec(top_k=0), "RecordSpec.top_k must be >= 1, got 0"),
    (lambda: RecordSpec(position="first"), "RecordSpec.position must be one of 'answer', 'prompt_end'"),
    (lambda: PromptFormat(separator=3), "PromptFormat.separator must be a string, got 3"),
])
def test_config_fields_are_checked_on_creation(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert message in str(info.value)


def test_valid_values_pass_and_round_trip():
    cfg = ExperimentConfig(lr=1, lr_grid=[1e-4, 1e-3], lr_dev_size=1, finetune=FinetuneConfig(momentum=0.9))
    assert cfg.lr_grid == (1e-4, 1e-3) and cfg.lr == 1
    assert ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --------------------------------------------------------------------------------------------
# Tasks: label names, data_files, templates
# --------------------------------------------------------------------------------------------


def _task_with_rows(tmp_path, rows: str, **fields):
    (tmp_path / "d.jsonl").write_text(rows)
    values = dict(name="t", template="{text} ->", label_words=("yes", "no"),
                  data_files={"train": "d.jsonl", "test": "d.jsonl"}, base_dir=str(tmp_path))
    values.update(fields)
    return Task(**values)


def test_digit_label_names_that_are_another_labels_id_are_refused(tmp_path):
    with pytest.raises(TaskError, match=r"label name '1' is the id of label 1 but names label 0"):
        _task_with_rows(tmp_path, "", label_names=("1", "0"))


def test_label_names_are_looked_up_before_ids(tmp_path):
    # names that are digits but no valid id ("7", "3" in a 2-class task) are names, not ids
    task = _task_with_rows(tmp_path, '{"text": "a", "label": "7"}\n{"text": "b", "label": "3"}\n'
                           '{"text": "c", "label": 1}\n', label_names=("7", "3"))
    assert load_split(task, "train")["label"] == [0, 1, 1]
    # digit names equal to their ids agree under both readings
    task = _task_with_rows(tmp_path, '{"text": "a", "label": "1"}\n{"text": "b", "label": 0}\n',
                           label_names=("0", "1"))
    assert load_split(task, "train")["label"] == [1, 0]


def test_non_ascii_digit_label_is_an_error_not_an_id(tmp_path):
    task = _task_with_rows(tmp_path, '{"text": "a", "label": "\\u0661"}\n')  # ARABIC-INDIC DIGIT ONE
    with pytest.raises(DataFormatError, match="neither an id nor one of the label names"):
        load_split(task, "train")


def test_data_files_as_a_string_is_a_clear_error(tmp_path):
    (tmp_path / "task.json").write_text(json.dumps(
        {"name": "t", "template": "{text}", "label_words": ["a", "b"], "data_files": "d.jsonl"}))
    with pytest.raises(TaskError, match=r"data_files must map each split to its file.*got the string 'd.jsonl'"):
        get_task(str(tmp_path / "task.json"))


@pytest.mark.parametrize("template,message", [
    ("Text: {} Label:", "placeholder {} is a positional field"),
    ("Text: {0} Label:", "placeholder {0} is a positional field"),
    ("Text: {text.upper} Label:", "placeholder {text.upper} is not a plain field name"),
    ("Text: {text:d} Label:", "cannot be filled"),
    ("Text: {text", "is not a valid format string"),
    ("no placeholder", "has no {field} placeholder"),
])
def test_bad_templates_are_refused_when_the_task_is_made(template, message):
    with pytest.raises(TaskError) as info:
        Task(name="t", template=template, label_words=("a", "b"), data_files={"train": "x", "test": "x"})
    assert message in str(info.value)


@pytest.mark.parametrize("row,message", [
    ('{"text": "", "label": 0}', "field 'text' is empty"),
    ('{"text": "  ", "label": 0}', "field 'text' is empty"),
    ('{"text": ["a"], "label": 0}', "field 'text' must be text, got list"),
    ('{"text": true, "label": 0}', "field 'text' must be text, got bool"),
    ('{"text": "a", "label": 1.0}', "label 1.0 must be an integer id"),
    ('{"text": "a", "label": "' + "9" * 5000 + '"}', "neither an id nor one of the label names"),
])
def test_bad_rows_name_the_line(tmp_path, row, message):
    task = _task_with_rows(tmp_path, '{"text": "ok", "label": 0}\n' + row + "\n")
    with pytest.raises(DataFormatError) as info:
        load_split(task, "train")
    assert "line 2" in str(info.value) and message in str(info.value)


def test_latin1_csv_is_a_clear_error(tmp_path):
    (tmp_path / "d.csv").write_bytes("text,label\ncaf\xe9,0\n".encode("latin-1"))
    task = Task(name="t", template="{text}", label_words=("a", "b"), data_files={"train": "d.csv", "test": "d.csv"},
                base_dir=str(tmp_path))
    with pytest.raises(DataFormatError, match="is not UTF-8"):
        load_split(task, "train")


# --------------------------------------------------------------------------------------------
# evaluate: token inputs checked against the model
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=1)


@pytest.mark.parametrize("queries,labels,error,message", [
    ([[5, 6], []], [[7], [8]], PromptError, "query 1 is empty"),
    ([[5, 6]], [[7], []], PromptError, "label 1 is empty"),
    ([[5, 6]], [], PromptError, "no labels to score"),
    ([], [[7], [8]], PromptError, "no queries to evaluate"),
    ([[5, 10**6]], [[7], [8]], PromptError, "query 0: token id 1000000 at position 1 is outside the vocabulary"),
    ([[5, -1]], [[7], [8]], PromptError, "query 0: token id -1 at position 1 is outside"),
    ([[5, 6]], [[7], [8.0]], PromptError, "label 1: token 0 is 8.0, not an integer id"),
    ([[5] * 1100], [[7], [8]], PromptError, "longer than the model's context of 1024"),
])
def test_evaluate_refuses_bad_token_inputs(model, queries, labels, error, message):
    with pytest.raises(error) as info:
        evaluate(model, [1], queries, labels, progress=False)
    assert message in str(info.value)


def test_empty_query_is_refused_not_scored_at_the_prefix(model):
    """Before the check, an empty query scored the label at the prefix's last token (a wrong number)."""
    ok = evaluate(model, [1], [[5, 6]], [[7], [8]], progress=False)
    assert ok.class_scores.shape == (1, 2) and bool(torch.isfinite(ok.class_scores).all())
    with pytest.raises(PromptError, match="query 0 is empty"):
        evaluate(model, [1, 5, 6], [[]], [[7], [8]], progress=False)


def test_top_k_beyond_the_vocabulary_is_a_config_error(model):
    with pytest.raises(ConfigError, match=rf"top_k=100000 is larger than the model's vocabulary of {model.cfg.d_vocab}"):
        evaluate(model, [1], [[5]], [[7], [8]], record=RecordSpec(top_k=100000), progress=False)
    with pytest.raises(ConfigError, match="n_start must be an integer in 0..1"):
        evaluate(model, [1], [[5]], [[7], [8]], n_start=2, progress=False)


# --------------------------------------------------------------------------------------------
# CLI: one line, exit 2, before any model is loaded
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    def loader(name, **kwargs):
        raise AssertionError(f"model {name!r} loaded although the input was invalid")

    monkeypatch.setattr(icl_lens.models, "load_model", loader)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("icl-lens: error:"), err
    return err


@pytest.mark.parametrize("argv,message", [
    (["--log-level", "foo", "tasks"], "argument --log-level: invalid choice: 'FOO'"),
    (["run", "--k", "2", "--lr-grid", "1e-3,-1"], "ExperimentConfig.lr_grid must be > 0, got -1.0"),
    (["run", "--k", "2", "--ft-momentum", "nan"], "FinetuneConfig.momentum must be a finite number, got nan"),
    (["run", "--k", "2", "--lr-dev-size", "-5"], "ExperimentConfig.lr_dev_size must be >= 1, got -5"),
    (["run", "--k", "2", "--batch-size", "two"], "argument --batch-size: invalid value 'two'"),
    (["run", "--k", "2", "--attention-examples", "-1"], "--attention-examples must be >= 0"),
    (["run", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["run", "--k", "2", "--label-words", ","], "needs at least 2 label words"),
    (["run", "--k", "2", "--template", "{} ->"], "placeholder {} is a positional field"),
    (["run", "--task", "mr,cb", "--k", "300"], "k=300 demonstrations requested but the train split has 250 rows"),
])
def test_cli_bad_values_fail_before_model_loading(tmp_path, no_model, capsys, argv, message):
    code = main(argv + ["--out", str(tmp_path)] if argv[0] == "run" else argv)
    assert code == 2
    assert message in _one_error_line(capsys)


def test_cli_malformed_data_file_is_reported_before_any_model(tmp_path, no_model, capsys):
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 5}\n')
    (tmp_path / "t.json").write_text(json.dumps({"name": "t", "template": "{text} ->", "label_words": ["a", "b"],
                                                 "data_files": {"train": "d.jsonl", "test": "d.jsonl"}}))
    code = main(["run", "--task", f"sst2,{tmp_path / 't.json'}", "--k", "1", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "d.jsonl: line 2: label id 5 is out of range 0..1" in _one_error_line(capsys)


def test_error_line_is_not_glued_to_an_open_progress_bar(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(icl_lens.models, "load_model", lambda name, **kw: tiny_model(n_layers=1))
    code = main(["run", "--k", "2", "--limit", "2", "--lr", "0.01", "--record-top-k", "100000",
                 "--out", str(tmp_path)])
    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("icl-lens: error: record top_k=100000 is larger than the model's vocabulary")
    assert any("cells:" in line for line in lines[:-1])  # the bar was shown, and ended before the error
