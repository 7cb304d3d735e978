"""The float32 matrix products on a CPU: oneDNN where the BLAS takes a slow path.

PyTorch's x86 wheels multiply float32 matrices with Intel MKL, which runs its AVX-512 kernels on
Intel CPUs only: on another vendor's CPU it takes an AVX2 path even where the CPU has AVX-512.
oneDNN, which the same wheels ship, picks its kernels by instruction set, and so runs float32
products much faster on such CPUs (``python experiments/bench_cpu_matmul.py`` measures both; the
rates measured on an AMD EPYC are in docs/performance.md). Inside :func:`cpu_matmul`, every
float32 CPU ``mm``, ``addmm``, ``addmm_`` and single-batch ``bmm`` — forward and backward, in
TransformerLens's modules, Hugging Face's and this package's own products alike — runs as a oneDNN
matmul instead. Both kernels are
IEEE float32 with float32 accumulation; they sum in a different order, so results agree to float32
rounding, not bit for bit (on the default model: class scores within about 1e-5, finetuning updates
within 3e-5 of their size).

The kernel is chosen by the environment variable ``ICL_LENS_CPU_MATMUL`` (``icl-lens
--cpu-matmul`` sets it, so that worker processes inherit it):

* ``auto`` (default): oneDNN on an x86-64 CPU that is not Intel's, when PyTorch's BLAS is MKL and
  oneDNN is available and enabled; the BLAS otherwise (on Intel CPUs MKL already runs its AVX-512
  kernels; on ARM another BLAS is in use).
* ``onednn``: oneDNN wherever it is available (an error where it is not).
* ``blas``: PyTorch's default products, e.g. to reproduce results bit for bit across CPUs.

Before first use, oneDNN's product is checked against the exact (float64) product of a small random
float32 product; a disagreement beyond float32 rounding falls back to the BLAS with a warning, never a
wrong number.
GPU models and other dtypes are never rerouted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

from icl_lens.errors import ConfigError

logger = logging.getLogger(__name__)

ENV_VAR = "ICL_LENS_CPU_MATMUL"
CPU_MATMUL_KERNELS = ("auto", "onednn", "blas")

Kernel = Literal["onednn", "blas"]
F = TypeVar("F", bound=Callable[..., Any])

_aten = torch.ops.aten


def requested_kernel() -> str:
    """The kernel ``ICL_LENS_CPU_MATMUL`` asks for (``auto`` when unset)."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in CPU_MATMUL_KERNELS:
        raise ConfigError(f"{ENV_VAR}={value!r}: choose one of {', '.join(CPU_MATMUL_KERNELS)}")
    return value


def cpu_vendor() -> str | None:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``, ...), None where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    text = platform.processor()  # Windows: "AMD64 Family 25 Model 97 Stepping 2, AuthenticAMD"
    for vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine"):
        if vendor in text:
            return vendor
    return None


