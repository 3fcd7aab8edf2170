"""One :class:`LayerSpec` per layer type: everything depgraph knows about it, in one registry.

A layer type takes part in five places: its pruning handler (``tp.prune_*``),
its dimension rule (how the graph couples its channels), its channel layout
(which weights a criterion scores per channel), its MAC rule
(``count_ops_and_params``) and, through the handler, its calibration layout
(which weight dims bias compensation and OBDC read). They all live on one spec,
registered once with :func:`register_layer`, in one private dict. Adding a
layer is one file: a handler, a spec, one decorator.

Call tree of the parts (each may be ``None``; a lookup walks the layer type's
MRO and takes the nearest spec that has the part, so a subclass of
``nn.Linear`` inherits everything it does not override)::

    spec.handler                 BasePruningFunc: prune_out/in_channels, get_out/in_channels,
                                 in/out_channel_dim (where activations carry channels)
    spec.dim_rule(op, ctx)       couples the layer's input/output dims to its endpoints;
                                 None with a handler: derived from the handler's channel dims
    spec.channel_slices(layer, side) -> [ChannelSlice]   weights owned by each channel
    spec.count_macs(layer, inputs, output) -> int        MACs of one call (whole batch)
                                 (calibration reads ``handler.weight_layout(layer)``)
    spec.names                   the ``prune_{name}_{out,in}_channels`` functions it exports

Example:
    >>> @register_layer(MyScale, names=("scale",))
    ... class ScaleSpec(LayerSpec):
    ...     handler = ScalePruner()
    ...     def channel_slices(self, layer, side):
    ...         return [ChannelSlice(layer.scale, 0)]
    ...     def count_macs(self, layer, inputs, output):
    ...         return output.numel()
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from .._lazy import resolve as _resolve_lazy
from ..errors import UnknownModuleError

if TYPE_CHECKING:
    from ..functional.base import BasePruningFunc

__all__ = [
    "LayerSpec",
    "register_layer",
    "get_layer_spec",
    "find_layer_part",
    "registered_layers",
    "set_layer_part",
    "restoring_layers",
    "PARTS",
]

#: The parts a spec may define (attribute names of :class:`LayerSpec`).
PARTS = ("handler", "dim_rule", "channel_slices", "count_macs")


class LayerSpec:
    """What depgraph knows about one layer type; subclass it and register it with :func:`register_layer`.

    Override any of the parts below (a class attribute or a method); leave the
    others ``None`` to inherit them from a registered base type, or to go
    without (no MAC rule: the layer's children are counted instead).

    Attributes:
        handler: the :class:`~depgraph.functional.BasePruningFunc` instance that prunes the layer.
        names: public names: each ``name`` exports ``prune_{name}_out_channels`` and
            ``prune_{name}_in_channels`` from ``depgraph.functional`` (and ``depgraph``).
        dim_rule: ``dim_rule(op, ctx)``, see :mod:`depgraph.dims.registry`.
        channel_slices: ``channel_slices(layer, side) -> list[ChannelSlice]``, see
            :mod:`depgraph.importance.channels`.
        count_macs: ``count_macs(layer, inputs, output) -> int``, see :mod:`depgraph.utils.op_rules`.
    """

    handler: BasePruningFunc | None = None
    names: tuple[str, ...] = ()
    dim_rule: Callable[..., None] | None = None
    channel_slices: Callable[..., list] | None = None
    count_macs: Callable[..., int] | None = None

    def __repr__(self) -> str:
        parts = ", ".join(p for p in PARTS if getattr(self, p, None) is not None)
        return f"{type(self).__name__}({parts})"


_SPECS: dict[type, LayerSpec] = {}
S = TypeVar("S", bound=type)


def register_layer(*layer_types: type, names: tuple[str, ...] | None = None) -> Callable[[S], S]:
    """Class decorator: register a :class:`LayerSpec` subclass for ``layer_types``.

    The class is instantiated once; the instance is stored as ``cls.INSTANCE``
    and the class is returned unchanged. A handler given as a class is
    instantiated too.

    Args:
        *layer_types: module types the spec describes (subclasses inherit it).
        names: overrides ``cls.names`` (the ``prune_{name}_*_channels`` exports).

    Returns:
        The decorator.

    Raises:
        TypeError: a key is not a type.

    Warns:
        UserWarning: (``stacklevel=2``) a type already had a spec; the new one replaces it.
    """
    bad = [t for t in layer_types if not isinstance(t, type)]
    if bad:
        raise TypeError(f"register_layer takes module types, got {bad!r}")

    def deco(cls: S) -> S:
        spec = cls()
        if isinstance(spec.handler, type):
            spec.handler = spec.handler()
        if names is not None:
            spec.names = tuple(names)
        for t in layer_types:
            if t in _SPECS:
                warnings.warn(
                    f"replacing the layer spec for {t.__name__}: {_SPECS[t]!r} -> {spec!r}", stacklevel=2
                )
            _SPECS[t] = spec
        cls.INSTANCE = spec  # type: ignore[attr-defined]
        return cls

    return deco


def set_layer_part(layer_type: type, part: str, value: Any, what: str, stacklevel: int = 3) -> None:
    """Set one part of ``layer_type``'s spec (creating an empty spec if it has none).

    The per-part decorators (``register_handler``, ``register_dim_rule`` on a
    module type, ``register_channel_slices``, ``register_op_rule``) write here,
    so every part of a layer type still lives in the one registry.

    Warns:
        UserWarning: the part was already set to another value (``what`` names it).
    """
    if part not in PARTS:
        raise ValueError(f"unknown layer part {part!r}; parts are {', '.join(PARTS)}")
    spec = _SPECS.get(layer_type)
    if spec is None:
        spec = _SPECS[layer_type] = LayerSpec()
    old = getattr(spec, part, None)
    if old is not None and value is not None and old is not value:
        warnings.warn(f"replacing the {what} for {layer_type.__name__}", stacklevel=stacklevel)
    setattr(spec, part, value)


def find_layer_part(module_or_type: object, part: str) -> Any:
    """The nearest registered ``part`` for a module (or module type) along its MRO, else None."""
    _resolve_lazy()  # layers of optional packages (GPT-2's Conv1D) register on first use
    cls = module_or_type if isinstance(module_or_type, type) else type(module_or_type)
    for base in cls.__mro__:
        spec = _SPECS.get(base)
        if spec is not None:
            value = getattr(spec, part, None)
            if value is not None:
                return value
    return None


def get_layer_spec(layer_type: type) -> LayerSpec:
    """The spec registered for ``layer_type`` or its nearest registered base.

    Raises:
        UnknownModuleError: no spec along the MRO; the message lists the known types.
    """
    _resolve_lazy()
    for base in layer_type.__mro__:
        if base in _SPECS:
            return _SPECS[base]
    known = ", ".join(sorted({t.__name__ for t in _SPECS}))
    raise UnknownModuleError(
        f"no layer spec is registered for {layer_type.__name__}; known types: {known}. "
        "Register one with @depgraph.layers.register_layer"
    )


def registered_layers() -> dict[type, LayerSpec]:
    """A copy of the type -> spec registry."""
    _resolve_lazy()
    return dict(_SPECS)


@contextmanager
def restoring_layers() -> Iterator[None]:
    """Undo, on exit, every layer registration made inside the block (for tests and experiments).

    Example:
        >>> with restoring_layers():
        ...     register_layer(MyScale)(ScaleSpec)
        ...     ...  # MyScale is known here
        >>> # and forgotten here
    """
    _resolve_lazy()  # optional layers registered inside the block would otherwise be lost
    saved = {t: (spec, dict(spec.__dict__)) for t, spec in _SPECS.items()}
    try:
        yield
    finally:
        _SPECS.clear()
        for t, (spec, state) in saved.items():
            spec.__dict__.clear()
            spec.__dict__.update(state)
            _SPECS[t] = spec
