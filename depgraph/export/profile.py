"""Per-node latency of an exported ONNX file under onnxruntime: the deployed model's side of ``profile_layers``.

PyTorch's eager CPU path pays a fixed cost per call (dispatch, an im2col
buffer, GEMM set-up) and runs BatchNorm, ReLU and residual adds as separate
calls, so a small pruned layer is rarely as much faster as its MACs say. A
deployment runtime fuses those ops into the convolution and keeps activations
in a blocked layout, and whether the pruned model then delivers its MACs is a
different question with a different answer. :func:`profile_onnx` answers it
for an ONNX file (``depgraph.export_onnx`` writes one): it runs the file under
onnxruntime with all graph optimisations, reads onnxruntime's own profiler
for each node's kernel time (best of the runs), charges each node the MACs
its shapes imply, and returns a :class:`~depgraph.utils.layer_latency.LayerProfile`,
so :func:`~depgraph.utils.layer_latency.compare_profiles`,
:func:`~depgraph.utils.layer_latency.gap_by_kind` and
:func:`~depgraph.utils.layer_latency.layer_table` read it like an eager one.
Nodes are the *optimised* graph's: a fused ``Conv`` carries its BatchNorm,
activation and residual add, and takes the name of the last op it absorbed.
Export both models with the same exporter and their node names match.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ExportError, OptionError
from ..utils.layer_latency import LayerProfile, LayerTime

__all__ = ["onnx_session", "feeds", "profile_onnx"]

_CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
_SUFFIX = "_kernel_time"  # onnxruntime's profiler names a node's compute event "<node>_kernel_time"
_TOKEN = re.compile(r"_token_\d+")  # the counter onnxruntime appends to the names of nodes it inserts


def onnx_session(path: str | os.PathLike, threads: int = 1, profile_prefix: str | None = None) -> Any:
    """An onnxruntime CPU session of ``path`` with every graph optimisation, on ``threads`` intra-op threads.

    One thread runs the graph on the calling thread, so that thread's CPU time
    is the model's, as with ``torch.set_num_threads(1)`` in eager mode.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime's intra-op threads (>= 1).
        profile_prefix: when given, onnxruntime's profiler writes its trace under this prefix.

    Raises:
        OptionError: ``threads < 1``.
        ExportError: onnxruntime is not installed (the ``export`` extra) or refuses the file.
    """
    if threads < 1:
        raise OptionError(f"onnx_session needs threads >= 1, got {threads}")
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError("onnxruntime is not installed: pip install 'depgraph[export]'") from e
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes for a bad file
        raise ExportError(f"onnxruntime cannot load {os.fspath(path)!r}: {type(e).__name__}: {str(e)[:400]}") from e


def feeds(session: Any, example_inputs: Any) -> dict[str, Any]:
    """``example_inputs`` (a tensor, a tuple of positional inputs or a dict by name) as the session's numpy feeds."""
    names = [i.name for i in session.get_inputs()]
    if isinstance(example_inputs, Mapping):
        values = dict(example_inputs)
        missing = [n for n in names if n not in values]
        if missing:
            raise ExportError(f"the ONNX graph takes inputs {names}; {missing} are not in the example inputs")
    else:
        items = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        if len(items) != len(names):
            raise ExportError(f"the ONNX graph takes {len(names)} inputs {names}, got {len(items)} example inputs")
        values = dict(zip(names, items, strict=True))
    return {n: values[n].detach().cpu().numpy() if isinstance(values[n], torch.Tensor) else values[n] for n in names}


def _shapes(args: dict, key: str) -> list[list[int]]:
    """The shapes in one of the profiler's ``input_type_shape`` / ``output_type_shape`` lists."""
    return [list(next(iter(entry.values()))) for entry in args.get(key, [])]


def _macs(op: str, inputs: list[list[int]], outputs: list[list[int]]) -> int:
    """MACs of one node from its shapes: convolutions and matrix products; 0 for everything else.

    A convolution does ``prod(weight) * prod(output spatial) * batch``; a
    matrix product one MAC per output element per element of the reduced
    dimension (the first input's last). The profiler leaves out a weight that
    onnxruntime has pre-packed, so products are counted from the activations.
    """
    if not inputs or not outputs:
        return 0
    out = outputs[0]
    if op.endswith("Conv") and len(inputs) >= 2 and len(out) >= 3:
        return math.prod(inputs[1]) * math.prod(out[2:]) * out[0]
    if op.endswith(("Gemm", "MatMul")) and inputs[0]:
        return math.prod(out) * inputs[0][-1]
    return 0


