"""``torch.export`` of a (pruned) model, checked against eager before it is saved."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from ..errors import ExportError
from .check import ExportResult, compare_outputs, eager_outputs, split_inputs
from .dynamic import checked_calls

__all__ = ["export_program"]


def export_program(model: nn.Module, example_inputs: Any, path: str | os.PathLike | None = None, *,
                   atol: float = 1e-4, rtol: float = 1e-4, strict: bool = False,
                   dynamic: bool = False) -> ExportResult:
    """Export ``model`` with ``torch.export``, run the program, compare with eager, then save it.

    Why check: an export can trace a different computation than eager runs
    (data-dependent branches, attributes read at trace time); a pruned model
    whose widths live in attributes is exactly where that would show.

    Args:
        model: the model, in the mode it should be exported in (usually ``eval()``).
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword
            inputs (see :func:`depgraph.export.check.split_inputs`).
        path: where ``torch.export.save`` writes the program (``.pt2``); None: not saved.
        atol: absolute tolerance: refused when some output element differs by more than
            ``atol + rtol * |eager|``.
        rtol: relative tolerance (see ``atol``).
        strict: ``torch.export``'s strict (TorchDynamo) tracing.
        dynamic: export the batch (and a text model's sequence length) as dynamic
            dimensions (see :mod:`depgraph.export.dynamic`) and check the program at two
            sizes of each; False: the example's shapes only.

    Returns:
        An :class:`~depgraph.export.check.ExportResult`; ``program`` is the ``ExportedProgram``.

    Raises:
        ExportError: ``torch.export`` fails on the model (with ``dynamic``: also when the model
            fixes the batch or sequence size), or the program returns other outputs.
        ExportMismatchError: the program's outputs differ beyond the tolerance; nothing is saved.

    Example:
        >>> result = depgraph.export_program(pruned.eval(), torch.randn(1, 3, 224, 224), "pruned.pt2")
        >>> result.max_abs_diff
    """
    args, kwargs = split_inputs(model, example_inputs)
    calls, shapes, sizes = checked_calls(model, args, kwargs, dynamic, "torch_export")
    args, kwargs = calls[0]
    expected = [eager_outputs(model, a, k) for a, k in calls]
    try:
        program = torch.export.export(model, args, kwargs, dynamic_shapes=shapes, strict=strict)
    except Exception as e:  # noqa: BLE001 - torch.export raises many kinds; report them as one
        how = " with a dynamic batch / sequence length (export without dynamic to fix them)" if dynamic else ""
        raise ExportError(f"torch.export failed on {type(model).__name__}{how}: {type(e).__name__}: "
                          f"{str(e)[:600]}") from e
    from ..trace import flatten_tensors

    diff = 0.0
    for (a, k), want, size in zip(calls, expected, sizes or [None] * len(calls), strict=True):
        with torch.no_grad():
            got = flatten_tensors(program.module()(*a, **k))
        at = "" if size is None else f" at {_describe(size)}"
        diff = max(diff, compare_outputs(want, got, atol=atol, rtol=rtol, what=f"the torch.export program{at}"))
    if path is not None:
        torch.export.save(program, os.fspath(path))
    return ExportResult(None if path is None else os.fspath(path), "torch.export", diff,
                        "ExportedProgram.module()", len(expected[0]), program, tuple(sizes))


def _describe(size: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in size.items())
