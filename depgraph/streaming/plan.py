"""Plan a prune on the meta device and replay it on real tensors, one layer at a time.

The model is built from the checkpoint's config on ``meta`` (no weight memory)
and pruned there by an ordinary :class:`~depgraph.pruner.BasePruner` step: the
graph, the groups, the ratios, the head planner and the HF config sync are the
in-memory ones. Two things differ:

- every member a group prunes is logged as ``(handler, idxs, dim)`` under the
  member's name (:class:`PruneLog`), in the order the group applies them
  (out-channel members first, as ``Group.prune`` does);
- the criterion sees real weights: before a group is scored, each member layer
  is rebuilt on the CPU from the checkpoint (:class:`Materializer`: original
  tensors from the shards, then the logged prunes replayed with the same
  handlers) and swapped into the meta layer for the duration of the call.

Since scores come from the same tensors through the same code, and the pruned
tensors of the output come from the same handlers replayed on the same values,
the streamed result equals the in-memory one bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .shards import Checkpoint, CheckpointError

if TYPE_CHECKING:
    from ..dependency.group import Group

__all__ = ["Step", "Adjust", "ZeroBias", "PruneLog", "Materializer", "StreamedImportance", "build_meta_model", "example_inputs"]


@dataclass(frozen=True)
class Step:
    """One logged prune of one member: ``handler(target, idxs)`` (``dim=`` for a bare tensor)."""

    handler: Callable
    idxs: tuple[int, ...]
    dim: int | None = None

    def apply(self, target: Any) -> None:
        """Replay this prune on ``target`` (a materialised layer or tensor) with the logged indices."""
        if self.dim is None:
            self.handler(target, list(self.idxs))
        else:
            self.handler(target, list(self.idxs), dim=self.dim)

    def describe(self) -> list:
        """``[handler name, dim, idxs]``: the step as plain data for the written plan."""
        return [getattr(self.handler, "__name__", repr(self.handler)), self.dim, list(self.idxs)]


@dataclass(frozen=True)
class Adjust:
    """One logged change of a member's values before its channels go (a compensation).

    ``change`` is a plan from the importance package (``BiasShift``, ``Refit``): made on
    the meta layer, applied here to its real copy in the same state.
    """

    change: Any
    label: str

    def apply(self, target: Any) -> None:
        """Change ``target`` (the real layer, in the state the plan was made for)."""
        self.change.apply(target)

    def describe(self) -> list:
        """What the log digest records of this step."""
        return ["adjust", self.label]


@dataclass(frozen=True)
class ZeroBias:
    """A zero bias given to a layer so its config can describe a family's biases (``mlp_bias``)."""

    def apply(self, target: Any) -> None:
        """Give ``target`` a zero bias unless it has one (replay created it, or the source held it)."""
        if getattr(target, "bias", None) is None:
            w = target.weight
            target.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=False)

    def describe(self) -> list:
        """What the log digest records of this step."""
        return ["zero_bias"]


