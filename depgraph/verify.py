"""Prove a prune exact: the pruned model equals the original with the removed channels zeroed.

How the zeroed original is made, without knowing any layer's weight layout:
each pruned layer of a copy of the original is pruned *again* on a marker copy
whose parameters hold their own flat positions (0, 1, 2, ...). The values that
survive are exactly the parameter entries the real prune kept; every other
entry is set to zero in the copy. This works for any handler - grouped convs,
LSTMs, attention, custom layers - because it reuses the handler itself.

Zeroing removed weights is equivalent to removing the channels as long as
nothing normalises *over* the pruned dimension (LayerNorm, GroupNorm, softmax,
mean, a default attention scale). Where a prune went through such an op, the
records say so and :func:`verify` reports that exactness does not apply.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .dependency.records import has_records, inexact_reasons, kept_indices, kept_params, recorded_handler
from .errors import DepgraphError
from .functional.base import find_handler, keep_index
from .functional.parametrized import strip_weight_norm
from .trace.kept import pop_cached, restore_cached
from .trace.outputs import primary_outputs
from .trace.recorder import call_model, flatten_tensors

__all__ = ["verify", "VerifyResult", "zero_removed_channels"]


@dataclass
class VerifyResult:
    """What :func:`verify` found.

    Attributes:
        exact: outputs match within ``tol`` (None when exactness does not apply).
        applies: False when some pruned dim is normalised over, so only shapes are compared.
        max_diff: largest absolute output difference.
        shapes_match: every output kept its shape.
        reasons: why exactness does not apply, if it does not.
        unrecorded: modules whose shapes changed without depgraph's kept-channel records
            (a model pruned by another tool, or records lost): which channels they kept
            cannot be known, so exactness cannot be judged (``exact`` is None).
    """

    exact: bool | None
    applies: bool
    max_diff: float
    tol: float
    shapes_match: bool
    reasons: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)

    @property
    def kept_known(self) -> bool:
        """Whether every changed module says which channels it kept."""
        return not self.unrecorded

    @property
    def ok(self) -> bool:
        """Shapes match, outputs are finite, and they are exact wherever exactness applies."""
        return self.shapes_match and self.exact is not False and self.max_diff == self.max_diff

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if not self.shapes_match:
            return "verify: output shapes differ"
        if self.unrecorded:
            shown = ", ".join(self.unrecorded[:3]) + (f" and {len(self.unrecorded) - 3} more"
                                                       if len(self.unrecorded) > 3 else "")
            return (f"verify: cannot know which channels were kept ({shown} changed shape without depgraph "
                    "records: pruned by another tool?); exactness not judged, shapes match")
        if not self.applies:
            return (f"verify: exactness does not apply ({'; '.join(self.reasons)}); "
                    f"shapes match, max diff {self.max_diff:.3g}")
        state = "exact" if self.exact else "NOT exact"
        return f"verify: {state}, max diff {self.max_diff:.3g} (tol {self.tol:.1g})"


def _relative(kept: dict, base: dict) -> dict:
    """Records are in the first unpruned model's index space; ``original`` may itself be a
    pruned snapshot (iterative pruning), so express ``kept`` as positions in ``base``."""
    out = {}
    for key, idx in kept.items():
        ref = base.get(key)
        if ref is None:
            out[key] = idx
            continue
        pos = torch.searchsorted(ref, idx)
        if bool((pos >= ref.numel()).any()) or not torch.equal(ref[pos.clamp(max=ref.numel() - 1)], idx):
            raise DepgraphError("the pruned model kept channels the given original no longer has; "
                                "pass the model as it was before these prunes")
        out[key] = pos
    return out


def _zero_module(orig: nn.Module, pruned: nn.Module) -> None:
    kept = _relative(kept_indices(pruned), kept_indices(orig))
    handler = (recorded_handler(pruned) or find_handler(orig)) if kept else None
    if kept and handler is None:
        raise DepgraphError(f"no pruning handler for {type(orig).__name__}; cannot verify it")
    if kept and hasattr(handler, "zero_removed"):  # a layer whose records replaying cannot express (MHA heads)
        handler.zero_removed(orig, kept)
    elif kept:
        marker = copy.deepcopy(orig)
        names = [n for n, _ in marker.named_parameters()]
        with torch.no_grad():
            for p in marker.parameters():
                p.data = torch.arange(p.numel(), dtype=torch.float64).view(p.shape)
        for side, prune in (("out", handler.prune_out_channels), ("in", handler.prune_in_channels)):
            if side in kept:
                n = (handler.get_out_channels if side == "out" else handler.get_in_channels)(marker)
                removed = keep_index(n, kept[side])  # the complement of kept
                if removed.numel():
                    prune(marker, removed.tolist())
        survivors = dict(marker.named_parameters())
        with torch.no_grad():
            for name, p in orig.named_parameters():
                if name not in names:
                    continue
                mask = torch.ones(p.numel(), dtype=torch.bool)
                mask[survivors[name].data.flatten().long()] = False
                p.data = p.data.flatten().masked_fill(mask.to(p.device), 0).view(p.shape)
    orig_params = kept_params(orig)
    for attr, dims in kept_params(pruned).items():
        dims = _relative(dims, orig_params.get(attr, {}))
        t = getattr(orig, attr)
        with torch.no_grad():
            for dim, keep in dims.items():
                mask = torch.ones(t.shape[dim], dtype=torch.bool)
                mask[keep] = False
                shape = [1] * t.ndim
                shape[dim] = -1
                t.data = t.data.masked_fill(mask.view(shape).to(t.device), 0)


def zero_removed_channels(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """A copy of ``original`` whose parameters are zero wherever ``pruned`` lost them."""
    zeroed = copy.deepcopy(original)
    strip_weight_norm(zeroed)  # zero the weight a weight norm computes, not its g and v
    pruned_modules = dict(pruned.named_modules())
    for name, m in zeroed.named_modules():
        pm = pruned_modules.get(name)
        if pm is not None and has_records(pm):
            _zero_module(m, pm)
    return zeroed


def _inexact_reasons(pruned: nn.Module) -> list[str]:
    reasons: set[str] = set()
    for m in pruned.modules():
        reasons |= inexact_reasons(m)
        # only channel prunes mix (removing whole heads, recorded as "inner" alone, is exact)
        if getattr(find_handler(m), "mixes_channels", False) and {"out", "in"} & set(kept_indices(m)):
            reasons.add(f"{type(m).__name__} normalises over its pruned channels")
    return sorted(reasons)


def verify(
    original: nn.Module,
    pruned: nn.Module,
    example_inputs: Any,
    forward_fn: Callable | None = None,
    output_transform: Callable | None = None,
    tol: float = 1e-6,
) -> VerifyResult:
    """Check that ``pruned`` computes what ``original`` computes with the removed channels zeroed.

    Both models are copied, cast to float64 and put in eval mode; neither is changed.

    Args:
        original: the model before pruning.
        pruned: the same model after pruning with depgraph (it carries records of what was removed).
            A model pruned by another tool has no such records: the result then says that
            which channels were kept cannot be known (``result.unrecorded``, ``exact`` None)
            instead of calling the prune inexact.
        example_inputs: inputs as for ``build_dependency``.
        tol: allowed max difference, relative to the largest output magnitude.

    Returns:
        A :class:`VerifyResult`; ``bool(result)`` is True when the prune is proven correct,
        or, where exactness does not apply, when shapes match.

    Example:
        >>> result = tp.verify(original, pruned, torch.randn(1, 3, 224, 224))
        >>> assert result.exact, result
    """
    # Tensors cached by an earlier call (LeViT's attention biases) are recomputed, not copied:
    # a cache filled with gradients enabled holds non-leaf tensors, which deepcopy refuses.
    cached = pop_cached(original) + pop_cached(pruned)
    try:
        zeroed = zero_removed_channels(original, pruned).double().eval()
        test = copy.deepcopy(pruned).double().eval()
    finally:
        restore_cached(cached)
    inputs = _to_double(example_inputs)
    with torch.no_grad():
        ref = call_model(zeroed, inputs, forward_fn)
        out = call_model(test, inputs, forward_fn)
    if output_transform is not None:
        ref, out = output_transform(ref), output_transform(out)
    else:  # as build_dependency: a transformers model's caches and per-layer outputs are not results
        ref, out = primary_outputs(original, ref), primary_outputs(pruned, out)
    refs, outs = flatten_tensors(ref), flatten_tensors(out)
    shapes = len(refs) == len(outs) and all(a.shape == b.shape for a, b in zip(refs, outs, strict=False))
    diff, scale = 0.0, 0.0
    if shapes:
        for a, b in zip(refs, outs, strict=True):
            if a.is_floating_point() and a.numel():
                diff = max(diff, float((a - b).abs().max()))
                scale = max(scale, float(a.abs().max()))
            elif a.numel() and not torch.equal(a, b):
                diff = float("inf")
    unrecorded = _unrecorded(original, pruned)
    reasons = _inexact_reasons(pruned)
    if unrecorded:
        reasons.append(f"{len(unrecorded)} module(s) changed shape without kept-channel records "
                       f"({', '.join(unrecorded[:3])}): which channels were kept cannot be known")
    applies = not reasons
    # Relative to the output's magnitude, so a model whose outputs are tiny is not
    # "exact" by default; an all-zero output must match exactly.
    bound = tol * scale
    exact = (diff <= bound) if (applies and shapes) else None
    return VerifyResult(exact, applies, diff, bound, shapes, reasons, unrecorded)


def _unrecorded(original: nn.Module, pruned: nn.Module) -> list[str]:
    """Names of modules whose own parameters changed shape while no depgraph record says how."""
    originals = dict(original.named_modules())
    # a layer's own record covers its sub-modules (MultiheadAttention's out_proj)
    recorded = {name for name, pm in pruned.named_modules() if kept_indices(pm)}
    out = []
    for name, pm in pruned.named_modules():
        om = originals.get(name)
        parts = name.split(".") if name else []
        if om is None or has_records(pm) or any(".".join(parts[:i]) in recorded for i in range(len(parts))):
            continue
        mine = dict(om.named_parameters(recurse=False))
        if any(n in mine and tuple(mine[n].shape) != tuple(p.shape) for n, p in pm.named_parameters(recurse=False)):
            out.append(name or type(pm).__name__)
    return out


def _to_double(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _to_double(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_double(v) for v in x)
    return x
