import json

import pytest

from icl_lens.errors import DataFormatError, TaskError
from icl_lens.tasks import (
    BUILTIN_TASK_NAMES,
    Task,
    builtin_tasks,
    get_task,
    load_split,
    load_task_file,
    sample_demonstrations,
    sample_queries,
)

# Split sizes documented in icl_lens/data/README.md.
EXPECTED_SIZES = {
    ("sst2", "train"): 6920, ("sst2", "validation"): 872, ("sst5", "validation"): 1101,
    ("mr", "validation"): 1066, ("subj", "test"): 2000, ("agnews", "train"): 5000, ("cb", "test"): 56,
}


@pytest.mark.parametrize("task_name,split", sorted(EXPECTED_SIZES))
def test_bundled_split_sizes(task_name, split):
    assert len(load_split(get_task(task_name), split)) == EXPECTED_SIZES[(task_name, split)]


def test_builtin_templates_and_label_words_follow_spec():
    tasks = builtin_tasks()
    assert set(tasks) == set(BUILTIN_TASK_NAMES)
    assert tasks["sst5"].label_words == ("terrible", "bad", "neutral", "good", "great")
    assert tasks["cb"].format_input({"premise": "P.", "hypothesis": "H"}) == \
        "P. Question: H. True, False, or Neither? Answer:"
    assert tasks["subj"].eval_split == "test" and tasks["sst2"].eval_split == "validation"


def test_sampling_is_seeded_and_disjoint_from_order():
    task = get_task("sst2")
    a = sample_demonstrations(task, 8, seed=0)
    b = sample_demonstrations(task, 8, seed=0)
    c = sample_demonstrations(task, 8, seed=1)
    assert [r["row_index"] for r in a] == [r["row_index"] for r in b]
    assert [r["row_index"] for r in a] != [r["row_index"] for r in c]
    q = sample_queries(task, 20)
    assert len(q) == 20 and len({r["row_index"] for r in q}) == 20


def test_k_larger_than_train_split_is_an_error():
    with pytest.raises(TaskError, match="k=300 demonstrations.*250 rows"):
        sample_demonstrations(get_task("cb"), 300, seed=0)


def test_unknown_task():
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        get_task("nope")


def _write_task(tmp_path, rows, name="train.jsonl", **extra):
    (tmp_path / name).write_text(rows)
    cfg = {"name": "mine", "template": "Text: {text} Verdict:", "label_words": ["bad", "good"],
           "data_files": {"train": name, "test": name}, **extra}
    path = tmp_path / "task.json"
    path.write_text(json.dumps(cfg))
    return path


def test_user_task_from_json_config(tmp_path):
    path = _write_task(tmp_path, '{"text": "awful", "label": 0}\n{"text": "great", "label": "good"}\n')
    task = get_task(str(path))
    rows = load_split(task, "test")
    assert rows["label"] == [0, 1] and rows["text"] == ["awful", "great"]


