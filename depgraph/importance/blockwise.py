"""Calibration carried through a model's stack of blocks one block at a time, for pruning block by block.

One calibration pass measures every layer's inputs on the *unpruned* model. Once the first
blocks are pruned, the later blocks see other inputs than the ones their refit was fitted
on, and the errors add up along the stack. Pruning block by block measures block ``i``'s
layers on the inputs that already went through the pruned blocks ``0 .. i - 1``, and pairs
them, sample by sample, with the inputs the same layers have in the reference (unpruned)
model: a least-squares refit (:attr:`~depgraph.importance.LayerCovariance.cross`) then aims
at the reference layer's outputs and corrects part of the error made before it. This is
the order SparseGPT-style one-shot compressors work in.

The stack is found, not named: the ``nn.ModuleList`` or ``nn.Sequential`` of blocks of one
type that holds the most parameters (a transformer's layers). Its first block's inputs are
recorded once per batch (positional and keyword arguments: attention masks, rotary
embeddings), then each block runs on its own, on both models. Running block ``i`` on the
recorded arguments must give what the whole model feeds block ``i + 1``; the first batch
checks it, so a model whose blocks are not such a chain is refused instead of calibrated
wrongly. Memory: two hidden-state streams of the calibration set (reference and pruned).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..errors import DepgraphError
from ..trace.recorder import call_model, eval_mode
from .calibration import calibration_batches
from .reconstruction import InputCovariance

__all__ = ["find_blocks", "block_members", "BlockwiseCalibration"]


class _StopRecordingError(Exception):
    """Ends a recording forward pass once the first block's inputs are captured."""


def find_blocks(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """``(qualified name, blocks)`` of ``model``'s stack: the container of same-type blocks with the most parameters.

    Raises:
        DepgraphError: ``model`` has no container of two or more blocks of one type.
    """
    best: tuple[int, str, list[nn.Module]] | None = None
    for name, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(m.children())
        if len(children) < 2 or len({type(c) for c in children}) != 1:
            continue
        size = sum(p.numel() for p in m.parameters())
        if best is None or size > best[0]:
            best = (size, name, children)
    if best is None:
        raise DepgraphError(f"{type(model).__name__} has no stack of repeated blocks (an nn.ModuleList or "
                            "nn.Sequential of two or more modules of one type) to calibrate block by block")
    return best[1], best[2]


def block_members(model: nn.Module) -> dict[nn.Module, int]:
    """Every module inside ``model``'s stack of blocks (:func:`find_blocks`), with the index of its block.

    Raises:
        DepgraphError: ``model`` has no stack of blocks.
    """
    _, blocks = find_blocks(model)
    return {m: i for i, block in enumerate(blocks) for m in block.modules()}


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, torch.Tensor):
        raise DepgraphError("the first block's input is not a tensor (its first argument or 'hidden_states')")
    return x


