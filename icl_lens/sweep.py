"""Moved to :mod:`icl_lens.runs.sweep`; this path stays importable for existing code."""

from icl_lens.runs.sweep import *  # noqa: F403
