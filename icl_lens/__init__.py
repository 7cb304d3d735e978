"""icl_lens: does in-context learning work like gradient descent?

A TransformerLens plugin that runs a classification task zero-shot (ZSL), in context (ICL), as
finetuning steps (GD/FT) and as layer-causal GD (LCGD) on the same queries, and compares what they do
to predictions, attention outputs and attention maps.

Quick start (notebook)::

    import icl_lens
    model = icl_lens.load_model("smollm2-135m")
    out = icl_lens.run_experiment(model, icl_lens.get_task("sst2"), icl_lens.ExperimentConfig(k=8, limit=50, lr=1e-3))
    out.results["accuracy"], out.results["metrics"]["ft"]["simaou"]["mean"]
"""

from icl_lens._version import __version__
from icl_lens.errors import (
    ConfigError,
    DataFormatError,
    IclLensError,
    MetricInputError,
    ModelLoadError,
    PromptError,
    ResultsError,
    TaskError,
    TrainingDivergedError,
)
from icl_lens.evaluation import RecordSpec, SettingRun, evaluate
from icl_lens.experiment import ExperimentConfig, ExperimentOutput, run_experiment
from icl_lens.finetune import FinetuneConfig, TrainingTrace, finetune
from icl_lens.lcgd import layer_causal_finetune
from icl_lens.lens import logit_lens
from icl_lens.models import list_models, load_model
from icl_lens.prompts import EncodedPrompts, PromptFormat, encode_prompts
from icl_lens.tasks import Task, builtin_tasks, get_task, load_split, sample_demonstrations, sample_queries

__all__ = [
    "__version__", "ConfigError", "DataFormatError", "IclLensError", "MetricInputError", "ModelLoadError",
    "PromptError", "ResultsError", "TaskError", "TrainingDivergedError", "RecordSpec", "SettingRun", "evaluate",
    "ExperimentConfig", "ExperimentOutput", "run_experiment", "FinetuneConfig", "TrainingTrace", "finetune",
    "layer_causal_finetune", "logit_lens", "list_models", "load_model", "EncodedPrompts", "PromptFormat",
    "encode_prompts", "Task", "builtin_tasks", "get_task", "load_split", "sample_demonstrations", "sample_queries",
]
