"""Benchmark: the naive per-query loop vs the prefix-cached, batched evaluation.

The naive loop is what the reference code and a plain TransformerLens loop do: re-encode the whole
demonstration prefix for every query and keep a full activation cache (``run_with_cache`` with no
filter), then read the recorded position out of it. The optimized path is
:func:`icl_lens.evaluation.evaluate`: the prefix is encoded once, its key/value cache reused for
batches of queries, and only the needed hooks at the needed position are kept.

Everything is measured in one process on the same machine: examples/s of both paths and their ratio,
the max |Δ| of class scores and recorded activations between them, the batched forward pass's
achieved FLOP/s beside a dense matmul peak measured in the same run, and peak memory.

With ``phases`` (:class:`PhaseInputs`, ``icl-lens bench --phases``) it also runs the phases of one
experiment cell on the same prompts — ZSL / ICL evaluation, the learning-rate sweep, FT (GD) and LCGD
training, FT / LCGD evaluation, each as :func:`icl_lens.cell.experiment.run_experiment` runs it — and reports
per phase its wall time, the FLOPs it must do (:class:`FlopCount`, counted from the token ids, not
measured), the achieved FLOP/s and its fraction of the matmul peak.

FLOP count (matrix products only; norms, softmax, embedding lookups, optimizer updates are free):

==========================  ================================================================
forward, per token at p     Σ_l 2·P_l + 4·n_heads·d_head·keys_l(p)
keys_l(p)                   p + 1 (causal), min(p + 1, window_l) in a sliding-window layer
unembedding                 2·d_model·d_vocab per unembedded position
backward, per token at p    Σ_{l in B} (2·P_l + 8·n_heads·d_head·keys_l(p)) + Σ_l 2·T_l
backward, unembedding       2·d_model·d_vocab per loss position (and lens), W_U frozen
==========================  ================================================================

P_l = matrix weights of block l (every ≥ 2-dim block parameter except biases), T_l = the trained
ones among them, B = the blocks the activation gradient passes through. Backward ≈ 2× forward for what
is differentiated: every product on the gradient's path costs its forward again for the activation
gradient (the attention products twice: both operands are activations), a trained weight once more
for its weight gradient; frozen weights get no weight gradient but still pass activation gradients.
GD: B = every block from the lowest trained one up (the loss is at the top). LCGD: B = the blocks with
trained parameters (each block's input is detached, so a layer's loss reaches its own block only).
Positions count real tokens only (padding is work the floor does not need).

Per phase:

* evaluation (one setting): the prefix once (its positions 0..P-1, no unembedding); per query of q
  tokens, query + class-0 answer (a0 tokens, fed whole: the recorded position is its last) at
  positions P..P+q+a0-1 with a0 unembedded positions, and for each other class j the L_j − 1 tokens
  after its first (positions P+q..P+q+L_j−2) with L_j − 1 more unembedded positions (class j's first
  token is read from the distribution already unembedded at the prediction position); with
  contextual calibration the content-free query is one more query (the prefix is not counted again);
* FT training: per step, forward of every demonstration of the batch at positions 0..n−1 and the
  unembedding of the counted loss positions c, plus the backward above;
* LCGD training (the simultaneous schedule, the default): the same forward, n_layers lenses
  (n_layers·c unembedded positions), the backward with LCGD's B and one unembedding backward per lens
  of a trained block;
* lr sweep (R rates): the FT training at every rate, whose first step is counted once (every rate
  starts from the same weights, so its loss and gradient are the same for all — the batched sweep runs
  it once), plus the dev-slice evaluation (calibration included) of every rate that was scored. The
  count does not depend on whether the rates were trained together or one at a time; a rate that
  diverged is counted as trained to the end (it stopped earlier), and not evaluated.
"""

from __future__ import annotations