def _stable_name(raw: str, taken: set[str]) -> str:
    """``raw`` without the ``_token_<n>`` onnxruntime appends to nodes it inserts (a per-process counter).

    Without it the same file profiled in two sessions, or two exports of one
    model, would name their inserted layout reorders differently. Repeats get
    ``#2``, ``#3`` ... in execution order.
    """
    base = _TOKEN.sub("", raw)
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}#{k}"
    return name


def _channels(shapes: list[list[int]]) -> int | None:
    return shapes[0][1] if shapes and len(shapes[0]) >= 2 else None


def profile_onnx(
    path: str | os.PathLike,
    example_inputs: Any,
    repeat: int = 20,
    warmup: int = 3,
    threads: int = 1,
    clock: str = "wall",
) -> LayerProfile:
    """Time every node of the optimised ONNX graph under onnxruntime (best of ``repeat``) beside its MACs.

    The whole run is timed on a session without the profiler (its bookkeeping
    costs a few microseconds per node), so ``total_ms`` is what a deployment
    sees and ``untimed_ms`` is onnxruntime's own cost between kernels.

    Args:
        path: the ``.onnx`` file (e.g. written by :func:`depgraph.export_onnx`).
        example_inputs: a tensor, a tuple of positional inputs (matched to the graph's inputs
            by position) or a dict of inputs by graph-input name.
        repeat: timed runs, for the total and for the profiled pass.
        warmup: untimed runs first.
        threads: onnxruntime's intra-op threads.
        clock: ``"wall"`` or ``"thread"`` (the calling thread's CPU time: exact with one thread).

    Returns:
        A :class:`~depgraph.utils.layer_latency.LayerProfile`: one
        :class:`~depgraph.utils.layer_latency.LayerTime` per node in execution order, its
        ``kind`` the operator (``Conv``, ``Gemm``, ``MaxPool`` ...), its ``kernel`` the
        execution provider, channels from the first input's and output's dim 1.

    Raises:
        OptionError: ``repeat < 1``, ``warmup < 0``, ``threads < 1`` or an unknown ``clock``.
        ExportError: onnxruntime is missing, refuses the file, or the inputs do not fit it.

    Example:
        >>> depgraph.export_onnx(model, x, "m.onnx", dynamo=False)
        >>> prof = profile_onnx("m.onnx", x, threads=1, clock="thread")
        >>> prof.ms_by_kind()
        {'Conv': 9.5, 'Gemm': 0.39, 'MaxPool': 0.01, ...}
    """
    if repeat < 1 or warmup < 0:
        raise OptionError(f"profile_onnx needs repeat >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    if clock not in _CLOCKS:
        raise OptionError(f"profile_onnx: clock must be one of {sorted(_CLOCKS)}, got {clock!r}")
    now = _CLOCKS[clock]
    session = onnx_session(path, threads)
    inputs = feeds(session, example_inputs)
    try:
        session.run(None, inputs)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own classes: a dtype or shape the graph does not take
        raise ExportError(f"onnxruntime cannot run {os.fspath(path)!r} on these inputs: "
                          f"{type(e).__name__}: {str(e)[:400]}") from e
    for _ in range(warmup):
        session.run(None, inputs)
    totals = []
    for _ in range(repeat):
        t0 = now()
        session.run(None, inputs)
        totals.append((now() - t0) * 1000.0)
    with tempfile.TemporaryDirectory() as tmp:
        profiled = onnx_session(path, threads, profile_prefix=os.path.join(tmp, "ort"))
        for _ in range(warmup + repeat):
            profiled.run(None, inputs)
        with open(profiled.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
    runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    best: dict[str, float] = {}
    first: dict[str, dict] = {}
    stable: dict[str, str] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith(_SUFFIX):
            continue
        raw = name[: -len(_SUFFIX)]
        if raw not in stable:
            stable[raw] = _stable_name(raw, set(stable.values()))
        node = stable[raw]
        first.setdefault(node, e)
        best[node] = min(best.get(node, math.inf), e["dur"] / 1000.0)
    if not best or runs < warmup + repeat:
        raise ExportError(f"onnxruntime's profile of {os.fspath(path)!r} has no node timings for every run")
    layers = []
    for node, e in first.items():
        args = e.get("args", {})
        op = args.get("op_name", "?")
        ins, outs = _shapes(args, "input_type_shape"), _shapes(args, "output_type_shape")
        layers.append(LayerTime(node, op, _channels(ins), _channels(outs), _macs(op, ins, outs), best[node],
                                args.get("provider")))
    return LayerProfile(tuple(layers), min(totals), sum(t.macs for t in layers))

