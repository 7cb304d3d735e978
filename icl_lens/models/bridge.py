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

from icl_lens.errors import ModelLoadError
from icl_lens.models.tokenizers import attach_tokenizer, tokenizer_adds_bos

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge

logger = logging.getLogger(__name__)


def bridge_from_hf_dir(hf_dir: Path, *, model_name: str | None = None) -> TransformerBridge:
    """A float32 CPU bridge over the Hugging Face model in ``hf_dir`` (compatibility mode is
    enabled by :func:`finish_bridge`, after any re-initialisation)."""
    from transformers import AutoTokenizer

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


__all__ = ["bridge_from_hf_dir", "bridge_from_hub", "finish_bridge"]
