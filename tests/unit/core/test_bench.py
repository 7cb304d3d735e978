"""The benchmark (icl-lens bench) on a tiny model: it runs, its agreement check is live."""

import dataclasses
import json

import pytest

import icl_lens.bench as bench
import icl_lens.errors
import icl_lens.models
from helpers import tiny_model
from icl_lens.cli import main
from icl_lens.models.cpu_matmul import available_cpu_kernels, cpu_matmul_kernel
from icl_lens.training.finetune import FinetuneConfig
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
    # the peak is the best kernel's, whichever kernel the run's products used
    assert sorted(numbers["matmul_peak_by_kernel"]) == sorted(available_cpu_kernels())
    assert numbers["matmul_peak_flop_per_s"] == max(numbers["matmul_peak_by_kernel"].values())
    assert numbers["matmul_kernel"] == cpu_matmul_kernel()


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


# --- per-phase FLOP count (module docstring of icl_lens.bench), checked by hand on tiny configs ---
# tiny_gpt: 2 layers, d_model 32, 4 heads of d_head 8, d_mlp 128, 259-token vocabulary, global attention.
# Matrix weights per block: W_Q, W_K, W_V, W_O (4·32·8 = 1024 each) + W_in, W_out (32·128 = 4096 each).
GPT_P = 4 * 1024 + 2 * 4096  # 12288 (the 2-dim biases b_Q/b_K/b_V [4, 8] are not matrix weights)
GPT_KV = 2 * 1024  # trained W_K + W_V per block
ATT = 4 * 4 * 8  # 4·n_heads·d_head: QKᵀ + AV per query-key pair
UNEMBED = 2 * 32 * 259  # per unembedded position


def test_flop_count_reads_the_model(tiny_gpt):
    count = bench.FlopCount.of(tiny_gpt)
    assert count.layer_params == (GPT_P, GPT_P) and count.trained_params == (GPT_KV, GPT_KV)
    assert count.windows == (None, None) and (count.d_model, count.d_vocab) == (32, 259)
    assert bench.FlopCount.of(tiny_gpt, "mlp").trained_params == (2 * 4096, 2 * 4096)


def test_flop_count_of_grouped_query_sliding_window_model():
    """Gemma-like: K/V have 2 of 4 heads (512 weights each), a gated MLP (3·4096), layer 0 local with window 4."""
    count = bench.FlopCount.of(tiny_model(family="gemma", n_layers=2, window=4))
    assert count.layer_params == (2 * 1024 + 2 * 512 + 3 * 4096,) * 2 and count.trained_params == (1024, 1024)
    assert count.windows == (4, None)
    # positions 3, 4, 5: layer 0 sees min(p + 1, 4) = 4 keys each, layer 1 sees 4 + 5 + 6
    assert count.keys(3, 6, 0) == 12 and count.keys(3, 6, 1) == 15
    assert count.forward(3, 6).flops == 2 * 2 * 15360 * 3 + ATT * (12 + 15)


def test_evaluation_count_by_hand(tiny_gpt):
    """Prefix of 2 tokens, one query of 3, class 0's answer 1 token, class 1's 2 tokens."""
    count = bench.FlopCount.of(tiny_gpt)
    work = count.evaluation(2, [3], [1, 2])
    prefix = 2 * (2 * GPT_P * 2 + ATT * (1 + 2))  # positions 0, 1
    main = 2 * (2 * GPT_P * 4 + ATT * (3 + 4 + 5 + 6)) + UNEMBED  # query + answer at 2..5, 1 scored position
    other = 2 * (2 * GPT_P * 1 + ATT * 6) + UNEMBED  # class 1's first token at position 5, its 2nd scored
    assert work.flops == prefix + main + other
    assert (work.tokens, work.unembedded) == (2 + 4 + 1, 2)
    calibrated = count.evaluation(2, [3], [1, 2], content_free_len=3)
    assert calibrated.flops == prefix + 2 * (main + other)  # the prefix is not counted twice


