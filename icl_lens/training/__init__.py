"""Training: the finetuning side of the comparison (Dai et al. 2023; Deutch et al. 2024).

- :mod:`~icl_lens.training.finetune`: GD on a copy of the model — parameter groups (``kv`` = W_K,
  W_V), optimizers, clipping, float32 master weights, per-layer gradient norms;
- :mod:`~icl_lens.training.lcgd`: layer-causal GD (every block's input detached, one logit-lens loss
  per layer);
- :mod:`~icl_lens.training.lr_sweep`: choosing the learning rate on a dev slice;
- :mod:`~icl_lens.training.batched`: every rate of the sweep's grid trained and scored together.

Submodules load on first access, so importing the package stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icl_lens._lazy import lazy_attributes

_SUBMODULES = ("batched", "finetune", "lcgd", "lr_sweep")

if TYPE_CHECKING:
    from icl_lens.training import batched, finetune, lcgd, lr_sweep  # noqa: F401

__all__ = list(_SUBMODULES)


__getattr__, __dir__ = lazy_attributes(__name__, _SUBMODULES)
