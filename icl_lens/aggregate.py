"""Moved to :mod:`icl_lens.reporting.aggregate`; this path stays importable for existing code."""

from icl_lens.reporting.aggregate import *  # noqa: F403
