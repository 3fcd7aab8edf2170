"""The one exception family of depgraph.

Every error the library raises on purpose is a :class:`DepgraphError`, so a
caller can catch one type. Subclasses say which kind of refusal it was.
"""

from __future__ import annotations


class DepgraphError(RuntimeError):
    """Base class of every error depgraph raises on purpose."""


class TraceError(DepgraphError):
    """The model could not be run or recorded on the example inputs."""


class UnsupportedOpError(DepgraphError):
    """An op or module cannot be pruned along the requested dimension."""


class InvalidIndicesError(DepgraphError, IndexError):
    """Pruning indices are out of range, negative or of the wrong type."""


class OverPruningError(DepgraphError):
    """Pruning would remove every channel of some layer."""


class UnknownModuleError(DepgraphError, KeyError):
    """A module (or parameter) is not part of the traced graph."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class HandlerMismatchError(DepgraphError, TypeError):
    """A pruning function was applied to a module it does not handle."""


class OptionError(DepgraphError, ValueError):
    """An option or argument has a value depgraph refuses (a ratio outside [0, 1], an unknown name).

    Also a ``ValueError``, so ``except ValueError`` written for the original keeps working.
    """


class OptionTypeError(DepgraphError, TypeError):
    """An option or argument has the wrong type (a string where indices go, a non-callable importance).

    Also a ``TypeError``, so ``except TypeError`` written for the original keeps working.
    """


class PrunedStateError(DepgraphError, ValueError):
    """A saved pruned state cannot be read or is refused: truncated, malformed, or naming
    attributes, classes or values that loading does not allow. Raised before the model changes."""


class PruneFailedError(DepgraphError):
    """A pruning function or hook failed with an error outside this family; the model was restored.

    The original error is chained (``__cause__``).
    """


class StaleGroupError(DepgraphError):
    """A group was planned on an earlier version of the model; plan it again from the graph."""


class SourceError(DepgraphError):
    """A model to prune cannot be loaded: an unknown name, a missing or unreadable weights file,
    weights that do not fit the architecture, or a pickled file loaded without trusting it."""


class CalibrationDataError(DepgraphError):
    """Calibration data cannot be read or does not fit the model (wrong channels, no tokenizer,
    token ids outside the vocabulary). Raised before any calibration pass."""


class TargetUnreachableError(DepgraphError, ValueError):
    """A size or latency target cannot be met by any pruning ratio the search may use.

    Also a ``ValueError`` (an unreachable value was asked for)."""


class OutputError(DepgraphError):
    """The pruned model cannot be written where asked (missing parent, not writable, wrong kind)."""


class RecoveryError(DepgraphError):
    """Recovery (distillation / fine-tuning) refused its inputs: data that does not fit the model,
    a student whose outputs do not match the teacher's, options that contradict each other.
    Raised before the first training step; the student is unchanged."""


class ExportError(DepgraphError):
    """A model could not be exported (ONNX or ``torch.export``); nothing usable was written."""


class ExportMismatchError(ExportError):
    """The exported program runs, but its outputs differ from the eager model's beyond the tolerance.

    ``max_abs_diff`` holds the largest difference found; the file is removed.
    """

    def __init__(self, message: str, max_abs_diff: float = float("nan")):
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