def onednn_unavailable() -> str | None:
    """Why oneDNN products cannot be used in this PyTorch, None if they can."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch was built without oneDNN"
    if not torch.backends.mkldnn.enabled:
        return "oneDNN is disabled (torch.backends.mkldnn.enabled is False)"
    try:
        _ = torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return "this PyTorch has no mkldnn._linear_pointwise operator"
    return None


def available_cpu_kernels() -> list[Kernel]:
    """The float32 CPU kernels this PyTorch can run: ``blas``, and ``onednn`` where available."""
    kernels: list[Kernel] = ["blas"]
    if onednn_unavailable() is None:
        kernels.append("onednn")
    return kernels


def _auto_choice() -> tuple[Kernel, str]:
    reason = onednn_unavailable()
    if reason is not None:
        return "blas", reason
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "blas", f"not an x86-64 CPU ({platform.machine()})"
    if not torch.backends.mkl.is_available():
        return "blas", "PyTorch's BLAS is not MKL"
    vendor = cpu_vendor()
    if vendor is None or vendor == "GenuineIntel":
        return "blas", f"MKL runs its own best kernels on this CPU ({vendor or 'vendor unknown'})"
    return "onednn", f"MKL takes a generic path on a {vendor} CPU"


@functools.cache
def _resolved(requested: str) -> tuple[Kernel, str]:
    if requested == "blas":
        return "blas", f"{ENV_VAR}=blas"
    if requested == "onednn":
        reason = onednn_unavailable()
        if reason is not None:
            raise ConfigError(f"{ENV_VAR}=onednn, but {reason}; use auto or blas")
        kernel: Kernel = "onednn"
        why = f"{ENV_VAR}=onednn"
    else:
        kernel, why = _auto_choice()
    if kernel == "onednn":
        problem = _self_check()
        if problem is not None:
            logger.warning("oneDNN float32 products disagree with the exact product (%s); using the BLAS", problem)
            return "blas", f"oneDNN failed its self-check: {problem}"
    logger.info("float32 CPU matrix products: %s (%s)", kernel, why)
    return kernel, why


class _Forced(threading.local):
    """This thread's forced kernels, innermost :func:`forced_kernel` last (dispatch modes are per
    thread too)."""

    def __init__(self) -> None:
        self.kernels: list[Kernel] = []


_forced = _Forced()


def cpu_matmul_kernel() -> Kernel:
    """The kernel float32 CPU products run on inside :func:`cpu_matmul`: ``onednn`` or ``blas``."""
    if _forced.kernels:
        return _forced.kernels[-1]
    return _resolved(requested_kernel())[0]


@contextlib.contextmanager
def forced_kernel(kernel: Kernel) -> Iterator[None]:
    """Run the float32 CPU products inside on ``kernel`` whatever ``ICL_LENS_CPU_MATMUL`` says, also
    inside an active :func:`cpu_matmul` (benchmarks comparing the kernels; tests)."""
    if kernel not in ("onednn", "blas"):
        raise ConfigError(f"kernel must be 'onednn' or 'blas', got {kernel!r}")
    if kernel == "onednn" and (reason := onednn_unavailable()) is not None:
        raise ConfigError(f"cannot force oneDNN products: {reason}")
    _forced.kernels.append(kernel)
    try:
        if kernel == "onednn" and not _active():
            with OneDNNProducts():
                yield
        else:
            yield
    finally:
        _forced.kernels.pop()


def model_kernel(model: Any) -> str:
    """The kernel ``model``'s products run on inside :func:`cpu_matmul`: ``onednn`` or ``blas`` for a
    float32 model on the CPU, ``default`` for any other (never rerouted)."""
    if not _runs_on_cpu(model) or getattr(getattr(model, "cfg", None), "dtype", torch.float32) != torch.float32:
        return "default"
    return cpu_matmul_kernel()


def cpu_matmul_facts() -> dict[str, str]:
    """The kernel and why, for the results' provenance."""
    kernel, why = _resolved(requested_kernel())
    return {"cpu_matmul": kernel, "cpu_matmul_reason": why}


