"""Moved to :mod:`icl_lens.reporting.report`; this path stays importable for existing code."""

from icl_lens.reporting.report import *  # noqa: F403
