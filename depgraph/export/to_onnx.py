"""ONNX export of a (pruned) model, checked against eager by running the written file."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Any

import torch
import torch.nn as nn

from ..errors import ExportError, ExportMismatchError
from .check import ExportResult, compare_outputs, eager_outputs, split_inputs
from .dynamic import checked_calls

__all__ = ["export_onnx", "run_onnx"]


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, atol: float = 1e-4,
                rtol: float = 1e-4, dynamo: bool = True, opset_version: int | None = None,
                dynamic: bool = False) -> ExportResult:
    """Export ``model`` to ONNX at ``path``, run the file, compare with eager; remove it on a mismatch.

    The file is run with onnxruntime when it is installed (the ``export``
    extra), else with ``onnx``'s reference evaluator (slow, but exact and
    always there), so what is checked is the file a deployment would load.

    Args:
        model: the model, in the mode it should be exported in (usually ``eval()``).
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
        path: the ``.onnx`` file to write.
        atol: absolute tolerance: refused when some output element differs by more than
            ``atol + rtol * |eager|``.
        rtol: relative tolerance (see ``atol``).
        dynamo: ``torch.onnx.export``'s exporter: the ``torch.export``-based one (True,
            the default of recent PyTorch) or the TorchScript-based legacy one (False).
        opset_version: ONNX opset; None: the exporter's default.
        dynamic: make the batch (and a text model's sequence length) dynamic axes of the
            file (see :mod:`depgraph.export.dynamic`) and check the file at two sizes of
            each; False: the example's shapes only.

    Returns:
        An :class:`~depgraph.export.check.ExportResult` (``program`` is the ``ONNXProgram`` with dynamo).

    Raises:
        ExportError: the exporter fails (with ``dynamic``: also when the model fixes the batch
            or sequence size), or the file returns other outputs than eager.
        ExportMismatchError: the outputs differ beyond the tolerance; the file is removed.

    Example:
        >>> result = depgraph.export_onnx(pruned.eval(), torch.randn(1, 3, 224, 224), "pruned.onnx")
        >>> result.max_abs_diff, result.checked_with
    """
    path = os.fspath(path)
    args, kwargs = split_inputs(model, example_inputs)
    calls, spec, sizes = checked_calls(model, args, kwargs, dynamic, "torch_export" if dynamo else "onnx_legacy")
    args, kwargs = calls[0]
    expected = [eager_outputs(model, a, k) for a, k in calls]
    program = _export(model, args, kwargs, path, dynamo, opset_version, spec)
    diff, engine = 0.0, ""
    try:
        for (a, k), want, size in zip(calls, expected, sizes or [None] * len(calls), strict=True):
            at = "" if size is None else " at " + ", ".join(f"{n} {v}" for n, v in size.items())
            try:
                got, engine = run_onnx(path, _named_inputs(model, a, k))
            except ExportError as e:
                if size is None or size is sizes[0]:
                    raise
                raise ExportError(f"{e}\n(run{at}: the exporter fixed a dimension marked dynamic because the model "
                                  "specialises it; export without dynamic)") from None
            diff = max(diff, compare_outputs(want, [torch.from_numpy(g) for g in got], atol=atol, rtol=rtol,
                                             what=f"the ONNX file (run by {engine}){at}"))
    except (ExportMismatchError, ExportError):
        _remove(path)
        raise
    return ExportResult(path, "onnx", diff, engine, len(expected[0]), program, tuple(sizes))


def _export(model: nn.Module, args: tuple, kwargs: dict, path: str, dynamo: bool, opset: int | None,
            spec: Any) -> Any:
    quiet = io.StringIO()  # the dynamo exporter prints its progress; the caller reports the result
    shapes: dict[str, Any] = {}
    if spec is not None and dynamo:
        shapes = {"dynamic_shapes": spec}
    elif spec is not None:  # the legacy exporter names graph inputs after input_names
        shapes = {"dynamic_axes": spec, "input_names": list(_named_inputs(model, args, kwargs))}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            return torch.onnx.export(model, args, path, kwargs=kwargs or None, dynamo=dynamo,
                                     opset_version=opset, verbose=False, **shapes)
    except Exception as e:  # noqa: BLE001 - the exporters raise many kinds; report them as one
        _remove(path)
        other = "dynamo=False (the legacy exporter)" if dynamo else "dynamo=True"
        how = " with a dynamic batch / sequence length" if spec is not None else ""
        raise ExportError(f"ONNX export of {type(model).__name__}{how} failed: {type(e).__name__}: "
                          f"{str(e)[:600]}; try {other}" + (" or a static export" if how else "")) from e


def _named_inputs(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Tensor inputs by the forward's parameter names (the names both exporters give graph inputs)."""
    import inspect

    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {f"input_{i}": a for i, a in enumerate(args)} | kwargs
    return {k: v.detach().cpu().numpy() for k, v in bound.items() if isinstance(v, torch.Tensor)}


def run_onnx(path: str, inputs: dict[str, Any]) -> tuple[list[Any], str]:
    """Run the ONNX file on ``inputs`` (numpy arrays by name); returns the outputs and the engine's name.

    Graph inputs are matched by name; when the names differ (an exporter that
    numbers them), by position.

    Raises:
        ExportError: the file takes inputs that are not given, or the engine refuses it.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    try:
        if ort is not None:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            return session.run(None, _feeds(names, inputs)), "onnxruntime"
        import onnx
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(onnx.load(path))
        return evaluator.run(None, _feeds(list(evaluator.input_names), inputs)), "onnx.reference"
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - engine errors of every kind: the file cannot be run
        raise ExportError(f"the ONNX file {path!r} cannot be run: {type(e).__name__}: {str(e)[:600]}") from e


def _feeds(names: list[str], inputs: dict[str, Any]) -> dict[str, Any]:
    if all(n in inputs for n in names):
        return {n: inputs[n] for n in names}
    if len(names) != len(inputs):
        raise ExportError(f"the ONNX graph takes inputs {names}, the example inputs are {list(inputs)}")
    return dict(zip(names, inputs.values(), strict=True))


def _remove(path: str) -> None:
    for f in (path, path + ".data"):
        with contextlib.suppress(OSError):
            os.remove(f)
