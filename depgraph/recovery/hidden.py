"""Collecting the hidden states that recovery matches between student and teacher.

Two sources, chosen by :class:`~depgraph.recovery.options.RecoverOptions.hidden_layers`:

* module names: a forward hook on that module of each model records its output
  (the first tensor when it returns a tuple) at every forward; works for any model;
* indices (or None, meaning all): a Hugging Face model is called with
  ``output_hidden_states=True`` and its ``hidden_states`` entries are taken.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from ..errors import RecoveryError
from .batches import is_hf_model

__all__ = ["HiddenTap"]


class HiddenTap:
    """Records the selected hidden states of one model at each forward; ``close()`` removes the hooks.

    Example:
        >>> tap = HiddenTap(model, ["layer1", "layer2"])
        >>> out = model(x); states = tap.take(out)   # [layer1 output, layer2 output]
        >>> tap.close()
    """

    def __init__(self, model: nn.Module, layers: Sequence[str | int] | None):
        self.names = [h for h in layers or () if isinstance(h, str)]
        self.indices = None if layers is None else [h for h in layers if isinstance(h, int)]
        self.use_output = not self.names
        if self.use_output and not is_hf_model(model):
            raise RecoveryError(
                f"hidden-state matching on {type(model).__name__}: name the layers to match (module names such as "
                "'layer1' or 'blocks.3'); only Hugging Face models return hidden_states by themselves")
        self._seen: dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            hints = [f"{n!r}" + (f" (did you mean {', '.join(difflib.get_close_matches(n, list(modules), n=3))}?)"
                                 if difflib.get_close_matches(n, list(modules), n=3) else "") for n in missing]
            raise RecoveryError(f"{type(model).__name__} has no module named {', '.join(hints)}")
        for name in self.names:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            t = output if isinstance(output, torch.Tensor) else next(
                (o for o in (output if isinstance(output, (tuple, list)) else ()) if isinstance(o, torch.Tensor)), None)
            if t is None:
                raise RecoveryError(f"module {name!r} returned {type(output).__name__}, not a tensor to match")
            self._seen[name] = t
        return record

    def extra_kwargs(self) -> dict[str, Any]:
        """Keyword arguments the model call needs so that :meth:`take` finds its states."""
        return {"output_hidden_states": True} if self.use_output else {}

    def take(self, output: Any) -> list[torch.Tensor]:
        """The states recorded during the forward that produced ``output``, in the requested order."""
        if not self.use_output:
            states, self._seen = [self._seen[n] for n in self.names], {}
            return states
        hidden = output.get("hidden_states") if hasattr(output, "get") else getattr(output, "hidden_states", None)
        if hidden is None:
            raise RecoveryError("the model returned no hidden_states although called with output_hidden_states=True; "
                                "name the layers to match instead")
        hidden = list(hidden)
        if self.indices is None:
            return hidden
        try:
            return [hidden[i] for i in self.indices]
        except IndexError:
            raise RecoveryError(f"hidden_layers {self.indices} out of range: the model returns {len(hidden)} "
                                "hidden_states (embeddings, then one per layer)") from None

    def close(self) -> None:
        """Remove the hooks (recovery calls it in ``finally``: no hook outlives the run)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
