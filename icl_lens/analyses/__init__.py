"""Analyses after Shen et al. 2023 ("Do pretrained transformers learn in-context by gradient
descent?"): each takes a model and a task (and a config dataclass) and returns a small result
dataclass with ``to_dict()``.

- :mod:`~icl_lens.analyses.order_sensitivity`: std across demonstration orders of the output
  distribution and of accuracy, ICL vs GD (SGD / Adam × batch size);
- :mod:`~icl_lens.analyses.output_agreement`: top-10 token overlap and overlap cosine between
  settings of one :func:`~icl_lens.cell.experiment.run_experiment` output;
- :mod:`~icl_lens.analyses.sparsity`: near-zero fraction of W_Q, W_K, W_V per layer over
  thresholds, beside the ~75 % the hand-built ICL = GD constructions need;
- :mod:`~icl_lens.analyses.demo_sweep`: resumable sweep over k and models of the ICL–GD gap in
  accuracy and SimAOU;
- :mod:`~icl_lens.analyses.weight_space`: ‖ΔW_FT‖ per layer and the cosine of the FT update with
  the dual-form ICL update.

Their PNG figures are in :mod:`icl_lens.reporting.figures`, with the other static figures.
"""

from icl_lens.analyses.demo_sweep import DemoSweepConfig, DemoSweepResult, context_fit, run_demo_sweep
from icl_lens.analyses.order_sensitivity import (
    OrderSensitivityConfig,
    OrderSensitivityResult,
    SettingSensitivity,
    demo_permutations,
    run_order_sensitivity,
)
from icl_lens.analyses.output_agreement import OutputAgreement, PairAgreement, output_agreement, pair_agreement
from icl_lens.analyses.sparsity import (
    DEFAULT_THRESHOLDS,
    SparsityConfig,
    SparsityReport,
    SparsityResult,
    sparsity_all_models,
    weight_sparsity_analysis,
)
from icl_lens.analyses.weight_space import (
    WeightSpaceConfig,
    WeightSpaceResult,
    attention_inputs,
    run_weight_space,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DemoSweepConfig",
    "DemoSweepResult",
    "OrderSensitivityConfig",
    "OrderSensitivityResult",
    "OutputAgreement",
    "PairAgreement",
    "SettingSensitivity",
    "SparsityConfig",
    "SparsityReport",
    "SparsityResult",
    "WeightSpaceConfig",
    "WeightSpaceResult",
    "attention_inputs",
    "context_fit",
    "demo_permutations",
    "output_agreement",
    "pair_agreement",
    "run_demo_sweep",
    "run_order_sensitivity",
    "run_weight_space",
    "sparsity_all_models",
    "weight_sparsity_analysis",
]
