"""Calibration carried through a model's stack of blocks one block at a time, for pruning block by block.

One calibration pass measures every layer's inputs on the *unpruned* model, and holds every
measured layer's statistics until the last prune: for least squares a float64 Gram matrix per
layer, 31 GB on Llama-7B. Block by block, block ``i``'s layers are measured on the inputs that
went through the blocks ``0 .. i - 1`` *as pruned*, the block is pruned, and its statistics are
dropped: one block's Gram matrices at a time, and each refit fits the inputs its layer will
really see (the order SparseGPT-style one-shot compressors work in).

The stack is found, not named: the ``nn.ModuleList`` or ``nn.Sequential`` of blocks of one
type that holds the most parameters (a transformer's layers). Its first block's inputs are
recorded once per batch (positional and keyword arguments: attention masks, rotary
embeddings; a key/value cache is switched off), then each block runs on its own. That is
right only if block ``i``'s output is what the model feeds block ``i + 1``, with the same
arguments; the first batch checks it before anything is measured, so a model whose blocks
are no such chain is refused instead of calibrated wrongly. Memory: the hidden states of the
calibration set, once.
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

_CACHE_ARGS = ("past_key_value", "past_key_values", "layer_past")


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
    return _members(find_blocks(model)[1])


def _members(blocks: Sequence[nn.Module]) -> dict[nn.Module, int]:
    return {m: i for i, block in enumerate(blocks) for m in block.modules()}


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, torch.Tensor):
        raise DepgraphError("a block's input is not a tensor (its first argument or 'hidden_states')")
    return x


def _without_hidden(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A recorded call without its hidden states (:meth:`BlockwiseCalibration._run` puts the stream's in)."""
    if args:
        return (None, *args[1:]), kwargs
    return args, {k: v for k, v in kwargs.items() if k != "hidden_states"}


def _output(out: Any) -> torch.Tensor:
    x = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(x, torch.Tensor):
        raise DepgraphError(f"a block returned {type(x).__name__}, not the hidden states (a tensor, or a tuple "
                            "starting with one)")
    return x