def test_training_step_counts_by_hand(tiny_gpt):
    """One demonstration of 3 tokens, 2 loss positions, W_K/W_V trained in both blocks."""
    count = bench.FlopCount.of(tiny_gpt)
    forward = 2 * (2 * GPT_P * 3 + ATT * (1 + 2 + 3))
    backward = 2 * (2 * GPT_P * 3 + 2 * ATT * (1 + 2 + 3)) + 2 * (2 * GPT_KV) * 3
    gd = count.training_step([3], 2, "gd")
    assert gd.flops == forward + 2 * UNEMBED + backward + 2 * UNEMBED
    assert (gd.tokens, gd.unembedded) == (3, 2)
    lcgd = count.training_step([3], 2, "lcgd")  # one lens per layer, forward and backward
    assert lcgd.flops == forward + 2 * 2 * UNEMBED + backward + 2 * 2 * UNEMBED
    assert lcgd.unembedded == 4


def test_backward_path_gd_vs_lcgd():
    """Only block 0 trained: GD's gradient still passes through block 1 (its loss is at the top); LCGD's
    block-0 loss reaches block 0 only, and block 1's lens has nothing to train."""
    count = bench.FlopCount((GPT_P, GPT_P), (GPT_KV, 0), 4, 8, (None, None), 32, 259)
    forward = 2 * (2 * GPT_P * 3 + ATT * 6)
    block_backward = 2 * GPT_P * 3 + 2 * ATT * 6
    weights = 2 * GPT_KV * 3
    assert count.training_step([3], 2, "gd").flops == forward + 2 * UNEMBED + 2 * block_backward + weights + 2 * UNEMBED
    assert count.training_step([3], 2, "lcgd").flops == forward + 4 * UNEMBED + block_backward + weights + 2 * UNEMBED
    with pytest.raises(icl_lens.errors.ConfigError, match="per layer"):
        bench.FlopCount((GPT_P,), (GPT_KV, 0), 4, 8, (None,), 32, 259)


def test_training_batches_and_sweep_work():
    seqs, answers = [[1, 2, 3], [4, 5, 6, 7, 8]], [1, 2]
    assert bench.training_batches(seqs, answers, FinetuneConfig()) == [([3], 2), ([5], 4)]
    assert bench.training_batches(seqs, answers, FinetuneConfig(loss_on="answer")) == [([3], 1), ([5], 2)]
    assert bench.training_batches(seqs, answers, FinetuneConfig(batch_size=2, epochs=2)) == [([3, 5], 6)] * 2
    steps = [bench.Work(10.0, 1, 1), bench.Work(20.0, 2, 2), bench.Work(30.0, 3, 3)]
    dev = bench.Work(7.0, 4, 5)
    # the first step once, the other two at each of 3 rates, the dev slice for the 2 rates scored
    assert bench.sweep_work(steps, 3, 2, dev) == bench.Work(10 + 3 * 50 + 2 * 7.0, 1 + 3 * 5 + 2 * 4, 1 + 3 * 5 + 2 * 5)


def _phase_inputs(model, lr_grid=(1e-3,), lr=None):
    task = get_task("sst5")
    dev = encode_prompts(model.tokenizer, task, [], sample_queries(task, 3, 7), PromptFormat(), model.cfg.n_ctx)
    return bench.PhaseInputs(dev_queries=dev.queries, dev_labels=[0, 1, 2], content_free_query=[40, 41, 42],
                             lr_grid=lr_grid, lr=lr)


