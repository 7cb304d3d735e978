"""The logit lens: any residual stream read through the model's own final norm and unembedding.

This is exactly what :class:`~transformer_lens.HookedTransformer` does after its last block
(``ln_final`` -> ``unembed`` -> optional logit soft-cap), applied to any layer's residual stream.
Evaluation uses it to unembed only the positions it scores (cheap for large vocabularies), and
layer-causal GD (:mod:`icl_lens.lcgd`) uses it as every layer's prediction head.

The unembedding is applied as ``residual @ W_U + b_U`` (one fused ``addmm``) on the model's own
parameters rather than through ``model.unembed``: TransformerLens 3.x's ``Unembed.forward`` makes a
contiguous copy of ``W_U.T`` on every call (671 MB for Gemma-3's 262k vocabulary), which dominated
LCGD's step time.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer
from transformer_lens.utilities.activation_functions import apply_softcap


def logit_lens(
    model: HookedTransformer, residual: Float[torch.Tensor, "batch pos d_model"]
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """Logits the model would output if ``residual`` were its final residual stream."""
    if residual.ndim != 3:
        raise ValueError(f"logit_lens expects [batch, pos, d_model], got shape {tuple(residual.shape)}")
    if model.cfg.normalization_type is not None:
        residual = model.ln_final(residual)
    logits = torch.nn.functional.linear(residual, model.unembed.W_U.T, model.unembed.b_U)
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)
