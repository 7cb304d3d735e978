"""The "untrained" baseline: the model's architecture with random attention and MLP weights.

Token (and positional) embeddings, every normalisation layer (ln1, ln2, ln_final, Gemma's post-norms
and q/k norms) and the unembedding keep their trained values, so inputs are embedded and outputs read
out in the trained model's spaces; everything that mixes information between and within positions
is re-drawn. Comparing ICL with GD on this model separates what training gives from what the
architecture alone does.

Two recipes (:data:`UNTRAINED_INITS`):

* ``reference`` (default): what the reference code of Dai et al. 2023 (a fairseq model) leaves in
  place of trained weights, i.e. each framework module's default initialisation, applied at the
  Hugging Face ``(fan_in, fan_out)`` of each projection. q/k/v projection weights xavier-uniform
  with gain 1/√2 (bound ``gain·√(6/(fan_in+fan_out))``, std ``gain·√(2/(fan_in+fan_out))``); the
  attention output projection xavier-uniform with gain 1 and bias 0; MLP weights ``nn.Linear``'s
  kaiming-uniform with a=√5, i.e. U(±1/√fan_in) (std ``1/√(3·fan_in)``); every other bias
  U(±1/√fan_in) of its projection.
* ``normal``: every weight N(0, :func:`init_std`), every bias 0 (the package's earlier baseline).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Literal, cast

import torch
from jaxtyping import Float

from icl_lens.errors import ConfigError, ModelLoadError
from icl_lens.models.backends import BRIDGE, Model

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge

logger = logging.getLogger(__name__)

FALLBACK_INIT_STD = 0.02
"""Weight std when the config has no usable ``initializer_range`` (the usual HF default)."""

UntrainedInit = Literal["reference", "normal"]
UNTRAINED_INITS: tuple[str, ...] = ("reference", "normal")

_QKV_GAIN = 1 / math.sqrt(2)  # fairseq MultiheadAttention.reset_parameters (q/k/v share one in_proj scale)

UNTRAINED_SEED_ATTR = "icl_lens_untrained_seed"
"""Attribute :func:`reinitialize_untrained` sets on the model (the seed it drew with), so results
record "untrained" only for a model that really was re-initialised (copies keep it)."""


def untrained_seed(model: Model) -> int | None:
    """The seed ``model`` was re-initialised with by :func:`reinitialize_untrained`, or None."""
    return getattr(model, UNTRAINED_SEED_ATTR, None)


def init_std(model: Model) -> float:
    """Std of the ``normal`` re-initialisation.

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


