"""Bias compensation: fold the mean contribution of removed input channels into the consumer's bias.

A consumer ``y = W x + b`` losing input channel ``c`` loses the term
``W[:, c] * X_c``. Its average over the calibration data, ``W[:, c] * mean(X_c)``,
is a constant the bias can carry, so after compensation the consumer computes
exactly what it computed with ``X_c`` replaced by its mean: only the
fluctuation of ``X_c`` around its mean is lost. For a convolution the
constant is ``sum over the kernel window of W[:, c]`` times the mean (exact
where the whole window lies inside the input; zero padding at the borders
makes it approximate there).

Two ways to use it:

* :func:`compensate_bias` changes biases now, for a group about to be pruned;
  it must run *before* ``group.prune()`` (the weights of the removed channels
  are read), and it is not undone if that prune is then refused.
* :func:`enable_bias_compensation` (what ``BasePruner(bias_compensation=True)``
  uses) makes the graph compensate inside every group prune's transaction:
  the bias change is part of the snapshot and is rolled back with the rest
  when the prune fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import DepgraphError
from ..functional.base import find_handler
from .calibration import CalibrationStats, is_channel_consumer

__all__ = ["compensate_bias", "plan_bias_compensation", "BiasShift", "enable_bias_compensation", "BiasCompensation"]


def _bias_delta(layer: nn.Module, idxs: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``sum_c W[:, c] * mean_c`` over input channels ``idxs`` of ``layer``, in float64: ``(out,)``."""
    # read the weight as (out, in/g, *k) whatever the layer stores (transformers' Conv1D: (in, out))
    w = layer.weight.detach().movedim(find_handler(layer).weight_layout(layer), (0, 1))
    out_ch, per_block = w.shape[0], w.shape[1]
    g = getattr(layer, "groups", 1)
    # channel c = block * (I/g) + j feeds rows block * (O/g) ... (block + 1) * (O/g) - 1
    blocks, j = idxs // per_block, idxs % per_block
    wb = w.reshape(g, out_ch // g, per_block, -1)  # (g, O/g, I/g, k); Linear: (1, O, I, 1)
    # (n, O/g): a constant input meets the sum of its kernel window; only the removed columns are read
    cols = wb[blocks, :, j].sum(-1).to(torch.float64)
    contrib = cols * mean.to(w.device, torch.float64)[:, None]
    delta = torch.zeros(g, out_ch // g, dtype=torch.float64, device=w.device)
    delta.index_add_(0, blocks, contrib)
    return delta.reshape(out_ch)


def _add_to_bias(layer: nn.Module, delta: torch.Tensor) -> None:
    """``layer.bias += delta`` without writing into the old tensor (so a snapshot can restore it)."""
    weight = layer.weight
    if layer.bias is None:
        layer.bias = nn.Parameter(delta.to(weight.device, weight.dtype), requires_grad=weight.requires_grad)
    else:
        bias = layer.bias
        with torch.no_grad():
            bias.data = (bias.data.to(torch.float64) + delta.to(bias.device)).to(bias.dtype)


@dataclass(frozen=True)
class BiasShift:
    """One consumer's bias compensation, planned: which input channels go and their mean values.

    Planning reads only the statistics and the layer's current channel positions, so a plan
    made on a meta-device model applies to a real copy of that layer in the same state
    (the streamed checkpoint path replays it; see :mod:`depgraph.streaming`).

    Attributes:
        parts: ``(positions, mean)`` per group member pruning this layer's inputs, in group order.
    """

    parts: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @torch.no_grad()
    def apply(self, layer: nn.Module) -> None:
        """Add the planned correction to ``layer``'s bias (creating one); before its channels go."""
        delta = None
        for idxs, mean in self.parts:
            d = _bias_delta(layer, idxs.to(layer.weight.device), mean)
            delta = d if delta is None else delta + d
        if delta is not None:
            _add_to_bias(layer, delta)


def plan_bias_compensation(group: Iterable[Any], stats: CalibrationStats) -> dict[nn.Module, BiasShift]:
    """The bias compensation :func:`compensate_bias` would apply to ``group``, by consumer, unapplied.

    Args:
        group: a :class:`~depgraph.Group` (or any iterable of ``(dep, idxs)`` with current indices).
        stats: calibration statistics of the model ``group`` belongs to.

    Returns:
        ``{consumer: BiasShift}``; ``shift.apply(layer)`` changes the bias.

    Raises:
        DepgraphError: ``stats`` is not calibration statistics.
    """
    if not isinstance(stats, CalibrationStats):
        raise DepgraphError(
            f"compensate_bias needs CalibrationStats (from collect_activation_stats or a calibrated "
            f"criterion's .stats), got {type(stats).__name__}"
        )
    parts: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for dep, idxs in group:
        target = dep.target.module
        if not idxs or dep.side != "in" or not is_channel_consumer(target):
            continue
        i = torch.as_tensor(list(idxs), dtype=torch.long)
        st = stats.lookup(target, i)
        if st is None:
            continue
        parts.setdefault(target, []).append((i, st.mean))
    return {layer: BiasShift(tuple(p)) for layer, p in parts.items()}


@torch.no_grad()
def compensate_bias(group: Iterable[Any], stats: CalibrationStats) -> list[nn.Module]:
    """Add the mean contribution of the channels ``group`` removes to each consumer's bias.

    Every member pruned on its input side that is a Linear or a convolution
    with statistics in ``stats`` is compensated; a consumer without a bias
    gets one (a zero ``nn.Parameter`` of the weight's dtype and device, plus
    the correction). Call it right before ``group.prune()``. Note that a bias
    created here is not in an optimizer built earlier.

    Args:
        group: a :class:`~depgraph.Group` (or any iterable of ``(dep, idxs)``
            with current indices).
        stats: from :func:`~depgraph.importance.collect_activation_stats` or
            a calibrated criterion's ``.stats``.

    Returns:
        The layers whose bias changed.

    Raises:
        DepgraphError: ``stats`` is not calibration statistics.

    Example:
        >>> stats = tp.importance.collect_activation_stats(model, batches)
        >>> group = DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, [0, 3])
        >>> tp.compensate_bias(group, stats)
        >>> group.prune()
    """
    # plan every change first (a lookup may refuse), then apply them
    shifts = plan_bias_compensation(group, stats)
    for layer, shift in shifts.items():
        shift.apply(layer)
    return list(shifts)


class BeforePruneHook:
    """A change to the model made inside every group prune's transaction, before channels go.

    Registered with ``graph.register_prune_hook(hook, when="before")``: the graph calls
    ``hook(graph, items)`` with the group's members after validating and snapshotting them,
    so a prune that fails afterwards restores what the hook changed too. Subclasses implement
    ``__call__``; detaching keeps what earlier prunes changed.
    """

    _handle: Any = None

    def __call__(self, graph: Any, items: list) -> None:
        raise NotImplementedError

    def attach(self, graph: Any) -> BeforePruneHook:
        if self not in graph.prune_hooks("before"):
            self._handle = graph.register_prune_hook(self, when="before")
        return self

    def detach(self) -> None:
        """Stop running on later prunes."""
        if self._handle is not None:
            self._handle.remove()
        self._handle = None


class BiasCompensation(BeforePruneHook):
    """A graph hook that compensates biases inside every group prune's transaction.

    Registered as a ``when="before"`` prune hook by :func:`enable_bias_compensation`;
    the graph calls it with the group's members after validating them and
    after snapshotting every member, before any channel is removed.

    Args:
        stats: the statistics, or a callable returning them at each prune
            (a pruner passes one reading its criterion's current ``.stats``).
    """

    def __init__(self, stats: CalibrationStats | Callable[[], CalibrationStats | None]) -> None:
        self._stats = stats

    def stats(self) -> CalibrationStats:
        """The calibration statistics, read when a prune needs them (a callable is called then, so
        statistics collected after the pruner was built are used).

        Raises:
            DepgraphError: none were given and the importance has not been calibrated.
        """
        given = self._stats
        stats = given() if callable(given) and not isinstance(given, CalibrationStats) else given
        if stats is None:
            raise DepgraphError(
                "bias compensation has no calibration statistics; calibrate the importance "
                "(imp.calibrate(model, data)) or pass calibration_stats="
            )
        return stats

    def __call__(self, graph: Any, items: list) -> None:
        compensate_bias(items, self.stats())



def enable_bias_compensation(
    graph: Any, stats: CalibrationStats | Callable[[], CalibrationStats | None]
) -> BiasCompensation:
    """Make every ``group.prune()`` of ``graph`` compensate biases, transactionally.

    For a Hugging Face model it also registers the sync of the config's bias
    flags (``mlp_bias``, ``attention_bias``; see
    :mod:`depgraph.integrations.hf_bias`), so ``save_pretrained`` keeps the
    compensated biases.

    Returns:
        The hook; ``hook.detach()`` turns compensation off again.

    Example:
        >>> DG = tp.DependencyGraph().build_dependency(model, example_inputs)
        >>> tp.importance.enable_bias_compensation(DG, stats)
        >>> DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, [0, 3]).prune()
    """
    hook = BiasCompensation(stats).attach(graph)
    from ..integrations.hf_bias import attach_bias_flags  # lazy; imports no transformers

    attach_bias_flags(graph)
    return hook
