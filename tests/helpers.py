"""Tiny, download-free models and tokenizers for fast tests."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>"]
_TOKENIZER_DIR: str | None = None


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A real HF fast tokenizer with one token per byte (GPT-2 style byte alphabet) plus BOS/EOS/PAD."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    # TransformerLens re-opens tokenizers by path (name_or_path), so give it one on disk.
    global _TOKENIZER_DIR
    if _TOKENIZER_DIR is None:
        _TOKENIZER_DIR = tempfile.mkdtemp(prefix="icl_lens_byte_tokenizer_")
        fast.save_pretrained(_TOKENIZER_DIR)
    return AutoTokenizer.from_pretrained(_TOKENIZER_DIR)


def tiny_model(
    n_layers: int = 2,
    gqa: bool = False,
    seed: int = 0,
    n_ctx: int = 1024,
    d_model: int = 32,
) -> HookedTransformer:
    """A random HookedTransformer with a byte tokenizer: Llama-like when ``gqa`` (RMSNorm, rotary,
    grouped-query attention), GPT-2-like otherwise."""
    tokenizer = byte_tokenizer()
    common = dict(
        n_layers=n_layers, d_model=d_model, n_ctx=n_ctx, d_head=8, n_heads=4, d_vocab=len(tokenizer),
        act_fn="gelu", seed=seed, d_mlp=4 * d_model, default_prepend_bos=False,
    )
    if gqa:
        cfg = HookedTransformerConfig(
            **common, normalization_type="RMS", positional_embedding_type="rotary", n_key_value_heads=2,
            rotary_dim=8, final_rms=True, gated_mlp=True,
        )
    else:
        cfg = HookedTransformerConfig(**common, normalization_type="LN")
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


def load_experiment_script(name: str) -> ModuleType:
    """Import ``experiments/<name>.py`` (not a package) as a module, for end-to-end script tests."""
    path = Path(__file__).parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
