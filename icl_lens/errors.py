"""Named exceptions: every bad input or failed run surfaces as one of these, with a message
that names the problem (and the file/line, step or layer where it applies)."""


class IclLensError(Exception):
    """Base class of every error icl_lens raises on bad input or a failed run."""


class ModelLoadError(IclLensError):
    """A model could not be found, fetched, verified or converted."""


class TaskError(IclLensError):
    """A task is unknown or its declaration (template, label words, splits) is invalid."""


class DataFormatError(TaskError):
    """A data file is malformed: bad JSON/CSV, a missing field, a label out of range."""


class PromptError(IclLensError):
    """A prompt cannot be built: label words collide, k too large, prompt exceeds context."""


class TrainingDivergedError(IclLensError):
    """Finetuning produced a NaN or infinite loss or gradient (the step and layer are named)."""


class NonFiniteError(IclLensError):
    """A model produced NaN or infinite scores (e.g. a finetuned copy whose weights blew up)."""


class MetricInputError(IclLensError):
    """Inputs to a metric do not fit together (shapes, batch sizes, layer counts)."""


class ConfigError(IclLensError):
    """A configuration value is out of range or inconsistent."""


class ResultsError(IclLensError):
    """A results file is damaged, partial or from an incompatible run."""