import logging
import re
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from icl_lens._validation import NON_NEGATIVE, POSITIVE, validate_fields
from icl_lens.calibration import calibrate, content_free_scores
from icl_lens.errors import ConfigError
from icl_lens.evaluation import (
    ATTN_OUT,
    ATTN_SCORES,
    attended_keys,
    attention_windows,
    evaluate,
    zero_unattended,
)
from icl_lens.models.backends import Model, block_parameters, final_residual
from icl_lens.models.cpu_matmul import available_cpu_kernels, forced_kernel, model_kernel, uses_cpu_matmul
from icl_lens.prompts import EncodedPrompts
from icl_lens.training.finetune import FinetuneConfig, demo_batches, finetune, layer_of, trained_parameters
from icl_lens.training.lcgd import layer_causal_finetune
from icl_lens.training.lr_sweep import DEFAULT_LR_GRID, sweep_learning_rate

logger = logging.getLogger(__name__)


@dataclass
class BenchmarkResult:
    """Numbers from one benchmark run (all measured in the same process)."""

    device: str
    dtype: str
    threads: int
    k: int
    prefix_tokens: int
    n_naive: int
    n_fast: int
    batch_size: int
    naive_examples_per_s: float
    fast_examples_per_s: float
    speedup: float
    max_abs_diff_scores: float
    max_abs_diff_activations: float
    forward_tokens: int
    forward_seconds: float
    forward_flop_per_s: float
    matmul_peak_flop_per_s: float
    matmul_peak_by_kernel: dict[str, float]
    matmul_kernel: str
    forward_fraction_of_peak: float
    peak_memory_mb: float
    phases: list[PhaseTiming] = field(default_factory=list)
    phase_setup: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def report(self) -> str:
        return "\n".join(self._comparison_lines() + self._phase_lines())

    def _phase_lines(self) -> list[str]:
        if not self.phases:
            return []
        setup = self.phase_setup or {}
        lines = [
            f"phases of one cell ({setup.get('n_queries')} queries, dev slice {setup.get('n_dev')}, "
            f"{len(setup.get('lr_grid', []))} swept rates, lr {setup.get('lr')}, params {setup.get('params')}, "
            f"calibration {'on' if setup.get('calibration') else 'off'}); FLOPs = the count the phase must do",
            f"{'phase':<11} {'seconds':>9} {'GFLOP':>10} {'tokens':>8} {'unembedded':>10} {'GFLOP/s':>9} "
            f"{'of peak':>8}",
        ]
        for row in self.phases:
            lines.append(
                f"{row.phase:<11} {row.seconds:9.3f} {row.flops / 1e9:10.3f} {row.tokens:8d} {row.unembedded:10d} "
                f"{row.flop_per_s / 1e9:9.2f} {100 * row.fraction_of_peak:7.1f}%"
            )
        return lines

    def _comparison_lines(self) -> list[str]:
        return [
            f"device {self.device} ({self.dtype}, {self.threads} threads); k={self.k} "
            f"({self.prefix_tokens} prefix tokens)",
            f"naive loop : {self.naive_examples_per_s:8.2f} examples/s  ({self.n_naive} queries, batch 1, full cache)",
            f"optimized  : {self.fast_examples_per_s:8.2f} examples/s  ({self.n_fast} queries, "
            f"batch {self.batch_size}, prefix cache, filtered hooks)",
            f"speed-up   : {self.speedup:8.1f}x",
            f"max |Δ|    : class scores {self.max_abs_diff_scores:.2e}, recorded activations "
            f"{self.max_abs_diff_activations:.2e}",
            f"forward    : {self.forward_flop_per_s / 1e9:8.1f} GFLOP/s on {self.forward_tokens} tokens "
            f"({self.forward_seconds:.3f} s)",
            f"matmul peak: {self.matmul_peak_flop_per_s / 1e9:8.1f} GFLOP/s  -> forward at "
            f"{100 * self.forward_fraction_of_peak:.0f}% of peak (by kernel: "
            + ", ".join(f"{kernel} {rate / 1e9:.1f}" for kernel, rate in self.matmul_peak_by_kernel.items())
            + f"; this run's products: {self.matmul_kernel})",
            f"peak memory: {self.peak_memory_mb:8.0f} MB",
        ]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best achieved FLOP/s of a square matmul (2·n³ FLOPs) on this device and dtype, on the kernel
    in use where it is called (:func:`matmul_peaks` picks each CPU kernel in turn)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def matmul_peaks(device: str, dtype: torch.dtype) -> dict[str, float]:
    """:func:`matmul_peak` on each float32 CPU kernel this PyTorch has (``blas``, and ``onednn``
    where available), or on the device's one kernel (``default``): the phases are measured against
    the best of them, the rate this hardware reaches, whichever kernel the run used."""
    if device != "cpu" or dtype != torch.float32:
        return {"default": matmul_peak(device, dtype)}
    peaks: dict[str, float] = {}
    for kernel in available_cpu_kernels():
        with forced_kernel(kernel):
            peaks[kernel] = matmul_peak(device, dtype)
    return peaks


