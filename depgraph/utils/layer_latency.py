"""Per-layer latency beside per-layer MACs: where a pruned model's speed-up goes.

A pruned model is rarely as much faster as its MAC count says. Which layers
fall short, and why (a small layer dominated by fixed per-op cost, a channel
count the kernel handles badly, a different kernel picked for the new shape),
only shows layer by layer. :func:`profile_layers` times every leaf module of
one forward pass with a pre/post hook pair (best of ``repeat`` runs, so a
loaded machine's slow runs drop out), charges it the MACs of
:func:`~depgraph.utils.count_ops_and_params`, and names the ATen kernel that
did the work (``mkldnn_convolution``, ``_slow_conv2d_forward``, ``addmm`` ...)
from one profiled run. :func:`compare_profiles` joins two profiles by module
name (pruning keeps names) into per-layer speed-ups, and
:func:`layer_table` prints them.

The clock is the calling thread's: wall time (``clock="wall"``) or its CPU
time (``clock="thread"``, which other processes on a loaded machine do not
inflate; exact with one intra-op thread). On CUDA the kernels run
asynchronously, so per-layer host times are meaningless; only CPU models are
accepted. :func:`gap_by_kind` splits a pruned model's time beyond what its
MACs promise by module class (``benchmarks/latency.py --per-layer`` prints
all of this for ResNet-50 and MobileNet-V2).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from .._types import ExampleInputs
from ..errors import OptionError
from ._inputs import call_model, eval_no_grad
from .op_counter import count_ops_and_params

__all__ = [
    "LayerTime",
    "LayerProfile",
    "LayerChange",
    "profile_layers",
    "best_of",
    "compare_profiles",
    "gap_by_kind",
    "layer_table",
]

_LABEL = "depgraph.layer:"
# Ops that only allocate an output: never the kernel that did a layer's work.
_ALLOCATORS = frozenset({"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::resize_"})


@dataclass(frozen=True)
class LayerTime:
    """One leaf module's share of a forward pass.

    Attributes:
        name: qualified module name (``""`` for a leaf root).
        kind: the module's class name.
        in_channels: ``in_channels`` / ``in_features`` / ``num_features`` when the module has one.
        out_channels: ``out_channels`` / ``out_features`` / ``num_features`` when the module has one.
        macs: MACs per example.
        ms: best time of one forward's calls of this module, in milliseconds.
        kernel: the ATen op that did the module's work (``None`` if not profiled).
    """

    name: str
    kind: str
    in_channels: int | None
    out_channels: int | None
    macs: int | float
    ms: float
    kernel: str | None = None


@dataclass(frozen=True)
class LayerProfile:
    """The leaf modules of one forward pass in call order, and the forward's own time.

    ``total_ms`` is the best forward *without* hooks; ``untimed_ms`` what the
    leaves do not account for: functional ops between modules (residual adds,
    reshapes) and Python dispatch.
    """

    layers: tuple[LayerTime, ...]
    total_ms: float
    macs: int | float = field(default=0)

    @property
    def untimed_ms(self) -> float:
        """``total_ms`` minus the leaves' times: work between modules (and any hook cost it hides)."""
        return self.total_ms - sum(t.ms for t in self.layers)

    def ms_by_kind(self) -> dict[str, float]:
        """Milliseconds per module class (``Conv2d``, ``BatchNorm2d`` ...), largest first."""
        out: dict[str, float] = {}
        for t in self.layers:
            out[t.kind] = out.get(t.kind, 0.0) + t.ms
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@dataclass(frozen=True)
class LayerChange:
    """One layer before and after pruning (``None`` on a side where it does not exist)."""

    name: str
    kind: str
    before: LayerTime | None
    after: LayerTime | None

    @property
    def macs_speedup(self) -> float | None:
        """``macs_before / macs_after``: how much less arithmetic the layer does."""
        if self.before is None or self.after is None or not self.after.macs:
            return None
        return self.before.macs / self.after.macs

    @property
    def time_speedup(self) -> float | None:
        """``ms_before / ms_after``: how much faster the layer got."""
        if self.before is None or self.after is None or self.after.ms <= 0:
            return None
        return self.before.ms / self.after.ms

    @property
    def efficiency(self) -> float | None:
        """``time_speedup / macs_speedup``: 1.0 when the layer got as much faster as its MACs say."""
        m, t = self.macs_speedup, self.time_speedup
        return None if m is None or t is None or m == 0 else t / m