def test_phases_are_counted_on_what_they_ran(tiny_llama, prompts):
    inputs = _phase_inputs(tiny_llama)
    result = bench.run_benchmark(tiny_llama, prompts, n_naive=2, n_fast=4, batch_size=2, phases=inputs)
    rows = {row.phase: row for row in result.phases}
    assert list(rows) == list(bench.PHASES)
    count = bench.FlopCount.of(tiny_llama)
    label_lens = [len(l) for l in prompts.labels]
    zsl = count.evaluation(1, [len(q) for q in prompts.queries[:4]], label_lens, 3)  # n_fast queries, calibrated
    assert rows["eval_zsl"].flops == rows["eval_ft"].flops == rows["eval_lcgd"].flops == zsl.flops
    assert rows["eval_icl"].flops > zsl.flops
    # one rate: the sweep = one FT training + one calibrated evaluation of the 3-query dev slice
    dev = count.evaluation(1, [len(q) for q in inputs.dev_queries], label_lens, 3)
    assert rows["lr_sweep"].flops == pytest.approx(rows["train_ft"].flops + dev.flops)
    counted = sum(c for _, c in bench.training_batches(prompts.demo_sequences, prompts.demo_answer_lengths,
                                                       FinetuneConfig()))
    lenses = tiny_llama.cfg.n_layers - 1  # LCGD's extra lenses, forward and backward
    assert rows["train_lcgd"].flops - rows["train_ft"].flops == pytest.approx(2 * lenses * counted * 2 * 32 * 259)
    assert result.phase_setup["lr"] == result.phase_setup["lr_chosen_by_sweep"] == 1e-3
    for row in result.phases:
        assert row.flop_per_s == pytest.approx(row.flops / row.seconds)
        assert row.fraction_of_peak == pytest.approx(row.flop_per_s / result.matmul_peak_flop_per_s)


def test_phase_inputs_refuse_bad_values(tiny_llama):
    with pytest.raises(icl_lens.errors.ConfigError, match="lr_grid"):
        _phase_inputs(tiny_llama, lr_grid=())
    with pytest.raises(icl_lens.errors.ConfigError, match="lr"):
        _phase_inputs(tiny_llama, lr=-1.0)
    with pytest.raises(icl_lens.errors.ConfigError, match="one label per query"):
        bench.PhaseInputs(dev_queries=[[1, 2]], dev_labels=[0, 1])


def test_cli_bench_phases_json_and_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(icl_lens.models, "load_model", lambda name, **kw: tiny_model(gqa=True, n_layers=2))
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "tiny", "--k", "2", "--n-naive", "2", "--n-fast", "3", "--batch-size", "2",
                 "--phases", "--lr", "0.01", "--lr-grid", "0.001,0.01", "--lr-dev-size", "3",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    numbers = json.loads(out.read_text())
    assert [row["phase"] for row in numbers["phases"]] == list(bench.PHASES)
    for row in numbers["phases"]:
        assert row["seconds"] > 0 and row["flops"] > 0 and row["flop_per_s"] > 0 and row["fraction_of_peak"] > 0
        assert row["phase"] in printed
    assert numbers["phase_setup"]["lr"] == 0.01 and numbers["phase_setup"]["lr_grid"] == [0.001, 0.01]
    assert numbers["phase_setup"]["n_dev"] == 3 and numbers["phase_setup"]["n_queries"] == 3
    assert "of peak" in printed and "naive loop" in printed


def test_cli_bench_phase_flags_bad_values(monkeypatch, capsys):
    monkeypatch.setattr(icl_lens.models, "load_model", lambda name, **kw: tiny_model(gqa=True, n_layers=2))
    assert main(["bench", "--model", "tiny", "--k", "2", "--n-naive", "1", "--n-fast", "2", "--phases",
                 "--lr-dev-size", "0"]) == 2
    assert "--lr-dev-size must be >= 1, got 0" in capsys.readouterr().err
    assert main(["bench", "--phases", "--lr-grid", "1e-3,fast"]) == 2
    assert "expected comma-separated numbers, got '1e-3,fast'" in capsys.readouterr().err


def test_naive_loop_agrees_on_a_sliding_window_model():
    """The naive loop zeroes the keys a local layer does not attend to, as evaluate records them."""
    model = tiny_model(family="gemma", n_layers=2, window=4)
    task = get_task("sst2")
    p = encode_prompts(model.tokenizer, task, sample_demonstrations(task, 2, 0), sample_queries(task, 2),
                       PromptFormat(), model.cfg.n_ctx)
    result = bench.run_benchmark(model, p, n_naive=2, n_fast=2, batch_size=2)
    assert result.max_abs_diff_scores <= 1e-4 and result.max_abs_diff_activations <= 1e-4