def test_user_task_from_csv_and_toml(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\nfine,1\nbad,0\n")
    (tmp_path / "t.toml").write_text(
        'name = "csvtask"\ntemplate = "{text} ->"\nlabel_words = ["no", "yes"]\n'
        '[data_files]\ntrain = "d.csv"\ntest = "d.csv"\n')
    task = load_task_file(tmp_path / "t.toml")
    assert load_split(task, "train")["label"] == [1, 0]


def test_malformed_jsonl_names_the_line(tmp_path):
    path = _write_task(tmp_path, '{"text": "a", "label": 0}\n{"text": "b", "label": 1\n')
    with pytest.raises(DataFormatError, match=r"train.jsonl: line 2: invalid JSON"):
        load_split(get_task(str(path)), "train")


def test_missing_field_names_field_and_line(tmp_path):
    path = _write_task(tmp_path, '{"text": "a", "label": 0}\n{"txt": "b", "label": 1}\n')
    with pytest.raises(DataFormatError, match=r"line 2: missing field 'text'"):
        load_split(get_task(str(path)), "train")


def test_label_out_of_range(tmp_path):
    path = _write_task(tmp_path, '{"text": "a", "label": 2}\n')
    with pytest.raises(DataFormatError, match=r"line 1: label id 2 is out of range 0..1"):
        load_split(get_task(str(path)), "train")


def test_empty_or_repeated_label_words_are_rejected():
    with pytest.raises(TaskError, match="label word 1 is empty"):
        Task(name="t", template="{text}", label_words=("a", " "), data_files={"train": "x", "test": "x"})
    with pytest.raises(TaskError, match="repeat"):
        Task(name="t", template="{text}", label_words=("a", "a"), data_files={"train": "x", "test": "x"})


def test_unknown_config_key_is_named(tmp_path):
    path = _write_task(tmp_path, '{"text": "a", "label": 0}\n', labelwords=["x"])
    with pytest.raises(TaskError, match=r"unknown keys \['labelwords'\]"):
        get_task(str(path))


def test_balanced_demonstrations_cycle_through_labels():
    task = get_task("agnews")
    demos = sample_demonstrations(task, 8, seed=3, sampling="balanced")
    labels = [d["label"] for d in demos]
    assert sorted(labels) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert labels[:4] == labels[4:] and len(set(labels[:4])) == 4
    assert demos == sample_demonstrations(task, 8, seed=3, sampling="balanced")
    # per label, the rows are the first of that label in the same seeded shuffle random sampling uses
    shuffled = sample_demonstrations(task, 200, seed=3)
    for label in range(4):
        expected = [d["row_index"] for d in shuffled if d["label"] == label][:2]
        assert [d["row_index"] for d in demos if d["label"] == label] == expected


@pytest.mark.parametrize("task_name", BUILTIN_TASK_NAMES)
def test_dev_slice_is_disjoint_from_evaluation_queries_and_demonstrations_for_every_preset(task_name):
    """What a cell chooses on (its dev slice) shares no row and no input text with the queries it
    reports nor any row with its demonstrations: every built-in task, every preset, five seeds; and
    the same for the task read with its train split as evaluation split."""
    from icl_lens.cell.experiment import cell_rows
    from icl_lens.cell.presets import PRESETS, preset_config

    builtin = get_task(task_name)
    train = load_split(builtin, builtin.train_split)
    for task in (builtin, builtin.with_overrides(eval_split=builtin.train_split)):
        evaluated = load_split(task, task.eval_split) if task.eval_split != task.train_split else train
        for preset in PRESETS:
            for seed in range(5):
                cfg = preset_config(preset, task=task_name, seed=seed)
                demos, queries, dev = cell_rows(task, cfg, train=train, eval_dataset=evaluated)
                dev_rows = {(task.train_split, r["row_index"]) for r in dev}
                assert len(dev_rows) == len(dev) and 0 < len(dev) <= cfg.lr_dev_size
                assert len(dev) == cfg.lr_dev_size or task.eval_split == task.train_split  # CB's 250 rows run out
                assert not dev_rows & {(task.eval_split, q["row_index"]) for q in queries}, (preset, seed)
                assert not dev_rows & {(task.train_split, d["row_index"]) for d in demos}, (preset, seed)
                assert not {task.format_input(r) for r in dev} & {task.format_input(q) for q in queries}
                assert len(queries) == min(cfg.limit, len(evaluated)) and len(demos) == cfg.k


def test_dev_slice_skips_train_rows_whose_input_is_an_evaluation_query():
    """Some SST-5 validation sentences are also train rows: a dev slice never holds them."""
    from icl_lens.training.lr_sweep import dev_slice

    task = get_task("sst5")
    train, evaluated = load_split(task, "train"), load_split(task, "validation")
    eval_inputs = {task.format_input(row) for row in evaluated}
    shared = {i for i, row in enumerate(train) if task.format_input(row) in eval_inputs}
    assert shared
    everything = dev_slice(train, len(train), 0, task=task, query_inputs=eval_inputs)
    assert len(everything) == len(train) - len(shared) and not shared & {r["row_index"] for r in everything}
    assert len(dev_slice(train, len(train), 0, task=task)) == len(train)
