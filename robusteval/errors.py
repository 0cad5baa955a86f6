"""Exceptions for robusteval's own failures.

Bad values and types passed by a caller raise ``ValueError`` or ``TypeError``. Failures that
come from files, models or runs raise a subclass of :class:`RobustEvalError`. Only the CLI
catches them, turning each into a message and an exit code.
"""

from __future__ import annotations


class RobustEvalError(Exception):
    """Base class for failures of robusteval itself or of the files and models it is given."""


class ModelLoadError(RobustEvalError):
    """A model file could not be turned into a working ``torch.nn.Module``."""


class UnsafePickleError(ModelLoadError):
    """A model file needs full unpickling, which can run arbitrary code, and was not trusted."""


class DataLoadError(RobustEvalError):
    """A data file or data name could not be turned into inputs and labels."""


class PreflightError(RobustEvalError):
    """The model and data failed a check that must pass before any evaluation starts."""


class OutputExistsError(RobustEvalError):
    """The output directory already contains results, and neither ``--force`` nor ``--resume`` was given."""


class ResumeError(RobustEvalError):
    """A partial run cannot be resumed because its recorded configuration differs."""


class ResultsFormatError(RobustEvalError):
    """A results file is not valid JSON of a schema version robusteval can read."""


class DistributedError(RobustEvalError):
    """A process of a multi-process run could not join its group, or a peer failed or timed out."""
