"""Recovery after pruning: distillation from the unpruned model plus the task loss, on ``accelerate``.

``accelerate`` is imported only when :func:`recover` runs (the ``train`` extra).
"""

from __future__ import annotations

from .average import average_models, average_state_dicts
from .loop import RecoverResult, recover
from .options import RecoverOptions, recover_options
from .steps import Evaluation

__all__ = ["recover", "average_models", "average_state_dicts", "RecoverResult", "RecoverOptions", "Evaluation", "recover_options"]
