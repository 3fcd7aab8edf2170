"""Snapshot and restore the layers a group touches, so a failed prune changes nothing.

Handlers replace ``.data``/``.grad`` of parameters and reassign attributes;
they never write into an existing tensor. Keeping the old tensor objects and
the old ``__dict__`` entries is therefore enough to restore bit-identically.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["Snapshot"]


class Snapshot:
    def __init__(self, targets: list[Any]):
        self.modules: list[tuple[nn.Module, dict, dict, dict]] = []
        self.tensors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.objects: list[tuple[Any, dict]] = []  # other attribute owners (a config a size was read from)
        seen: set[int] = set()
        for t in targets:
            if isinstance(t, nn.Module):
                for m in t.modules():
                    if id(m) in seen:
                        continue
                    seen.add(id(m))
                    self.modules.append((m, dict(m.__dict__), dict(m._parameters), dict(m._buffers)))
                    for p in list(m._parameters.values()) + list(m._buffers.values()):
                        self._keep_tensor(p, seen)
            elif isinstance(t, torch.Tensor):
                self._keep_tensor(t, seen)
            elif hasattr(t, "__dict__") and id(t) not in seen:
                seen.add(id(t))
                self.objects.append((t, dict(t.__dict__)))

    def _keep_tensor(self, t: torch.Tensor | None, seen: set[int]) -> None:
        if t is None or id(t) in seen:
            return
        seen.add(id(t))
        self.tensors.append((t, t.data, t.grad))

    def restore(self) -> None:
        for m, d, params, buffers in self.modules:
            m.__dict__.clear()
            m.__dict__.update(d)
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
        for obj, d in self.objects:
            obj.__dict__.clear()
            obj.__dict__.update(d)
        with torch.no_grad():
            for t, data, grad in self.tensors:
                t.data = data
                t.grad = grad
