"""Recording a model's forward pass."""

from __future__ import annotations

from .graph import OpNode, Trace, Value
from .recorder import call_model, flatten_tensors, record

__all__ = ["record", "call_model", "flatten_tensors", "Trace", "OpNode", "Value"]
