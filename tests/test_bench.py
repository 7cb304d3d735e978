"""The benchmark (icl-lens bench) on a tiny model: it runs, its agreement check is live."""

import dataclasses
import json

import pytest

import icl_lens.bench as bench
import icl_lens.models
from helpers import tiny_model
from icl_lens.cli import main
from icl_lens.prompts import PromptFormat, encode_prompts
from icl_lens.tasks import get_task, sample_demonstrations, sample_queries


@pytest.fixture
def prompts(tiny_llama):
    task = get_task("sst5")  # multi-token labels exercise the naive loop's extra passes
    return encode_prompts(tiny_llama.tokenizer, task, sample_demonstrations(task, 3, 0), sample_queries(task, 6),
                          PromptFormat(), tiny_llama.cfg.n_ctx)


def test_cli_bench_prints_and_writes_every_number(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(icl_lens.models, "load_model", lambda name, **kw: tiny_model(gqa=True, n_layers=2))
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "tiny", "--k", "2", "--n-naive", "3", "--n-fast", "5", "--batch-size", "2",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for word in ("naive loop", "optimized", "speed-up", "max |Δ|", "GFLOP/s", "peak memory"):
        assert word in printed
    numbers = json.loads(out.read_text())
    assert numbers["n_naive"] == 3 and numbers["n_fast"] == 5 and numbers["k"] == 2
    assert numbers["max_abs_diff_scores"] <= 1e-4 and numbers["max_abs_diff_activations"] <= 1e-4
    assert numbers["speedup"] > 0 and numbers["matmul_peak_flop_per_s"] > 0 and numbers["peak_memory_mb"] > 0
    assert numbers["forward_fraction_of_peak"] == pytest.approx(
        numbers["forward_flop_per_s"] / numbers["matmul_peak_flop_per_s"])


def test_agreement_check_sees_a_wrong_naive_path(tiny_llama, prompts, monkeypatch):
    """If the naive loop scored another prompt (one demonstration token dropped), max |Δ| says so."""
    good = bench.run_benchmark(tiny_llama, prompts, n_naive=3, n_fast=4, batch_size=2)
    assert good.max_abs_diff_scores <= 1e-4 and good.max_abs_diff_activations <= 1e-4
    real_loop = bench.naive_loop

    def shifted_loop(model, p, n):
        return real_loop(model, dataclasses.replace(p, icl_prefix=p.icl_prefix[:-2] + p.icl_prefix[-1:]), n)

    monkeypatch.setattr(bench, "naive_loop", shifted_loop)
    bad = bench.run_benchmark(tiny_llama, prompts, n_naive=3, n_fast=4, batch_size=2)
    assert bad.max_abs_diff_scores > 1e-3