def projection_fans(part: str, weight_name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of the Hugging Face linear layer a TransformerLens weight stores.

    Attention: ``W_Q`` / ``W_K`` / ``W_V`` (and the grouped-query ``_W_K`` / ``_W_V``) are
    ``[heads, d_model, d_head]`` → (d_model, heads·d_head); ``W_O`` is ``[n_heads, d_head, d_model]``
    → (n_heads·d_head, d_model). MLP: ``W_in`` / ``W_gate`` / ``W_out`` are ``[fan_in, fan_out]``.
    """
    name = weight_name.lstrip("_")
    if part == "attn" and name in ("W_Q", "W_K", "W_V") and len(shape) == 3:
        return shape[1], shape[0] * shape[2]
    if part == "attn" and name == "W_O" and len(shape) == 3:
        return shape[0] * shape[1], shape[2]
    if part == "mlp" and len(shape) == 2:
        return shape[0], shape[1]
    raise ModelLoadError(f"untrained init: no Hugging Face projection shape known for {part}.{weight_name} {shape}")


def reference_bound(part: str, name: str, fan_in: int, fan_out: int) -> float:
    """Half-width of the uniform distribution the ``reference`` recipe draws a tensor from
    (0 for the attention output bias). ``name`` is the TransformerLens parameter name."""
    name = name.lstrip("_")
    if part == "attn" and name in ("W_Q", "W_K", "W_V"):
        return _QKV_GAIN * math.sqrt(6.0 / (fan_in + fan_out))
    if part == "attn" and name == "W_O":
        return math.sqrt(6.0 / (fan_in + fan_out))
    if part == "attn" and name == "b_O":
        return 0.0
    return 1.0 / math.sqrt(fan_in)  # nn.Linear: kaiming-uniform(a=√5) weights and its biases alike


def _uniform(shape: torch.Size, bound: float, generator: torch.Generator) -> Float[torch.Tensor, "..."]:
    return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2.0 - 1.0) * bound


def reinitialize_untrained(model: Model, seed: int, init: UntrainedInit = "reference") -> Model:
    """Re-draw every attention and MLP parameter in place by the ``init`` recipe; return ``model``.

    ``reference`` (module docstring): per-projection uniform draws at the Hugging Face fans. A bias
    that is all zeros in the loaded model (architectures without biases, e.g. Llama or Gemma, whose
    TransformerLens conversion fills zeros) stays zero, so no bias the architecture lacks is added.
    ``normal``: weights ~ Normal(0, :func:`init_std`), biases = 0. Normalisation modules inside
    attention or MLP (Gemma's q/k norms) are kept either way. Draws come from
    ``torch.Generator().manual_seed(seed)`` on the CPU in a fixed parameter order, so the same seed
    gives identical weights on any device. ``model.cfg.untrained_init`` records the recipe.

    Call it on unprocessed weights: after LayerNorm folding the norm scales live inside W_Q/W_K/W_V/
    W_in and would be lost (``load_model(untrained=True, processed=True)`` re-initialises first,
    then processes). On a ``TransformerBridge`` the same recipes are drawn at the Hugging Face
    projections (:func:`reinitialize_untrained_bridge`).
    """
    if init not in UNTRAINED_INITS:
        raise ConfigError(f"untrained init must be one of {list(UNTRAINED_INITS)}, got {init!r}")
    if BRIDGE.owns(model):
        return reinitialize_untrained_bridge(cast("TransformerBridge", model), seed, init)  # owns() checked it
    from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

    norms = (LayerNorm, LayerNormPre, RMSNorm, RMSNormPre)
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
                    if isinstance(module, norms):
                        continue
                    own = dict(module.named_parameters(recurse=False))
                    for name, param in own.items():
                        full = f"blocks.{layer}.{part_name}.{module_name + '.' if module_name else ''}{name}"
                        kind = name.lstrip("_")[:1]
                        if kind not in ("W", "b"):
                            raise ModelLoadError(f"reinitialize_untrained: unknown parameter kind {full}")
                        if init == "normal":
                            if kind == "W":
                                fresh = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
                            else:
                                fresh = torch.zeros(param.shape)
                        else:
                            weight_name = name.replace("b_", "W_", 1) if kind == "b" else name
                            weight = own.get(weight_name)
                            if weight is None:
                                raise ModelLoadError(f"reinitialize_untrained: bias {full} has no weight {weight_name}")
                            fan_in, fan_out = projection_fans(part_name, weight_name, tuple(weight.shape))
                            bound = reference_bound(part_name, name, fan_in, fan_out)
                            if kind == "b" and not bool(param.detach().ne(0).any()):
                                bound = 0.0  # the architecture has no such bias
                            fresh = _uniform(param.shape, bound, generator)
                        param.copy_(fresh.to(device=param.device, dtype=param.dtype))
                        if kind == "W":
                            n_weights += 1
                        else:
                            n_biases += 1
    model.cfg.untrained_init = init  # type: ignore[union-attr]  # not a config field: set on this instance
    setattr(model, UNTRAINED_SEED_ATTR, int(seed))
    logger.info(
        "re-initialised %d attention/MLP weight and %d bias tensors (%s init, seed %d)", n_weights, n_biases, init, seed
    )
    return model


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
    """The untrained baseline of :func:`reinitialize_untrained` on a bridge:
    the same recipes, drawn at each Hugging Face projection's own shape in module order (so the same
    seed gives a different sample than on a HookedTransformer, from the same distribution).
    Embeddings, every norm and the unembedding keep their trained values."""
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