_BIAS = re.compile(r"(^|\.)(_?b_\w+|bias)$")


def is_matmul_weight(name: str, param: torch.Tensor) -> bool:
    """A weight that multiplies activations: ≥ 2 dims and not a bias (HookedTransformer's b_Q/b_K/b_V
    are [heads, d_head], 2-dim, but added, not multiplied)."""
    return param.ndim >= 2 and _BIAS.search(name) is None


def forward_flops(model: Model, batch: int, query_len: int, key_len: float) -> float:
    """Dense FLOPs of one forward pass without the unembedding: 2·(block matmul weights)·tokens plus the
    attention products (QKᵀ and AV: 2·2·n_heads·d_head·query_len·key_len per layer and sequence)."""
    block_params = sum(p.numel() for n, p in block_parameters(model).items() if is_matmul_weight(n, p))
    tokens = batch * query_len
    attention = 4 * model.cfg.n_layers * model.cfg.n_heads * model.cfg.d_head * query_len * key_len * batch
    return 2 * block_params * tokens + attention


@dataclass(frozen=True)
class Work:
    """The matrix-product FLOPs a piece of work must do, with the token positions run forward and the
    positions unembedded (counted once each, whatever the backward adds)."""

    flops: float = 0.0
    tokens: int = 0
    unembedded: int = 0

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.tokens + other.tokens, self.unembedded + other.unembedded)

    def times(self, n: int) -> Work:
        return Work(self.flops * n, self.tokens * n, self.unembedded * n)