def _with_hidden(args: tuple, kwargs: dict, x: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (x, *args[1:]), kwargs
    return args, dict(kwargs, hidden_states=x)


def _output(out: Any) -> torch.Tensor:
    x = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(x, torch.Tensor):
        raise DepgraphError(f"a block returned {type(x).__name__}, not the hidden states (a tensor, or a tuple "
                            "starting with one)")
    return x


_CACHE_ARGS = ("past_key_value", "past_key_values", "layer_past")


class BlockwiseCalibration:
    """Two hidden-state streams walked through a stack of blocks: the reference model's and the pruned model's.

    Use: for each block, :meth:`covariance` of the layers about to be refit (block ``index``
    of the pruned model, still unpruned), prune that block, then :meth:`advance` (which runs
    the block as pruned, so the next block sees its effect).

    Args:
        reference: the model before pruning (never changed; its outputs are the target).
        model: the model to prune, with the same module names; at the start equal to ``reference``.
        data: calibration batches, as :func:`~depgraph.importance.collect_activation_stats` takes them.
        forward_fn: as ``data``.
        max_batches: as ``data``.

    Raises:
        DepgraphError: no stack of blocks, the stacks of the two models differ, or the blocks do
            not form a chain (block ``i``'s output is not what the model feeds block ``i + 1``).
    """

    def __init__(self, reference: nn.Module, model: nn.Module, data: Any,
                 forward_fn: Callable[[nn.Module, Any], Any] | None = None,
                 max_batches: int | None = None) -> None:
        self.name, self._ref_blocks = find_blocks(reference)
        names = dict(model.named_modules())
        stack = names.get(self.name)
        if not isinstance(stack, (nn.ModuleList, nn.Sequential)) or len(stack) != len(self._ref_blocks):
            raise DepgraphError(f"the model to prune has no stack of {len(self._ref_blocks)} blocks at "
                                f"{self.name!r} like the reference model")
        self.blocks: list[nn.Module] = list(stack.children())
        self._names = {m: n for n, m in model.named_modules()}
        self._members = {m: i for i, block in enumerate(self.blocks) for m in block.modules()}
        self._ref_modules = dict(reference.named_modules())
        self.index = 0
        self._calls, self._expected = self._record(reference, data, forward_fn, max_batches)
        self._ref_stream = [_hidden(a, k) for a, k in self._calls]
        self._stream = list(self._ref_stream)  # the same tensors until block 0 is pruned
        self._ref_next: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.blocks)

    @torch.no_grad()
    def _record(self, reference: nn.Module, data: Any, forward_fn: Any, max_batches: int | None,
                ) -> tuple[list[tuple[tuple, dict]], list[torch.Tensor]]:
        """Each batch's arguments to block 0, and the first batch's hidden input to every block."""
        calls: list[tuple[tuple, dict]] = []
        expected: list[torch.Tensor] = []
        first = True

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if module is self._ref_blocks[0]:
                kwargs = {k: (None if k in _CACHE_ARGS else v) for k, v in kwargs.items()}
                if "use_cache" in kwargs:
                    kwargs["use_cache"] = False
                calls.append((args, kwargs))
            if first:
                expected.append(_hidden(args, kwargs).detach().clone())
            else:
                raise _StopRecordingError

        config = getattr(reference, "config", None)
        use_cache = getattr(config, "use_cache", None)
        modes = [(m, m.training) for m in reference.modules()]
        handles = [b.register_forward_pre_hook(pre, with_kwargs=True) for b in self._ref_blocks]
        try:
            if use_cache is not None:
                config.use_cache = False  # type: ignore[union-attr]
            reference.eval()
            for batch in calibration_batches(data, max_batches):
                try:
                    call_model(reference, batch, forward_fn)
                except _StopRecordingError:
                    pass
                first = False
        finally:
            for h in handles:
                h.remove()
            for m, training in modes:
                m.training = training
            if use_cache is not None:
                config.use_cache = use_cache  # type: ignore[union-attr]
        if not calls:
            raise DepgraphError(f"calibration of {type(reference).__name__} reached none of its blocks")
        if len(expected) != len(self._ref_blocks):
            raise DepgraphError(f"the first calibration batch ran {len(expected)} of the {len(self._ref_blocks)} "
                                f"blocks of {self.name!r} (some ran more than once or not at all): they are not a "
                                "chain to calibrate block by block")
        return calls, expected

    def block_of(self, module: nn.Module) -> int | None:
        """The index of the block of the pruned model that holds ``module``, or None."""
        return self._members.get(module)

    def _run(self, block: nn.Module, call: tuple[tuple, dict], x: torch.Tensor) -> torch.Tensor:
        args, kwargs = _with_hidden(*call, x)
        return _output(block(*args, **kwargs))

    @torch.no_grad()
    def covariance(self, layers: Iterable[nn.Linear]) -> InputCovariance:
        """Input covariances of ``layers`` (``nn.Linear`` of block :attr:`index` of the pruned model), each
        with its cross moment against the same layer's inputs in the reference model.

        Raises:
            DepgraphError: a layer is not in block :attr:`index`, or has no twin in the reference model.
        """
        layers = list(layers)
        twins: dict[nn.Module, nn.Module] = {}
        for m in layers:
            if self.block_of(m) != self.index or not isinstance(m, nn.Linear):
                raise DepgraphError(f"{self._names.get(m, type(m).__name__)} is not an nn.Linear of block "
                                    f"{self.index} of {self.name!r}")
            twins[m] = self._ref_modules[self._names[m]]
        cov = InputCovariance()
        seen: dict[nn.Module, torch.Tensor] = {}

        def ref_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen[module] = args[0] if args else kwargs["input"]

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            cov.add(module, args[0] if args else kwargs["input"], reference=seen.pop(twins[module]))

        ref_block, block = self._ref_blocks[self.index], self.blocks[self.index]
        handles = [t.register_forward_pre_hook(ref_hook, with_kwargs=True) for t in twins.values()]
        handles += [m.register_forward_pre_hook(hook, with_kwargs=True) for m in layers]
        ref_next = []
        try:
            with eval_mode(ref_block), eval_mode(block):
                for call, ref_x, x in zip(self._calls, self._ref_stream, self._stream, strict=True):
                    ref_next.append(self._run(ref_block, call, ref_x))
                    self._run(block, call, x)
        finally:
            for h in handles:
                h.remove()
        self._ref_next = ref_next
        return cov

    @torch.no_grad()
    def advance(self) -> None:
        """Carry both streams through block :attr:`index` (the pruned model's as it is now) to the next block."""
        if self.index >= len(self.blocks):
            raise DepgraphError(f"all {len(self.blocks)} blocks of {self.name!r} were already passed")
        ref_block, block = self._ref_blocks[self.index], self.blocks[self.index]
        with eval_mode(ref_block), eval_mode(block):
            ref_next = self._ref_next or [self._run(ref_block, c, x) for c, x in zip(self._calls, self._ref_stream, strict=True)]
            self._stream = [self._run(block, c, x) for c, x in zip(self._calls, self._stream, strict=True)]
        self._ref_next = None
        self._ref_stream = ref_next
        self.index += 1
        if self.index < len(self.blocks):
            expected = self._expected[self.index]
            got = ref_next[0]
            scale = float(expected.abs().max().clamp_min(1e-6))
            if got.shape != expected.shape or float((got - expected).abs().max()) > 1e-3 * scale:
                raise DepgraphError(
                    f"block {self.index - 1} of {self.name!r}, run on its own, does not give what the model feeds "
                    f"block {self.index}: the blocks are not a chain (the model changes the hidden states between "
                    "them, or passes each block other arguments), so they cannot be calibrated block by block")
            self._expected[self.index] = got.new_empty(0)  # checked: free it

    def layers_in(self, modules: Sequence[nn.Module]) -> dict[int, list[nn.Module]]:
        """``modules`` by the block holding them (those outside the stack under ``-1``)."""
        out: dict[int, list[nn.Module]] = {}
        for m in modules:
            i = self.block_of(m)
            out.setdefault(-1 if i is None else i, []).append(m)
        return out

