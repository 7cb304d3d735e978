"""Moved to :mod:`icl_lens.training.lcgd`; this path stays importable for existing code."""

from icl_lens.training.lcgd import *  # noqa: F403