@dataclass(frozen=True)
class FlopCount:
    """The FLOP count of the module docstring's table for one model and one trained parameter group.

    Args:
        layer_params: P_l, the matrix weights of each block.
        trained_params: T_l, the trained ones among them (per block).
        n_heads, d_head: query heads and their width (QKᵀ and AV cost 2·n_heads·d_head per query-key pair each).
        windows: per block, the sliding window (None: global causal attention).
        d_model, d_vocab: the unembedding's shape.
    """

    layer_params: tuple[int, ...]
    trained_params: tuple[int, ...]
    n_heads: int
    d_head: int
    windows: tuple[int | None, ...]
    d_model: int
    d_vocab: int

    def __post_init__(self) -> None:
        n = len(self.layer_params)
        if n == 0 or len(self.trained_params) != n or len(self.windows) != n:
            raise ConfigError(
                f"layer_params, trained_params and windows need one entry per layer, got "
                f"{len(self.layer_params)}, {len(self.trained_params)}, {len(self.windows)}"
            )

    @classmethod
    def of(cls, model: Model, params: str = "kv") -> FlopCount:
        """The count for ``model`` finetuning parameter group(s) ``params`` (``kv``, ``kv+o``, ...)."""
        n_layers = model.cfg.n_layers
        layer_params, trained = [0] * n_layers, [0] * n_layers
        for name, param in block_parameters(model).items():
            if is_matmul_weight(name, param):
                layer_params[layer_of(name)] += param.numel()
        for name, param in trained_parameters(model, params).items():
            if is_matmul_weight(name, param):
                trained[layer_of(name)] += param.numel()
        return cls(
            layer_params=tuple(layer_params),
            trained_params=tuple(trained),
            n_heads=model.cfg.n_heads,
            d_head=model.cfg.d_head,
            windows=tuple(attention_windows(model)),
            d_model=model.cfg.d_model,
            d_vocab=model.cfg.d_vocab_out,
        )

    @property
    def n_layers(self) -> int:
        return len(self.layer_params)

    def keys(self, start: int, stop: int, layer: int) -> int:
        """Σ keys_l(p) over positions p in [start, stop): the query-key pairs layer ``layer`` scores."""
        window = self.windows[layer]
        return sum(p + 1 if window is None else min(p + 1, window) for p in range(start, stop))

    def forward(self, start: int, stop: int) -> Work:
        """The tokens at positions [start, stop) of one sequence through every block (no unembedding)."""
        attention = 4 * self.n_heads * self.d_head
        n = stop - start
        flops = sum(2 * P * n + attention * self.keys(start, stop, l) for l, P in enumerate(self.layer_params))
        return Work(float(flops), n)

    def unembed(self, positions: int) -> Work:
        """``positions`` positions through the unembedding (forward, or its activation gradient)."""
        return Work(float(2 * self.d_model * self.d_vocab * positions), 0, positions)

    def backward(self, start: int, stop: int, layers: Sequence[int]) -> float:
        """Backward of the tokens at positions [start, stop) of one sequence: activation gradients
        through ``layers``, weight gradients of every trained weight (unembedding not included)."""
        n = stop - start
        attention = 8 * self.n_heads * self.d_head
        activation = sum(2 * self.layer_params[l] * n + attention * self.keys(start, stop, l) for l in layers)
        return float(activation + 2 * sum(self.trained_params) * n)

    def trained_layers(self) -> list[int]:
        return [l for l, t in enumerate(self.trained_params) if t]

    def gd_layers(self) -> list[int]:
        """GD's backward path: every block from the lowest trained one up."""
        trained = self.trained_layers()
        return list(range(trained[0], self.n_layers)) if trained else []

    def evaluation(
        self,
        prefix_len: int,
        query_lens: Sequence[int],
        label_lens: Sequence[int],
        content_free_len: int | None = None,
    ) -> Work:
        """One setting's evaluation: the prefix once, every query (and the content-free one, when
        calibrating) scored on every class (see the module docstring)."""
        work = self.forward(0, prefix_len)
        a0 = label_lens[0]
        lens = list(query_lens) + ([content_free_len] if content_free_len is not None else [])
        for q in lens:
            end = prefix_len + q
            work = work + self.forward(prefix_len, end + a0) + self.unembed(a0)
            for length in label_lens[1:]:
                work = work + self.forward(end, end + length - 1) + self.unembed(length - 1)
        return work

    def training_step(self, seq_lens: Sequence[int], counted: int, method: str = "gd") -> Work:
        """One GD (``"gd"``) or LCGD (``"lcgd"``, simultaneous schedule) step on a batch of
        demonstrations of ``seq_lens`` real tokens with ``counted`` loss positions (in total)."""
        if method not in ("gd", "lcgd"):
            raise ConfigError(f"method must be 'gd' or 'lcgd', got {method!r}")
        layers = self.gd_layers() if method == "gd" else self.trained_layers()
        lenses = 1 if method == "gd" else self.n_layers
        lens_backward = (1 if layers else 0) if method == "gd" else len(layers)
        work = Work()
        for n in seq_lens:
            work = work + self.forward(0, n) + Work(self.backward(0, n, layers))
        unembedded = self.unembed(counted * lenses)
        return work + unembedded + Work(self.unembed(counted * lens_backward).flops)

    def training(self, batches: Sequence[tuple[Sequence[int], int]], method: str = "gd") -> list[Work]:
        """Every step's work; ``batches`` = (real lengths of the batch's sequences, counted positions)."""
        return [self.training_step(lens, counted, method) for lens, counted in batches]


def training_batches(
    demo_sequences: Sequence[Sequence[int]], answer_lengths: Sequence[int], cfg: FinetuneConfig
) -> list[tuple[list[int], int]]:
    """The steps of :func:`icl_lens.training.finetune.demo_batches` as (real sequence lengths, counted positions)."""
    return [
        ([int(n) for n in mask.sum(dim=1)], int((loss_mask > 0).sum()))
        for _, mask, loss_mask in demo_batches(demo_sequences, answer_lengths, cfg, "cpu")
    ]


def sweep_work(training: Sequence[Work], n_rates: int, scored_rates: int, dev_evaluation: Work) -> Work:
    """The lr sweep's work: the first training step once, the others at every rate, and the dev-slice
    evaluation of every scored rate."""
    if not training:
        return dev_evaluation.times(scored_rates)
    rest = Work()
    for step in training[1:]:
        rest = rest + step
    return training[0] + rest.times(n_rates) + dev_evaluation.times(scored_rates)


