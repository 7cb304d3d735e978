"""Moved to :mod:`icl_lens.training.finetune`; this path stays importable for existing code."""

from icl_lens.training.finetune import *  # noqa: F403
