"""Least-squares reconstruction: input covariances, refitting consumers, and the greedy criterion built on them.

Bias compensation (:mod:`depgraph.importance.compensation`) keeps the *mean*
of what removed input channels contributed. When the removed channels are
correlated with kept ones, the kept columns can carry more: a consumer
``y = W x + b`` that loses channels ``R`` and keeps ``K`` is best refit, in the
least-squares sense over the calibration inputs, by::

    z = [x; 1]                       (the constant carries the bias)
    M = E[z z^T]                     (n + 1, n + 1), uncentered second moment
    [W_K', b'] = [W, b] M[:, K+] (M[K+, K+] + damping)^-1       K+ = K and the constant

With nothing kept but the constant this is exactly bias compensation; with
everything kept it changes nothing. :func:`collect_input_covariance` measures
``M`` per layer (in original channel indices, like
:class:`~depgraph.importance.CalibrationStats`), :func:`refit_consumers`
applies the formula to a group about to be pruned, and
``BasePruner(..., lstsq_compensation=cov)`` does it inside every prune's
transaction (:class:`LeastSquaresCompensation`).

:class:`ReconstructionImportance` chooses the channels for that refit. For one
consumer, removing channel ``j`` with the rest refit optimally costs
``||W[:, j]||^2 / [G^-1]_jj`` of output energy (``G`` the covariance of the
kept inputs); removing the cheapest, updating ``G^-1`` and ``W``, and repeating
gives a greedy removal order. A channel's score is the consumer's squared
output error, after the refit, at the moment the greedy order reaches it,
divided by the consumer's output energy ``E||W x + b||^2``: a fraction, so
scores of different layers compare under global ranking and a layer whose
channels are redundant gives more of them.

Only ``nn.Linear`` consumers are measured and refit (convolutions would need
the covariance of whole kernel windows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..errors import DepgraphError, OptionError
from .base import GroupImportance, register_importance
from .calibration import CalibrationStats, ChannelStats, LayerTable, original_input_index, record_inputs
from .compensation import BeforePruneHook
from .magnitude import GroupMagnitudeImportance
from .reduce import Normalizer, Reduction

if TYPE_CHECKING:  # the graph imports criteria and pruners; only the types are needed here
    from ..dependency.group import Group
    from ..dependency.node import Dependency


__all__ = [
    "InputCovariance",
    "LayerCovariance",
    "collect_input_covariance",
    "refit_consumers",
    "plan_refits",
    "Refit",
    "LeastSquaresCompensation",
    "enable_lstsq_compensation",
    "ReconstructionImportance",
]


@dataclass(frozen=True)
class LayerCovariance:
    """The uncentered second moment of one Linear's inputs, augmented with a constant.

    Attributes:
        index: ``(C,)`` original input channel of each row/column, ascending.
        count: input vectors seen.
        gram: ``(C + 1, C + 1)`` float64 ``sum z z^T`` with ``z = [x; 1]`` (last: the constant).
    """

    index: torch.Tensor
    count: float
    gram: torch.Tensor

    @property
    def moment(self) -> torch.Tensor:
        """``E[z z^T]``."""
        return self.gram / self.count


class InputCovariance(LayerTable):
    """``{linear: LayerCovariance}`` from :func:`collect_input_covariance`, keyed by module object."""

    @torch.no_grad()
    def add(self, module: nn.Linear, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs ``x`` (``(..., C)``) of ``module``."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
            return
        flat = x.detach().reshape(-1, x.shape[-1])
        z = torch.cat([flat, flat.new_ones(flat.shape[0], 1)], 1)
        # float32 products per batch (the expensive part), float64 accumulation across batches
        gram = (z.T @ z).to(torch.float64)
        index = original_input_index(module, x.shape[-1])
        prev = self._table.get(module)
        if prev is None:
            self._table[module] = LayerCovariance(index.to(gram.device), float(flat.shape[0]), gram)
            return
        if not torch.equal(prev.index, index.to(prev.index.device)):
            raise DepgraphError(
                f"covariance: the input channels of {type(module).__name__} changed between batches "
                "of one calibration; do not prune while collecting statistics"
            )
        self._table[module] = LayerCovariance(prev.index, prev.count + flat.shape[0], prev.gram + gram.to(prev.gram.device))

    def discard(self, modules: Iterable[nn.Module]) -> None:
        """Forget the records of ``modules`` (block by block frees a pruned block's Gram matrices)."""
        for m in modules:
            self._table.pop(m, None)

    def lookup(self, module: nn.Module) -> torch.Tensor | None:
        """``E[z z^T]`` over ``module``'s *current* input channels (plus the constant), or None.

        Raises:
            DepgraphError: a current channel has no statistics (the layer changed outside depgraph).
        """
        pos = self.positions(module)
        return None if pos is None else self._table[module].moment[pos][:, pos]

    def positions(self, module: nn.Module) -> torch.Tensor | None:
        """Rows of ``self[module].moment`` that :meth:`lookup` takes now (the constant's last), or None.

        Raises:
            DepgraphError: a current channel has no statistics (the layer changed outside depgraph).
        """
        cov = self._table.get(module)
        if cov is None:
            return None
        original = original_input_index(module, int(module.weight.shape[1])).to(cov.index.device)
        pos = torch.searchsorted(cov.index, original).clamp(max=cov.index.numel() - 1)
        if bool((cov.index[pos] != original).any()):
            raise DepgraphError(
                f"the input covariance of {type(module).__name__} does not cover its current channels; "
                "it changed since calibration: collect the covariance again"
            )
        return torch.cat([pos, pos.new_tensor([cov.index.numel()])])  # the constant stays last

    def channel_stats(self) -> CalibrationStats:
        """Per-channel mean and variance read off the second moments (one calibration pass serves
        :class:`~depgraph.importance.FluctuationImportance` and bias compensation too)."""
        records = {}
        for module, cov in self._table.items():
            n = cov.index.numel()
            records[module] = ChannelStats(cov.index, cov.count, cov.gram[:n, n].clone(),
                                           cov.gram.diagonal()[:n].clone())
        return CalibrationStats(records)

    def named(self, model: nn.Module) -> dict[str, LayerCovariance]:
        """``{qualified name: LayerCovariance}`` for ``torch.save`` (modules are not picklable keys)."""
        names = {m: n for n, m in model.named_modules()}
        return {names[m]: cov for m, cov in self._table.items() if m in names}

    @classmethod
    def from_named(cls, model: nn.Module, named: Mapping[str, LayerCovariance]) -> InputCovariance:
        """The inverse of :meth:`named` for (an unpruned copy of) the same architecture.

        Raises:
            DepgraphError: a name is not a Linear of ``model``.
        """
        modules = dict(model.named_modules())
        for name in named:
            if not isinstance(modules.get(name), nn.Linear):
                raise DepgraphError(f"{name!r} is not an nn.Linear of {type(model).__name__}")
        return cls({modules[name]: cov for name, cov in named.items()})


@torch.no_grad()
def collect_input_covariance(
    model: nn.Module,
    data: Any,
    layers: Sequence[nn.Module] | None = None,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
) -> InputCovariance:
    """Run calibration batches and accumulate each Linear's input second moment ``E[[x;1][x;1]^T]``.

    Memory is ``(C + 1)**2`` float64 per layer (an LLM's down projections dominate), so pass
    ``layers`` to measure only the consumers whose inputs will be pruned.

    Args:
        model: the model (pruned or not: rows follow original channel indices).
        data: as in :func:`~depgraph.importance.collect_activation_stats`.
        forward_fn: as ``data``.
        max_batches: as ``data``.
        layers: the ``nn.Linear`` modules to measure (default: every Linear of ``model``).

    Returns:
        The covariances, keyed by layer.

    Raises:
        DepgraphError: a listed layer is not an ``nn.Linear``, or no listed layer ran.

    Example:
        >>> downs = [layer.mlp.down_proj for layer in model.model.layers]
        >>> cov = collect_input_covariance(model, batches, layers=downs)
        >>> pruner = tp.pruner.BasePruner(model, example, imp, pruning_ratio=0.3, lstsq_compensation=cov)
    """
    targets = list(layers) if layers is not None else [m for m in model.modules() if isinstance(m, nn.Linear)]
    wrong = [type(m).__name__ for m in targets if not isinstance(m, nn.Linear)]
    if wrong:
        raise DepgraphError(f"collect_input_covariance measures nn.Linear inputs only, got {wrong}; "
                            "convolutions are not supported")
    cov = InputCovariance()
    record_inputs(model, targets, cov.add, data, forward_fn, max_batches)
    if not cov:
        raise DepgraphError(f"calibration of {type(model).__name__} reached none of the {len(targets)} layers")
    return cov


def _damped(m: torch.Tensor, damping: float) -> torch.Tensor:
    """``m + damping * mean(diag(m)) * I``: keeps the solve stable when inputs are collinear."""
    scale = m.diagonal().mean().clamp_min(1e-12)
    return m + damping * scale * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)


