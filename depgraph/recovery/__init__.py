"""Recovery after pruning: distillation from the unpruned model plus the task loss, on ``accelerate``.

``accelerate`` is imported only when :func:`recover` runs (the ``train`` extra).
"""

from __future__ import annotations

from .loop import RecoverResult, recover
from .options import RecoverOptions, recover_options
from .steps import Evaluation

__all__ = ["recover", "RecoverResult", "RecoverOptions", "Evaluation", "recover_options"]
