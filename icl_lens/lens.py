"""The logit lens: any residual stream read through the model's own final norm and unembedding.

This is exactly what the model does after its last block (``ln_final`` -> ``unembed`` -> optional
logit soft-cap), applied to any layer's residual stream; the backend
(:mod:`icl_lens.models.backends`) supplies the norm and the unembedding of a ``HookedTransformer``
or a ``TransformerBridge``.
Evaluation uses it to unembed only the positions it scores (cheap for large vocabularies), and
layer-causal GD (:mod:`icl_lens.training.lcgd`) uses it as every layer's prediction head.

:func:`lens_token_losses` is the lens read as a next-token cross-entropy, as GD and LCGD train on
it. It never holds the logits: the vocabulary is swept in chunks with a running log-sum-exp, and the
gradient with respect to the residual is formed in the same sweep, so each chunk of ``W_U`` is read
from memory once for the forward and the backward together (the "fused linear cross-entropy" of
large-vocabulary training). With ``W_U`` stored vocabulary-major, as
:func:`icl_lens.models.loading.load_model` lays it out, this is faster than the plain logits and gives
the same losses and gradients to float rounding (2e-6; timings in docs/performance.md).

The unembedding is applied as ``residual @ W_U + b_U`` (one fused ``addmm``) on the model's own
parameters rather than through ``model.unembed``: TransformerLens 3.x's ``Unembed.forward`` makes a
contiguous copy of ``W_U.T`` on every call (671 MB for Gemma-3's 262k vocabulary), which dominated
LCGD's step time.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch.autograd.function import once_differentiable

from icl_lens._shapes import shape_checked
from icl_lens.errors import MetricInputError
from icl_lens.models.backends import Model, backend_of
from icl_lens.models.cpu_matmul import uses_cpu_matmul


@shape_checked
@uses_cpu_matmul
def logit_lens(
    model: Model, residual: Float[torch.Tensor, "batch pos d_model"]
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """Logits the model would output if ``residual`` were its final residual stream."""
    if residual.ndim != 3:
        raise MetricInputError(f"logit_lens expects [batch, pos, d_model], got shape {tuple(residual.shape)}")
    backend = backend_of(model)
    W_U, b_U = backend.unembedding(model)
    logits = torch.nn.functional.linear(backend.final_norm(model, residual), W_U.T, b_U)
    cap = backend.logit_soft_cap(model)
    return logits if cap is None else cap * torch.tanh(logits / cap)


LENS_LOSS_CHUNK = 2048
"""Vocabulary columns per chunk of :func:`lens_token_losses`: a chunk of ``W_U`` (5 MiB at
d_model 640) and its logits stay in the CPU's cache between the forward and the backward product
(larger chunks were slower: docs/performance.md)."""


def lens_loss_floats_per_row(model: Model) -> int:
    """fp32 logits :func:`lens_token_losses` holds per row at once (a chunk where it runs fused,
    the whole vocabulary where it falls back to the plain logits): callers size their batches on it."""
    W_U, b_U = backend_of(model).unembedding(model)
    return LENS_LOSS_CHUNK if _fused_loss_applies(W_U, b_U) else int(W_U.shape[-1])


def _fused_loss_applies(W_U: torch.Tensor, b_U: torch.Tensor | None) -> bool:
    """The chunked loss runs on a frozen float32 unembedding; a trained one (its gradient is not
    formed there) or a half-precision one (whose plain logits are rounded in that precision) keeps
    the plain logits, so their numbers stay those of the model's own output."""
    frozen = not W_U.requires_grad and (b_U is None or not b_U.requires_grad)
    return frozen and W_U.dtype == torch.float32


@shape_checked
@uses_cpu_matmul
def lens_token_losses(
    model: Model, residual: Float[torch.Tensor, "rows d_model"], targets: Int[torch.Tensor, " rows"]
) -> Float[torch.Tensor, " rows"]:
    """Cross-entropy of predicting ``targets[i]`` from ``residual[i]`` read through the logit lens,
    one float32 loss per row, differentiable with respect to ``residual`` (and whatever it depends on).

    Equal to ``cross_entropy(logit_lens(model, residual), targets, reduction="none")`` to float
    rounding; where the unembedding is float32 and frozen it is computed in vocabulary chunks
    without holding the logits (see the module's docstring)."""
    if residual.ndim != 2 or targets.shape != residual.shape[:1]:
        raise MetricInputError(
            f"lens_token_losses expects residual [rows, d_model] and targets [rows], got {tuple(residual.shape)} "
            f"and {tuple(targets.shape)}"
        )
    backend = backend_of(model)
    W_U, b_U = backend.unembedding(model)
    if not _fused_loss_applies(W_U, b_U):
        logits = logit_lens(model, residual[None]).squeeze(0).float()  # squeeze: a view in backward
        return torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    normed = backend.final_norm(model, residual)
    return _ChunkedLensCrossEntropy.apply(normed, W_U, b_U, targets, backend.logit_soft_cap(model))


