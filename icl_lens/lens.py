"""The logit lens: any residual stream read through the model's own final norm and unembedding.

This is exactly what the model does after its last block (``ln_final`` -> ``unembed`` -> optional
logit soft-cap), applied to any layer's residual stream; the backend
(:mod:`icl_lens.models.backends`) supplies the norm and the unembedding of a ``HookedTransformer``
or a ``TransformerBridge``.
Evaluation uses it to unembed only the positions it scores (cheap for large vocabularies), and
layer-causal GD (:mod:`icl_lens.training.lcgd`) uses it as every layer's prediction head.

The unembedding is applied as ``residual @ W_U + b_U`` (one fused ``addmm``) on the model's own
parameters rather than through ``model.unembed``: TransformerLens 3.x's ``Unembed.forward`` makes a
contiguous copy of ``W_U.T`` on every call (671 MB for Gemma-3's 262k vocabulary), which dominated
LCGD's step time.
"""

from __future__ import annotations

import torch
from jaxtyping import Float

from icl_lens._shapes import shape_checked
from icl_lens.errors import MetricInputError
from icl_lens.models.backends import Model, backend_of


@shape_checked
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
