"""The "untrained" baseline: the model's architecture with random attention and MLP weights.

Token (and positional) embeddings, every normalisation layer (ln1, ln2, ln_final, Gemma's post-norms
and q/k norms) and the unembedding keep their trained values, so inputs are embedded and outputs read
out in the trained model's spaces; everything that mixes information between and within positions
is re-drawn. Comparing ICL with GD on this model separates what training gives from what the
architecture alone does.
"""

from __future__ import annotations

import logging

import torch
from transformer_lens import HookedTransformer
from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

from icl_lens.errors import ModelLoadError

logger = logging.getLogger(__name__)

FALLBACK_INIT_STD = 0.02
"""Weight std when the config has no usable ``initializer_range`` (the usual HF default)."""

_NORMS = (LayerNorm, LayerNormPre, RMSNorm, RMSNormPre)

UNTRAINED_SEED_ATTR = "icl_lens_untrained_seed"
"""Attribute :func:`reinitialize_untrained` sets on the model (the seed it drew with), so results
record "untrained" only for a model that really was re-initialised (copies keep it)."""


def untrained_seed(model: HookedTransformer) -> int | None:
    """The seed ``model`` was re-initialised with by :func:`reinitialize_untrained`, or None."""
    return getattr(model, UNTRAINED_SEED_ATTR, None)


def init_std(model: HookedTransformer) -> float:
    """Std of the re-initialised weights.

    ``cfg.initializer_range`` when it is a real std: the loader sets it from the Hugging Face config
    (SmolLM2 and Gemma-3 both 0.02); otherwise TransformerLens' own resolution for its default
    ``init_mode="gpt2"`` (0.8 / sqrt(d_model)). Under other init modes TransformerLens uses it as a gain,
    not a std, so :data:`FALLBACK_INIT_STD` (0.02) is used instead.
    """
    cfg = model.cfg
    value = float(getattr(cfg, "initializer_range", -1.0) or -1.0)
    if getattr(cfg, "init_mode", "gpt2") == "gpt2" and value > 0:
        return value
    return FALLBACK_INIT_STD


def reinitialize_untrained(model: HookedTransformer, seed: int) -> HookedTransformer:
    """Re-draw every attention and MLP parameter in place; return ``model``.

    Weights (``W_Q``, ``W_K``, ``W_V``, ``W_O`` including the grouped-query ``_W_K`` / ``_W_V``,
    ``W_in``, ``W_gate``, ``W_out``) ~ Normal(0, :func:`init_std`), biases = 0. Normalisation modules
    inside attention or MLP (Gemma's q/k norms) are kept. Draws come from
    ``torch.Generator().manual_seed(seed)`` on the CPU in a fixed parameter order, so the same seed
    gives identical weights on any device.

    Call it on unprocessed weights: after LayerNorm folding the norm scales live inside W_Q/W_K/W_V/
    W_in and would be lost (``load_model(untrained=True, processed=True)`` re-initialises first,
    then processes).
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    std = init_std(model)
    n_weights = n_biases = 0
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            for part_name in ("attn", "mlp"):
                part = getattr(block, part_name, None)
                if part is None:
                    continue
                for module_name, module in part.named_modules():
                    if isinstance(module, _NORMS):
                        continue
                    for name, param in module.named_parameters(recurse=False):
                        full = f"blocks.{layer}.{part_name}.{module_name + '.' if module_name else ''}{name}"
                        kind = name.lstrip("_")[:1]
                        if kind == "W":
                            fresh = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
                            param.copy_(fresh.to(device=param.device, dtype=param.dtype))
                            n_weights += 1
                        elif kind == "b":
                            param.zero_()
                            n_biases += 1
                        else:
                            raise ModelLoadError(f"reinitialize_untrained: unknown parameter kind {full}")
    setattr(model, UNTRAINED_SEED_ATTR, int(seed))
    logger.info("re-initialised %d attention/MLP weight and %d bias tensors (std %.4g, seed %d)",
                n_weights, n_biases, std, seed)
    return model
