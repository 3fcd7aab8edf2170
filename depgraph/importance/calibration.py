"""Per-input-channel activation statistics of the layers that consume channels.

Data-aware criteria (:class:`~depgraph.importance.ActivationWeightImportance`,
:class:`~depgraph.importance.FluctuationImportance`) and bias compensation
(:func:`~depgraph.importance.compensate_bias`) need, for every input channel
``c`` of a Linear or convolution, the values ``X_c`` that entered it on real
data. :func:`collect_activation_stats` runs calibration batches through the
model with forward pre-hooks and keeps, per channel, in float64::

    count  (number of values: samples x positions)   sum X_c   sum X_c**2
    -> mean, variance (population), root mean square, L2 norm

Channels: ``nn.Linear`` (and transformers' ``Conv1D``) reads the last dim of its input; ``nn.Conv1d/2d/3d``
dim 1 (dim 0 when unbatched), every spatial position counting as a value.
Other layers (transposed convolutions included) are skipped.

Statistics are stored in the layer's *original* channel index space: depgraph
records on every pruned module which original channel each surviving one is
(``_depgraph_kept``, see :mod:`depgraph.dependency.records`). A prune after
calibration therefore does not invalidate the statistics of other layers:
:meth:`CalibrationStats.lookup` translates current positions back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..dependency.records import kept_indices
from ..errors import DepgraphError, OptionError
from ..functional.base import find_handler
from ..trace.recorder import call_model

__all__ = ["ChannelStats", "CalibrationStats", "collect_activation_stats", "is_channel_consumer", "calibration_batches"]


def is_channel_consumer(module: object) -> bool:
    """Layers whose input channels calibration measures: those whose handler has a ``weight_layout``.

    Built in: Linear, transformers' Conv1D and (non-transposed) convolutions.
    """
    if not isinstance(module, nn.Module):
        return False
    handler = find_handler(module)
    return handler is not None and handler.weight_layout(module) is not None


def _current_width(module: nn.Module) -> int:
    return int(find_handler(module).get_in_channels(module))


@dataclass(frozen=True)
class ChannelStats:
    """Moments of the values entering some input channels of one layer.

    Attributes:
        index: ``(C,)`` original channel index of each entry, ascending.
        count: values seen per channel (samples x positions), the same for all channels.
        sum: ``(C,)`` float64 sum of the values.
        sumsq: ``(C,)`` float64 sum of their squares.
    """

    index: torch.Tensor
    count: float
    sum: torch.Tensor
    sumsq: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """Mean value per channel."""
        return self.sum / self.count

    @property
    def var(self) -> torch.Tensor:
        """Population variance ``E[X^2] - E[X]^2`` (clamped at 0 against rounding)."""
        return (self.sumsq / self.count - self.mean.pow(2)).clamp_min(0)

    @property
    def rms(self) -> torch.Tensor:
        """``||X_c||_2 / sqrt(count)``: the norm per value, comparable across layers of any size."""
        return (self.sumsq / self.count).sqrt()

    @property
    def norm(self) -> torch.Tensor:
        """``||X_c||_2`` over every value seen."""
        return self.sumsq.sqrt()

    def take(self, positions: torch.Tensor) -> ChannelStats:
        """The statistics of the channels at ``positions`` only."""
        positions = positions.to(self.sum.device)
        return ChannelStats(self.index[positions], self.count, self.sum[positions], self.sumsq[positions])


class LayerTable(Mapping):
    """Read-only ``{layer: record}`` mapping keyed by module object, so it belongs to one model.

    The base of the calibration results (:class:`CalibrationStats`, ``InputCovariance``):
    they differ in what they accumulate, not in how they are looked up.
    """

    def __init__(self, records: Mapping[nn.Module, Any] | None = None) -> None:
        """Args:
            records: ready records, for a table converted from another one or reloaded from
                disk; a table filled by calibration starts empty.
        """
        self._table: dict[nn.Module, Any] = dict(records) if records is not None else {}

    def __getitem__(self, module: nn.Module) -> Any:
        return self._table[module]

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} layers)"


class CalibrationStats(LayerTable):
    """``{layer: ChannelStats}`` for the consumers a calibration reached.

    Built by :func:`collect_activation_stats` (or a criterion's ``calibrate``).
    """

    # -- accumulating --------------------------------------------------------------------
    @torch.no_grad()
    def add(self, module: nn.Module, x: torch.Tensor) -> None:
        """Accumulate the input ``x`` of ``module`` (a Linear or a convolution)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
            return
        d = find_handler(module).in_channel_dim(module, x.dim()) % x.dim()
        width = x.shape[d]
        # (..., C, ...) -> (values, C), in float64 so long calibrations do not lose precision
        flat = x.detach().movedim(d, -1).reshape(-1, width).to(torch.float64)
        s, sq = flat.sum(0), (flat * flat).sum(0)
        index = original_input_index(module, width)
        prev = self._table.get(module)
        if prev is not None and not torch.equal(prev.index, index.to(prev.index.device)):
            raise DepgraphError(
                f"calibration: the input channels of {type(module).__name__} changed between "
                "batches of one calibration; do not prune while collecting statistics"
            )
        if prev is None:
            self._table[module] = ChannelStats(index.to(s.device), float(flat.shape[0]), s, sq)
        else:
            dev = prev.sum.device
            self._table[module] = ChannelStats(
                prev.index, prev.count + flat.shape[0], prev.sum + s.to(dev), prev.sumsq + sq.to(dev)
            )

    # -- reading -------------------------------------------------------------------------
    def lookup(self, module: nn.Module, positions: torch.Tensor | None = None) -> ChannelStats | None:
        """Statistics of ``module``'s input channels at current ``positions`` (all if None).

        Returns None when the calibration never reached ``module``.

        Raises:
            DepgraphError: some channel has no statistics (the layer was changed
                outside depgraph, or widened, since calibration).
        """
        st = self._table.get(module)
        if st is None:
            return None
        width = _current_width(module)
        original = original_input_index(module, width)
        if positions is not None:
            original = original[positions.to(original.device)]
        original = original.to(st.index.device)
        found = torch.searchsorted(st.index, original).clamp(max=st.index.numel() - 1)
        missing = st.index[found] != original
        if bool(missing.any()):
            raise DepgraphError(
                f"calibration statistics of {type(module).__name__} cover {st.index.numel()} "
                f"original channels but not {original[missing][:5].tolist()}; the layer changed "
                "since calibration: calibrate again"
            )
        return st.take(found)


def original_input_index(module: nn.Module, width: int) -> torch.Tensor:
    """Original channel index of each of the ``width`` current input channels of ``module``."""
    kept = kept_indices(module).get("in")
    if kept is None:
        return torch.arange(width)
    if kept.numel() != width:
        raise DepgraphError(
            f"{type(module).__name__} has {width} input channels but depgraph recorded "
            f"{kept.numel()} kept ones; it was resized outside depgraph, so its channels cannot "
            "be matched to calibration statistics"
        )
    return kept.to(torch.long)


def calibration_batches(data: Any, max_batches: int | None = None) -> Iterator[Any]:
    """The batches of ``data`` (one batch, a tensor or a dict of inputs, or an iterable of them), at most ``max_batches``.

    Checks both arguments when called, before the first batch is read.

    Raises:
        OptionError: ``max_batches`` is not a positive integer or None.
        DepgraphError: ``data`` is neither a batch nor an iterable of batches.
    """
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise OptionError(f"max_batches must be a positive integer or None, got {max_batches!r}")
    if isinstance(data, (torch.Tensor, Mapping)):
        return iter([data])
    if not isinstance(data, Iterable):
        raise DepgraphError(
            f"calibration data must be a tensor, a dict of inputs or an iterable of batches, "
            f"got {type(data).__name__}"
        )
    return itertools.islice(data, max_batches)


@torch.no_grad()
def record_inputs(
    model: nn.Module,
    layers: Iterable[nn.Module],
    add: Callable[[nn.Module, Any], None],
    data: Any,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
) -> None:
    """Run calibration batches through ``model`` in eval mode, passing each layer's input to ``add``.

    Hooks are removed and every module's train/eval mode restored even when the model
    fails, so a calibration never leaves the model changed.
    """
    batches = calibration_batches(data, max_batches)

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        add(module, args[0] if args else kwargs.get("input"))

    modes = [(m, m.training) for m in model.modules()]
    handles = []
    try:
        for m in layers:
            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
        model.eval()
        for batch in batches:
            call_model(model, batch, forward_fn)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training


def collect_activation_stats(
    model: nn.Module,
    data: Any,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
    stats: CalibrationStats | None = None,
) -> CalibrationStats:
    """Run calibration batches through ``model`` and measure every consumer's input channels.

    The model runs in eval mode (dropout off, BatchNorm running statistics
    untouched) under ``torch.no_grad()``; each module's mode is restored and
    every hook removed afterwards, even if the model raises.

    Args:
        model: the model (pruned or not: statistics go to original indices).
        data: one batch (a tensor, or a dict of keyword inputs such as a
            tokenizer's output) or an iterable of batches (a list, a
            DataLoader). Each batch is called like ``example_inputs``: a dict
            as ``model(**batch)``, a tuple/list as ``model(*batch)``, anything
            else as ``model(batch)`` - pass ``forward_fn`` for ``(x, y)`` pairs. A
            tuple or list is always the iterable of batches: put a single
            positional-inputs batch in a list, ``[(a, b)]``.
        forward_fn: ``forward_fn(model, batch)`` replaces the default call.
        max_batches: stop after this many batches.
        stats: accumulate into these statistics instead of new ones.

    Returns:
        The statistics, keyed by layer.

    Raises:
        DepgraphError: ``data`` is not batches, or no Linear/convolution ran.

    Example:
        >>> stats = collect_activation_stats(model, loader, forward_fn=lambda m, b: m(b[0]),
        ...                                  max_batches=8)
        >>> stats[model.fc].mean.shape
        torch.Size([512])
    """
    stats = CalibrationStats() if stats is None else stats
    consumers = [m for m in model.modules() if is_channel_consumer(m)]
    record_inputs(model, consumers, stats.add, data, forward_fn, max_batches)
    if not stats:
        raise DepgraphError(
            f"calibration of {type(model).__name__} saw no Linear or convolution input: "
            "the data was empty or the model has no such layer"
        )
    return stats
