"""Float32 matrix products on this CPU: PyTorch's BLAS against oneDNN, the two kernels
``icl_lens.models.cpu_matmul`` chooses between (``ICL_LENS_CPU_MATMUL``).

For the products of a transformer's passes at several token counts (the MLP's two products, a
vocabulary chunk of the lens loss, and a square product) it prints each kernel's GFLOP/s (best of
``--repeats``) and its largest error against the float64 product, relative to the largest entry,
and the kernel ``auto`` picks here and why. Shapes default to Gemma-3-270M's (d_model 640, d_mlp
2048; the lens loss's vocabulary chunks of 2048 rows)::

    python experiments/bench_cpu_matmul.py
    python experiments/bench_cpu_matmul.py --d-model 576 --d-mlp 1536 --rows 1,35,430  # SmolLM2-135M
"""

# ruff: noqa: T201  (a script: it prints its measurement)

from __future__ import annotations

import argparse
import time

import torch

from icl_lens.models.cpu_matmul import available_cpu_kernels, cpu_matmul_facts, forced_kernel


def best_seconds(product, repeats: int) -> float:
    product()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - t0)
    return best


def products(d_model: int, d_mlp: int, vocab_chunk: int, counts: list[int]) -> list[tuple[str, int, int, int, bool]]:
    """(name, m, k, n, weight_first) of each product: ``[m, k] @ [k, n]``; ``weight_first`` multiplies
    a contiguous weight block by the transposed activations, as the lens loss does."""
    shapes = [("MLP in", m, d_model, d_mlp, False) for m in counts]
    shapes += [("MLP out", m, d_mlp, d_model, False) for m in counts if m > 1]
    shapes += [("lens chunk", vocab_chunk, d_model, m, True) for m in counts if m > 1]
    return shapes + [("square", 2048, 2048, 2048, False)]


def measure(shapes: list[tuple[str, int, int, int, bool]], repeats: int) -> list[dict]:
    """Each product's rate and error on each available kernel."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    for name, m, k, n, weight_first in shapes:
        if weight_first:  # W_U's chunk [m, k] (rows of a vocabulary-major matrix) @ activationsᵀ [k, n]
            a = torch.randn(m, k, generator=generator)
            b = torch.randn(n, k, generator=generator).T.contiguous()
        else:  # activations [m, k] @ a weight as nn.Linear stores it ([n, k]), seen [k, n]
            a = torch.randn(m, k, generator=generator)
            b = torch.randn(n, k, generator=generator).T
        exact = a.double() @ b.double()
        row = {"name": name, "shape": (m, k, n)}
        for kernel in available_cpu_kernels():
            with forced_kernel(kernel):
                seconds = best_seconds(lambda a=a, b=b: a @ b, repeats)
                error = float((a @ b).double().sub(exact).abs().max() / exact.abs().max())
            row[kernel] = (2 * m * k * n / seconds / 1e9, error)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=640)
    parser.add_argument("--d-mlp", type=int, default=2048)
    parser.add_argument("--vocab-chunk", type=int, default=2048, help="the lens loss's vocabulary rows per product")
    parser.add_argument("--rows", default="1,8,35,430,2048", help="comma-separated token counts (rows)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    counts = [int(r) for r in args.rows.split(",")]
    shapes = products(args.d_model, args.d_mlp, args.vocab_chunk, counts)
    facts = cpu_matmul_facts()
    kernels = available_cpu_kernels()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; kernels: {', '.join(kernels)}")
    print(f"auto picks here: {facts['cpu_matmul']} ({facts['cpu_matmul_reason']})")
    header = f"{'product':>37}" + "".join(f" {kernel + ' GFLOP/s':>16} {'rel. error':>10}" for kernel in kernels)
    print(header + ("   oneDNN / BLAS" if "onednn" in kernels else ""))
    for row in measure(shapes, args.repeats):
        m, k, n = row["shape"]
        line = f"{row['name']:>10} {f'[{m}, {k}] @ [{k}, {n}]':>26}"
        for kernel in kernels:
            rate, error = row[kernel]
            line += f" {rate:16.1f} {error:10.1e}"
        if "onednn" in kernels:
            line += f"   {row['onednn'][0] / row['blas'][0]:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