class _ChunkedLensCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of ``cap·tanh((x @ W_U + b_U) / cap)`` (no cap: the plain logits)
    whose input gradient is formed in the forward sweep over the vocabulary; each row's loss depends
    on its own row only, so the backward scales each row's gradient by its incoming gradient."""

    @staticmethod
    def forward(ctx, normed, W_U, b_U, targets, cap):
        losses, grad = _chunked_lens_cross_entropy(normed, W_U, b_U, targets, cap, normed.requires_grad)
        ctx.save_for_backward(grad)
        ctx.input_dtype = normed.dtype
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_losses):
        (grad,) = ctx.saved_tensors
        return (grad * grad_losses[:, None].to(grad.dtype)).to(ctx.input_dtype), None, None, None, None


@torch.no_grad()
def _chunked_lens_cross_entropy(
    x: Float[torch.Tensor, "rows d_model"],
    W_U: Float[torch.Tensor, "d_model d_vocab"],
    b_U: Float[torch.Tensor, " d_vocab"] | None,
    targets: Int[torch.Tensor, " rows"],
    cap: float | None,
    want_grad: bool,
) -> tuple[Float[torch.Tensor, " rows"], Float[torch.Tensor, "rows d_model"] | None]:
    """Losses and d loss_i / d x_i in one sweep over vocabulary chunks.

    Kept per row, over the tokens other than the target and rescaled whenever the running maximum
    ``m`` grows: ``s = Σ exp(z - m)`` and ``acc = Σ exp(z - m) · dz/dx``. Then with the target's
    ``e = exp(z_t - m)``: ``loss = m + log(s + e) - z_t`` and ``grad = (acc - s · dz_t/dx) / (s + e)``,
    which is ``Σ_v (p_v - [v = t]) dz_v/dx`` without subtracting two near-equal vectors when the
    target is likely (``1 - p_t`` is ``s / (s + e)``, not one minus a rounded probability)."""
    x = x.float()
    rows, d_vocab = x.shape[0], W_U.shape[-1]
    # W_U stored [d_vocab, d_model]-contiguous (as load_model lays it out): a chunk is contiguous
    # rows, multiplied as chunk @ xᵀ, the faster product for few rows (40 rows: 1.3x on 2 cores)
    vocab_rows = W_U.T.is_contiguous()
    x_t = x.T.contiguous() if vocab_rows else x.T
    running_max = torch.full((rows,), -torch.inf, device=x.device)
    others = torch.zeros(rows, device=x.device)
    acc = torch.zeros_like(x) if want_grad else None
    target_chunk = torch.div(targets, LENS_LOSS_CHUNK, rounding_mode="floor")
    for index, start in enumerate(range(0, d_vocab, LENS_LOSS_CHUNK)):
        W_chunk = W_U[:, start : start + LENS_LOSS_CHUNK]
        b_chunk = None if b_U is None else b_U[start : start + LENS_LOSS_CHUNK]
        if vocab_rows:  # [rows, chunk] seen through a transposed view of the [chunk, rows] product
            z = (W_chunk.T @ x_t if b_chunk is None else torch.addmm(b_chunk[:, None], W_chunk.T, x_t)).T
        else:
            z = x @ W_chunk if b_chunk is None else torch.addmm(b_chunk, x, W_chunk)
        slope = None
        if cap is not None:
            z = torch.tanh(z.div_(cap))
            slope = 1 - z.square() if want_grad else None  # d(cap·tanh(u/cap))/du
            z.mul_(cap)
        new_max = torch.maximum(running_max, z.amax(dim=1))
        rescale = torch.exp(running_max - new_max)
        weights = z.sub_(new_max[:, None]).exp_()  # exp(z - m), in place of the logits
        here = (target_chunk == index).nonzero().squeeze(1)
        weights[here, targets[here] - start] = 0.0  # the target is added in closed form below
        others = others * rescale + weights.sum(dim=1)
        if acc is not None:
            if slope is not None:
                weights.mul_(slope)
            acc.mul_(rescale[:, None]).addmm_(weights, W_chunk.T)
        running_max = new_max
    target_columns = W_U[:, targets].T  # [rows, d_model]: dz_t/dx before the cap
    z_target = (x * target_columns).sum(dim=1)
    if b_U is not None:
        z_target = z_target + b_U[targets]
    if cap is not None:
        tanh_target = torch.tanh(z_target / cap)
        z_target = cap * tanh_target
        target_columns = target_columns * (1 - tanh_target.square())[:, None]
    total = others + torch.exp(z_target - running_max)
    losses = running_max + total.log() - z_target
    if acc is None:
        return losses, None
    return losses, (acc - others[:, None] * target_columns) / total[:, None]