def _channels(module: nn.Module) -> tuple[int | None, int | None]:
    for a, b in (("in_channels", "out_channels"), ("in_features", "out_features"), ("num_features", "num_features")):
        if hasattr(module, a) and hasattr(module, b):
            return int(getattr(module, a)), int(getattr(module, b))
    return None, None


def _leaves(model: nn.Module) -> dict[nn.Module, str]:
    leaves: dict[nn.Module, str] = {}
    for name, m in model.named_modules():
        if next(m.children(), None) is None and m not in leaves:
            leaves[m] = name
    return leaves


_CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}


class _Clock:
    """Per-leaf elapsed time of the current forward, by pre/post hook pairs."""

    def __init__(self, leaves: dict[nn.Module, str], label: bool, now: Callable[[], float] = time.perf_counter) -> None:
        self.leaves = leaves
        self.label = label
        self.now = now
        self.start: dict[nn.Module, list[float]] = {}
        self.ms: dict[str, float] = {}
        self.order: list[str] = []
        self.ranges: dict[nn.Module, list] = {}

    def pre(self, module: nn.Module, args: object) -> None:
        if self.label:
            r = torch.autograd.profiler.record_function(_LABEL + self.leaves[module])
            r.__enter__()
            self.ranges.setdefault(module, []).append(r)
        self.start.setdefault(module, []).append(self.now())

    def post(self, module: nn.Module, args: object, out: object) -> None:
        elapsed = (self.now() - self.start[module].pop()) * 1000.0
        if self.label:
            self.ranges[module].pop().__exit__(None, None, None)
        name = self.leaves[module]
        if name not in self.ms:
            self.order.append(name)
        self.ms[name] = self.ms.get(name, 0.0) + elapsed


@contextmanager
def _hooked(leaves: dict[nn.Module, str], clock: _Clock) -> Iterator[None]:
    handles = []
    try:
        for m in leaves:
            handles.append(m.register_forward_pre_hook(clock.pre))
            handles.append(m.register_forward_hook(clock.post))
        yield
    finally:
        for h in handles:
            h.remove()


