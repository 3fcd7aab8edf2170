"""Layers whose weight is computed from other tensors: pruned through the computation.

``torch.nn.utils.parametrizations.weight_norm`` (wav2vec2's positional
convolution) makes ``conv.weight`` a value computed on every access from
``parametrizations.weight.original0`` (g) and ``original1`` (v); the older
``torch.nn.utils.weight_norm`` recomputes a plain ``weight`` attribute from
``weight_g`` and ``weight_v`` in a forward pre-hook. A handler that prunes
``layer.weight`` would prune a temporary copy and leave g and v whole.

:func:`plain_weights` lets every handler work unchanged: inside it the layer
holds its effective weight as a plain parameter; on leaving, g and v are set
from the pruned weight by weight norm's own inverse (``g = ||w||``, ``v = w``),
so the pruned layer computes exactly the kept rows and columns of the weight it
computed before (then checked, to the last ulp that matters).

Other parametrizations (orthogonal, spectral norm, user-defined ones) do not
commute with removing rows: :func:`unsupported_parametrization` names them, and
the graph freezes such a layer's channels with that reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..errors import UnsupportedOpError

__all__ = ["is_reparametrized", "unsupported_parametrization", "plain_weights", "check_plain", "strip_weight_norm"]


# ids of the modules inside :func:`plain_weights` now: their handlers may run.
_INSIDE: set[int] = set()


def check_plain(module: object, describe: str) -> None:
    """Refuse a handler call on a weight-normed layer outside :func:`plain_weights`.

    ``tp.prune_conv_out_channels(layer, idxs)`` on such a layer would prune a computed copy of
    its weight and leave g and v whole (the layer would no longer run); a group prune updates them.

    Raises:
        UnsupportedOpError: ``module`` computes a weight from other tensors and is not inside.
    """
    if id(module) not in _INSIDE and is_reparametrized(module):
        raise UnsupportedOpError(
            f"{describe} computes its weight from others (weight norm); prune it through the graph "
            "(DG.get_pruning_group(...).prune() or a pruner), which sets them from the pruned weight, "
            "or wrap the call in depgraph.functional.parametrized.plain_weights(layer)")


def _weight_norm_types() -> tuple[type, ...]:
    from torch.nn.utils import parametrizations

    wn = getattr(parametrizations, "_WeightNorm", None)
    return (wn,) if wn is not None else ()


def _hook_norms(module: nn.Module) -> list:
    """The old-style ``torch.nn.utils.weight_norm`` hooks of ``module``."""
    from torch.nn.utils.weight_norm import WeightNorm

    return [h for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm)]


def is_reparametrized(module: object) -> bool:
    """True when some tensor of ``module`` is computed from others (a parametrization or a weight-norm hook)."""
    return isinstance(module, nn.Module) and (parametrize.is_parametrized(module) or bool(_hook_norms(module)))


def unsupported_parametrization(module: nn.Module, name: str = "") -> str | None:
    """Why ``module``'s channels cannot be pruned through its parametrizations, or None when they can."""
    if not isinstance(module, nn.Module) or not parametrize.is_parametrized(module):
        return None
    ok = _weight_norm_types()
    for tensor, plist in module.parametrizations.items():
        bad = [type(p).__name__ for p in plist if not isinstance(p, ok)]
        if bad:
            who = f"{name} ({type(module).__name__})" if name else type(module).__name__
            return (f"{who}: its {tensor} is computed by the parametrization {', '.join(bad)} "
                    "(torch.nn.utils.parametrize), which does not commute with removing channels; "
                    f"only weight_norm is pruned through. Remove it with "
                    f"torch.nn.utils.parametrize.remove_parametrizations(module, '{tensor}') to prune this layer")
    return None


@contextlib.contextmanager
def plain_weights(module: nn.Module) -> Iterator[None]:
    """Inside: ``module``'s weight-normed tensors are plain parameters; on exit g and v follow them.

    Raises:
        UnsupportedOpError: a parametrization other than weight norm, or a pruned weight
            that weight norm cannot reproduce (a removed norm of zero).
    """
    if not is_reparametrized(module):
        yield
        return
    why = unsupported_parametrization(module)
    if why is not None:
        raise UnsupportedOpError(why)
    if id(module) in _INSIDE:
        yield
        return
    cls = type(module)
    names = list(module.parametrizations.keys()) if parametrize.is_parametrized(module) else []
    _INSIDE.add(id(module))
    values = {n: getattr(module, n).detach().clone() for n in names}
    if names:
        module.__class__ = cls.__bases__[0]  # the class parametrize derived ``Parametrized<cls>`` from
        for n in names:
            module._parameters[n] = nn.Parameter(values[n], requires_grad=values[n].requires_grad)
    try:
        yield
    except BaseException:
        for n in names:
            module._parameters.pop(n, None)
        module.__class__ = cls
        raise
    finally:
        _INSIDE.discard(id(module))
    pruned = {n: module._parameters.pop(n).data for n in names}
    module.__class__ = cls
    for n, w in pruned.items():
        _set_originals(module.parametrizations[n], w)
    for hook in _hook_norms(module):
        w = getattr(module, hook.name).detach()
        g, v = getattr(module, hook.name + "_g"), getattr(module, hook.name + "_v")
        _set(g, torch.norm_except_dim(w, 2, hook.dim))
        _set(v, w.clone())
        pruned[hook.name] = w
    with torch.no_grad():
        for n, w in pruned.items():
            got = getattr(module, n) if n in names else _hook_weight(module, n)
            if got.shape != w.shape or not torch.allclose(got, w, rtol=1e-5, atol=1e-6 * float(w.abs().max().clamp(min=1))):
                raise UnsupportedOpError(
                    f"{type(module).__name__}: weight norm cannot reproduce its pruned {n} "
                    "(a norm of zero); keep this layer (ignored_layers) or remove the weight norm first")


def _hook_weight(module: nn.Module, name: str) -> torch.Tensor:
    hook = next(h for h in _hook_norms(module) if h.name == name)
    return hook.compute_weight(module)


def _set_originals(plist: nn.Module, value: torch.Tensor) -> None:
    with torch.no_grad():
        for p in reversed(plist):
            value = p.right_inverse(value)
    if isinstance(value, torch.Tensor):
        _set(plist.original, value)
    else:
        for i, t in enumerate(value):
            _set(getattr(plist, f"original{i}"), t)


def _set(t: torch.Tensor, value: torch.Tensor) -> None:
    """Replace ``t.data`` (identity kept); a gradient of the old shape no longer applies."""
    t.data = value.detach().to(t.dtype).contiguous()
    if t.grad is not None and t.grad.shape != t.shape:
        t.grad = None


def strip_weight_norm(model: nn.Module) -> None:
    """Replace every weight norm of ``model`` by the plain weight it computes (for a throwaway copy)."""
    for m in list(model.modules()):
        if parametrize.is_parametrized(m) and unsupported_parametrization(m) is None:
            # Not parametrize.remove_parametrizations: a deep copy shares its class with the
            # original, and removing edits that class (the original would lose its weight too).
            with torch.no_grad():
                values = {n: getattr(m, n).detach().clone() for n in m.parametrizations.keys()}
            m.__class__ = type(m).__bases__[0]
            del m._modules["parametrizations"]
            for n, w in values.items():
                m._parameters[n] = nn.Parameter(w)
        for hook in _hook_norms(m):
            torch.nn.utils.remove_weight_norm(m, hook.name)
