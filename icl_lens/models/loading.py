"""``load_model``: a HookedTransformer from a named offline model, a local directory, a GGUF file or
a TransformerLens hub name.

Local weights go through TransformerLens' lower-level loading functions
(``get_pretrained_model_config`` with ``hf_cfg=``, ``get_pretrained_state_dict`` with ``hf_model=``),
because ``HookedTransformer.from_pretrained`` only accepts official hub names. Two TransformerLens
habits need care offline:

* it chooses some architectures by *name*, not from ``config.json``: any path containing ``llama``
  is assumed to be Llama with a name-based config, any containing ``gemma`` a Gemma table entry.
  Architectures configured from ``config.json`` (Llama, Mistral, Qwen, ...) are therefore shown to it
  through a copy of ``config.json`` under a neutral temporary path; Gemma-3 text models are mapped to
  the TransformerLens official name of their size, and that table entry is checked field by field
  against the model's own ``config.json``.
* ``HookedTransformer`` swaps in a re-loaded tokenizer that adds BOS. We keep the model's own
  tokenizer instead (``model.tokenizer(text)`` gives the ids the Hugging Face model expects) and set
  ``model.cfg.default_prepend_bos`` to whether that tokenizer adds BOS itself, so
  ``model.to_tokens(text)`` gives the same ids too. Gemma-3: ``True`` (``<bos>``); SmolLM2: ``False``
  (its BOS ``<|im_start|>`` is a chat-turn marker it never adds). Pass ``prepend_bos=`` to override.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from icl_lens.errors import ModelLoadError
from icl_lens.models.backends import ABSENT_BIASES_ATTR, Model, check_backend
from icl_lens.models.bridge import bridge_from_hf_dir, bridge_from_hub, finish_bridge
from icl_lens.models.offline import default_cache_dir, prepare_gguf_file, prepare_offline_model
from icl_lens.models.registry import OFFLINE_MODELS, OfflineModel, get_offline_model
from icl_lens.models.tokenizers import attach_tokenizer, tokenizer_adds_bos
from icl_lens.models.untrained import (
    UNTRAINED_INITS,
    UntrainedInit,
    reinitialize_untrained,
    reinitialize_untrained_bridge,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
}

# Substrings TransformerLens' convert_hf_model_config matches in a *path* to pick a name-based branch.
_TL_NAME_SNIFFS = ("llama", "gemma", "wav2vec2")

# Gemma-3 text models TransformerLens knows, by (num_hidden_layers, hidden_size).
_GEMMA3_TEXT_SIZES = {(18, 640): "google/gemma-3-270m", (26, 1152): "google/gemma-3-1b-pt"}


def list_models() -> list[OfflineModel]:
    """The named offline models (name, description, licence, source packages, layers)."""
    return list(OFFLINE_MODELS.values())


def load_model(
    name_or_path: str | Path,
    *,
    processed: bool = False,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    untrained: bool = False,
    untrained_init: UntrainedInit = "reference",
    seed: int = 0,
    cache_dir: str | Path | None = None,
    backend: str | None = None,
) -> Model:
    """Load a model as a TransformerLens ``HookedTransformer`` or ``TransformerBridge``, in eval mode.

    Args:
        name_or_path: a named offline model (:func:`list_models`: ``smollm2-135m``, the default,
            or ``gemma3-270m``), a local Hugging Face model directory (with ``config.json``), a
            ``.gguf`` file (dequantized once into the cache), or a TransformerLens model name
            (fetched from the Hugging Face hub; needs network access; TransformerLens' own
            tokenizer and BOS conventions apply there). For the others ``model.tokenizer`` is the
            model's own tokenizer and ``cfg.default_prepend_bos`` says whether it adds BOS (module
            docstring).
        processed: apply TransformerLens' weight processing (fold LayerNorm, center writing
            weights, center unembed, fold value biases). ``False`` keeps the model's real weights,
            which finetuning W_K / W_V needs; processing changes raw logits by a per-position
            constant but not log-probabilities.
        device: torch device the model is moved to.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` (or a torch dtype). Loading, processing
            and re-initialisation happen in float32; the model is cast at the end.
        untrained: re-initialise attention and MLP weights randomly (see
            :func:`reinitialize_untrained`), keeping embeddings, norms and unembedding: the
            "same architecture, no training" baseline.
        untrained_init: its recipe: ``reference`` (default: each projection at its framework
            module's default initialisation, as the reference code of Dai et al. 2023 leaves it) or
            ``normal`` (N(0, initializer_range) weights, zero biases).
        seed: seed of that re-initialisation.
        cache_dir: where fetched and converted weights live (default :func:`default_cache_dir`).
        backend: ``hooked`` (:class:`HookedTransformer`, TransformerLens < 4) or ``bridge``
            (:class:`TransformerBridge` in compatibility mode, TransformerLens 3.x and 4.x); None:
            ``hooked`` while TransformerLens < 4 is installed, else ``bridge``
            (:mod:`icl_lens.models.backends`).

    Raises:
        ModelLoadError: the model cannot be found, fetched, verified or converted.
        ConfigError: ``backend`` is unknown or not available in this TransformerLens.
    """
    backend = check_backend(backend)
    torch_dtype = resolve_dtype(dtype)
    _check_device(device)
    if untrained and untrained_init not in UNTRAINED_INITS:
        raise ModelLoadError(f"untrained_init must be one of {list(UNTRAINED_INITS)}, got {untrained_init!r}")
    key = str(name_or_path).strip()
    if not key:
        raise ModelLoadError("empty model name")
    started = time.perf_counter()
    spec = get_offline_model(key)
    path = Path(key).expanduser()
    from_hf_dir: Callable[..., Model]
    model: Model
    if backend == "bridge":
        from_hf_dir = bridge_from_hf_dir
    else:
        from_hf_dir = hooked_from_hf_dir
    if spec is not None:
        hf_dir = prepare_offline_model(spec, cache_dir)
        named = {"tl_name": spec.tl_official_name} if backend == "hooked" else {}
        model = from_hf_dir(hf_dir, model_name=spec.name, **named)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory but has no config.json: not a Hugging Face model")
        model = from_hf_dir(path.resolve(), model_name=path.resolve().name)
    elif path.suffix.lower() == ".gguf":
        hf_dir = prepare_gguf_file(path, cache_dir)
        model = from_hf_dir(hf_dir, model_name=path.stem)
    elif key.startswith(("/", "./", "../", "~", ".\\", "..\\")) or path.is_file():
        raise ModelLoadError(f"{key!r} is neither a Hugging Face model directory (with config.json) nor a .gguf file")
    elif backend == "bridge":
        model = bridge_from_hub(key)
    else:
        model = _load_from_hub(key)
    finish: Callable[..., Model] = _finish_bridge if backend == "bridge" else _finish
    model = finish(
        model,
        processed=processed,
        untrained=untrained,
        untrained_init=untrained_init,
        seed=seed,
        dtype=torch_dtype,
        device=device,
    )
    logger.info(
        "loaded %s (%s backend, %s, %s, processed=%s, untrained=%s) in %.1f s",
        model.cfg.model_name,
        backend,
        device,
        torch_dtype,
        processed,
        f"{untrained_init} init" if untrained else False,
        time.perf_counter() - started,
    )
    return model


def _check_device(device: str) -> None:
    """A clear error for a device this torch build or machine cannot use."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"invalid device {device!r}: {exc}") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} requested, but this torch build or machine has no CUDA GPU")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r} requested, but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r} requested, but MPS is not available")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The floating-point torch dtype a name (``float32``, ``bfloat16``, ``float16``) or dtype stands for."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ModelLoadError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    resolved = DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if resolved is None:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose from float32, bfloat16, float16")
    return resolved


def _finish(
    model: HookedTransformer,
    *,
    processed: bool,
    untrained: bool,
    seed: int,
    dtype: torch.dtype,
    device: str,
    untrained_init: UntrainedInit = "reference",
) -> HookedTransformer:
    """Re-initialise (before processing, so folded norms stay the trained ones), process, cast, move."""
    if untrained:
        reinitialize_untrained(model, seed, init=untrained_init)
    if processed:
        process_weights(model)
        setattr(model.cfg, ABSENT_BIASES_ATTR, ())  # processing may fold values into the biases
    if dtype != model.cfg.dtype:
        model.to(dtype, print_details=False)
    model.to(device, print_details=False)
    store_mlp_weights_transposed(model)
    store_unembedding_transposed(model)
    model.eval()
    return model


def store_mlp_weights_transposed(model: HookedTransformer) -> int:
    """Lay each gated MLP's ``W_gate``/``W_in``/``W_out`` out in memory as ``nn.Linear`` does
    (``[d_out, d_in]`` contiguous, seen through a transposed view); returns how many were re-laid.

    TransformerLens's ``GatedMLP.forward`` multiplies by ``W.T.contiguous()`` (to match the Hugging
    Face layout), which copies all three matrices in every forward pass: on Gemma-3-270M about 12 %
    of an evaluation's time and 20 % of a GD step's (profiled). Stored this way, ``W.T`` already is
    contiguous, ``.contiguous()`` returns it without a copy, and the product is the same ``F.linear``
    on the same memory layout, so every value is unchanged bit for bit. The parameters' values and
    shapes stay as they were; only their strides change.
    """
    relaid = 0
    for module in model.modules():
        if type(module).__name__ != "GatedMLP":
            continue
        for name in ("W_gate", "W_in", "W_out"):
            param = getattr(module, name, None)
            if isinstance(param, torch.nn.Parameter) and param.ndim == 2 and not param.T.is_contiguous():
                param.data = param.data.T.contiguous().T
                relaid += 1
    return relaid


def store_unembedding_transposed(model: HookedTransformer) -> bool:
    """Lay ``W_U`` out as the embedding and ``nn.Linear`` do (``[d_vocab, d_model]`` contiguous, seen
    through a transposed view); returns whether it was re-laid.

    TransformerLens's ``Unembed.forward`` multiplies by ``W_U.T.contiguous()``, a 671 MB copy per
    forward pass on Gemma-3's 262k vocabulary; stored this way it is no copy and the model's logits
    are unchanged bit for bit. The logit lens (:func:`icl_lens.lens.logit_lens`) then runs the same
    product as the model's own output, and the chunked lens loss reads contiguous rows of the
    vocabulary (GD's 40-row loss 1.3x faster on 2 cores than with ``[d_model, d_vocab]`` chunks).
    """
    param = getattr(getattr(model, "unembed", None), "W_U", None)
    if not isinstance(param, torch.nn.Parameter) or param.ndim != 2 or param.T.is_contiguous():
        return False
    param.data = param.data.T.contiguous().T
    return True


def _finish_bridge(
    model: TransformerBridge,
    *,
    processed: bool,
    untrained: bool,
    seed: int,
    dtype: torch.dtype,
    device: str,
    untrained_init: UntrainedInit = "reference",
) -> Model:
    """:func:`_finish` for a bridge: re-initialise, then compatibility mode (which processes the
    weights iff ``processed``), cast, move."""

    if untrained:
        reinitialize_untrained_bridge(model, seed, init=untrained_init)
    finish_bridge(model, processed=processed)
    if dtype != torch.float32:
        model.to(dtype)
    model.to(device)
    model.eval()
    return model


def process_weights(model: HookedTransformer) -> HookedTransformer:
    """TransformerLens' weight processing in place, with the guards ``from_pretrained`` applies.

    Folding norms and centering writing weights are skipped for post-norm architectures and
    shortformer positions; centering the unembedding is skipped when logits are soft-capped (a
    constant shift does change capped logits).
    """
    from transformer_lens.utilities.activation_functions import softcap_enabled
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    cfg = model.cfg
    fold_ln = center_writing = center_unembed = True
    if cfg.positional_embedding_type == "shortformer":
        fold_ln = center_writing = center_unembed = False
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        fold_ln = center_writing = False
    if softcap_enabled(cfg.output_logits_soft_cap):
        center_unembed = False
    model.load_and_process_state_dict(
        model.state_dict(),
        fold_ln=fold_ln,
        center_writing_weights=center_writing,
        center_unembed=center_unembed,
        fold_value_biases=True,
    )
    return model


# ----------------------------------------------------------------------------- local HF directories


def hooked_from_hf_dir(hf_dir: Path, *, tl_name: str | None = None, model_name: str | None = None) -> HookedTransformer:
    """An unprocessed float32 CPU HookedTransformer from a local Hugging Face model directory.

    ``tl_name``: the TransformerLens official name whose architecture config to use (needed for
    families TransformerLens configures by name, i.e. Gemma); inferred from ``config.json`` if None.
    """
    from transformer_lens import loading_from_pretrained as tl_loading
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hf_dir = Path(hf_dir)
    try:
        hf_config = AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {hf_dir / 'config.json'}: {type(exc).__name__}: {exc}") from exc
    if tl_name is None:
        tl_name = _tl_name_for(hf_config, hf_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
        hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True, dtype=torch.float32)
    except Exception as exc:
        raise ModelLoadError(f"transformers could not load {hf_dir}: {type(exc).__name__}: {exc}") from exc
    hf_model.eval()
    hf_model.requires_grad_(False)
    prepend_bos = tokenizer_adds_bos(tokenizer)
    try:
        with _tl_config_source(hf_dir, tl_name) as source:
            cfg = tl_loading.get_pretrained_model_config(
                source,
                hf_cfg=hf_config.to_dict(),
                device="cpu",
                dtype=torch.float32,
                default_prepend_bos=prepend_bos,
                local_files_only=True,
            )
            if tl_name is not None:
                _check_named_config(cfg, hf_config, tl_name, hf_dir)
            state_dict = tl_loading.get_pretrained_state_dict(source, cfg, hf_model=hf_model, dtype=torch.float32)
    except ModelLoadError:
        raise
    except Exception as exc:
        arch = (getattr(hf_config, "architectures", None) or [getattr(hf_config, "model_type", "?")])[0]
        raise ModelLoadError(
            f"TransformerLens cannot convert {hf_dir} (architecture {arch}): {type(exc).__name__}: {exc}"
        ) from exc
    absent_biases = absent_bias_parts(hf_model)
    del hf_model
    cfg.model_name = model_name or hf_dir.name
    init_range = getattr(hf_config, "initializer_range", None)
    if isinstance(init_range, (int, float)) and init_range > 0:
        cfg.initializer_range = float(init_range)  # the model's own init scale, for untrained=True
    # Built without a tokenizer (cfg.tokenizer_name None), so HookedTransformer neither re-loads the
    # tokenizer nor swaps in an add-BOS copy; the model's own tokenizer is attached afterwards.
    cfg.tokenizer_name = None
    from transformer_lens import HookedTransformer

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = HookedTransformer(cfg, None, move_to_device=False)
    model.cfg.tokenizer_name = str(hf_dir)  # TransformerLens re-opens tokenizers by this name: keep it local
    attach_tokenizer(model, tokenizer)
    _load_unprocessed(model, state_dict)
    setattr(model.cfg, ABSENT_BIASES_ATTR, absent_biases)
    return model


def absent_bias_parts(hf_model) -> tuple[str, ...]:
    """Which block parts (``attn``, ``mlp``) of a Hugging Face model have no bias at all.

    TransformerLens gives every converted model zero ``b_Q``/``b_K``/``b_V``/``b_O`` (and MLP
    biases); for an architecture without them (Llama, Gemma, SmolLM2) they are not the model's
    parameters, so the backend leaves them out of the block parameters: finetuning trains what the
    model has, as on the bridge (:meth:`icl_lens.models.backends.HookedBackend.block_parameters`).
    """
    has = {"attn": False, "mlp": False}
    for name, _ in hf_model.named_parameters():
        if not name.endswith("bias") or "norm" in name or re.search(r"(^|\.)ln_?\w*\.", name):
            continue
        if re.search(r"(^|\.)(self_attn|attn|attention)\.", name):
            has["attn"] = True
        elif re.search(r"(^|\.)mlp\.", name):
            has["mlp"] = True
    return tuple(part for part, present in has.items() if not present)


def _load_unprocessed(model: HookedTransformer, state_dict: dict[str, torch.Tensor]) -> None:
    """Load converted weights as they are, in one pass (TransformerLens' ``load_and_process_state_dict``
    walks the whole module tree once per key: seconds for Gemma's 418 tensors)."""
    owned: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, tensor in model.fill_missing_keys(state_dict).items():
        tensor = tensor.detach().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in storages:  # never let two parameters share memory (tied embeddings, views)
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        owned[key] = tensor
    result = model.load_state_dict(owned, strict=False, assign=True)
    params = dict(model.named_parameters())
    missing = [k for k in result.missing_keys if k in params]
    if missing or result.unexpected_keys:
        raise ModelLoadError(
            f"converted weights do not fit the TransformerLens model: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


@contextlib.contextmanager
def _tl_config_source(hf_dir: Path, tl_name: str | None) -> Iterator[str]:
    """The name or path to hand TransformerLens: ``tl_name`` if given, else a neutral copy of config.json."""
    if tl_name is not None:
        yield tl_name
        return
    with tempfile.TemporaryDirectory(prefix="icl_lens_tl_cfg_") as tmp:
        view = Path(tmp) / "local-model"
        view.mkdir()
        config = json.loads((hf_dir / "config.json").read_text())
        if config.get("model_type") == "gpt2" and "n_ctx" not in config and "n_positions" in config:
            config["n_ctx"] = config[
                "n_positions"
            ]  # TransformerLens reads n_ctx, which transformers 5 no longer writes
        (view / "config.json").write_text(json.dumps(config))
        if any(word in str(view).lower() for word in _TL_NAME_SNIFFS):
            raise ModelLoadError(
                f"the temporary path {view} contains one of {_TL_NAME_SNIFFS}, which makes TransformerLens "
                f"pick a config by name; set TMPDIR to another directory"
            )
        yield str(view)


def _tl_name_for(hf_config, hf_dir: Path) -> str | None:
    """TransformerLens official name for families it configures by name; None for config.json ones."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    model_type = getattr(hf_config, "model_type", "")
    if "Gemma3ForCausalLM" in archs or model_type == "gemma3_text":
        key = (hf_config.num_hidden_layers, hf_config.hidden_size)
        if key not in _GEMMA3_TEXT_SIZES:
            raise ModelLoadError(
                f"{hf_dir}: a Gemma-3 text model with {key[0]} layers and d_model {key[1]}; TransformerLens "
                f"configures Gemma-3 by name and knows text sizes {sorted(_GEMMA3_TEXT_SIZES)} only"
            )
        return _GEMMA3_TEXT_SIZES[key]
    if model_type in ("gemma", "gemma2", "gemma3") or any(a.startswith("Gemma") for a in archs):
        raise ModelLoadError(
            f"{hf_dir}: {archs or model_type} is not supported from a local directory (TransformerLens "
            f"configures this family by hub name); Gemma-3 text models (270m, 1b) are"
        )
    return None


def _hf_rope_theta(hf_config, layer_type: str) -> float | None:
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, dict):
        if isinstance(params.get(layer_type), dict):
            return params[layer_type].get("rope_theta")
        if "rope_theta" in params and layer_type == "full_attention":
            return params["rope_theta"]
    if layer_type == "sliding_attention":
        return getattr(hf_config, "rope_local_base_freq", None)
    return getattr(hf_config, "rope_theta", None)


def _check_named_config(cfg, hf_config, tl_name: str, hf_dir: Path) -> None:
    """Refuse a name-based TransformerLens config that disagrees with the model's config.json."""
    expected: dict[str, Any] = {
        "d_model": hf_config.hidden_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_heads": hf_config.num_attention_heads,
        "d_head": getattr(hf_config, "head_dim", None),
        "n_key_value_heads": getattr(hf_config, "num_key_value_heads", None),
        "d_mlp": hf_config.intermediate_size,
        "eps": getattr(hf_config, "rms_norm_eps", None),
        "d_vocab": hf_config.vocab_size,
        "window_size": getattr(hf_config, "sliding_window", None),
        "rotary_base": _hf_rope_theta(hf_config, "full_attention"),
        "rotary_base_local": _hf_rope_theta(hf_config, "sliding_attention"),
        "act_fn": getattr(hf_config, "hidden_activation", None),
    }
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types:
        expected["attn_types"] = ["local" if t == "sliding_attention" else "global" for t in layer_types]
    scalar = getattr(hf_config, "query_pre_attn_scalar", None)
    problems = []
    for field_name, want in expected.items():
        if want is None:
            continue
        have = getattr(cfg, field_name, None)
        if isinstance(want, float) or isinstance(have, float):
            same = have is not None and abs(float(have) - float(want)) <= 1e-9 * max(1.0, abs(float(want)))
        else:
            same = have == want
        if not same:
            problems.append(f"{field_name}: TransformerLens {have!r} vs config.json {want!r}")
    if scalar is not None and cfg.use_attn_scale and abs(cfg.attn_scale - float(scalar) ** 0.5) > 1e-6:
        problems.append(f"attn_scale: TransformerLens {cfg.attn_scale} vs sqrt(query_pre_attn_scalar) {scalar**0.5}")
    final_cap = getattr(hf_config, "final_logit_softcapping", None)
    if (final_cap or 0) != (cfg.output_logits_soft_cap if cfg.output_logits_soft_cap > 0 else 0):
        problems.append(f"output_logits_soft_cap: TransformerLens {cfg.output_logits_soft_cap} vs {final_cap}")
    if problems:
        raise ModelLoadError(
            f"{hf_dir}: the TransformerLens config of {tl_name} does not match this model's config.json: "
            + "; ".join(problems)
        )


# ----------------------------------------------------------------------------- hub names (online)


def _load_from_hub(name: str) -> HookedTransformer:
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name

    offline = ", ".join(sorted(OFFLINE_MODELS))
    try:
        official = get_official_model_name(name)
    except ValueError as exc:
        raise ModelLoadError(
            f"{name!r} is not a named offline model ({offline}), not an existing local model directory "
            f"or .gguf file, and not a TransformerLens model name"
        ) from exc
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
            model = HookedTransformer.from_pretrained_no_processing(official, device="cpu", dtype=torch.float32)
    except Exception as exc:  # network, auth and hub errors come in many types
        hint = "" if os.environ.get("HF_HUB_OFFLINE") not in ("1", "true", "True") else " (HF_HUB_OFFLINE is set)"
        raise ModelLoadError(
            f"{name!r} is not a local path or a named offline model, and loading it from the Hugging Face hub "
            f"failed{hint} -- the hub may be unreachable: {type(exc).__name__}: {exc}. Offline models: {offline}; "
            f"a local model directory or .gguf file also works"
        ) from exc
    model.cfg.model_name = name
    return model


__all__ = ["default_cache_dir", "list_models", "load_model", "process_weights"]