@dataclass(frozen=True)
class PhaseInputs:
    """What the phases of one cell need besides the prompts (:func:`run_phases`).

    Args:
        dev_queries, dev_labels: the lr sweep's dev slice (token ids of each query, its class).
        content_free_query: token ids of the content-free query of contextual calibration (None: off).
        finetune: FT's and LCGD's training setup (its ``lr`` is replaced by ``lr`` or the sweep's choice).
        lr_grid: the rates the sweep trains.
        lr: FT's and LCGD's rate (None: the sweep's choice).
    """

    dev_queries: Sequence[Sequence[int]]
    dev_labels: Sequence[int]
    content_free_query: Sequence[int] | None = None
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lr_grid: tuple[float, ...] = DEFAULT_LR_GRID
    lr: float | None = None

    def __post_init__(self) -> None:
        validate_fields(self, {"lr_grid": POSITIVE, "lr": POSITIVE, "dev_labels": NON_NEGATIVE})
        object.__setattr__(self, "dev_queries", tuple(tuple(q) for q in self.dev_queries))
        object.__setattr__(self, "dev_labels", tuple(self.dev_labels))
        object.__setattr__(self, "lr_grid", tuple(float(x) for x in self.lr_grid))
        if self.content_free_query is not None:
            object.__setattr__(self, "content_free_query", tuple(self.content_free_query))
        if not self.lr_grid:
            raise ConfigError("lr_grid is empty: give at least one learning rate")
        if not self.dev_queries or len(self.dev_queries) != len(self.dev_labels):
            raise ConfigError(
                f"the dev slice needs at least one query and one label per query, got {len(self.dev_queries)} "
                f"queries and {len(self.dev_labels)} labels"
            )


@dataclass
class PhaseTiming:
    """One phase: wall time, the FLOPs it must do, and the achieved rate against the matmul peak."""

    phase: str
    seconds: float
    flops: float
    tokens: int
    unembedded: int
    flop_per_s: float
    fraction_of_peak: float


PHASES = ("eval_zsl", "eval_icl", "lr_sweep", "train_ft", "eval_ft", "train_lcgd", "eval_lcgd")
"""The phases of one cell, in the order :func:`icl_lens.cell.experiment.run_experiment` runs them (its
``timing_seconds`` keys)."""


