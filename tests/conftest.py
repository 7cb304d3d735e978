"""Shared fixtures: deterministic seeding and tiny download-free models."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import tiny_model  # noqa: E402

from icl_lens._shapes import enable_shape_checks  # noqa: E402

# The metrics', logit lens' and calibration's jaxtyping shapes are checked in every test
# (ICL_LENS_CHECK_SHAPES=0 turns it off, e.g. to time something).
enable_shape_checks(os.environ.get("ICL_LENS_CHECK_SHAPES", "1").strip() != "0")


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_gpt():
    """A 2-layer GPT-2-like random model (LayerNorm, absolute positions) with a byte tokenizer."""
    return tiny_model(gqa=False, n_layers=2)


@pytest.fixture(scope="session")
def tiny_llama():
    """A 3-layer Llama-like random model (RMSNorm, rotary, grouped-query attention)."""
    return tiny_model(gqa=True, n_layers=3)


@pytest.fixture(params=["gpt", "llama"])
def any_tiny(request, tiny_gpt, tiny_llama):
    return tiny_gpt if request.param == "gpt" else tiny_llama