def _solve_kept(rhs: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``rhs @ gram^-1`` for the damped (symmetric positive definite) kept-input Gram matrix.

    Cholesky on the ``out`` right-hand sides ``W M[:, K+]``, not LU on the ``n + 1`` columns of
    ``M[:, K+]`` then a product: half the factorisation and, for a down projection
    (``out`` = hidden < ``n`` = MLP width), several times fewer solves. A matrix the damping
    left indefinite in floating point falls back to the LU solve.
    """
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return torch.cholesky_solve(rhs.T, factor).T
    return torch.linalg.solve(gram, rhs.T).T


def _refit(layer: nn.Linear, removed: torch.Tensor, moment: torch.Tensor, damping: float) -> None:
    """Refit ``layer``'s columns other than ``removed`` and its bias (see the module docstring)."""
    w = layer.weight.detach()
    n = w.shape[1]
    bias = layer.bias.detach() if layer.bias is not None else w.new_zeros(w.shape[0])
    wb = torch.cat([w, bias[:, None]], 1).to(torch.float64)  # (out, n + 1)
    keep = torch.ones(n + 1, dtype=torch.bool)
    keep[removed] = False
    kplus = keep.nonzero().flatten().to(moment.device)
    new = _solve_kept(wb.to(moment.device) @ moment[:, kplus], _damped(moment[kplus][:, kplus], damping))
    w_new = w.to(torch.float64).clone()
    w_new[:, kplus[:-1].to(w.device)] = new[:, :-1].to(w.device)
    layer.weight.data = w_new.to(w.dtype)  # a new tensor: a snapshot of the old one can still restore it
    b_new = new[:, -1].to(w.device, w.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(b_new, requires_grad=layer.weight.requires_grad)
    else:
        layer.bias.data = b_new


@dataclass(frozen=True)
class Refit:
    """One consumer's least-squares refit, planned: the removed inputs and where their moments are.

    Planning reads only the covariance and the layer's current channel positions, so a plan
    made on a meta-device model applies to a real copy of that layer in the same state
    (the streamed checkpoint path replays it; see :mod:`depgraph.streaming`). The moment
    matrix is sliced when applied, not kept.

    Attributes:
        removed: ``(r,)`` current input positions removed, ascending.
        cov: the layer's covariance record.
        positions: rows of ``cov.moment`` for the current inputs and the constant (last).
        damping: ridge term, relative to the mean input energy.
    """

    removed: torch.Tensor
    cov: LayerCovariance
    positions: torch.Tensor
    damping: float

    @torch.no_grad()
    def apply(self, layer: nn.Linear) -> None:
        """Refit ``layer``'s kept columns and bias (creating one); before its inputs go."""
        _refit(layer, self.removed, self.cov.moment[self.positions][:, self.positions], self.damping)


def plan_refits(group: Iterable[Any], cov: InputCovariance, damping: float = 1e-4) -> dict[nn.Module, Refit]:
    """The refits :func:`refit_consumers` would apply to ``group``, by consumer, unapplied.

    Raises:
        DepgraphError: ``cov`` is not an :class:`InputCovariance`, or a consumer's channels
            are not covered by it.
    """
    if not isinstance(cov, InputCovariance):
        raise DepgraphError(f"refit_consumers needs an InputCovariance (collect_input_covariance), "
                            f"got {type(cov).__name__}")
    removed: dict[nn.Module, set[int]] = {}
    for dep, idxs in group:
        target = dep.target.module
        if idxs and dep.side == "in" and isinstance(target, nn.Linear) and target in cov:
            removed.setdefault(target, set()).update(int(i) for i in idxs)
    return {layer: Refit(torch.as_tensor(sorted(idxs), dtype=torch.long), cov[layer], cov.positions(layer), damping)
            for layer, idxs in removed.items()}


@torch.no_grad()
def refit_consumers(group: Iterable[Any], cov: InputCovariance, damping: float = 1e-4) -> list[nn.Module]:
    """Refit every Linear consumer that ``group`` removes input channels of; call before ``group.prune()``.

    A consumer without a bias gets one. Consumers without a covariance in ``cov`` are left alone.

    Args:
        group: a :class:`~depgraph.Group` (or any iterable of ``(dep, idxs)`` with current indices).
        cov: from :func:`collect_input_covariance`.
        damping: ridge term, relative to the mean input energy.

    Returns:
        The refit layers.

    Raises:
        DepgraphError: ``cov`` is not an :class:`InputCovariance`.
    """
    refits = plan_refits(group, cov, damping)
    for layer, refit in refits.items():
        refit.apply(layer)
    return list(refits)


class LeastSquaresCompensation(BeforePruneHook):
    """A graph hook refitting consumers inside every group prune's transaction (rolled back with it).

    Registered by :func:`enable_lstsq_compensation` (``BasePruner(lstsq_compensation=cov)``).
    """

    def __init__(self, cov: InputCovariance, damping: float = 1e-4) -> None:
        self.cov = cov
        self.damping = damping

    def __call__(self, graph: Any, items: list) -> None:
        refit_consumers(items, self.cov, self.damping)



def enable_lstsq_compensation(graph: Any, cov: InputCovariance, damping: float = 1e-4) -> LeastSquaresCompensation:
    """Make every ``group.prune()`` of ``graph`` refit the consumers of removed channels.

    Also registers the Hugging Face bias-flag sync (as bias compensation does), so a refit
    bias survives ``save_pretrained``.
    """
    hook = LeastSquaresCompensation(cov, damping).attach(graph)
    from ..integrations.hf_bias import attach_bias_flags  # lazy; imports no transformers

    attach_bias_flags(graph)
    return hook


def greedy_removal_costs(
    wb: torch.Tensor, moment: torch.Tensor, damping: float = 1e-4, block_size: int = 32
) -> torch.Tensor:
    """Relative output error after each channel of a greedy least-squares removal order.

    Each round removes the ``block_size`` channels whose single removal costs least,
    refits the rest (the optimal-brain-surgeon update of ``W`` and of the inverse
    covariance) and charges the block's joint cost; within a block the cost is spread in
    proportion to the single-channel costs. ``block_size=1`` is the exact one-by-one
    greedy; blocks make a 1536-wide layer take 48 rank-32 updates instead of 1536
    rank-1 ones, each of which reads the whole ``(n, n)`` inverse.

    Args:
        wb: ``(out, n + 1)`` float64 ``[W, b]`` of the consumer (a zero last column without a bias).
        moment: ``(n + 1, n + 1)`` ``E[z z^T]`` with the constant last.
        damping: ridge term, relative to the mean input energy.
        block_size: channels removed per round.

    Returns:
        ``(n,)`` float64, non-decreasing along the removal order: the consumer's squared
        output error (the rest refit, the constant always kept) once the order has removed
        the channel, divided by the output energy ``E||[W, b] z||^2``.
    """
    n = wb.shape[1] - 1
    hinv = torch.linalg.inv(_damped(moment, damping))  # (n + 1, n + 1)
    energy = float(torch.einsum("oi,ij,oj->", wb, moment, wb).detach().clamp_min(1e-30))
    wb = wb.clone()
    # the surviving channels, as positions in the original layer; the constant stays last and is
    # never removed. hinv and wb shrink with them, so later rounds cost less.
    alive = torch.arange(n + 1, device=wb.device)
    costs = torch.empty(n, dtype=torch.float64, device=wb.device)
    total = 0.0
    while alive.numel() > 1:
        single = wb.pow(2).sum(0) / hinv.diagonal().clamp_min(1e-30)  # cost of removing each alone
        single[-1] = float("inf")
        k = min(block_size, alive.numel() - 1)
        block = torch.argsort(single)[:k]  # cheapest first
        # joint removal of the block: cost tr(W_S (Hinv_SS)^-1 W_S^T), then the OBS update of both
        h_ss = hinv[block][:, block]  # a principal block of an SPD inverse: SPD
        chol, info = torch.linalg.cholesky_ex(h_ss)
        h_ss_inv = torch.cholesky_inverse(chol) if int(info) == 0 else torch.linalg.pinv(h_ss, hermitian=True)
        ws = wb[:, block]  # (out, k)
        joint = float((ws @ h_ss_inv * ws).sum())
        share = single[block] / single[block].sum().clamp_min(1e-300)
        costs[alive[block]] = (total + share.cumsum(0) * joint) / energy
        total += joint
        keep = torch.ones(alive.numel(), dtype=torch.bool, device=wb.device)
        keep[block] = False
        coupling = h_ss_inv @ hinv[block][:, keep]  # (k, kept)
        wb = wb[:, keep] - ws @ coupling
        hinv = hinv[keep][:, keep] - hinv[:, block][keep] @ coupling
        alive = alive[keep]
    return costs


@register_importance("reconstruction")
class ReconstructionImportance(GroupImportance):
    """Channel score = the consumer's relative output error, after a least-squares refit, when a greedy
    removal order reaches the channel (see the module docstring).

    Pair it with ``BasePruner(lstsq_compensation=cov)``: the pruner then removes a prefix of the
    greedy order and the refit is the one the scores assumed. The scores are fractions of each
    consumer's output energy, comparable across layers, so ``global_pruning=True`` allocates
    more pruning to redundant layers; the default ``normalizer=None`` keeps them so. Groups with
    no measured Linear consumer fall back to :class:`~depgraph.importance.GroupMagnitudeImportance`.

    Scores are cached per consumer and channel set (:meth:`costs`): the greedy pass over a layer
    of ``n`` inputs costs ``O(n^3)`` once. The cache is keyed by module, so
    ``copy.deepcopy((model, imp))`` (one memo) gives a copy that reuses it on the copied model.

    Args:
        cov: from :func:`collect_input_covariance` (the consumers whose inputs are pruned).
        damping: ridge term, relative to the mean input energy.
        block_size: channels the greedy pass removes per round (1: exact greedy, slow on wide layers).
        group_reduction: see :class:`~depgraph.importance.GroupImportance`.
        normalizer: as ``group_reduction``.

    Example:
        >>> cov = tp.importance.collect_input_covariance(model, batches, layers=downs)
        >>> imp = tp.importance.ReconstructionImportance(cov)
        >>> tp.pruner.BasePruner(model, example, imp, pruning_ratio=0.3, global_pruning=True,
        ...                      lstsq_compensation=cov).step()
    """

    def __init__(
        self,
        cov: InputCovariance,
        damping: float = 1e-4,
        block_size: int = 32,
        group_reduction: Reduction = "sum",
        normalizer: Normalizer = None,
    ) -> None:
        if not isinstance(cov, InputCovariance):
            raise DepgraphError(f"ReconstructionImportance needs an InputCovariance (collect_input_covariance), "
                                f"got {type(cov).__name__}")
        super().__init__(group_reduction, normalizer, bias=False, target_types=(nn.Linear,))
        self.cov = cov
        self.damping = float(damping)
        if not isinstance(block_size, int) or block_size < 1:
            raise OptionError(f"block_size must be a positive integer, got {block_size!r}")
        self.block_size = block_size
        self._fallback = GroupMagnitudeImportance(2, group_reduction, normalizer)
        # layer -> (original channels, costs); keyed by module so a deepcopy of (model, imp) follows
        self._cache: dict[nn.Module, tuple[tuple[int, ...], torch.Tensor]] = {}

    def costs(self, layer: nn.Linear) -> torch.Tensor:
        """``(in_features,)`` scores of ``layer``'s current input channels (computed once per channel set).

        Raises:
            DepgraphError: ``layer`` has no covariance in ``cov``.
        """
        if layer not in self.cov:
            raise DepgraphError(f"{type(layer).__name__} has no input covariance; pass it in "
                                "collect_input_covariance(..., layers=[...])")
        original = tuple(original_input_index(layer, int(layer.weight.shape[1])).tolist())
        cached = self._cache.get(layer)
        if cached is None or cached[0] != original:
            moment = self.cov.lookup(layer)
            w = layer.weight.detach().to(moment.device, torch.float64)
            b = layer.bias.detach().to(w) if layer.bias is not None else w.new_zeros(w.shape[0])
            wb = torch.cat([w, b[:, None]], 1)
            cached = (original, greedy_removal_costs(wb, moment, self.damping, self.block_size))
            self._cache[layer] = cached
        return cached[1]

    def score_member(self, target: object, side: str, idxs: torch.Tensor, dep: Dependency) -> torch.Tensor | None:
        if side != "in" or not isinstance(target, nn.Linear) or target not in self.cov:
            return None
        return self.costs(target)[idxs.to(torch.long)].to(torch.float32)

    @torch.no_grad()
    def __call__(self, group: Group) -> torch.Tensor | None:
        scores = super().__call__(group)
        return self._fallback(group) if scores is None else scores
