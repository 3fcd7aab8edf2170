"""Let a Hugging Face config describe the biases bias compensation creates.

Bias compensation (:mod:`depgraph.importance.compensation`) gives a bias to a
consumer that had none, e.g. Llama's ``down_proj`` or ``o_proj``. A config
cannot say "this one projection has a bias"; Llama-style configs only switch
biases on for a whole family of projections: ``mlp_bias`` (every MLP
projection) and ``attention_bias`` (q, k, v and o). So after a compensated
prune this hook sets the flag of each family where some projection gained a
bias and gives every other projection of that family, in every layer, a zero
bias: the outputs do not change and ``from_pretrained`` rebuilds the model
with the same parameters. A bias no flag covers (a tied ``lm_head``, Mistral's
projections) is reported once with a warning: save such a model with
``depgraph.save``.

It runs as an after-prune hook of the graph, inside the prune's transaction,
and undoes itself when the prune is rolled back.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
import torch.nn as nn

from .._caller import user_stacklevel
from ._hf_layers import find_attention, find_mlps
from ._hooks import attach_once

__all__ = ["BiasFlagSync", "attach_bias_flags"]

def _linears(modules: list[nn.Module]) -> list[nn.Linear]:
    return [m for block in modules for m in block.modules() if isinstance(m, nn.Linear)]


class BiasFlagSync:
    """After-prune hook: ``hook(graph, plan)`` syncs the bias flags; ``hook(graph, None)`` undoes that."""

    def __init__(self, model: nn.Module) -> None:
        self.model_ref = weakref.ref(model)
        self._initial = {id(m) for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None}
        self._undo: list[tuple[Any, str, Any]] = []
        self._warned: set[str] = set()

    def __call__(self, graph: Any, plan: Any) -> None:
        if plan is None:
            for owner, attr, old in reversed(self._undo):
                setattr(owner, attr, old)
            self._undo = []
            return
        self.sync()

    def sync(self) -> None:
        """Set the flag of every family where a projection gained a bias since this object was made, and
        give that family's other projections zero biases (undone by the hook's rollback call)."""
        model = self.model_ref()
        if model is None:
            return
        self._undo = []
        covered: set[int] = set()
        cfg = getattr(model, "config", None)
        for flag, blocks in (("mlp_bias", find_mlps(model)), ("attention_bias", find_attention(model))):
            family = _linears([b.module for b in blocks])
            if not family or getattr(cfg, flag, None) is None:
                continue
            covered.update(id(m) for m in family)
            if not any(m.bias is not None and id(m) not in self._initial for m in family):
                continue
            if getattr(cfg, flag) is not True:
                self._undo.append((cfg, flag, getattr(cfg, flag)))
                setattr(cfg, flag, True)
            for m in family:
                if m.bias is None:
                    w = m.weight
                    self._undo.append((m, "bias", None))
                    m.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device),
                                          requires_grad=w.requires_grad)
        names = {id(m): n for n, m in model.named_modules()}
        loose = sorted(names[id(m)] for m in model.modules() if isinstance(m, nn.Linear) and
                       m.bias is not None and id(m) not in self._initial and id(m) not in covered)
        new = [n for n in loose if n not in self._warned]
        if new and not self._warned:  # once per model: later prunes add the same kind of bias
            warnings.warn(
                f"depgraph: bias compensation gave {', '.join(new[:4])}{' ...' * (len(new) > 4)} a bias "
                f"that {type(model).__name__}'s config cannot describe, so from_pretrained would drop it; "
                "save this model with depgraph.save(model, path) and reload it with depgraph.load",
                stacklevel=user_stacklevel(),
            )
            self._warned.update(new)


def attach_bias_flags(graph: Any) -> BiasFlagSync | None:
    """Register :class:`BiasFlagSync` on a graph of a transformers model (once); None for other models."""
    from .transformers import is_transformers_model

    return attach_once(graph, BiasFlagSync, is_transformers_model)
