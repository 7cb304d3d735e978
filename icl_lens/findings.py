"""Moved to :mod:`icl_lens.reporting.findings`; this path stays importable for existing code."""

from icl_lens.reporting.findings import *  # noqa: F403