@uses_cpu_matmul
def run_phases(
    model: Model, prompts: EncodedPrompts, inputs: PhaseInputs, batch_size: int = 16, progress: bool = False
) -> tuple[dict[str, tuple[float, Work]], dict[str, Any]]:
    """Run the phases of one cell on ``prompts`` as the experiment does; return each phase's wall
    time and :class:`Work`, and what was run (queries, rates, the chosen rate)."""
    device = str(model.cfg.device)
    count = FlopCount.of(model, inputs.finetune.params)
    labels = prompts.labels
    label_lens = [len(l) for l in labels]
    cf = list(inputs.content_free_query) if inputs.content_free_query is not None else None
    cf_len = len(cf) if cf is not None else None
    query_lens = [len(q) for q in prompts.queries]
    out: dict[str, tuple[float, Work]] = {}

    def timed(name: str, run, work_of):
        _sync(device)
        t0 = time.perf_counter()
        value = run()
        _sync(device)
        out[name] = (time.perf_counter() - t0, work_of(value))
        return value

    def evaluation(setting_model: Model, prefix: list[int], queries, setting: str):
        run = evaluate(
            setting_model,
            prefix,
            queries,
            labels,
            setting=setting,
            n_start=prompts.n_start,
            batch_size=batch_size,
            progress=progress,
        )
        if cf is not None:
            run.class_scores = calibrate(
                run.class_scores, content_free_scores(setting_model, prefix, cf, labels, prompts.n_start)
            )
        return run

    def eval_work(prefix: list[int]):
        return lambda _: count.evaluation(len(prefix), query_lens, label_lens, cf_len)

    for name, prefix in (("eval_zsl", prompts.zsl_prefix), ("eval_icl", prompts.icl_prefix)):
        setting = name.removeprefix("eval_")
        timed(name, lambda p=prefix, s=setting: evaluation(model, p, prompts.queries, s), eval_work(prefix))

    steps = training_batches(prompts.demo_sequences, prompts.demo_answer_lengths, inputs.finetune)
    gd_steps = count.training(steps, "gd")
    dev_eval = count.evaluation(len(prompts.zsl_prefix), [len(q) for q in inputs.dev_queries], label_lens, cf_len)
    choice = timed(
        "lr_sweep",
        lambda: sweep_learning_rate(
            model,
            prompts.demo_sequences,
            prompts.demo_answer_lengths,
            inputs.finetune,
            score_prefix=prompts.zsl_prefix,
            score_queries=[list(q) for q in inputs.dev_queries],
            score_labels=list(inputs.dev_labels),
            label_tokens=labels,
            grid=inputs.lr_grid,
            n_start=prompts.n_start,
            batch_size=batch_size,
            progress=progress,
            content_free_query=cf,
        ),
        lambda c: sweep_work(gd_steps, len(inputs.lr_grid), sum(v is not None for v in c.scores.values()), dev_eval),
    )
    lr = inputs.lr if inputs.lr is not None else choice.lr
    train_cfg = replace(inputs.finetune, lr=lr)
    for name, method, trainer in (("ft", "gd", finetune), ("lcgd", "lcgd", layer_causal_finetune)):
        steps_work = count.training(steps, method)
        tuned, _ = timed(
            f"train_{name}",
            lambda trainer=trainer: trainer(
                model, prompts.demo_sequences, prompts.demo_answer_lengths, train_cfg, progress=progress
            ),
            lambda _, steps_work=steps_work: sum(steps_work, Work()),
        )
        timed(
            f"eval_{name}",
            lambda tuned=tuned, name=name: evaluation(tuned, prompts.zsl_prefix, prompts.queries, name),
            eval_work(prompts.zsl_prefix),
        )
        del tuned
    setup = {
        "n_queries": len(prompts.queries),
        "n_dev": len(inputs.dev_queries),
        "lr_grid": list(inputs.lr_grid),
        "lr_chosen_by_sweep": choice.lr,
        "lr": lr,
        "params": inputs.finetune.params,
        "calibration": cf is not None,
        "training_steps": len(steps),
    }
    return out, setup


@torch.no_grad()
def naive_loop(model: Model, prompts: EncodedPrompts, n: int):
    """Per query: the whole prompt, full ``run_with_cache``; returns scores and attn rows like evaluate."""
    prefix = prompts.icl_prefix
    answer = prompts.labels[0]
    scores, attn_out, attn_scores = [], [], []
    windows = attention_windows(model)
    for query in tqdm(prompts.queries[:n], desc="naive", leave=False):
        tokens = torch.tensor([prefix + query + answer], device=model.cfg.device)
        logits, cache = model.run_with_cache(tokens)
        log_probs = logits[0].float().log_softmax(-1)
        first = len(prefix) + len(query) - 1
        row = []
        for label in prompts.labels:
            if len(label) == 1:
                row.append(log_probs[first, label[0]])
            else:
                seq = torch.tensor([prefix + query + label], device=model.cfg.device)
                lp = model(seq)[0].float().log_softmax(-1)
                row.append(torch.stack([lp[first + j, t] for j, t in enumerate(label)]).mean())
        scores.append(torch.stack(row).cpu())
        rec = tokens.shape[1] - 1
        attn_out.append(torch.stack([cache[ATTN_OUT.format(layer=l)][0, rec] for l in range(model.cfg.n_layers)]).cpu())
        key_pos = torch.arange(len(prefix), tokens.shape[1])
        # keys a sliding-window layer does not attend to are -inf in the raw scores; evaluate records 0 there
        attn_scores.append(
            torch.stack(
                [
                    zero_unattended(
                        cache[ATTN_SCORES.format(layer=l)][0, :, rec, len(prefix) :].cpu(),
                        attended_keys(torch.tensor(rec), key_pos, window)[None, :],
                    )
                    for l, window in enumerate(windows)
                ]
            )
        )
        del cache
    return torch.stack(scores), attn_out, attn_scores


