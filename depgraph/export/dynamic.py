"""Dynamic axes of an export: which input dimensions may change size, and inputs of other sizes to check them.

An exported program with static shapes only runs at the example's batch and
sequence length; a deployment serves other sizes. With ``dynamic=True`` the
exporters are told that

- dimension 0 of every tensor input is the batch, and
- dimension 1 of every integer input with two dimensions (token ids, attention
  masks, token type ids, position ids: a text model's ``(B, T)`` inputs) is the
  sequence length, one shared size across those inputs.

``torch.export`` specialises a dimension whose example size is 0 or 1 (it cannot
tell that size from a constant), so such an example is first tiled to size 2.
The program is then checked against eager at the example's sizes and at a
second batch and sequence length, built by tiling the example along those
dimensions (token ids stay valid ids, masks stay masks).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import ExportError

__all__ = ["DynamicAxes", "dynamic_axes", "resize_inputs"]


@dataclass(frozen=True)
class DynamicAxes:
    """The dynamic dimensions of one export call.

    Attributes:
        arg_names: the forward's parameter names of the positional inputs, in order.
        axes: for each tensor input by name, ``{dim: "batch" | "sequence"}``.
    """

    arg_names: tuple[str, ...]
    axes: dict[str, dict[int, str]]

    def values(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Every input of the call by parameter name."""
        return dict(zip(self.arg_names, args, strict=True)) | kwargs

    def torch_export_shapes(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``dynamic_shapes`` for ``torch.export.export`` / the dynamo ONNX exporter, keyed by parameter name."""
        from torch.export import Dim

        dims = {"batch": Dim("batch"), "sequence": Dim("sequence")}
        return {n: ({d: dims[a] for d, a in self.axes[n].items()} if n in self.axes else None)
                for n in self.values(args, kwargs)}

    def onnx_axes(self) -> dict[str, dict[int, str]]:
        """``dynamic_axes`` for the TorchScript-based ONNX exporter, keyed by input name."""
        return {n: dict(a) for n, a in self.axes.items()}


def _is_token_input(t: torch.Tensor) -> bool:
    return t.dim() == 2 and not (t.is_floating_point() or t.is_complex())


def dynamic_axes(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> DynamicAxes:
    """Batch (dim 0 of every tensor) and sequence (dim 1 of 2-D integer inputs) of the call ``model(*args, **kwargs)``.

    Raises:
        ExportError: the inputs cannot be bound to the forward's parameters (an export needs names).
    """
    try:
        inspect.signature(model.forward).bind(*args, **kwargs)
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError) as e:
        raise ExportError(f"dynamic export of {type(model).__name__}: the example inputs do not bind to its "
                          f"forward ({e}); give them as the forward's positional or keyword arguments") from None
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(positional):
        raise ExportError(f"dynamic export of {type(model).__name__}: {len(args)} positional inputs, but its "
                          f"forward names only {len(positional)}; give the extra inputs by keyword")
    names = tuple(positional[: len(args)])
    values = dict(zip(names, args, strict=True)) | kwargs
    axes: dict[str, dict[int, str]] = {}
    for name, v in values.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 1:
            axes[name] = {0: "batch"} | ({1: "sequence"} if _is_token_input(v) else {})
    if not axes:
        raise ExportError(f"dynamic export of {type(model).__name__}: no tensor input has a batch dimension")
    return DynamicAxes(names, axes)


def _tile(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``t`` repeated along ``dim`` and cut to ``size`` (a new example of that size, made of valid values)."""
    reps = [1] * t.dim()
    reps[dim] = -(-size // t.shape[dim])
    return t.repeat(*reps).narrow(dim, 0, size)


def resize_inputs(axes: DynamicAxes, args: tuple, kwargs: dict[str, Any], *, batch: int | None = None,
                  sequence: int | None = None) -> tuple[tuple, dict[str, Any]]:
    """The call's inputs with the batch and / or sequence dimensions tiled to the given sizes."""
    sizes = {"batch": batch, "sequence": sequence}

    def resize(name: str, v: Any) -> Any:
        for d, a in axes.axes.get(name, {}).items():
            if sizes[a] is not None:
                v = _tile(v, d, sizes[a])
        return v

    new_args = tuple(resize(n, v) for n, v in zip(axes.arg_names, args, strict=True))
    new_kwargs = {k: resize(k, v) for k, v in kwargs.items()}
    return new_args, new_kwargs


def example_sizes(axes: DynamicAxes, args: tuple, kwargs: dict[str, Any]) -> dict[str, int]:
    """The example's size along each dynamic axis (``{"batch": B}`` or ``{"batch": B, "sequence": T}``)."""
    values = axes.values(args, kwargs)
    return {a: values[n].shape[d] for n, ax in axes.axes.items() for d, a in ax.items()}


def trace_and_check_sizes(axes: DynamicAxes, args: tuple, kwargs: dict[str, Any]
                          ) -> tuple[tuple, dict[str, Any], dict[str, int], dict[str, int]]:
    """Inputs to export with (every dynamic size >= 2) and the two size sets the program is checked at.

    Returns:
        ``(args, kwargs, sizes, other_sizes)``: the tracing inputs, their sizes, and a second
        batch (one more) and sequence length (about half, never equal) to check at.
    """
    sizes = example_sizes(axes, args, kwargs)
    grown = {a: max(2, s) for a, s in sizes.items()}
    if grown != sizes:
        args, kwargs = resize_inputs(axes, args, kwargs, **grown)
    other = {"batch": grown["batch"] + 1}
    if "sequence" in grown:
        t = grown["sequence"]
        other["sequence"] = t // 2 if t // 2 >= 2 else t + 1
    return args, kwargs, grown, other


def checked_calls(model: nn.Module, args: tuple, kwargs: dict[str, Any], dynamic: bool, exporter: str
                  ) -> tuple[list[tuple[tuple, dict[str, Any]]], Any, list[dict[str, int]]]:
    """The calls an export is traced with and checked at, and what tells the exporter which axes are dynamic.

    Args:
        exporter: ``"torch_export"`` (also the dynamo ONNX exporter: ``dynamic_shapes``) or
            ``"onnx_legacy"`` (``dynamic_axes``).

    Returns:
        ``(calls, spec, sizes)``: ``calls[0]`` is the tracing call, every call is checked; ``spec``
        is None for a static export; ``sizes`` names each call's dynamic sizes (empty when static).
    """
    if not dynamic:
        return [(args, kwargs)], None, []
    axes = dynamic_axes(model, args, kwargs)
    args, kwargs, sizes, other = trace_and_check_sizes(axes, args, kwargs)
    calls = [(args, kwargs), resize_inputs(axes, args, kwargs, **other)]
    spec = axes.torch_export_shapes(args, kwargs) if exporter == "torch_export" else axes.onnx_axes()
    return calls, spec, [sizes, other]
