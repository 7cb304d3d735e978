"""Controls with known answers: models where in-context learning provably is (or is not) gradient descent.

von Oswald et al. 2023 ("Transformers learn in-context by gradient descent") train one linear
self-attention layer on linear regression and show it implements one GD step; their Appendix A.1
builds the weights that do so exactly. Shen et al. 2023 argue this does not carry over to real models
and Deutch et al. 2024 find the Dai et al. 2023 similarity metrics high even for an untrained model.
This package runs the project's instruments where the answer is known:

- :mod:`~icl_lens.controls.tasks`: the regression task family and plain GD on it;
- :mod:`~icl_lens.controls.models`: the controls as TransformerLens-compatible models (hook points
  under TransformerLens names, so ``run_with_cache`` feeds the project's metrics unchanged);
- :mod:`~icl_lens.controls.train`: training (Adam, fresh tasks each step), cached and checksummed;
- :mod:`~icl_lens.controls.comparators`: the von Oswald GD comparator and the Dai-style FT comparator;
- :mod:`~icl_lens.controls.dherin`: Dherin et al. 2025's rank-1 context patch of an MLP block;
- :mod:`~icl_lens.controls.report`: the one-page control table.
"""

from icl_lens.controls.models import ControlConfig, ControlTransformer, construction
from icl_lens.controls.tasks import RegressionBatch, RegressionConfig, sample_tasks

__all__ = [
    "ControlConfig",
    "ControlTransformer",
    "RegressionBatch",
    "RegressionConfig",
    "construction",
    "sample_tasks",
]
