"""Loading a model as a TransformerLens ``TransformerBridge`` (the ``bridge`` backend).

The bridge wraps the Hugging Face model itself, so a local Hugging Face directory (the offline
models' converted checkpoints included) boots without TransformerLens' per-architecture conversion.
As with :func:`icl_lens.models.loading.hooked_from_hf_dir`, the model keeps its own tokenizer and
``cfg.default_prepend_bos`` says whether that tokenizer adds BOS. Compatibility mode gives the
HookedTransformer hook names (``blocks.{l}.hook_resid_pre``, ``...attn.hook_pattern``) this package
records; with ``processed=False`` (the default, needed for finetuning the real W_K / W_V) no weight
is rewritten, so the bridge computes exactly the Hugging Face model's logits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from icl_lens.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge

logger = logging.getLogger(__name__)


def bridge_from_hf_dir(hf_dir: Path, *, model_name: str | None = None) -> TransformerBridge:
    """A float32 CPU bridge over the Hugging Face model in ``hf_dir`` (compatibility mode is
    enabled by :func:`finish_bridge`, after any re-initialisation)."""
    from transformers import AutoTokenizer

    from icl_lens.models.loading import attach_tokenizer, tokenizer_adds_bos

    hf_dir = Path(hf_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"transformers could not load the tokenizer of {hf_dir}: {type(exc).__name__}: {exc}"
        ) from exc
    bridge = _boot(str(hf_dir), tokenizer=tokenizer)
    attach_tokenizer(bridge, tokenizer)
    bridge.cfg.default_prepend_bos = tokenizer_adds_bos(tokenizer)
    bridge.cfg.model_name = model_name or hf_dir.name
    return bridge


def bridge_from_hub(name: str) -> TransformerBridge:
    """A bridge over a Hugging Face hub model (needs network access)."""
    bridge = _boot(name)
    bridge.cfg.model_name = name
    return bridge


def _boot(source: str, tokenizer=None) -> TransformerBridge:
    from transformer_lens.model_bridge import TransformerBridge

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(source, device="cpu", dtype=torch.float32, tokenizer=tokenizer)
    except Exception as exc:
        raise ModelLoadError(f"TransformerBridge could not boot {source}: {type(exc).__name__}: {exc}") from exc
    bridge.eval()
    for param in bridge.parameters():
        param.requires_grad_(False)
    return bridge


def finish_bridge(bridge: TransformerBridge, *, processed: bool) -> TransformerBridge:
    """Compatibility mode (HookedTransformer hook names; weight processing iff ``processed``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not processed)
    for param in bridge.parameters():
        param.requires_grad_(False)
    bridge.cfg.icl_lens_processed = bool(processed)
    return bridge


# ----------------------------------------------------------------------------- untrained baseline


def _linear_parts(bridge: TransformerBridge):
    """Per layer, the attention projections (q, k, v, o) and the MLP's linear layers, as
    ``(layer, part, role, module)`` with role in ``q k v o mlp``."""
    from transformers.pytorch_utils import Conv1D

    for layer, block in enumerate(bridge.blocks):
        attn = getattr(block, "attn", None)
        for role in ("q", "k", "v", "o"):
            module = getattr(getattr(attn, role, None), "original_component", None)
            if module is not None:
                yield layer, "attn", role, module
        mlp = getattr(block, "mlp", None)
        hf_mlp = getattr(mlp, "original_component", None)
        if hf_mlp is None:
            continue
        for _, module in hf_mlp.named_modules():
            if isinstance(module, (torch.nn.Linear, Conv1D)):
                yield layer, "mlp", "mlp", module


def _fans(module) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a linear layer (``nn.Linear`` stores [out, in]; GPT-2's ``Conv1D`` [in, out])."""
    weight = module.weight
    if isinstance(module, torch.nn.Linear):
        return int(weight.shape[1]), int(weight.shape[0])
    return int(weight.shape[0]), int(weight.shape[1])


def reinitialize_untrained_bridge(bridge: TransformerBridge, seed: int, init: str = "reference") -> TransformerBridge:
    """The untrained baseline of :func:`icl_lens.models.untrained.reinitialize_untrained` on a bridge:
    the same recipes, drawn at each Hugging Face projection's own shape in module order (so the same
    seed gives a different sample than on a HookedTransformer, from the same distribution).
    Embeddings, every norm and the unembedding keep their trained values."""
    from icl_lens.models.untrained import (
        FALLBACK_INIT_STD,
        UNTRAINED_INITS,
        UNTRAINED_SEED_ATTR,
        _uniform,
        reference_bound,
    )

    if init not in UNTRAINED_INITS:
        raise ConfigError(f"untrained init must be one of {list(UNTRAINED_INITS)}, got {init!r}")
    config = bridge.original_model.config
    std = float(getattr(config, "initializer_range", 0) or 0) or FALLBACK_INIT_STD
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    n_weights = n_biases = 0
    with torch.no_grad():
        for _layer, part, role, module in _linear_parts(bridge):
            fan_in, fan_out = _fans(module)
            weight, bias = module.weight, getattr(module, "bias", None)
            if init == "normal":
                fresh_w = torch.randn(weight.shape, generator=generator, dtype=torch.float32) * std
                fresh_b = torch.zeros(bias.shape) if bias is not None else None
            else:
                letter = role.upper() if part == "attn" else "in"  # the recipe by HookedTransformer name
                fresh_w = _uniform(weight.shape, reference_bound(part, f"W_{letter}", fan_in, fan_out), generator)
                fresh_b = None
                if bias is not None:
                    bias_bound = reference_bound(part, f"b_{letter}", fan_in, fan_out)
                    if not bool(bias.ne(0).any()):
                        bias_bound = 0.0  # the architecture has no such bias
                    fresh_b = _uniform(bias.shape, bias_bound, generator)
            weight.copy_(fresh_w.to(device=weight.device, dtype=weight.dtype))
            n_weights += 1
            if bias is not None and fresh_b is not None:  # fresh_b is drawn whenever there is a bias
                bias.copy_(fresh_b.to(device=bias.device, dtype=bias.dtype))
                n_biases += 1
    bridge.cfg.untrained_init = init
    setattr(bridge, UNTRAINED_SEED_ATTR, int(seed))
    logger.info(
        "re-initialised %d weight and %d bias tensors of the bridge (%s init, seed %d)", n_weights, n_biases, init, seed
    )
    return bridge


__all__ = ["bridge_from_hf_dir", "bridge_from_hub", "finish_bridge", "reinitialize_untrained_bridge"]
