"""``torch.export`` of a (pruned) model, checked against eager before it is saved."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from ..errors import ExportError
from .check import ExportResult, compare_outputs, eager_outputs, split_inputs

__all__ = ["export_program"]


def export_program(model: nn.Module, example_inputs: Any, path: str | os.PathLike | None = None, *,
                   atol: float = 1e-4, rtol: float = 1e-4, strict: bool = False) -> ExportResult:
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

    Returns:
        An :class:`~depgraph.export.check.ExportResult`; ``program`` is the ``ExportedProgram``.

    Raises:
        ExportError: ``torch.export`` fails on the model, or the program returns other outputs.
        ExportMismatchError: the program's outputs differ beyond the tolerance; nothing is saved.

    Example:
        >>> result = depgraph.export_program(pruned.eval(), torch.randn(1, 3, 224, 224), "pruned.pt2")
        >>> result.max_abs_diff
    """
    args, kwargs = split_inputs(model, example_inputs)
    expected = eager_outputs(model, args, kwargs)
    try:
        program = torch.export.export(model, args, kwargs, strict=strict)
    except Exception as e:  # noqa: BLE001 - torch.export raises many kinds; report them as one
        raise ExportError(f"torch.export failed on {type(model).__name__}: {type(e).__name__}: {str(e)[:600]}") from e
    with torch.no_grad():
        from ..trace import flatten_tensors

        got = flatten_tensors(program.module()(*args, **kwargs))
    diff = compare_outputs(expected, got, atol=atol, rtol=rtol, what="the torch.export program")
    if path is not None:
        torch.export.save(program, os.fspath(path))
    return ExportResult(None if path is None else os.fspath(path), "torch.export", diff,
                        "ExportedProgram.module()", len(expected), program)
