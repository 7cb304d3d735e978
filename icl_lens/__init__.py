"""icl_lens: does in-context learning work like gradient descent?

A TransformerLens plugin that runs a classification task zero-shot (ZSL), in context (ICL), as
finetuning steps (GD/FT) and as layer-causal GD (LCGD) on the same queries, and compares what they do
to predictions, attention outputs and attention maps.

Quick start (notebook)::

    import icl_lens
    model = icl_lens.load_model("gemma3-270m")
    out = icl_lens.run_experiment(model, icl_lens.get_task("sst2"), icl_lens.ExperimentConfig(k=8, limit=50, lr=1e-3))
    out.results["accuracy"], out.results["metrics"]["ft"]["simaou"]["mean"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icl_lens._lazy import lazy_attributes
from icl_lens._version import __version__
from icl_lens.errors import (
    ConfigError,
    DataFormatError,
    IclLensError,
    MetricInputError,
    ModelLoadError,
    NonFiniteError,
    PromptError,
    ResultsError,
    TaskError,
    TrainingDivergedError,
)

# Public names -> defining module, imported on first use so `import icl_lens` stays light.
_LAZY = {
    "RecordSpec": "evaluation",
    "SettingRun": "evaluation",
    "evaluate": "evaluation",
    "ExperimentConfig": "cell.experiment",
    "ExperimentOutput": "cell.experiment",
    "run_experiment": "cell.experiment",
    "FinetuneConfig": "training.finetune",
    "TrainingTrace": "training.finetune",
    "finetune": "training.finetune",
    "layer_causal_finetune": "training.lcgd",
    "logit_lens": "lens",
    "list_models": "models",
    "load_model": "models",
    "EncodedPrompts": "prompts",
    "PromptFormat": "prompts",
    "encode_prompts": "prompts",
    "Task": "tasks",
    "builtin_tasks": "tasks",
    "get_task": "tasks",
    "load_split": "tasks",
    "sample_demonstrations": "tasks",
    "sample_queries": "tasks",
}

# Subpackages and modules reachable as attributes (``icl_lens.metrics.simaou``) without importing
# torch-heavy code at ``import icl_lens`` time. ``icl_lens.finetune`` is the function (the module is
# ``icl_lens.training.finetune``).
_SUBMODULES = (
    "analyses",
    "calibration",
    "cell",
    "controls",
    "evaluation",
    "lens",
    "metrics",
    "models",
    "papers",
    "prompts",
    "reporting",
    "runs",
    "stats",
    "tasks",
    "training",
    "viz",
)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time these load on first access
    from icl_lens import analyses, cell, metrics, models, papers, reporting, runs, stats, training, viz  # noqa: F401
    from icl_lens.cell.experiment import ExperimentConfig, ExperimentOutput, run_experiment  # noqa: F401
    from icl_lens.evaluation import RecordSpec, SettingRun, evaluate  # noqa: F401
    from icl_lens.lens import logit_lens  # noqa: F401
    from icl_lens.models import list_models, load_model  # noqa: F401
    from icl_lens.prompts import EncodedPrompts, PromptFormat, encode_prompts  # noqa: F401
    from icl_lens.tasks import (  # noqa: F401
        Task,
        builtin_tasks,
        get_task,
        load_split,
        sample_demonstrations,
        sample_queries,
    )
    from icl_lens.training.finetune import FinetuneConfig, TrainingTrace, finetune  # noqa: F401
    from icl_lens.training.lcgd import layer_causal_finetune  # noqa: F401

__all__ = [
    "__version__",
    "ConfigError",
    "DataFormatError",
    "IclLensError",
    "MetricInputError",
    "ModelLoadError",
    "NonFiniteError",
    "PromptError",
    "ResultsError",
    "TaskError",
    "TrainingDivergedError",
    *_LAZY,
    *_SUBMODULES,
]


__getattr__, __dir__ = lazy_attributes(__name__, _SUBMODULES, _LAZY)
