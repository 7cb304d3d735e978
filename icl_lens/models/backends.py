"""Backends: the few things icl_lens asks of a TransformerLens model, for both kinds of model.

TransformerLens 3.x has two model classes: :class:`HookedTransformer` (its own re-implementation of
each architecture, deprecated in 3.x and removed in 4.0) and :class:`TransformerBridge` (hooks around
the Hugging Face model itself, the only one in 4.x). Everything above this module — prompts,
evaluation, finetuning, layer-causal GD, metrics on ``ActivationCache`` objects, reports — works on
either through the operations of :class:`Backend`:

* run the blocks ``[0, n)`` on right-padded tokens with forward hooks, optionally after a shared
  prefix encoded once (:meth:`Backend.encode_prefix`), returning block ``n-1``'s output
  (``blocks.{n-1}.hook_resid_post``);
* the logit lens's parts: the final norm, the unembedding and the logit soft-cap;
* the block parameters under stable names and the finetuning groups over them (``kv`` = the
  key/value projections), the attention weights in TransformerLens' layout, the sliding windows.

Hook names are the same on both (``blocks.{l}.hook_resid_pre``, ``blocks.{l}.attn.hook_pattern``,
...: the bridge's compatibility mode provides them). Parameter names differ, because the trainable
tensors differ: a HookedTransformer trains ``blocks.{l}.attn._W_K`` ``[kv_heads, d_model, d_head]``;
a bridge trains the Hugging Face projection weight itself, named here ``blocks.{l}.attn.k.weight``
``[kv_heads·d_head, d_model]`` (the same numbers, transposed and reshaped).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.metadata
import inspect
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from icl_lens.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:  # pragma: no cover - imports for type checkers only
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    Model = HookedTransformer | TransformerBridge
else:
    Model = Any  # HookedTransformer (TransformerLens < 4) or TransformerBridge

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("hooked", "bridge")
"""``hooked``: :class:`transformer_lens.HookedTransformer` (TransformerLens < 4 only); ``bridge``:
:class:`transformer_lens.model_bridge.TransformerBridge` in compatibility mode."""


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (``"transformers"``, ``"transformer-lens"``), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def transformer_lens_version() -> tuple[int, ...]:
    """The installed TransformerLens version as integers, e.g. ``(3, 9, 0)``."""
    raw = importlib.metadata.version("transformer-lens")
    return tuple(int(part) for part in re.findall(r"\d+", raw)[:3])


@functools.cache
def has_hooked_transformer() -> bool:
    """Whether this TransformerLens still ships ``HookedTransformer`` (removed in 4.0); asked on every
    :func:`backend_of`, so the import is tried once per process."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except (ImportError, AttributeError):
        return False
    return True


def default_backend() -> str:
    """``hooked`` while TransformerLens < 4 is installed, ``bridge`` on 4.x."""
    return "hooked" if has_hooked_transformer() else "bridge"


def check_backend(name: str | None) -> str:
    """``name`` (None: :func:`default_backend`) if it is a backend this installation can run."""
    if name is None:
        return default_backend()
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose from {list(BACKENDS)}")
    if name == "hooked" and not has_hooked_transformer():
        raise ConfigError(
            f"backend 'hooked' needs HookedTransformer, which TransformerLens "
            f"{'.'.join(map(str, transformer_lens_version()))} no longer has: use --backend bridge"
        )
    return name


ABSENT_BIASES_ATTR = "icl_lens_absent_biases"
"""Config attribute naming the block parts (``attn``, ``mlp``) a loaded architecture has no bias in."""


class _StopForward(Exception):
    """Raised by a hook to end a bridge forward pass after the last block it needs."""


@dataclass
class Prefix:
    """A shared prefix encoded once: its length and the backend's key/value cache of it."""

    length: int
    cache: Any


