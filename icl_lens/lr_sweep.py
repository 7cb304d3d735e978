"""Moved to :mod:`icl_lens.training.lr_sweep`; this path stays importable for existing code."""

from icl_lens.training.lr_sweep import *  # noqa: F403
