"""One exception hierarchy for everything a user can get wrong.

:class:`StudyError` is the base of every error that bad input can cause: a params file, key or value
(:class:`ConfigError`), a dataset, record, predictions or results file (:class:`DataError`), a run or set of
runs that cannot go ahead as specified (:class:`RunError`), a model or checkpoint that does not fit what was asked
of it (:class:`ModelError`). Each names what is wrong and where; the command line prints it as one line (exit
code 2). Anything else escaping a command is a bug and keeps its traceback.

Every subclass is also a :class:`ValueError` (and :class:`TrainingDiverged` a :class:`RuntimeError`), so code
that caught those before still does. This module is a leaf: it imports nothing from the package.
"""

from __future__ import annotations

__all__ = ["StudyError", "ConfigError", "DataError", "RunError", "ModelError", "PredictionFileError",
           "TrainingDiverged"]


class StudyError(Exception):
    """Bad input a user can fix; the message says what and where (the command line prints it as one line)."""


class ConfigError(StudyError, ValueError):
    """A params file, key or value, a command-line option or a method option is invalid; the message names it."""


class DataError(StudyError, ValueError):
    """A dataset file or record is malformed; the message names the file and the record."""


class RunError(StudyError, ValueError):
    """A run (or a set of runs) cannot go ahead as specified: conflicting run settings, no runs to analyse, ..."""


class ModelError(StudyError, ValueError):
    """A model or saved checkpoint cannot be loaded or does not fit the method, placement or weights asked for."""


class PredictionFileError(DataError):
    """A predictions file is malformed; the message names the file and line."""


class TrainingDiverged(RunError, RuntimeError):
    """The loss became NaN or infinite; ``step`` says when."""

    def __init__(self, step: int, loss: float, what: str = "loss"):
        super().__init__(f"{what} became {loss} at step {step}")
        self.step = step
        self.loss = loss