@dataclass
class PruneLog:
    """Every change applied to every member, by member name (module or bare tensor qualname).

    Steps are :class:`Step` (a handler), :class:`Adjust` (a compensation) or
    :class:`ZeroBias`; replaying a member's steps in order on its original tensors
    gives its tensors in the pruned model.
    """

    steps: dict[str, list[Any]] = field(default_factory=dict)
    # where the current group's steps of each member begin: a compensation goes before them
    _opened: dict[str, int] = field(default_factory=dict, repr=False)

    def record(self, group: Group) -> None:
        """Log ``group``'s members as it is about to prune them (current indices, out members first)."""
        items = [(dep, idxs) for dep, idxs in group if len(idxs)]
        items = [it for it in items if it[0].is_out()] + [it for it in items if not it[0].is_out()]
        self._opened = {}
        for dep, idxs in items:
            steps = self.steps.setdefault(dep.target.name, [])
            self._opened.setdefault(dep.target.name, len(steps))
            steps.append(Step(dep.handler, tuple(int(i) for i in idxs), dep.target.pruning_dim))

    def precede(self, name: str, step: Any) -> None:
        """Log ``step`` for member ``name`` before the steps the group being pruned logged for it."""
        steps = self.steps.setdefault(name, [])
        at = self._opened.get(name, len(steps))
        steps.insert(at, step)
        self._opened[name] = at + 1

    def append(self, name: str, step: Any) -> None:
        """Log ``step`` for member ``name`` after all its others (changes made after the prune)."""
        self.steps.setdefault(name, []).append(step)

    def digest(self) -> str:
        """A hash of every logged step: two runs that prune the same positions share it."""
        data = {name: [s.describe() for s in steps] for name, steps in sorted(self.steps.items())}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def build_meta_model(config: Any) -> nn.Module:
    """The causal LM of ``config`` on the meta device, in eval mode (no weight memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def example_inputs(device: str | torch.device = "meta", length: int = 8) -> dict[str, torch.Tensor]:
    """The token batch the graph is traced on (values unused: shapes only)."""
    return {"input_ids": torch.zeros(1, length, dtype=torch.long, device=device)}


class Materializer:
    """Rebuild members of the meta model on the CPU, from the checkpoint, as pruned so far.

    Args:
        checkpoint: the source checkpoint (its ledger is charged for every tensor read).
        pristine: an unpruned meta copy of the model (original shapes, names and tied weights).
        log: the prunes applied so far.
    """

    def __init__(self, checkpoint: Checkpoint, pristine: nn.Module, log: PruneLog) -> None:
        self.checkpoint = checkpoint
        self.pristine = pristine
        self.log = log
        self.modules = dict(pristine.named_modules())
        self.aliases = _checkpoint_names(pristine, checkpoint)

    def keys(self, name: str) -> dict[str, str]:
        """``{local key: checkpoint name}`` of the tensors member ``name`` is made of."""
        if name in self.modules:
            local = self.modules[name].state_dict(keep_vars=True)
            return {k: self.aliases[f"{name}.{k}" if name else k] for k in local}
        if name in self.aliases:
            return {"": self.aliases[name]}
        raise CheckpointError(f"{name} is neither a module nor a tensor of the checkpoint's model")

    def nbytes(self, names: list[str]) -> int:
        """Bytes of the checkpoint tensors behind ``names`` (original sizes: what is read)."""
        keys = {c for n in names for c in self.keys(n).values()}
        return sum(self.checkpoint.tensors[k].nbytes for k in keys)

    @contextlib.contextmanager
    def materialized(self, names: list[str], what: str) -> Iterator[dict[str, Any]]:
        """``{name: CPU module or tensor}`` in its current pruned state; freed on exit.

        Raises:
            MemoryBudgetError: they do not fit into the budget together (nothing is read).
        """
        wanted = {n: self.keys(n) for n in dict.fromkeys(names)}
        ckpt_names = list(dict.fromkeys(c for keys in wanted.values() for c in keys.values()))
        tensors = self.checkpoint.load(ckpt_names, what)
        try:
            out: dict[str, Any] = {}
            for name, keys in wanted.items():
                if name in self.modules:
                    layer = copy.deepcopy(self.modules[name])
                    layer.load_state_dict({k: tensors[c] for k, c in keys.items()}, strict=True, assign=True)
                    target: Any = layer
                else:
                    target = nn.Parameter(tensors[keys[""]], requires_grad=False)
                for step in self.log.steps.get(name, ()):
                    step.apply(target)
                out[name] = target
            yield out
        finally:
            tensors.clear()
            self.checkpoint.release(ckpt_names)


def _checkpoint_names(model: nn.Module, checkpoint: Checkpoint) -> dict[str, str]:
    """``{state-dict name: checkpoint name}``; a tied tensor saved once maps to its stored name."""
    by_tensor: dict[int, list[str]] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(
            model.named_buffers(remove_duplicate=False)):
        by_tensor.setdefault(id(t), []).append(name)
    out: dict[str, str] = {}
    for names in by_tensor.values():
        stored = [n for n in names if n in checkpoint.tensors]
        for n in names:
            if stored:
                out[n] = n if n in stored else stored[0]
    extra = sorted(set(checkpoint.tensors) - set(out.values()))
    missing = sorted(set(model.state_dict(keep_vars=True)) - set(out))
    if extra and missing:
        raise CheckpointError(
            f"{checkpoint.folder} stores {len(extra)} tensor(s) the model built from its config lacks "
            f"(e.g. {extra[:3]}) and lacks {len(missing)} it has (e.g. {missing[:3]}): transformers renames "
            f"or fuses this checkpoint's tensors when loading it ({type(model).__name__}'s conversion, e.g. "
            "per-expert w1/w2/w3 fused into 3-D expert tensors), which the streamed path does not replay. "
            "Prune it with mode='memory' (which needs the model to fit in memory)")
    if extra:
        raise CheckpointError(
            f"{checkpoint.folder} holds {len(extra)} tensor(s) the model built from its config lacks, "
            f"e.g. {extra[:3]}: the checkpoint and config.json do not describe the same model")
    return out


class StreamedImportance:
    """Wrap a criterion so that it scores meta-device groups from checkpoint tensors.

    The wrapped criterion is called unchanged inside
    :func:`~depgraph.importance.base.member_access`: as it scores each member, that
    member alone is materialised (:class:`Materializer`), its tensors are put into the
    meta layer in place of the meta ones, and the meta tensors are put back and the real
    ones freed when the member is done. A group spanning every layer (the hidden size)
    is so scored within the budget of its biggest member.

    Args:
        inner: the criterion (any :class:`~depgraph.importance.GroupImportance`, or one
            that reads no tensor).
        materializer: where the member tensors come from.
        needs_weights: False for criteria that read no tensor (random scores).
        on_group: called after each scored group (progress).
    """

    def __init__(self, inner: Any, materializer: Materializer, needs_weights: bool = True,
                 on_group: Callable[[], None] | None = None) -> None:
        self.inner = inner
        self.materializer = materializer
        self.needs_weights = needs_weights
        self.on_group = on_group
        self.groups_scored = 0

    def __getattr__(self, name: str) -> Any:  # options the pruner reads from its criterion
        return getattr(self.inner, name)

    @contextlib.contextmanager
    def _open(self, node: Any) -> Iterator[None]:
        with self.materializer.materialized([node.name], f"scoring {node.name}") as real, \
                _swapped({node.name: node.module}, real):
            yield

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        from ..importance.base import member_access

        self.groups_scored += 1
        try:
            if not self.needs_weights:
                return self.inner(group)
            with member_access(self._open):
                return self.inner(group)
        finally:
            if self.on_group is not None:
                self.on_group()


@contextlib.contextmanager
def _swapped(meta: dict[str, Any], real: dict[str, Any]) -> Iterator[None]:
    """Put the real tensors into the meta layers (same module objects), restore on exit."""
    saved: list[tuple[nn.Module, str, torch.Tensor]] = []
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for name, m in meta.items():
            r = real[name]
            if isinstance(m, torch.Tensor):  # a bare parameter member: swap the tensor objects' contents
                torch.utils.swap_tensors(m, r)
                swapped.append((m, r))
                continue
            for key, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                if key in dict(r.named_parameters(recurse=False)) or key in dict(r.named_buffers(recurse=False)):
                    saved.append((m, key, t))
                    setattr(m, key, getattr(r, key))
        yield
    finally:
        for m, key, t in reversed(saved):
            setattr(m, key, t)
        for a, b in reversed(swapped):
            torch.utils.swap_tensors(a, b)


def run_pruner(pruner: Any, log: PruneLog, on_group: Callable[[Any], None] | None = None) -> None:
    """One pruner step on the meta model, logging each group before it is applied."""
    with warnings.catch_warnings():
        # Layer by layer the widths differ until the last layer is pruned; the config
        # is checked once at the end (check_config), not after every group.
        warnings.filterwarnings("ignore", message="depgraph: after this prune")
        for group in pruner.step(interactive=True):
            log.record(group)
            group.prune()
            if on_group is not None:
                on_group(group)

