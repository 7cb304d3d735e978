"""Presets: the reference setting in one name, explicit values on top, the name recorded."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import byte_tokenizer
from icl_lens.cli import make_parser
from icl_lens.cli.run import expand_cells
from icl_lens.errors import ConfigError
from icl_lens.cell.experiment import ExperimentConfig, run_experiment
from icl_lens.prompts import PromptFormat, encode_prompts
from icl_lens.cell.presets import preset_config
from icl_lens.tasks import get_task, sample_demonstrations, sample_queries


def test_reference_preset_values():
    cfg = preset_config("reference")
    assert cfg.prompt.separator == "<eos>" and cfg.prompt.answer_prefix == " "
    assert cfg.demo_sampling == "random" and cfg.calibration == "none"
    assert cfg.k == 32 and cfg.lr_mode == "reference" and cfg.lr is None
    assert cfg.preset == "reference" and cfg.to_dict()["preset"] == "reference"
    # everything the preset does not name stays at the package default
    default = ExperimentConfig()
    named = {"prompt", "demo_sampling", "calibration", "k", "lr_mode", "preset"}
    for f in dataclasses.fields(ExperimentConfig):
        if f.name not in named:
            assert getattr(cfg, f.name) == getattr(default, f.name), f.name


def test_default_preset_is_the_defaults_and_no_preset_keeps_old_digests():
    cfg = preset_config("default", task="mr")
    assert dataclasses.replace(cfg, preset=None) == ExperimentConfig(task="mr")
    assert "preset" not in ExperimentConfig(task="mr").to_dict()
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_explicit_values_win_over_the_preset():
    cfg = preset_config("reference", k=8, calibration="content_free", prompt={"start": "eos"})
    assert cfg.k == 8 and cfg.calibration == "content_free" and cfg.demo_sampling == "random"
    assert cfg.prompt == PromptFormat(separator="<eos>", start="eos")  # a nested dict merges field by field
    assert preset_config("reference", prompt=PromptFormat(separator="\n")).prompt.separator == "\n"
    with pytest.raises(ConfigError, match="'nope'"):
        preset_config("nope")
    with pytest.raises(ConfigError, match="not_a_field"):
        preset_config("reference", not_a_field=1)


def test_cli_preset_and_explicit_flags():
    (cfg,) = expand_cells(make_parser().parse_args(["run", "--preset", "reference"]))
    assert cfg == preset_config("reference")
    (cfg,) = expand_cells(make_parser().parse_args(
        ["run", "--preset", "reference", "--k", "4", "--separator", "\n", "--demo-sampling", "balanced",
         "--untrained", "--untrained-init", "normal"]))
    assert cfg.k == 4 and cfg.prompt.separator == "\n" and cfg.demo_sampling == "balanced"
    assert cfg.calibration == "none" and cfg.lr_mode == "reference" and cfg.preset == "reference"
    assert cfg.untrained and cfg.untrained_init == "normal"
    (plain,) = expand_cells(make_parser().parse_args(["run"]))
    assert plain == ExperimentConfig() and plain.untrained_init == "reference"


def test_reference_prompt_has_eos_after_every_demo_and_none_after_the_query():
    tokenizer = byte_tokenizer()
    task = get_task("sst2")
    demos = sample_demonstrations(task, 3, seed=0, sampling="random")
    queries = sample_queries(task, 2)
    prompts = encode_prompts(tokenizer, task, demos, queries, preset_config("reference").prompt, n_ctx=4096)
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    assert prompts.k == 3
    expected = [bos]
    for row in demos:
        text = task.format_input(row) + " " + task.label_words[row["label"]]
        expected += tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    assert prompts.icl_prefix == expected
    assert prompts.icl_prefix.count(eos) == 3
    for (start, end), row in zip(prompts.demo_spans, demos):
        assert prompts.icl_prefix[end] == eos
        assert tokenizer.decode(prompts.icl_prefix[start:end]) == (
            task.format_input(row) + " " + task.label_words[row["label"]])
    for query, row in zip(prompts.queries, queries):
        assert eos not in query and tokenizer.decode(query) == task.format_input(row)
    assert all(eos not in answer for answer in prompts.labels)


def test_reference_k32_is_truncated_to_the_context_and_recorded(tiny_llama):
    cfg = preset_config("reference", task="sst2", limit=2, settings=("zsl", "icl"))
    out = run_experiment(tiny_llama, get_task("sst2"), cfg, progress=False)
    summary = out.results["prompts"]
    assert summary["k_requested"] == 32
    assert 0 < summary["k_used"] < 32  # ~100 byte-tokens per demo: 32 do not fit in 1024
    assert len(out.results["demonstrations"]) == summary["k_used"]
    assert len(out.prompts.icl_prefix) + max(len(q) for q in out.prompts.queries) <= tiny_llama.cfg.n_ctx
    assert out.results["config"]["preset"] == "reference"
    assert out.results["calibration"]["method"] == "none"


def test_reproduce_tables_reference_preset_and_untrained_init(tmp_path, monkeypatch):
    import icl_lens.models
    from helpers import load_experiment_script, tiny_model
    from icl_lens.models import reinitialize_untrained
    from icl_lens.cell.results import read_results

    calls = []

    def loader(name, untrained=False, seed=0, **kwargs):
        calls.append((untrained, kwargs.get("untrained_init")))
        model = tiny_model(gqa=True, n_layers=2)
        return reinitialize_untrained(model, seed, init=kwargs["untrained_init"]) if untrained else model

    monkeypatch.setattr(icl_lens.models, "load_model", loader)
    script = load_experiment_script("reproduce_tables")
    script.main(["--model", "tiny", "--tasks", "sst2", "--seeds", "0", "--k", "2", "--limit", "2", "--preset",
                 "reference", "--untrained", "--untrained-init", "normal", "--out", str(tmp_path)])
    cells = [read_results(p) for p in sorted(tmp_path.glob("*/results.json"))]
    assert sorted(calls) == [(False, None), (True, "normal")]
    for cell in cells:
        assert cell["config"]["preset"] == "reference" and cell["config"]["k"] == 2
        assert cell["config"]["prompt"]["separator"] == "<eos>" and cell["calibration"]["method"] == "none"
        assert cell["lr"] == {"lr": 5e-4, "mode": "reference"}  # the paper's SST-2 rate, no sweep
    (untrained,) = [c for c in cells if c["config"]["untrained"]]
    assert untrained["model"]["untrained_init"] == "normal"


def test_presets_name_five_seeds_for_a_findings_run():
    from icl_lens.cell.presets import PRESET_SEEDS, preset_seeds

    assert preset_seeds("default") == preset_seeds("reference") == (0, 1, 2, 3, 4)
    assert set(PRESET_SEEDS) == {"default", "reference"} and all(len(s) >= 5 for s in PRESET_SEEDS.values())
