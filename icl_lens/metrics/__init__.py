"""Every metric of the ICL-vs-finetuning comparison (formulas: docs/concepts/metrics.md), one concept per module:

- :mod:`~icl_lens.metrics.predictions`: accuracy, Rec2FTP, Jaccard index of prediction changes;
- :mod:`~icl_lens.metrics.attention`: SimAOU (+ random baseline), SimAM, SimAM_Δ, α, from
  recorded :class:`~transformer_lens.ActivationCache` objects or stacked tensors;
- :mod:`~icl_lens.metrics.distributions`: top-k token overlap, overlap cosine, order sensitivity;
- :mod:`~icl_lens.metrics.weights`: weight sparsity, finetuning update norms, dual-form updates.
"""

from icl_lens.metrics.attention import (
    alpha,
    alpha_per_example,
    layer_mean,
    simam,
    simam_delta,
    simam_delta_per_example,
    simam_per_example,
    simaou,
    simaou_per_example,
    simaou_random_baseline,
    simaou_random_per_example,
)
from icl_lens.metrics.distributions import (
    DEFAULT_TOP_K,
    TopKDistribution,
    accuracy_std,
    order_sensitivity,
    overlap_cosine,
    token_overlap,
)
from icl_lens.metrics.predictions import PredictionChangeOverlap, accuracy, prediction_change_overlap, rec2ftp
from icl_lens.metrics.weights import (
    HANDBUILT_ICL_GD_SPARSITY,
    SPARSITY_PARAMETERS,
    DualFormCosine,
    attention_parameter,
    dual_form_cosine,
    dual_form_ft_update,
    dual_form_icl_update,
    model_weight_sparsity,
    weight_sparsity,
    weight_update_norms,
)

__all__ = [
    "DEFAULT_TOP_K",
    "HANDBUILT_ICL_GD_SPARSITY",
    "SPARSITY_PARAMETERS",
    "DualFormCosine",
    "PredictionChangeOverlap",
    "TopKDistribution",
    "accuracy",
    "accuracy_std",
    "alpha",
    "alpha_per_example",
    "attention_parameter",
    "dual_form_cosine",
    "dual_form_ft_update",
    "dual_form_icl_update",
    "layer_mean",
    "model_weight_sparsity",
    "order_sensitivity",
    "overlap_cosine",
    "prediction_change_overlap",
    "rec2ftp",
    "simam",
    "simam_per_example",
    "simam_delta",
    "simam_delta_per_example",
    "simaou",
    "simaou_per_example",
    "simaou_random_baseline",
    "simaou_random_per_example",
    "token_overlap",
    "weight_sparsity",
    "weight_update_norms",
]
