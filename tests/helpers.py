"""Tiny, download-free models and tokenizers for fast tests."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>"]
_TOKENIZER_DIR: str | None = None

TESTS = Path(__file__).resolve().parent
"""The tests folder (helpers, workers and fixtures live at its top)."""
REPO = TESTS.parent
"""The repository's root."""


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
    family: str | None = None,
    window: int = 4,
    name: str = "tiny",
):
    """A random HookedTransformer with a byte tokenizer, named ``name`` (``cfg.model_name``).

    ``family``: ``"gpt"`` (LayerNorm, absolute positions), ``"llama"`` (RMSNorm, rotary,
    grouped-query attention, gated MLP) or ``"gemma"`` (the llama parts plus Gemma-2/3's norms after
    attention and MLP, q/k RMSNorm, and local sliding-window layers of ``window`` tokens alternating
    with global ones: local, global, local, ... as Gemma-3's 5:1 pattern, shrunk). Without
    ``family``, ``gqa`` picks llama (True) or gpt (False), as before.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # TransformerLens < 4 only

    family = family or ("llama" if gqa else "gpt")
    tokenizer = byte_tokenizer()
    common = dict(
        n_layers=n_layers, d_model=d_model, n_ctx=n_ctx, d_head=8, n_heads=4, d_vocab=len(tokenizer),
        act_fn="gelu", seed=seed, d_mlp=4 * d_model, default_prepend_bos=False,
    )
    llama = dict(normalization_type="RMS", positional_embedding_type="rotary", n_key_value_heads=2,
                 rotary_dim=8, final_rms=True, gated_mlp=True)
    if family == "llama":
        cfg = HookedTransformerConfig(**common, **llama)
    elif family == "gemma":
        cfg = HookedTransformerConfig(
            **common, **llama, use_normalization_before_and_after=True, use_qk_norm=True,
            use_local_attn=True, window_size=window,
            attn_types=["local" if layer % 2 == 0 else "global" for layer in range(n_layers)],
        )
    elif family == "gpt":
        cfg = HookedTransformerConfig(**common, normalization_type="LN")
    else:
        raise ValueError(f"unknown tiny model family {family!r}")
    cfg.model_name = name
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    if family == "gemma":  # non-unit norm scales, as a trained Gemma has
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if param_name.endswith(".w") and ("ln" in param_name or "norm" in param_name):
                    param.copy_(0.5 + torch.rand(param.shape, generator=generator))
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


def assert_same_results(got, expected, rel: float = 1e-4, abs_tol: float = 1e-5, path: str = "") -> None:
    """Two results payloads are the same: every key, string, integer and list length exactly; floats
    within float32 reordering (a worker process with another torch thread count sums in another order)."""
    import math

    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected), f"{path}: keys {sorted(got)} != {sorted(expected)}"
        for key in expected:
            assert_same_results(got[key], expected[key], rel, abs_tol, f"{path}/{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), f"{path}: lengths differ"
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_same_results(a, b, rel, abs_tol, f"{path}[{i}]")
    elif isinstance(expected, float) and not isinstance(got, bool) and isinstance(got, (int, float)):
        if math.isnan(expected):  # undefined in both (e.g. a ratio with nothing to count)
            assert math.isnan(got), f"{path}: {got} != nan"
            return
        assert math.isclose(got, expected, rel_tol=rel, abs_tol=abs_tol), f"{path}: {got} != {expected}"
    else:
        assert got == expected, f"{path}: {got!r} != {expected!r}"


def save_tiny_hf_llama(path: Path, max_position_embeddings: int = 64, initializer_range: float = 0.2):
    """A random 2-layer Llama (GQA) with the byte tokenizer, saved as a Hugging Face directory at
    ``path``; returns the Hugging Face model (for logits to compare against)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
        rope_theta=10000.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, initializer_range=initializer_range,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def save_tiny_hf(family: str, path: Path):
    """A random tiny Hugging Face causal LM with the byte tokenizer, saved at ``path``; returns it.

    ``family``: ``llama`` (grouped-query attention, no biases; :func:`save_tiny_hf_llama`), ``gpt2``
    (fused QKV with biases, LayerNorm, absolute positions) or ``gemma3`` (Gemma-3 text: q/k norms,
    four norms per block, sliding-window layers of 4 tokens alternating with global ones).
    """
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel

    if family == "llama":
        return save_tiny_hf_llama(path, max_position_embeddings=1024)
    tokenizer = byte_tokenizer()
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=2,
                                           n_head=4, **special))
    elif family == "gemma3":
        config = Gemma3TextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"], max_position_embeddings=1024,
            **special,
        )
        model = Gemma3ForCausalLM(config)
        with torch.no_grad():  # non-unit norm scales, as a trained Gemma has
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.copy_(torch.rand(param.shape) - 0.5)
    else:
        raise ValueError(f"unknown tiny Hugging Face family {family!r}")
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model
