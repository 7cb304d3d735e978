"""Moved to :mod:`icl_lens.reporting.reference`; this path stays importable for existing code."""

from icl_lens.reporting.reference import *  # noqa: F403
