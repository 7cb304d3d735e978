"""Results record what actually ran: the task and model passed in, and untrained only if re-initialised."""

import json

import pytest
from helpers import tiny_model

from icl_lens.errors import ConfigError
from icl_lens.cell.experiment import DEFAULT_MODEL, ExperimentConfig, run_experiment
from icl_lens.models.untrained import reinitialize_untrained, untrained_seed
from icl_lens.tasks import get_task

ZSL = dict(k=0, limit=2, settings=("zsl",), batch_size=2)


@pytest.fixture(scope="module")
def smol():
    return tiny_model(n_layers=1, name="smollm2-135m")


def test_defaults_are_filled_from_the_objects_passed(smol):
    cfg = ExperimentConfig(**ZSL)  # task "sst2" and model gemma3-270m by default
    assert cfg.task == "sst2" and cfg.model == DEFAULT_MODEL
    results = run_experiment(smol, get_task("mr"), cfg, progress=False).results
    assert results["config"]["task"] == "mr" and results["task"]["name"] == "mr"
    assert results["config"]["model"] == "smollm2-135m" and results["model"]["name"] == "smollm2-135m"
    assert results["config"]["untrained"] is False
    # the eval split and template are mr's, not sst2's
    assert results["task"]["template"] == get_task("mr").template


def test_a_config_naming_another_task_is_refused(smol):
    with pytest.raises(ConfigError, match=r"task 'subj'.*'mr'"):
        run_experiment(smol, get_task("mr"), ExperimentConfig(task="subj", **ZSL), progress=False)


def test_a_config_naming_another_model_is_refused(smol):
    with pytest.raises(ConfigError, match=r"model 'gemma3-270m-it'.*'smollm2-135m'"):
        run_experiment(smol, get_task("sst2"), ExperimentConfig(model="gemma3-270m-it", **ZSL), progress=False)


def test_model_paths_match_the_loaded_name(smol, tmp_path):
    # load_model names a local directory / .gguf file by its folder name / stem
    for name in (str(tmp_path / "smollm2-135m"), str(tmp_path / "smollm2-135m.gguf")):
        results = run_experiment(smol, get_task("sst2"), ExperimentConfig(model=name, **ZSL), progress=False).results
        assert results["config"]["model"] == name


def test_untrained_is_recorded_only_for_a_reinitialised_model(smol):
    with pytest.raises(ConfigError, match="not re-initialised"):
        run_experiment(smol, get_task("sst2"), ExperimentConfig(model="smollm2-135m", untrained=True, **ZSL),
                       progress=False)
    fresh = reinitialize_untrained(tiny_model(n_layers=1, name="smollm2-135m"), seed=5)
    assert untrained_seed(fresh) == 5 and untrained_seed(smol) is None
    results = run_experiment(fresh, get_task("sst2"), ExperimentConfig(**ZSL), progress=False).results
    assert results["config"]["untrained"] is True and results["config"]["untrained_seed"] == 5
    with pytest.raises(ConfigError, match="untrained_seed=1.*seed 5"):
        run_experiment(fresh, get_task("sst2"), ExperimentConfig(untrained=True, untrained_seed=1, **ZSL),
                       progress=False)


def test_task_file_config_matches_the_task_it_names(smol, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"row {i}", "label": i % 2}) for i in range(4)) + "\n")
    task_file = tmp_path / "reviews.json"
    task_file.write_text(json.dumps({"name": "reviews", "template": "Review: {text} Verdict:",
                                     "label_words": ["bad", "good"], "data_files": {"train": "d.jsonl", "test": "d.jsonl"}}))
    cfg = ExperimentConfig(task=str(task_file), **ZSL)
    results = run_experiment(smol, get_task(str(task_file)), cfg, progress=False).results
    assert results["config"]["task"] == str(task_file) and results["task"]["name"] == "reviews"
    with pytest.raises(ConfigError, match="reviews"):
        run_experiment(smol, get_task("sst2"), cfg, progress=False)


def test_untrained_recipe_is_recorded_and_a_different_one_refused():
    fresh = reinitialize_untrained(tiny_model(n_layers=1, name="smollm2-135m"), seed=2, init="reference")
    results = run_experiment(fresh, get_task("sst2"), ExperimentConfig(**ZSL), progress=False).results
    assert results["config"]["untrained_init"] == "reference" and results["config"]["untrained_seed"] == 2
    normal = reinitialize_untrained(tiny_model(n_layers=1, name="smollm2-135m"), seed=2, init="normal")
    with pytest.raises(ConfigError, match="untrained_init='reference'.*'normal'"):
        run_experiment(normal, get_task("sst2"), ExperimentConfig(untrained=True, untrained_seed=2, **ZSL),
                       progress=False)