def _kernels(model: nn.Module, example_inputs: ExampleInputs, leaves: dict[nn.Module, str]) -> dict[str, str]:
    """The ATen op that did each leaf's work, from one profiled run.

    From the leaf's profiler range, follow the child holding the most time
    while it holds at least half of its parent's: ``conv2d -> convolution ->
    _convolution -> mkldnn_convolution``. Where no child dominates (a layout
    ``copy_`` beside the kernel), the parent's name is the honest answer.
    """
    from torch.profiler import ProfilerActivity, profile

    clock = _Clock(leaves, label=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof, _hooked(leaves, clock):
        call_model(model, example_inputs)
    out: dict[str, str] = {}
    for ev in prof.events():
        if not ev.name.startswith(_LABEL):
            continue
        node = ev
        while True:
            kids = [e for e in node.cpu_children if e.name not in _ALLOCATORS]
            if not kids:
                break
            child = max(kids, key=lambda e: e.cpu_time_total)
            if node is not ev and child.cpu_time_total < 0.5 * node.cpu_time_total:
                break
            node = child
        if node is not ev:
            out.setdefault(ev.name[len(_LABEL):], node.name.removeprefix("aten::"))
    return out


def profile_layers(
    model: nn.Module,
    example_inputs: ExampleInputs,
    repeat: int = 20,
    warmup: int = 3,
    kernels: bool = True,
    clock: str = "wall",
) -> LayerProfile:
    """Time every leaf module of one forward pass on CPU (best of ``repeat``) beside its MACs.

    Best-of rather than mean because on a shared machine the slow runs are
    other processes' time, not the model's. The forward's total is timed
    separately without hooks, so the hooks' own cost does not inflate it.

    Args:
        model: the network, on CPU.
        example_inputs: a tensor, tuple/list of positional inputs or dict of kwargs.
        repeat: timed runs, both for the total and for the hooked per-layer pass.
        warmup: untimed runs first (allocator, oneDNN primitive caches).
        kernels: also run once under ``torch.profiler`` to name each layer's kernel.
        clock: ``"wall"`` (``time.perf_counter``) or ``"thread"`` (``time.thread_time``:
            the CPU time of the calling thread, which a loaded machine's other
            processes do not inflate; exact only with ``torch.set_num_threads(1)``,
            since it does not see intra-op worker threads).

    Returns:
        A :class:`LayerProfile` with one :class:`LayerTime` per leaf module that ran.

    Raises:
        OptionError (a ValueError): ``repeat < 1``, ``warmup < 0``, an unknown ``clock``, or the model
            has a parameter off the CPU (asynchronous kernels make hook timing meaningless).

    Example:
        >>> prof = profile_layers(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64), repeat=5)
        >>> prof.layers[0].name, prof.layers[0].kind, prof.layers[0].kernel
        ('conv1', 'Conv2d', 'mkldnn_convolution')
    """
    if repeat < 1 or warmup < 0:
        raise OptionError(f"profile_layers needs repeat >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    if clock not in _CLOCKS:
        raise OptionError(f"profile_layers: clock must be one of {sorted(_CLOCKS)}, got {clock!r}")
    now = _CLOCKS[clock]
    off_cpu = sorted({p.device.type for p in model.parameters()} - {"cpu"})
    if off_cpu:
        raise OptionError(
            f"profile_layers times {type(model).__name__} on CPU only, but it has parameters on {off_cpu}: "
            "kernels there run asynchronously, so move the model with .cpu() (use measure_latency for the total)"
        )
    leaves = _leaves(model)
    macs, _, layer_macs, _ = count_ops_and_params(model, example_inputs, layer_wise=True)
    with eval_no_grad(model):
        for _ in range(warmup):
            call_model(model, example_inputs)
        totals = []
        for _ in range(repeat):
            t0 = now()
            call_model(model, example_inputs)
            totals.append((now() - t0) * 1000.0)
        best: dict[str, float] = {}
        order: list[str] = []
        for _ in range(repeat):
            timer = _Clock(leaves, label=False, now=now)
            with _hooked(leaves, timer):
                call_model(model, example_inputs)
            order = order or timer.order
            for name, ms in timer.ms.items():
                best[name] = min(best.get(name, float("inf")), ms)
        kernel_of = _kernels(model, example_inputs, leaves) if kernels else {}
    by_name = {name: m for m, name in leaves.items()}
    layers = []
    for name in order:
        m = by_name[name]
        cin, cout = _channels(m)
        layers.append(LayerTime(name, type(m).__name__, cin, cout, layer_macs.get(m, 0), best[name], kernel_of.get(name)))
    return LayerProfile(tuple(layers), min(totals), macs)


def best_of(profiles: Sequence[LayerProfile]) -> LayerProfile:
    """Layer by layer and for the total, the fastest of several profiles of the same model.

    Lets a benchmark interleave models (A, B, A, B ...) in short rounds, so a
    burst of load on a shared machine hits both, then keep each one's best.
    """
    if not profiles:
        raise OptionError("best_of needs at least one LayerProfile")
    first = profiles[0]
    names = [t.name for t in first.layers]
    if any([t.name for t in p.layers] != names for p in profiles[1:]):
        raise OptionError("best_of: the profiles are of different models (their layers differ)")
    layers = []
    for i in range(len(names)):
        fastest = min((p.layers[i] for p in profiles), key=lambda t: t.ms)
        kernel = next((p.layers[i].kernel for p in profiles if p.layers[i].kernel), None)
        layers.append(replace(fastest, kernel=kernel))  # profiles taken with kernels=False lend theirs
    return LayerProfile(tuple(layers), min(p.total_ms for p in profiles), first.macs)


def gap_by_kind(before: LayerProfile, after: LayerProfile) -> dict[str, float]:
    """Where a pruned model's time goes beyond what its MACs promise, in milliseconds per module class.

    With ``s = before.macs / after.macs``, the pruned model "should" take
    ``before.total_ms / s``. Each class's share of the excess is its time after
    minus its time before divided by ``s``, and ``"(between modules)"`` is the
    same for :attr:`LayerProfile.untimed_ms`, so the values add up exactly to
    ``after.total_ms - before.total_ms / s``. A class whose MACs do not shrink
    with the channels (a BatchNorm, a ReLU: cost per element, plus a fixed cost
    per call) shows up here even though it holds almost no MACs. Largest first.
    """
    if not after.macs:
        raise OptionError("gap_by_kind: the pruned profile has no MACs to compare against")
    s = before.macs / after.macs
    b, a = before.ms_by_kind(), after.ms_by_kind()
    gap = {k: a.get(k, 0.0) - b.get(k, 0.0) / s for k in {**b, **a}}
    gap["(between modules)"] = after.untimed_ms - before.untimed_ms / s
    return dict(sorted(gap.items(), key=lambda kv: -kv[1]))


def compare_profiles(before: LayerProfile, after: LayerProfile) -> list[LayerChange]:
    """Join two profiles by module name, in ``before``'s order (layers only in ``after`` last)."""
    a = {t.name: t for t in after.layers}
    b_names = {t.name for t in before.layers}
    out = [LayerChange(t.name, t.kind, t, a.get(t.name)) for t in before.layers]
    out += [LayerChange(t.name, t.kind, None, t) for t in after.layers if t.name not in b_names]
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _width(t: LayerTime | None) -> str:
    if t is None:
        return "-"
    return "-" if t.in_channels is None else f"{t.in_channels}→{t.out_channels}"


def layer_table(changes: Sequence[LayerChange], kinds: Sequence[str] | None = None, min_macs: float = 1) -> str:
    """A markdown table of the layers of ``kinds`` (class names; all when ``None``) with at least ``min_macs`` MACs.

    Columns: channels before and after, MACs (M) and time (ms) before and
    after, both speed-ups, their ratio (efficiency, 1.0 = as fast as the MACs
    say) and the kernel before → after.
    """
    head = ("| layer | channels | MACs (M) | ms | MACs speed-up | time speed-up | efficiency | kernel |\n"
            "| --- | --- | --: | --: | --: | --: | --: | --- |\n")
    rows = []
    for c in changes:
        if c.before is None or c.before.macs < min_macs or (kinds is not None and c.kind not in kinds):
            continue
        b, a = c.before, c.after
        kernel = b.kernel or "-"
        if a is not None and a.kernel != b.kernel:
            kernel = f"{b.kernel} → {a.kernel}"
        rows.append(
            f"| {c.name} | {_width(b)} ⇒ {_width(a)} | {b.macs / 1e6:.2f} ⇒ {_fmt(a and a.macs / 1e6, '.2f')} "
            f"| {b.ms:.3f} ⇒ {_fmt(a and a.ms, '.3f')} | {_fmt(c.macs_speedup, '.2f')}x "
            f"| {_fmt(c.time_speedup, '.2f')}x | {_fmt(c.efficiency, '.2f')} | {kernel} |"
        )
    return head + "\n".join(rows) + "\n"
