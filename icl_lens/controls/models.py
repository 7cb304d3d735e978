"""The controls as TransformerLens-compatible models.

:class:`ControlTransformer` is a stack of self-attention blocks over the regression tokens of
:mod:`icl_lens.controls.tasks` (von Oswald et al. 2023): no embedding, no positions, no MLP; each
block adds its attention output to every token (residual). Attention is linear (``lsa``: the pattern
is the raw score q·k, no softmax, no scaling) or softmax (``softmax``). Keys and values come from the
context tokens only (the reference); with ``query_in_keys`` the query also attends to itself, which
the Dai-style comparator needs (its zero-shot input is the query alone).

Hook points carry TransformerLens's names, so ``run_with_cache`` returns an
:class:`~transformer_lens.ActivationCache` the project's metric functions read unchanged::

    blocks.{l}.hook_resid_pre      [batch, pos, d_model]
    blocks.{l}.attn.hook_q/_k/_v   [batch, pos, head_index, d_head]
    blocks.{l}.attn.hook_attn_scores, hook_pattern  [batch, head_index, query_pos, key_pos]
    blocks.{l}.attn.hook_z         [batch, pos, head_index, d_head]
    blocks.{l}.hook_attn_out       [batch, pos, d_model]
    blocks.{l}.hook_resid_post     [batch, pos, d_model]

Weights follow TransformerLens's layout: W_Q/W_K/W_V [n_heads, d_model, d_head], W_O [n_heads,
d_head, d_model]. ``forward`` takes optional per-task weight overrides (a leading batch dimension),
which is how the FT comparator finetunes one copy of W_K/W_V per task in one batched pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from icl_lens._validation import AT_LEAST_ONE, POSITIVE, validate_fields
from icl_lens.controls.tasks import RegressionConfig
from icl_lens.errors import ConfigError

logger = logging.getLogger(__name__)

AttentionKind = Literal["lsa", "softmax"]
WeightOverrides = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ControlConfig:
    """Architecture of a control (von Oswald et al. 2023: 1 layer, 1 head, key size 11, linear attention).

    Args:
        attention: ``lsa`` (linear self-attention: pattern = q·k) or ``softmax``.
        n_layers: attention blocks.
        n_heads: heads per block.
        d_model: token width (d + 1 for the regression tokens).
        d_head: key/query/value size per head.
        init_scale: weights start from N(0, init_scale / (n_layers · d_model)) (the reference's
            variance scaling 0.002/K over fan-in).
    """

    attention: AttentionKind = "lsa"
    n_layers: int = 1
    n_heads: int = 1
    d_model: int = 11
    d_head: int = 11
    init_scale: float = 0.002

    def __post_init__(self) -> None:
        validate_fields(
            self,
            {"n_layers": AT_LEAST_ONE, "n_heads": AT_LEAST_ONE, "d_model": AT_LEAST_ONE, "d_head": AT_LEAST_ONE},
        )
        if self.attention not in ("lsa", "softmax"):
            raise ConfigError(f"attention must be 'lsa' or 'softmax', got {self.attention!r}")
        if not self.init_scale > 0:
            raise ConfigError(f"init_scale {POSITIVE.violation(self.init_scale)}, got {self.init_scale}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


class ControlAttention(torch.nn.Module):
    """One attention layer over the regression tokens (bias-free, as in the reference)."""

    def __init__(self, cfg: ControlConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        shape_in = (cfg.n_heads, cfg.d_model, cfg.d_head)
        std = math.sqrt(cfg.init_scale / (cfg.n_layers * cfg.d_model))
        self.W_Q = torch.nn.Parameter(torch.randn(shape_in) * std)
        self.W_K = torch.nn.Parameter(torch.randn(shape_in) * std)
        self.W_V = torch.nn.Parameter(torch.randn(shape_in) * std)
        self.W_O = torch.nn.Parameter(torch.randn(cfg.n_heads, cfg.d_head, cfg.d_model) * std)
        self.hook_q = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_k = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_v = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head_index, d_head]

    def weight(self, name: str, overrides: WeightOverrides | None) -> torch.Tensor:
        """The parameter ``name`` (``W_K``...) or its per-task override [batch, ...] if given."""
        key = f"blocks.{self.layer}.attn.{name}"
        if overrides is not None and key in overrides:
            return overrides[key]
        return getattr(self, name)

    def forward(
        self,
        resid: Float[torch.Tensor, "batch pos d_model"],
        query_in_keys: bool,
        overrides: WeightOverrides | None = None,
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        q = self.hook_q(_project(resid, self.weight("W_Q", overrides)))
        k = self.hook_k(_project(resid, self.weight("W_K", overrides)))
        v = self.hook_v(_project(resid, self.weight("W_V", overrides)))
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k)
        allowed = key_mask(resid.shape[1], query_in_keys, resid.device)
        if self.cfg.attention == "lsa":
            scores = self.hook_attn_scores(scores.masked_fill(~allowed, 0.0))
            pattern = self.hook_pattern(scores)
        else:
            scores = self.hook_attn_scores(scores.masked_fill(~allowed, float("-inf")))
            # a query with no key at all (the query alone, context-only keys) attends to nothing
            pattern = torch.softmax(scores, dim=-1).nan_to_num(0.0)
            pattern = self.hook_pattern(pattern)
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        w_o = self.weight("W_O", overrides)
        if w_o.ndim == 4:
            return torch.einsum("bqhe,bhem->bqm", z, w_o)
        return torch.einsum("bqhe,hem->bqm", z, w_o)


def _project(
    resid: Float[torch.Tensor, "batch pos d_model"], weight: torch.Tensor
) -> Float[torch.Tensor, "batch pos head d_head"]:
    if weight.ndim == 4:  # per-task weights [batch, n_heads, d_model, d_head]
        return torch.einsum("bpm,bhme->bphe", resid, weight)
    return torch.einsum("bpm,hme->bphe", resid, weight)


def key_mask(n_tokens: int, query_in_keys: bool, device: torch.device | None = None) -> torch.Tensor:
    """[query_pos, key_pos] booleans: every token attends to the context tokens (all but the last);
    with ``query_in_keys`` the last token (the query) also attends to itself."""
    allowed = torch.zeros(n_tokens, n_tokens, dtype=torch.bool, device=device)
    allowed[:, : n_tokens - 1] = True
    if query_in_keys:
        allowed[-1, -1] = True
    return allowed


class ControlBlock(torch.nn.Module):
    """resid_post = resid_pre + attn(resid_pre): no layer norm, no MLP."""

    def __init__(self, cfg: ControlConfig, layer: int) -> None:
        super().__init__()
        self.attn = ControlAttention(cfg, layer)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self, resid: Float[torch.Tensor, "batch pos d_model"], query_in_keys: bool, overrides: WeightOverrides | None
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(resid, query_in_keys, overrides))
        return self.hook_resid_post(resid + attn_out)


class ControlTransformer(HookedRootModule):
    """A control model: ``n_layers`` attention blocks over regression tokens (see the module docstring).

    ``forward(tokens)`` returns the final residual stream [batch, pos, d_model]; :meth:`predict`
    reads the prediction ŷ = −(last entry of the query token), von Oswald et al.'s readout.
    """

    def __init__(self, cfg: ControlConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = torch.nn.ModuleList(ControlBlock(cfg, layer) for layer in range(cfg.n_layers))
        self.setup()

    def forward(
        self,
        tokens: Float[torch.Tensor, "batch pos d_model"],
        query_in_keys: bool = False,
        overrides: WeightOverrides | None = None,
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        if tokens.ndim != 3 or tokens.shape[-1] != self.cfg.d_model:
            raise ConfigError(f"tokens must be [batch, pos, {self.cfg.d_model}], got shape {tuple(tokens.shape)}")
        resid = tokens
        for block in self.blocks:
            resid = block(resid, query_in_keys, overrides)
        return resid

    def run_with_cache(
        self, *model_args: Any, return_cache_object: bool = True, remove_batch_dim: bool = False, **kwargs: Any
    ) -> tuple[Any, ActivationCache | dict[str, torch.Tensor]]:
        """As ``HookedTransformer.run_with_cache``: the output and an :class:`ActivationCache`
        (``return_cache_object=False``: the plain dict)."""
        out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if return_cache_object:
            return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, cache_dict

    def predict(
        self,
        tokens: Float[torch.Tensor, "batch pos d_model"],
        query_in_keys: bool = False,
        overrides: WeightOverrides | None = None,
    ) -> Float[torch.Tensor, " batch"]:
        """ŷ = −(the last token's last entry after the last block)."""
        return -self(tokens, query_in_keys, overrides)[:, -1, -1]

    def kv_parameters(self) -> dict[str, torch.nn.Parameter]:
        """W_K and W_V of every layer under their full names (what the FT comparator finetunes)."""
        return {name: p for name, p in self.named_parameters() if name.endswith(("attn.W_K", "attn.W_V"))}


def construction(
    eta: float, n_layers: int = 1, task: RegressionConfig | None = None, dtype: torch.dtype = torch.float32
) -> ControlTransformer:
    """von Oswald et al. 2023, Appendix A.1: the LSA weights that make each layer one GD step.

    W_K = W_Q = [[I_d, 0], [0, 0]], W_V = [[0, 0], [W0, −1]] with W0 = 0, and W_O = P = (η/N)·I.
    Every token's last entry gains (η/N) Σ_i (W0 x_i − y_i) x_iᵀ x_j; for the query that is −ΔW x_q
    with ΔW = (η/N) Σ_i y_i x_iᵀ, one GD step from 0 on (1/2N) Σ_i (W x_i − y_i)². K stacked layers
    give K steps: each context token's last entry becomes its residual y_i − W_k x_i, so the next
    layer's update is the gradient step at W_k.
    """
    task = task or RegressionConfig()
    cfg = ControlConfig(attention="lsa", n_layers=n_layers, n_heads=1, d_model=task.d_token, d_head=task.d_token)
    model = ControlTransformer(cfg).to(dtype)
    d = task.d
    selector = torch.zeros(cfg.d_model, cfg.d_model, dtype=torch.float64)
    selector[:d, :d] = torch.eye(d)
    value = torch.zeros(cfg.d_model, cfg.d_model, dtype=torch.float64)
    value[d, d] = -1.0  # v = e @ W_V: (0, W0 x_i − y_i) with W0 = 0
    projection = torch.eye(cfg.d_model, dtype=torch.float64) * (eta / task.n_context)
    with torch.no_grad():
        for block in model.blocks:
            attn = typing.cast(ControlAttention, block.attn)
            attn.W_Q.copy_(selector[None])
            attn.W_K.copy_(selector[None])
            attn.W_V.copy_(value[None])
            attn.W_O.copy_(projection[None])
    return model
