"""Comparing an exported program's outputs with the eager model's, and refusing a mismatch."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import ExportError, ExportMismatchError

__all__ = ["ExportResult", "split_inputs", "compare_outputs", "eager_outputs"]


@dataclass
class ExportResult:
    """What an export wrote and how closely it matches eager.

    Attributes:
        path: the file written (None when only checked in memory).
        format: "onnx" or "torch.export".
        max_abs_diff: the largest ``|exported - eager|`` over every output element.
        checked_with: what ran the exported program (onnxruntime, onnx's reference
            evaluator, or ``ExportedProgram.module()``).
        outputs: how many output tensors were compared.
        program: the ``torch.export.ExportedProgram`` or ``torch.onnx.ONNXProgram``.
        sizes: the sizes of the dynamic axes the program was checked at, one dict per check
            (e.g. ``({"batch": 2, "sequence": 16}, {"batch": 3, "sequence": 8})``); empty
            for a static export (checked at the example's shapes only).
    """

    path: str | None
    format: str
    max_abs_diff: float
    checked_with: str
    outputs: int
    program: Any = None
    sizes: tuple[dict[str, int], ...] = ()


def split_inputs(model: nn.Module, example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of the exported call: a dict is keyword inputs, a tuple/list positional, else one input.

    A Hugging Face model is exported without its key/value cache
    (``use_cache=False`` unless the inputs say otherwise): the deployed program
    takes tokens and returns logits; a cache object is not a tensor output
    that ONNX or a checker can compare.
    """
    if isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        args, kwargs = (example_inputs,), {}
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None) is not None and "use_cache" not in kwargs:
        try:
            accepts = "use_cache" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            accepts = False
        if accepts:
            kwargs["use_cache"] = False
    return args, kwargs


def eager_outputs(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The eager model's output tensors, flattened in order (as the exporters flatten them)."""
    from ..trace import flatten_tensors

    with torch.no_grad():
        return [t.detach() for t in flatten_tensors(model(*args, **kwargs))]


def compare_outputs(expected: Sequence[torch.Tensor], got: Sequence[Any], *, atol: float, rtol: float,
                    what: str) -> float:
    """The max abs difference; raises when any element is off by more than ``atol + rtol * |expected|``.

    Raises:
        ExportError: the exported program returns another number or shape of outputs.
        ExportMismatchError: values differ beyond the tolerance.
    """
    if len(expected) != len(got):
        raise ExportError(f"{what} returns {len(got)} outputs, the eager model {len(expected)}")
    worst, worst_excess = 0.0, 0.0
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        g = torch.as_tensor(g)
        if tuple(g.shape) != tuple(e.shape):
            raise ExportError(f"{what} output {i} has shape {tuple(g.shape)}, eager {tuple(e.shape)}")
        if e.is_floating_point() or e.is_complex():
            diff = (g.to(e.dtype) - e).abs().double()
            excess = (diff - (atol + rtol * e.abs().double())).max().item() if diff.numel() else 0.0
            worst = max(worst, diff.max().item() if diff.numel() else 0.0)
            worst_excess = max(worst_excess, excess)
        elif not torch.equal(g.to(e.dtype), e):
            raise ExportMismatchError(f"{what} output {i} ({e.dtype}) differs from eager", float("inf"))
    if worst_excess > 0 or worst != worst:  # nan compares unequal to itself
        raise ExportMismatchError(
            f"{what} differs from the eager model: max abs diff {worst:.3g} exceeds atol {atol:g} + rtol {rtol:g} "
            "x |eager|; the export is refused (raise the tolerance only if you accept this error)", worst)
    return worst