class Backend:
    """What icl_lens needs from one kind of TransformerLens model (module docstring)."""

    name: str = ""
    param_groups: dict[str, str] = {}
    """Finetuning group -> regular expression over :meth:`block_parameters` names."""

    def owns(self, model: Model) -> bool:
        raise NotImplementedError

    def copy(self, model: Model) -> Model:
        """An independent deep copy of ``model`` sharing only its tokenizer (Gemma's 262k-entry
        tokenizer takes seconds to copy)."""
        return copy.deepcopy(model, memo={id(model.tokenizer): model.tokenizer})

    def encode_prefix(self, model: Model, tokens: Int[torch.Tensor, "1 prefix"]) -> Prefix | None:
        """The prefix's cache, or None when the prefix must be re-encoded inside every sequence."""
        raise NotImplementedError

    def run_blocks(
        self,
        model: Model,
        tokens: Int[torch.Tensor, "batch pos"],
        attention_mask: Int[torch.Tensor, "batch pos"],
        *,
        n_layers: int | None = None,
        prefix: Prefix | None = None,
        hooks: Sequence[tuple[str, Any]] = (),
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """Blocks ``[0, n_layers)`` (default all) on ``tokens`` after ``prefix``, with ``hooks``;
        returns the last one's output (before the final norm)."""
        raise NotImplementedError

    def final_norm(self, model: Model, residual: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unembedding(self, model: Model) -> tuple[Float[torch.Tensor, "d_model d_vocab"], torch.Tensor | None]:
        """``(W_U, b_U)`` with ``logits = final_norm(resid) @ W_U + b_U`` (b_U None when absent)."""
        raise NotImplementedError

    def logit_soft_cap(self, model: Model) -> float | None:
        cap = getattr(model.cfg, "output_logits_soft_cap", None)
        return float(cap) if cap is not None and cap > 0 else None

    def block_parameters(self, model: Model) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """Every parameter inside the blocks, once, as ``(blocks.{l}.<name>, parameter)``."""
        raise NotImplementedError

    def attention_parameter(self, model: Model, layer: int, name: str) -> torch.Tensor | None:
        """Layer ``layer``'s ``W_Q``/``W_K``/``W_V``/``W_O``/``b_*`` in TransformerLens' layout
        (``W_K``: ``[kv_heads, d_model, d_head]``, unexpanded under grouped-query attention), or None."""
        raise NotImplementedError

    def attention_windows(self, model: Model) -> list[int | None]:
        """Per layer, the sliding-window size of a local-attention layer, or None for a global one."""
        raise NotImplementedError

    def in_hooked_layout(
        self, model: Model, parameters: Mapping[str, torch.Tensor]
    ) -> list[tuple[str, tuple[int, ...], Any]]:
        """The parameters as a HookedTransformer lays them out: ``(name, shape, back)`` in its
        parameter order, ``back(tensor)`` turning a tensor of that shape into the parameter's own
        layout. Seeded draws made in this layout (the random-direction null) are then the same
        numbers on both backends. Identity here; the bridge maps its attention projections."""
        return [(name, tuple(param.shape), lambda tensor: tensor) for name, param in parameters.items()]


class HookedBackend(Backend):
    """:class:`transformer_lens.HookedTransformer` (TransformerLens < 4)."""

    name = "hooked"
    param_groups = {
        "kv": r"^blocks\.\d+\.attn\._?[Wb]_[KV]$",
        "q": r"^blocks\.\d+\.attn\._?[Wb]_Q$",
        "o": r"^blocks\.\d+\.attn\.[Wb]_O$",
        "mlp": r"^blocks\.\d+\.mlp\.",
        "all": r"^blocks\.\d+\.",
    }

    def owns(self, model: Model) -> bool:
        if not has_hooked_transformer():
            return False
        from transformer_lens import HookedTransformer

        return isinstance(model, HookedTransformer)

    @torch.no_grad()
    def encode_prefix(self, model: Model, tokens: Int[torch.Tensor, "1 prefix"]) -> Prefix | None:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size=1)
        model(tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens), return_type=None)
        cache.freeze()
        return Prefix(length=int(tokens.shape[1]), cache=cache)

    @staticmethod
    def _expanded(cache, batch_size: int):
        """A frozen view of a batch-1 prefix cache for ``batch_size`` rows (no copy)."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

        entries = [
            TransformerLensKeyValueCacheEntry(
                past_keys=e.past_keys.expand(batch_size, -1, -1, -1),
                past_values=e.past_values.expand(batch_size, -1, -1, -1),
                frozen=True,
            )
            for e in cache.entries
        ]
        mask = cache.previous_attention_mask.expand(batch_size, -1)
        return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask, frozen=True)

    def run_blocks(self, model, tokens, attention_mask, *, n_layers=None, prefix=None, hooks=()):
        n_layers = model.cfg.n_layers if n_layers is None else n_layers
        kv = self._expanded(prefix.cache, tokens.shape[0]) if prefix is not None else None
        with model.hooks(fwd_hooks=list(hooks)):
            return model(tokens, past_kv_cache=kv, attention_mask=attention_mask, stop_at_layer=n_layers)

    def final_norm(self, model, residual):
        return model.ln_final(residual) if model.cfg.normalization_type is not None else residual

    def unembedding(self, model):
        return model.unembed.W_U, model.unembed.b_U

    def block_parameters(self, model):
        """The block parameters, less the zero biases TransformerLens adds to a part (``attn``,
        ``mlp``) the loaded architecture has no bias in (``cfg.icl_lens_absent_biases``, set when
        loading from a Hugging Face directory): they are not the model's parameters, so nothing
        trains or perturbs them (the bridge has no such tensors)."""
        absent = set(getattr(model.cfg, ABSENT_BIASES_ATTR, ()) or ())
        for name, param in model.named_parameters():
            if not name.startswith("blocks."):
                continue
            parts = name.split(".")
            if absent and parts[2] in absent and parts[-1].lstrip("_").startswith("b_"):
                continue
            yield name, param

    def attention_parameter(self, model, layer, name):
        attn = model.blocks[layer].attn
        value = getattr(attn, f"_{name}", None)  # GQA keeps the unexpanded K/V weights under _W_K etc.
        return value if value is not None else getattr(attn, name, None)

    def attention_windows(self, model):
        windows: list[int | None] = []
        for block in model.blocks:
            local = getattr(block.attn, "attn_type", "global") == "local"
            windows.append(int(model.cfg.window_size) if local and model.cfg.window_size else None)
        return windows


class BridgeBackend(Backend):
    """:class:`transformer_lens.model_bridge.TransformerBridge` in compatibility mode.

    Runs the Hugging Face model under TransformerLens' hooks. Two things it does differently:

    * Forward passes stop after the last needed block by raising from a hook on that block's output
      (the bridge's own ``stop_at_layer`` does not stop at the last block).
    * The shared prefix uses Hugging Face's key/value cache, handed to the model under the keyword
      the installed transformers reads (:func:`hf_cache_argument`) and made visible to the bridge's
      attention components, which read it under the old name (:func:`_bridge_attention_sees_cache`).
      :func:`bridge_prefix_cache_works` checks it once per model against a full forward pass; where it
      still fails (a future rename), the prefix is re-encoded inside every sequence instead (slower,
      same numbers) and a warning says so.
    """

    name = "bridge"
    param_groups = {
        "kv": r"^blocks\.\d+\.attn\.[kv]\.(weight|bias)$",
        "q": r"^blocks\.\d+\.attn\.q\.(weight|bias)$",
        "o": r"^blocks\.\d+\.attn\.o\.(weight|bias)$",
        "mlp": r"^blocks\.\d+\.mlp\.",
        "all": r"^blocks\.\d+\.",
    }

    def owns(self, model: Model) -> bool:
        try:
            from transformer_lens.model_bridge import TransformerBridge
        except ImportError:  # pragma: no cover - every supported TransformerLens has it
            return False
        return isinstance(model, TransformerBridge)

    def copy(self, model: Model) -> Model:
        """A deep copy whose blocks' capture hooks are wired to the copy itself.

        The bridge's blocks register forward hooks that close over their own block and attention
        modules (to fork the pre-norm residual, to expose scaled contributions); a deep copy copies
        the hook registrations but not those closures, so the copy's forward passes would write into,
        and fire hooks of, the original. Each copied block's hooks are removed (its handles point at
        the copy's hook tables) and wired again on the copy.
        """
        student = super().copy(model)
        for block in getattr(student, "blocks", []):
            if hasattr(block, "_teardown_capture_hooks") and hasattr(block, "_maybe_wire_capture_hooks"):
                block._teardown_capture_hooks()
                block._maybe_wire_capture_hooks()
        return student

    @torch.no_grad()
    def encode_prefix(self, model: Model, tokens: Int[torch.Tensor, "1 prefix"]) -> Prefix | None:
        if not bridge_prefix_cache_works(model):
            return None
        return _bridge_prefix(model, tokens)

    def run_blocks(self, model, tokens, attention_mask, *, n_layers=None, prefix=None, hooks=()):
        n_layers = model.cfg.n_layers if n_layers is None else n_layers
        if not 1 <= n_layers <= model.cfg.n_layers:
            raise ConfigError(f"n_layers must be in 1..{model.cfg.n_layers}, got {n_layers}")
        captured: dict[str, torch.Tensor] = {}

        def stop(resid, hook):
            captured["resid"] = resid
            raise _StopForward

        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if prefix is not None:
            past = copy.deepcopy(prefix.cache)  # the forward pass appends to it
            past.batch_repeat_interleave(tokens.shape[0])
            kwargs[hf_cache_argument(model)] = past
            kwargs["use_cache"] = True
            ones = torch.ones(tokens.shape[0], prefix.length, dtype=attention_mask.dtype, device=attention_mask.device)
            kwargs["attention_mask"] = torch.cat([ones, attention_mask], dim=1)
        all_hooks = [*hooks, (f"blocks.{n_layers - 1}.hook_resid_post", stop)]
        try:
            with model.hooks(fwd_hooks=all_hooks), _bridge_attention_sees_cache(model):
                model(tokens, return_type=None, **kwargs)
        except _StopForward:
            pass
        if "resid" not in captured:
            raise ModelLoadError(f"the bridge never ran blocks.{n_layers - 1}.hook_resid_post")
        return captured["resid"]

    def final_norm(self, model, residual):
        ln_final = getattr(model, "ln_final", None)
        return ln_final(residual) if ln_final is not None else residual

    def unembedding(self, model):
        return model.unembed.W_U, getattr(model.unembed, "b_U", None)

    def block_parameters(self, model):
        seen: set[int] = set()
        for layer, block in enumerate(model.blocks):
            attn = getattr(block, "attn", None)
            for part in ("q", "k", "v", "o"):
                component = getattr(attn, part, None) if attn is not None else None
                original = getattr(component, "original_component", None)
                if original is None:
                    continue
                for pname, param in original.named_parameters():
                    if id(param) not in seen:
                        seen.add(id(param))
                        yield f"blocks.{layer}.attn.{part}.{pname}", param
            for pname, param in block.named_parameters():
                if id(param) in seen:
                    continue
                seen.add(id(param))
                clean = pname.replace("_original_component.", "").replace("original_component.", "")
                clean = re.sub(r"^(self_attn|attn)\.", "attn.", clean)
                yield f"blocks.{layer}.{clean}", param

    def attention_parameter(self, model, layer, name):
        attn = model.blocks[layer].attn
        try:
            value = getattr(attn, name)
        except (AttributeError, NotImplementedError, RuntimeError):
            return None
        return value

    _HOOKED_ATTENTION_ORDER = ("W_Q", "W_O", "b_Q", "b_O", "W_K", "W_V", "b_K", "b_V")

    def in_hooked_layout(self, model, parameters):
        laid_out: list[tuple[tuple[int, ...], tuple[str, tuple[int, ...], Callable]]] = []
        for name, param in parameters.items():
            match = re.match(r"^blocks\.(\d+)\.attn\.([qkvo])\.(weight|bias)$", name)
            if match is None:
                laid_out.append(((1, name), (name, tuple(param.shape), lambda tensor: tensor)))
                continue
            layer, part, kind = int(match.group(1)), match.group(2), match.group(3)
            module = getattr(model.blocks[layer].attn, part).original_component
            heads = model.cfg.n_heads if part in "qo" else (model.cfg.n_key_value_heads or model.cfg.n_heads)
            shape, back = _attention_layout(part, kind, tuple(param.shape), heads, isinstance(module, torch.nn.Linear))
            hooked_name = f"{'W' if kind == 'weight' else 'b'}_{part.upper()}"
            key = (0, layer, self._HOOKED_ATTENTION_ORDER.index(hooked_name))
            laid_out.append((key, (name, shape, back)))
        return [entry for _, entry in sorted(laid_out, key=lambda item: item[0])]

    def attention_windows(self, model):
        config = model.original_model.config
        config = getattr(config, "text_config", None) or config
        n_layers = model.cfg.n_layers
        window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None)
        if not window:
            return [None] * n_layers
        if layer_types:
            return [int(window) if kind == "sliding_attention" else None for kind in layer_types[:n_layers]]
        return [int(window) if getattr(config, "use_sliding_window", True) else None] * n_layers


def _attention_layout(part: str, kind: str, shape: tuple[int, ...], heads: int, linear: bool):
    """HookedTransformer's shape of a Hugging Face attention projection's weight or bias, and the map
    from that shape back to the projection's own. ``linear``: ``nn.Linear`` stores [out, in]; GPT-2's
    ``Conv1D`` stores [in, out]. HookedTransformer: W_Q/W_K/W_V [heads, d_model, d_head], W_O
    [heads, d_head, d_model], b_Q/b_K/b_V [heads, d_head], b_O [d_model]."""
    if kind == "bias":
        if part == "o":
            return shape, lambda tensor: tensor
        return (heads, shape[0] // heads), lambda tensor: tensor.reshape(shape)
    if part in "qkv":
        if linear:  # [heads*d_head, d_model]
            d_head, d_model = shape[0] // heads, shape[1]
            return (heads, d_model, d_head), lambda tensor: tensor.transpose(1, 2).reshape(shape)
        d_model, d_head = shape[0], shape[1] // heads  # [d_model, heads*d_head]
        return (heads, d_model, d_head), lambda tensor: tensor.permute(1, 0, 2).reshape(shape)
    if linear:  # o: [d_model, heads*d_head]
        d_model, d_head = shape[0], shape[1] // heads
        return (heads, d_head, d_model), lambda tensor: tensor.reshape(heads * d_head, d_model).T
    d_head, d_model = shape[0] // heads, shape[1]  # o: [heads*d_head, d_model]
    return (heads, d_head, d_model), lambda tensor: tensor.reshape(shape)


HOOKED = HookedBackend()
BRIDGE = BridgeBackend()


def backend_of(model: Model) -> Backend:
    """The backend that runs ``model``."""
    for backend in (HOOKED, BRIDGE):
        if backend.owns(model):
            return backend
    raise ConfigError(
        f"icl_lens runs on a TransformerLens HookedTransformer or TransformerBridge, got {type(model).__name__}"
    )


_CACHE_CHECK_ATTR = "_icl_lens_prefix_cache_works"
BRIDGE_CACHE_TESTED: tuple[tuple[str, str], ...] = (("5.23.0", "4.3.0"), ("5.25.0", "4.3.0"))
"""(transformers, TransformerLens) pairs on which the bridge's prefix cache was checked to work, oldest
first: the fallback's warning names them."""
_CACHE_ARGUMENT_ATTR = "_icl_lens_hf_cache_argument"


@torch.no_grad()
def _bridge_prefix(model: Model, tokens: Int[torch.Tensor, "1 prefix"]) -> Prefix:
    """The prefix's Hugging Face cache, kept whole in every layer: a cache built from the model's
    config keeps only the last ``window`` keys of a sliding-window layer, and the recorded attention
    needs every key at its absolute position (the window is applied by the attention mask instead)."""
    from transformers import DynamicCache

    cache = DynamicCache()  # filled in place by the forward pass
    with _bridge_attention_sees_cache(model):
        model(
            tokens,
            attention_mask=torch.ones_like(tokens),
            return_type=None,
            use_cache=True,
            **{hf_cache_argument(model): cache},
        )
    return Prefix(length=int(tokens.shape[1]), cache=cache)


def hf_cache_argument(model: Model) -> str:
    """The keyword under which the installed transformers' forward reads the key/value cache.

    transformers 5.24 renamed it from ``past_key_values`` to ``cache`` (the old name is deprecated,
    with a warning, until 5.40). Read from the Hugging Face model's forward signature, so it follows
    whichever version is installed; remembered on the model.
    """
    known = getattr(model, _CACHE_ARGUMENT_ATTR, None)
    if known is not None:
        return str(known)
    forward = getattr(getattr(model, "original_model", None), "forward", None)
    try:
        parameters = inspect.signature(forward).parameters if forward is not None else {}
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        parameters = {}
    name = "cache" if "cache" in parameters else "past_key_values"
    setattr(model, _CACHE_ARGUMENT_ATTR, name)
    return name


@contextlib.contextmanager
def _bridge_attention_sees_cache(model: Model) -> Iterator[None]:
    """While active, the bridge's attention components find the key/value cache.

    TransformerLens 4's attention bridges re-implement attention and take the cache from the keyword
    ``past_key_values`` (or ``layer_past``); transformers from 5.24 on hands it to every attention
    module as ``cache``, so without this the cache is neither filled nor read (the suffix attends to
    itself alone). A forward pre-hook on each component that updates the cache passes it under the
    old name too. Nothing is done where the installed transformers still uses ``past_key_values``.
    """
    if hf_cache_argument(model) != "cache":
        yield
        return

    def alias(module, args, kwargs):
        if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
            return args, {**kwargs, "past_key_values": kwargs["cache"]}
        return None

    handles = [
        module.register_forward_pre_hook(alias, with_kwargs=True)
        for module in model.modules()
        if hasattr(module, "_update_kv_cache")
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def bridge_prefix_cache_works(model: Model, tolerance: float = 1e-3) -> bool:
    """Whether the bridge's Hugging Face key/value cache gives the full forward pass's residual
    stream (checked once per model on a short sequence; remembered on the model)."""
    known = getattr(model, _CACHE_CHECK_ATTR, None)
    if known is not None:
        return bool(known)
    n_tokens = 6
    tokens = (torch.arange(n_tokens, device=model.cfg.device) * 7 + 3)[None] % int(model.cfg.d_vocab)
    mask = torch.ones_like(tokens)
    full = BRIDGE.run_blocks(model, tokens, mask)
    suffix = BRIDGE.run_blocks(model, tokens[:, 3:], mask[:, 3:], prefix=_bridge_prefix(model, tokens[:, :3]))
    scale = float(full[:, 3:].abs().max().clamp_min(1.0))
    works = bool(torch.allclose(suffix.float(), full[:, 3:].float(), atol=tolerance * scale, rtol=tolerance))
    if not works:
        logger.warning(
            "the TransformerBridge key/value cache gives wrong results with transformers %s and "
            "TransformerLens %s (cache keyword %r): the shared prefix is re-encoded in every sequence "
            "instead: the same numbers, several times slower. Tested to work: %s. To get the fast path, "
            "install those (pip install 'transformers==%s' 'transformer-lens==%s'), or use TransformerLens "
            "3.x's HookedTransformer (--backend hooked), which needs no Hugging Face cache.",
            installed_version("transformers"),
            installed_version("transformer-lens"),
            hf_cache_argument(model),
            ", ".join(f"transformers {t} with TransformerLens {tl}" for t, tl in BRIDGE_CACHE_TESTED),
            *BRIDGE_CACHE_TESTED[-1],
        )
    setattr(model, _CACHE_CHECK_ATTR, works)
    return works


def final_residual(
    model: Model,
    tokens: Int[torch.Tensor, "batch pos"],
    attention_mask: Int[torch.Tensor, "batch pos"],
    *,
    n_layers: int | None = None,
    prefix: Prefix | None = None,
    hooks: Sequence[tuple[str, Any]] = (),
) -> Float[torch.Tensor, "batch pos d_model"]:
    """Output of block ``n_layers - 1`` (default: the last block) — :meth:`Backend.run_blocks`."""
    return backend_of(model).run_blocks(model, tokens, attention_mask, n_layers=n_layers, prefix=prefix, hooks=hooks)


def copy_model(model: Model) -> Model:
    """An independent deep copy of ``model`` (:meth:`Backend.copy`)."""
    return backend_of(model).copy(model)


def parameter_groups(model: Model) -> dict[str, str]:
    """The finetuning groups (``kv``, ``q``, ``o``, ``mlp``, ``all``) as patterns over ``model``'s
    :meth:`Backend.block_parameters` names."""
    return backend_of(model).param_groups


def block_parameters(model: Model) -> dict[str, torch.nn.Parameter]:
    """Every block parameter of ``model`` under its backend's stable name."""
    return dict(backend_of(model).block_parameters(model))


__all__ = [
    "BACKENDS",
    "BRIDGE",
    "HOOKED",
    "Backend",
    "BridgeBackend",
    "HookedBackend",
    "Model",
    "Prefix",
    "backend_of",
    "block_parameters",
    "bridge_prefix_cache_works",
    "check_backend",
    "copy_model",
    "default_backend",
    "final_residual",
    "has_hooked_transformer",
    "parameter_groups",
    "transformer_lens_version",
]
