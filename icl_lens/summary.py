"""Moved to :mod:`icl_lens.reporting.summary`; this path stays importable for existing code."""

from icl_lens.reporting.summary import *  # noqa: F403