@uses_cpu_matmul
def run_benchmark(
    model: Model,
    prompts: EncodedPrompts,
    n_naive: int = 8,
    n_fast: int = 64,
    batch_size: int = 16,
    phases: PhaseInputs | None = None,
) -> BenchmarkResult:
    """Time both paths on the same queries and check they agree; with ``phases``, also time the phases
    of one cell on ``prompts`` (its first ``n_fast`` queries) against their FLOP count."""
    device = str(model.cfg.device)
    n_naive = min(n_naive, len(prompts.queries))
    n_fast = min(n_fast, len(prompts.queries))
    # warm-up (allocations, kernels)
    evaluate(model, prompts.icl_prefix, prompts.queries[:2], prompts.labels, batch_size=2, progress=False)

    _sync(device)
    t0 = time.perf_counter()
    naive_scores, naive_out, naive_rows = naive_loop(model, prompts, n_naive)
    _sync(device)
    naive_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    fast = evaluate(
        model,
        prompts.icl_prefix,
        prompts.queries[:n_fast],
        prompts.labels,
        n_start=prompts.n_start,
        batch_size=batch_size,
        progress=False,
    )
    _sync(device)
    fast_s = time.perf_counter() - t0

    diff_scores = float((fast.class_scores[:n_naive] - naive_scores).abs().max())
    diff_acts = 0.0
    for i in range(n_naive):
        for layer in range(model.cfg.n_layers):
            diff_acts = max(
                diff_acts, float((fast.activations[ATTN_OUT.format(layer=layer)][i] - naive_out[i][layer]).abs().max())
            )
            n_keys = naive_rows[i].shape[-1]
            diff_acts = max(
                diff_acts,
                float(
                    (fast.activations[ATTN_SCORES.format(layer=layer)][i, :, :n_keys] - naive_rows[i][layer])
                    .abs()
                    .max()
                ),
            )

    # achieved FLOP/s of one plain batched forward over queries, prefix included in the keys
    queries = prompts.queries[:batch_size]
    width = max(len(q) for q in queries)
    tokens = torch.tensor(
        [prompts.icl_prefix + q + [q[-1]] * (width - len(q)) for q in queries], device=model.cfg.device
    )
    with torch.no_grad():
        final_residual(model, tokens, torch.ones_like(tokens))
        _sync(device)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            final_residual(model, tokens, torch.ones_like(tokens))
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    seq = tokens.shape[1]
    flops = forward_flops(model, len(queries), seq, seq / 2)  # causal: each query sees half the keys on average
    achieved = flops / best
    phase_times: dict[str, Any] = {}
    setup = None
    if phases is not None:
        cell_prompts = replace(prompts, queries=prompts.queries[:n_fast])
        phase_times, setup = run_phases(model, cell_prompts, phases, batch_size)
    peaks = matmul_peaks(device, model.cfg.dtype)
    peak = max(peaks.values())
    phase_rows = [
        PhaseTiming(
            phase=name,
            seconds=seconds,
            flops=work.flops,
            tokens=work.tokens,
            unembedded=work.unembedded,
            flop_per_s=work.flops / seconds,
            fraction_of_peak=work.flops / seconds / peak,
        )
        for name, (seconds, work) in phase_times.items()
    ]
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchmarkResult(
        device=device,
        dtype=str(model.cfg.dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
        k=prompts.k,
        prefix_tokens=len(prompts.icl_prefix),
        n_naive=n_naive,
        n_fast=n_fast,
        batch_size=batch_size,
        naive_examples_per_s=n_naive / naive_s,
        fast_examples_per_s=n_fast / fast_s,
        speedup=(n_fast / fast_s) / (n_naive / naive_s),
        max_abs_diff_scores=diff_scores,
        max_abs_diff_activations=diff_acts,
        forward_tokens=int(tokens.numel()),
        forward_seconds=best,
        forward_flop_per_s=achieved,
        matmul_peak_flop_per_s=peak,
        matmul_peak_by_kernel=peaks,
        matmul_kernel=model_kernel(model),
        forward_fraction_of_peak=achieved / peak,
        peak_memory_mb=peak_mb,
        phases=phase_rows,
        phase_setup=setup,
    )
