"""Calibrate data-aware criteria on a meta model, one layer's weights at a time.

A calibrated criterion (``ActivationWeightImportance``, ``FluctuationImportance``)
measures the inputs of every consumer layer during forward passes over the
calibration batch. Here those passes run through the meta model itself: a
forward pre-hook on every layer that owns tensors materialises that layer from
the checkpoint and swaps its real tensors in, and a forward hook swaps the
meta ones back and frees them. The activations flow through the whole model
as in memory, but at any moment only the running layer's weights are held
(plus the activations of the batch, which the budget does not count).

Non-persistent buffers are not in a checkpoint: a layer that has some (RoPE's
``inv_freq``) is rebuilt on the CPU from the model's config, as
``from_pretrained`` does, and its buffers are used for the pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

from ..errors import DepgraphError
from .plan import Materializer

__all__ = ["materialize_on_use", "calibrate_streamed"]


def _own_tensors(m: nn.Module) -> list[str]:
    return [k for k, _ in m.named_parameters(recurse=False)] + [k for k, _ in m.named_buffers(recurse=False)]


def _computed_buffers(model: nn.Module, name: str, m: nn.Module, stored: set[str]) -> dict[str, torch.Tensor]:
    """Real values of ``m``'s meta buffers the checkpoint does not hold (rebuilt from the config)."""
    missing = [k for k, b in m.named_buffers(recurse=False) if b.is_meta and f"{name}.{k}" not in stored]
    if not missing:
        return {}
    config = getattr(m, "config", None) or getattr(model, "config", None)
    try:
        with torch.device("cpu"):
            fresh = type(m)(config)
    except Exception as e:  # noqa: BLE001 - reported with the layer's name
        raise DepgraphError(
            f"{name} ({type(m).__name__}) has buffers the checkpoint does not store ({missing}) and "
            f"cannot be rebuilt from the config to compute them ({type(e).__name__}: {e})") from None
    return {k: getattr(fresh, k) for k in missing}


@contextlib.contextmanager
def materialize_on_use(model: nn.Module, materializer: Materializer,
                       on_layer: Callable[[str], None] | None = None) -> Iterator[None]:
    """While inside, every layer of the meta ``model`` holds real tensors exactly during its forward.

    ``on_layer(name)`` is called after each materialised layer's forward (progress).
    """
    stored = set(materializer.aliases)
    open_: dict[int, tuple[nn.Module, contextlib.ExitStack, list[tuple[str, torch.Tensor]]]] = {}
    handles = []
    computed: list[tuple[nn.Module, str, torch.Tensor]] = []

    def pre(m: nn.Module, args: Any, name: str = "") -> None:
        keys = [k for k in _own_tensors(m) if f"{name}.{k}" in stored]
        if not keys:
            return
        stack = contextlib.ExitStack()
        real = stack.enter_context(materializer.materialized([name], f"calibrating through {name}"))[name]
        saved = []
        for k in keys:
            saved.append((k, getattr(m, k)))
            setattr(m, k, getattr(real, k))
        open_[id(m)] = (m, stack, saved)

    def post(m: nn.Module, args: Any, out: Any) -> None:
        entry = open_.pop(id(m), None)
        if entry is None:
            return
        _, stack, saved = entry
        for k, t in saved:
            setattr(m, k, t)
        stack.close()
        if on_layer is not None:
            on_layer(type(m).__name__)

    try:
        for name, m in model.named_modules():
            if not _own_tensors(m):
                continue
            for k, t in _computed_buffers(model, name, m, stored).items():
                computed.append((m, k, getattr(m, k)))
                setattr(m, k, t)
            handles.append(m.register_forward_pre_hook(lambda mod, a, n=name: pre(mod, a, n)))
            handles.append(m.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, stack, saved in open_.values():  # a forward that raised leaves its layers open
            for k, t in saved:
                setattr(m, k, t)
            stack.close()
        open_.clear()
        for m, k, t in reversed(computed):
            setattr(m, k, t)


def calibrate_streamed(importance: Any, model: nn.Module, materializer: Materializer, data: Any,
                       on_layer: Callable[[str], None] | None = None) -> None:
    """``importance.calibrate(model, data)`` on the meta model, layers materialised one at a time."""
    with torch.no_grad(), materialize_on_use(model, materializer, on_layer):
        importance.calibrate(model, data)
