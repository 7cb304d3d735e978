"""A model's own tokenizer: attaching it to a TransformerLens model as it is, and whether it adds BOS.

Both backends' loaders use these (a leaf module, so the loaders import nothing of each other).
"""

from __future__ import annotations

from typing import Any


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` starts with the tokenizer's own BOS token."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def attach_tokenizer(model: Any, tokenizer) -> None:
    """Give ``model`` this tokenizer as it is (``HookedTransformer.set_tokenizer`` would swap in a
    re-loaded add-BOS copy); like TransformerLens, fall back to EOS for a missing PAD or BOS token."""
    if tokenizer.padding_side is None:
        tokenizer.padding_side = "right"
    if tokenizer.eos_token is None:
        tokenizer.eos_token = "<|endoftext|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    model.tokenizer = tokenizer
    model.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0


__all__ = ["attach_tokenizer", "tokenizer_adds_bos"]
