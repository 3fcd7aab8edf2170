"""Wall-clock and memory benchmarks of a model's forward pass (CPU and CUDA).

On CUDA, time is measured with CUDA events and a synchronisation after each
run, because kernel launches return before the work is done; on CPU a
``perf_counter`` pair around the call is exact enough. Every function runs
under ``torch.no_grad()`` in eval mode and restores the training flags.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from .._types import ExampleInputs
from ..errors import OptionError
from ._inputs import batch_size, call_model, eval_no_grad

__all__ = ["measure_latency", "measure_memory", "measure_fps", "measure_throughput"]

RunFn = Callable[[nn.Module, ExampleInputs], Any]


def _device_of(model: nn.Module, example_inputs: ExampleInputs) -> torch.device:
    for p in model.parameters():
        return p.device
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs.device
    return torch.device("cpu")


def _check_counts(repeat: int, warmup: int) -> None:
    if repeat < 1 or warmup < 0:
        raise OptionError(f"need repeat >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")


def measure_latency(
    model: nn.Module,
    example_inputs: ExampleInputs,
    repeat: int = 300,
    warmup: int = 50,
    run_fn: RunFn | None = None,
) -> tuple[float, float]:
    """Mean and standard deviation of the forward latency, in milliseconds.

    Args:
        model: the network (on the device to measure).
        example_inputs: a tensor, tuple/list of positional inputs or dict of kwargs.
        repeat: timed runs.
        warmup: untimed runs first (allocator, cuDNN autotuning, caches).
        run_fn: ``run_fn(model, example_inputs)`` replaces the default call.

    Returns:
        ``(mean_ms, std_ms)``.

    Raises:
        OptionError (a ValueError): ``repeat < 1`` or ``warmup < 0``.
    """
    _check_counts(repeat, warmup)
    run = run_fn or call_model
    cuda = _device_of(model, example_inputs).type == "cuda"
    times = []
    with eval_no_grad(model):
        for _ in range(warmup):
            run(model, example_inputs)
        for _ in range(repeat):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run(model, example_inputs)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                run(model, example_inputs)
                times.append((time.perf_counter() - t0) * 1000.0)
    t = torch.tensor(times, dtype=torch.float64)
    std = t.std().item() if t.numel() > 1 else 0.0
    return t.mean().item(), std


def measure_memory(
    model: nn.Module,
    example_inputs: ExampleInputs,
    device: torch.device | str | None = None,
    run_fn: RunFn | None = None,
) -> int:
    """Peak bytes allocated during one forward pass.

    On CUDA this is the allocator's peak (``torch.cuda.max_memory_allocated``),
    activations included. On CPU there is no allocator counter, so it is the
    bytes of the parameters, buffers and output tensors: a lower bound useful
    for comparing a model before and after pruning.
    """
    run = run_fn or call_model
    dev = torch.device(device) if device is not None else _device_of(model, example_inputs)
    with eval_no_grad(model):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            run(model, example_inputs)
            torch.cuda.synchronize(dev)
            return int(torch.cuda.max_memory_allocated(dev))
        out = run(model, example_inputs)
    state = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return int(state + _tensor_bytes(out))


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def measure_fps(
    model: nn.Module,
    example_inputs: ExampleInputs,
    repeat: int = 300,
    warmup: int = 50,
    run_fn: RunFn | None = None,
) -> float:
    """Forward passes per second (one pass = one batch)."""
    mean_ms, _ = measure_latency(model, example_inputs, repeat=repeat, warmup=warmup, run_fn=run_fn)
    return 1000.0 / mean_ms


def measure_throughput(
    model: nn.Module,
    example_inputs: ExampleInputs,
    repeat: int = 300,
    warmup: int = 50,
    run_fn: RunFn | None = None,
) -> float:
    """Examples per second: batch size (leading dim of the first tensor input) x passes per second."""
    return batch_size(example_inputs) * measure_fps(model, example_inputs, repeat, warmup, run_fn)