class BlockwiseCalibration:
    """The calibration set's hidden states, walked through a stack of blocks one block at a time.

    For each block: :meth:`covariance` of the layers about to be refit (block :attr:`index`,
    still unpruned, on the inputs the pruned blocks before it give), prune the block, then
    :meth:`advance`, which runs the block as pruned so the next one sees its effect.

    Args:
        model: the model to prune, unpruned at the start.
        data: calibration batches, as :func:`~depgraph.importance.collect_activation_stats` takes them.
        forward_fn: as ``data``.
        max_batches: as ``data``.

    Raises:
        DepgraphError: no stack of blocks, or the blocks are not a chain (block ``i``, run on its own,
            does not give what the model feeds block ``i + 1``).
    """

    def __init__(self, model: nn.Module, data: Any, forward_fn: Callable[[nn.Module, Any], Any] | None = None,
                 max_batches: int | None = None) -> None:
        self.name, self.blocks = find_blocks(model)
        self._members = _members(self.blocks)
        self._names = {m: n for n, m in model.named_modules()}
        self.index = 0
        calls = self._record(model, data, forward_fn, max_batches)
        self._stream = [_hidden(*call) for call in calls]
        self._calls = [_without_hidden(*call) for call in calls]  # the stream holds them, once

    def __len__(self) -> int:
        return len(self.blocks)

    @torch.no_grad()
    def _record(self, model: nn.Module, data: Any, forward_fn: Any,
                max_batches: int | None) -> list[tuple[tuple, dict]]:
        """Each batch's arguments to block 0; the first batch's inputs to every block check the chain."""
        calls: list[tuple[tuple, dict]] = []
        first: list[torch.Tensor] = []  # the first batch's hidden input to every block, in call order
        done = 0  # batches recorded

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if module is self.blocks[0]:
                if len(calls) > done:
                    raise DepgraphError(f"block 0 of {self.name!r} ran twice in one forward pass: the blocks are "
                                        "not a chain to calibrate block by block")
                kwargs = {k: (None if k in _CACHE_ARGS else v) for k, v in kwargs.items()}
                if "use_cache" in kwargs:
                    kwargs["use_cache"] = False
                calls.append((args, kwargs))
            if done:
                raise _StopRecordingError
            first.append(_hidden(args, kwargs).detach().clone())

        config = getattr(model, "config", None)
        use_cache = getattr(config, "use_cache", None)
        handles = [b.register_forward_pre_hook(pre, with_kwargs=True) for b in self.blocks]
        try:
            if use_cache is not None:
                config.use_cache = False  # type: ignore[union-attr]
            with eval_mode(model):
                for batch in calibration_batches(data, max_batches):
                    try:
                        call_model(model, batch, forward_fn)
                    except _StopRecordingError:
                        pass
                    done += 1
        finally:
            for h in handles:
                h.remove()
            if use_cache is not None:
                config.use_cache = use_cache  # type: ignore[union-attr]
        if not calls:
            raise DepgraphError(f"calibration of {type(model).__name__} reached none of its blocks")
        self._check_chain(calls[0], first)
        return calls

    def _check_chain(self, call: tuple[tuple, dict], first: list[torch.Tensor]) -> None:
        if len(first) != len(self.blocks):
            raise DepgraphError(f"the first calibration batch ran {len(first)} of the {len(self.blocks)} blocks "
                                f"of {self.name!r} (some ran twice or not at all): they are not a chain to "
                                "calibrate block by block")
        x = first[0]
        for i, block in enumerate(self.blocks[:-1]):
            with eval_mode(block):
                x = self._run(block, call, x)
            expected = first[i + 1]
            scale = float(expected.abs().max().clamp_min(1e-6))
            if x.shape != expected.shape or float((x - expected).abs().max()) > 1e-3 * scale:
                raise DepgraphError(
                    f"block {i} of {self.name!r}, run on its own, does not give what the model feeds block "
                    f"{i + 1}: the blocks are not a chain (the model changes the hidden states between them, "
                    "or passes each block other arguments), so they cannot be calibrated block by block")

    def block_of(self, module: nn.Module) -> int | None:
        """The index of the block that holds ``module``, or None."""
        return self._members.get(module)

    def holds(self, modules: Iterable[Any]) -> bool:
        """Whether every module among ``modules`` (other objects are skipped: a group's operation nodes)
        lies in block :attr:`index`, and one does."""
        found = {self.block_of(m) for m in modules if isinstance(m, nn.Module)}
        return found == {self.index}

    def layers_in(self, modules: Sequence[nn.Module]) -> dict[int, list[nn.Module]]:
        """``modules`` by the block holding them (those outside the stack under ``-1``)."""
        out: dict[int, list[nn.Module]] = {}
        for m in modules:
            i = self.block_of(m)
            out.setdefault(-1 if i is None else i, []).append(m)
        return out

    @staticmethod
    def _run(block: nn.Module, call: tuple[tuple, dict], x: torch.Tensor) -> torch.Tensor:
        args, kwargs = call
        if args:
            return _output(block(x, *args[1:], **kwargs))
        return _output(block(*args, **dict(kwargs, hidden_states=x)))

    @torch.no_grad()
    def covariance(self, layers: Iterable[nn.Linear], into: InputCovariance | None = None) -> InputCovariance:
        """Input covariances of ``layers`` (``nn.Linear`` of block :attr:`index`) on the current inputs of the block.

        Args:
            into: a table to add them to (one that a criterion and a compensation already hold), or
                None for a new one.

        Raises:
            DepgraphError: a layer is not an ``nn.Linear`` of block :attr:`index`, or ``into``
                already holds one of them.
        """
        layers = list(layers)
        cov = into if into is not None else InputCovariance()
        for m in layers:
            if self.block_of(m) != self.index or not isinstance(m, nn.Linear):
                raise DepgraphError(f"{self._names.get(m, type(m).__name__)} is not an nn.Linear of block "
                                    f"{self.index} of {self.name!r}")
            if m in cov:
                raise DepgraphError(f"{self._names.get(m, type(m).__name__)} is already measured in this table")

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            cov.add(module, args[0] if args else kwargs["input"])

        block = self.blocks[self.index]
        handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in layers]
        try:
            with eval_mode(block):
                for call, x in zip(self._calls, self._stream, strict=True):
                    self._run(block, call, x)
        finally:
            for h in handles:
                h.remove()
        return cov

    @torch.no_grad()
    def advance(self) -> None:
        """Carry the hidden states through block :attr:`index` as it is now (pruned) to the next block."""
        if self.index >= len(self.blocks):
            raise DepgraphError(f"all {len(self.blocks)} blocks of {self.name!r} were already passed")
        block = self.blocks[self.index]
        with eval_mode(block):
            self._stream = [self._run(block, call, x) for call, x in zip(self._calls, self._stream, strict=True)]
        self.index += 1
