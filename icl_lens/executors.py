"""Moved to :mod:`icl_lens.runs.executors`; this path stays importable for existing code."""

from icl_lens.runs.executors import *  # noqa: F403
