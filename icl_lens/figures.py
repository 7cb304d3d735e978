"""Moved to :mod:`icl_lens.reporting.figures`; this path stays importable for existing code."""

from icl_lens.reporting.figures import *  # noqa: F403
