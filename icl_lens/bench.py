"""Benchmark: the naive per-query loop vs the prefix-cached, batched evaluation (issue: performance).

The naive loop is what the reference code and a plain TransformerLens loop do: re-encode the whole
demonstration prefix for every query and keep a full activation cache (``run_with_cache`` with no
filter), then read the recorded position out of it. The optimized path is
:func:`icl_lens.evaluation.evaluate`: the prefix is encoded once, its key/value cache reused for
batches of queries, and only the needed hooks at the needed position are kept.

Everything is measured in one process on the same machine: examples/s of both paths and their ratio,
the max |Δ| of class scores and recorded activations between them, the batched forward pass's
achieved FLOP/s beside a dense matmul peak measured in the same run, and peak memory.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from icl_lens.evaluation import ATTN_OUT, ATTN_SCORES, evaluate
from icl_lens.models.backends import Model, block_parameters, final_residual
from icl_lens.prompts import EncodedPrompts

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
    forward_fraction_of_peak: float
    peak_memory_mb: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def report(self) -> str:
        return "\n".join(
            [
                f"device {self.device} ({self.dtype}, {self.threads} threads); k={self.k} "
                f"({self.prefix_tokens} prefix tokens)",
                f"naive loop : {self.naive_examples_per_s:8.2f} examples/s  ({self.n_naive} queries, batch 1, "
                "full cache)",
                f"optimized  : {self.fast_examples_per_s:8.2f} examples/s  ({self.n_fast} queries, "
                f"batch {self.batch_size}, prefix cache, filtered hooks)",
                f"speed-up   : {self.speedup:8.1f}x",
                f"max |Δ|    : class scores {self.max_abs_diff_scores:.2e}, recorded activations "
                f"{self.max_abs_diff_activations:.2e}",
                f"forward    : {self.forward_flop_per_s / 1e9:8.1f} GFLOP/s on {self.forward_tokens} tokens "
                f"({self.forward_seconds:.3f} s)",
                f"matmul peak: {self.matmul_peak_flop_per_s / 1e9:8.1f} GFLOP/s  -> forward at "
                f"{100 * self.forward_fraction_of_peak:.0f}% of peak",
                f"peak memory: {self.peak_memory_mb:8.0f} MB",
            ]
        )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best achieved FLOP/s of a square matmul (2·n³ FLOPs) on this device and dtype."""
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


def forward_flops(model: Model, batch: int, query_len: int, key_len: float) -> float:
    """Dense FLOPs of one forward pass without the unembedding: 2·(block params)·tokens plus the
    attention products (QKᵀ and AV: 2·2·n_heads·d_head·query_len·key_len per layer and sequence)."""
    block_params = sum(p.numel() for p in block_parameters(model).values() if p.ndim > 1)
    tokens = batch * query_len
    attention = 4 * model.cfg.n_layers * model.cfg.n_heads * model.cfg.d_head * query_len * key_len * batch
    return 2 * block_params * tokens + attention


@torch.no_grad()
def naive_loop(model: Model, prompts: EncodedPrompts, n: int):
    """Per query: the whole prompt, full ``run_with_cache``; returns scores and attn rows like evaluate."""
    prefix = prompts.icl_prefix
    answer = prompts.labels[0]
    scores, attn_out, attn_scores = [], [], []
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
        attn_scores.append(
            torch.stack(
                [cache[ATTN_SCORES.format(layer=l)][0, :, rec, len(prefix) :] for l in range(model.cfg.n_layers)]
            ).cpu()
        )
        del cache
    return torch.stack(scores), attn_out, attn_scores


def run_benchmark(
    model: Model, prompts: EncodedPrompts, n_naive: int = 8, n_fast: int = 64, batch_size: int = 16
) -> BenchmarkResult:
    """Time both paths on the same queries and check they agree."""
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
    peak = matmul_peak(device, model.cfg.dtype)
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
        forward_fraction_of_peak=achieved / peak,
        peak_memory_mb=peak_mb,
    )
