"""Float32 matrix products on this CPU: PyTorch's BLAS against oneDNN, the two kernels
``icl_lens.models.cpu_matmul`` chooses between (``ICL_LENS_CPU_MATMUL``).

For each product shape of a transformer's forward pass (rows × d_model @ d_model × d_mlp, the
unembedding chunk of the lens loss, a square product) it prints each kernel's GFLOP/s (best of
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


def measure(shapes: list[tuple[int, int, int]], repeats: int) -> list[dict]:
    """Each shape's rate and error on each available kernel."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=generator)
        b = torch.randn(n, k, generator=generator).T  # a weight as nn.Linear stores it, seen [k, n]
        exact = a.double() @ b.double()
        row = {"shape": (m, k, n)}
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
    parser.add_argument("--rows", default="1,8,35,430,2048", help="comma-separated row counts")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    counts = [int(r) for r in args.rows.split(",")]
    shapes = [(m, args.d_model, args.d_mlp) for m in counts]
    shapes += [(m, args.d_mlp, args.d_model) for m in counts if m > 1]
    shapes += [(m, args.d_model, args.vocab_chunk) for m in counts if m > 1]
    shapes.append((2048, 2048, 2048))
    facts = cpu_matmul_facts()
    kernels = available_cpu_kernels()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; kernels: {', '.join(kernels)}")
    print(f"auto picks here: {facts['cpu_matmul']} ({facts['cpu_matmul_reason']})")
    header = f"{'product':>24}" + "".join(f" {kernel + ' GFLOP/s':>16} {'rel. error':>10}" for kernel in kernels)
    print(header + ("   oneDNN / BLAS" if "onednn" in kernels else ""))
    for row in measure(shapes, args.repeats):
        m, k, n = row["shape"]
        line = f"{f'[{m}, {k}] @ [{k}, {n}]':>24}"
        for kernel in kernels:
            rate, error = row[kernel]
            line += f" {rate:16.1f} {error:10.1e}"
        if "onednn" in kernels:
            line += f"   {row['onednn'][0] / row['blas'][0]:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