def _linear(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b (+ bias)`` by oneDNN; ``b`` is [k, n], passed as the [n, k] weight it views."""
    return torch.ops.mkldnn._linear_pointwise.default(a, b.t(), bias, "none", [], "")


def _plain_matrix(t: Any) -> bool:
    """A float32 CPU matrix a BLAS could take as it is: row- or column-major with a leading
    dimension at least its length (slices of either), no broadcast (zero) strides, not empty."""
    if not (
        isinstance(t, torch.Tensor)
        and t.dtype == torch.float32
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and t.dim() == 2
        and t.numel() > 0
    ):
        return False
    rows, cols = t.shape
    row_stride, col_stride = t.stride()
    row_major = (col_stride == 1 or cols == 1) and (rows == 1 or row_stride >= cols)
    column_major = (row_stride == 1 or rows == 1) and (cols == 1 or col_stride >= rows)
    return row_major or column_major


def _unit(scale: Any) -> bool:
    return not isinstance(scale, torch.Tensor) and scale == 1


def _mm(a, b):
    if _plain_matrix(a) and _plain_matrix(b):
        return _linear(a, b)
    return NotImplemented


def _addmm(bias, a, b, *, beta=1, alpha=1):
    if not (_plain_matrix(a) and _plain_matrix(b) and _unit(beta) and _unit(alpha)):
        return NotImplemented
    if not (isinstance(bias, torch.Tensor) and bias.dtype == torch.float32 and bias.device.type == "cpu"):
        return NotImplemented
    n = b.shape[1]
    if bias.dim() == 1 and bias.shape[0] == n and bias.stride(0) == 1:
        return _linear(a, b, bias)
    out = _linear(a, b)
    try:
        return out.add_(bias)
    except RuntimeError:  # a bias that does not broadcast: let the original raise its own error
        return NotImplemented


def _addmm_(self, a, b, *, beta=1, alpha=1):
    if not (_plain_matrix(self) and _plain_matrix(a) and _plain_matrix(b) and _unit(beta) and _unit(alpha)):
        return NotImplemented
    if self.shape != (a.shape[0], b.shape[1]):
        return NotImplemented
    return self.add_(_linear(a, b))


def _bmm(a, b):
    if a.dim() == 3 and b.dim() == 3 and a.shape[0] == 1 and b.shape[0] == 1:
        product = _mm(a[0], b[0])
        if product is not NotImplemented:
            return product.unsqueeze(0)
    return NotImplemented


_REROUTED: dict[Any, Callable[..., Any]] = {
    _aten.mm.default: _mm,
    _aten.addmm.default: _addmm,
    _aten.addmm_.default: _addmm_,
    _aten.bmm.default: _bmm,
}


class OneDNNProducts(TorchDispatchMode):
    """Reroutes float32 CPU matrix products to oneDNN (see the module docstring); every other op,
    and any product it does not cover (other dtypes, devices, broadcast strides, scaled ``addmm``),
    runs unchanged."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _REROUTED.get(func)
        if handler is not None and (not _forced.kernels or _forced.kernels[-1] == "onednn"):
            result = handler(*args, **kwargs)
            if result is not NotImplemented:
                return result
        return func(*args, **kwargs)


def _self_check() -> str | None:
    """Compare oneDNN's ``addmm`` and ``mm`` (row- and column-major operands) on a small float32
    product with its exact (float64) value; the problem found, None if none."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(37, 96, generator=generator)
    b = torch.randn(96, 53, generator=generator)
    bias = torch.randn(53, generator=generator)
    expected = (a.double() @ b.double() + bias.double()).float()
    try:
        with OneDNNProducts():
            got = torch.addmm(bias, a, b)
            got_t = (b.T @ a.T).T + bias  # column-major operands
    except RuntimeError as error:
        return f"{type(error).__name__}: {error}"
    tolerance = 1e-4 * float(expected.abs().max())
    worst = max(float((got - expected).abs().max()), float((got_t - expected).abs().max()))
    if not worst <= tolerance:
        return f"largest difference {worst:.3g} on a [37, 96] @ [96, 53] product"
    return None


def _active() -> bool:
    return any(isinstance(mode, OneDNNProducts) for mode in _get_current_dispatch_mode_stack())


def _runs_on_cpu(model: Any) -> bool:
    """Whether ``model`` (or the ``student`` model an object holds) is on the CPU; unknown: True."""
    model = getattr(model, "student", model)
    cfg = getattr(model, "cfg", None)
    device = getattr(cfg, "device", None)
    if device is None:
        return True
    return torch.device(device).type == "cpu"


@contextlib.contextmanager
def cpu_matmul(model: Any = None) -> Iterator[Kernel]:
    """Run float32 CPU matrix products on the chosen kernel (:func:`cpu_matmul_kernel`) inside.

    ``model``: skip rerouting for a model that is not on the CPU (the dispatch costs a few
    microseconds per operation there for nothing). Nested uses cost nothing. Yields the kernel.
    """
    if model is not None and not _runs_on_cpu(model):
        yield "blas"
        return
    kernel = cpu_matmul_kernel()
    if kernel != "onednn" or _active():
        yield kernel
        return
    with OneDNNProducts():
        yield kernel


def uses_cpu_matmul(fn: F) -> F:
    """Decorate a function whose first argument is the model (or holds it as ``student``): its
    products run inside :func:`cpu_matmul`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        model = args[0] if args else kwargs.get("model")
        with cpu_matmul(model):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
