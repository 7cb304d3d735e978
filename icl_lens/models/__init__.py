"""Models: load real pretrained models offline as TransformerLens ``HookedTransformer``\\ s.

* :mod:`~icl_lens.models.registry` -- the named offline models (PyPI-hosted GGUF files, pinned by
  SHA-256) and what is known about them.
* :mod:`~icl_lens.models.offline` -- fetching, verifying and dequantizing them once into the cache.
* :mod:`~icl_lens.models.loading` -- :func:`load_model` for named models, local directories, GGUF
  files and hub names.
* :mod:`~icl_lens.models.untrained` -- the random-weights baseline (``reference`` or ``normal`` init).
* :mod:`~icl_lens.models.cpu_matmul` -- float32 CPU products on oneDNN where MKL takes a slow path
  (:func:`~icl_lens.models.cpu_matmul.cpu_matmul`; ``ICL_LENS_CPU_MATMUL``).

Both named models are 4-bit GGUF checkpoints dequantized to float32, not the original weights:
say so wherever results are reported.
"""

from __future__ import annotations

from icl_lens.models.loading import list_models, load_model, process_weights
from icl_lens.models.offline import default_cache_dir, prepare_gguf_file, prepare_offline_model
from icl_lens.models.registry import OFFLINE_MODELS, OfflineModel, WheelFile
from icl_lens.models.tokenizers import tokenizer_adds_bos
from icl_lens.models.untrained import UNTRAINED_INITS, reinitialize_untrained

__all__ = [
    "OFFLINE_MODELS",
    "UNTRAINED_INITS",
    "OfflineModel",
    "WheelFile",
    "default_cache_dir",
    "list_models",
    "load_model",
    "prepare_gguf_file",
    "prepare_offline_model",
    "process_weights",
    "reinitialize_untrained",
    "tokenizer_adds_bos",
]
