"""The contract every per-module pruning handler follows, and its registry.

A handler removes channels from one layer in place. It never decides *which*
channels: the dependency graph does that and calls the handler once per
coupled layer, after checking every member of the group.

Call tree (what a subclass may override is marked *)::

    handler.prune_out_channels(layer, idxs)      *  remove output channels
        handler.check_idxs(layer, idxs, "out")      before any change:
            handler.check_layer(layer)                 right module type?
            normalize_idxs(idxs, n, layer, "out")      in range, not all; dedupe, sort
    handler.prune_in_channels(layer, idxs)       *  remove input channels
    handler.get_out_channels(layer)              *  current output width (None: none)
    handler.get_in_channels(layer)               *  current input width  (None: none)
    handler.in_channel_dim(layer, ndim)          *  which input dim carries in-channels
    handler.out_channel_dim(layer, ndim)         *  which output dim carries out-channels
    handler.weight_layout(layer)                 *  (out_dim, in_dim) of a linear map's weight, or None
    handler.acts_as                              *  built-in type the layer computes like (or None)
    handler.stand_in(layer)                         the layer's own handler when it acts as ours

Handlers are stateless: one instance serves every layer of its type. The
bound methods ``prune_out_channels`` / ``prune_in_channels`` are created once
per instance, so the public ``tp.prune_conv_out_channels`` is the very object a
group's ``dep.handler`` holds (``is`` comparisons work).

Rules every handler keeps:

* Parameters keep their identity (``layer.weight`` stays the same
  ``nn.Parameter``); only ``.data`` (and ``.grad`` when present) is replaced,
  so references held by the user stay valid.
* Size attributes (``out_channels``, ``in_features``, ``num_features`` ...)
  are updated so the module's ``repr`` and its ``forward`` stay consistent.
* Nothing is changed when ``idxs`` is empty.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, MutableMapping
from typing import TypeVar

import torch
import torch.nn as nn
from torch.utils.weak import WeakIdKeyDictionary

from .._types import Indices
from ..errors import (
    DepgraphError,
    HandlerMismatchError,
    InvalidIndicesError,
    OverPruningError,
    UnknownModuleError,
)
from ..layers.spec import find_layer_part, registered_layers, set_layer_part
from .parametrized import check_plain

__all__ = [
    "BasePruningFunc",
    "normalize_idxs",
    "keep_index",
    "prune_tensor",
    "register_handler",
    "get_handler",
    "find_handler",
    "registered_handlers",
    "matches_layer_types",
    "target_types",
    "PrunerBox",
]


def normalize_idxs(idxs: Indices, n: int, layer: object = None, side: str = "") -> torch.Tensor:
    """Validate pruning indices against a width ``n``; return them sorted, unique, int64.

    Raises:
        InvalidIndicesError: an index is negative, not an integer, or ``>= n``.
        OverPruningError: every one of the ``n`` channels would be removed.
    """
    where = f" of {describe_layer(layer)}" if layer is not None else ""
    t = idxs if isinstance(idxs, torch.Tensor) else torch.as_tensor(list(idxs), dtype=torch.long)
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise InvalidIndicesError(f"pruning indices{where} must be integers, got dtype {t.dtype}")
    t = torch.unique(t.flatten().to(torch.long).cpu())
    if int(t[0]) < 0:
        raise InvalidIndicesError(
            f"negative pruning index {int(t[0])} for the {side} channels{where}; indices count from 0"
        )
    if int(t[-1]) >= n:
        raise InvalidIndicesError(
            f"pruning index {int(t[-1])} is out of range for the {n} {side} channels{where}"
        )
    if t.numel() >= n:
        raise OverPruningError(
            f"pruning all {n} {side} channels{where} would leave it empty; keep at least one"
        )
    return t


def keep_index(n: int, idxs: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Indices of ``range(n)`` that survive removing ``idxs`` (sorted, int64)."""
    mask = torch.ones(n, dtype=torch.bool)
    mask[idxs.cpu()] = False
    keep = mask.nonzero().flatten()
    return keep if device is None else keep.to(device)


# tensor -> (dim, keep) of its last prune; tells a tied tensor's second handler call apart.
_LAST_KEEP: WeakIdKeyDictionary = WeakIdKeyDictionary()


def prune_tensor(t: torch.Tensor | None, dim: int, keep: torch.Tensor) -> None:
    """Keep only ``keep`` along ``dim`` of a Parameter/tensor in place (identity kept).

    The Parameter object is preserved and its ``.data`` replaced; an existing
    ``.grad`` is pruned the same way so optimisers and Taylor scores see
    matching shapes. A tensor that already has ``len(keep)`` entries along
    ``dim`` is left alone: it is shared with a layer pruned just before (tied
    weights), and pruning it again would remove other positions.
    """
    if t is None:
        return
    given = keep  # as the caller computed it: a meta-device tensor has no index values to compare
    keep = keep.to(t.device)
    if t.shape[dim] == keep.numel():
        # A tensor shared by two layers (tied embedding and lm_head) reaches here once
        # per layer in the same group: the first call pruned it, the second must not.
        last = _LAST_KEEP.get(t)
        if last is not None and (last[0] != dim or not torch.equal(last[1], given.to(last[1].device))):
            raise DepgraphError(
                f"a tensor of shape {tuple(t.shape)} shared by several layers would lose different "
                f"positions of dim {dim} in each; tied weights must be pruned together"
            )
        return
    t.data = torch.index_select(t.data, dim, keep).contiguous()
    if getattr(t, "grad", None) is not None:
        t.grad = torch.index_select(t.grad, dim, keep).contiguous()
    _LAST_KEEP[t] = (dim, given)


def describe_layer(layer: object) -> str:
    """The layer as handler errors name it: ``"head.fc (Linear)"`` when the module carries a
    ``_depgraph_name``, else its class name.

    Handlers are stateless and see only the module, not its name in the model; the
    graph adds the qualified name once, at the boundary (``Group.prune`` notes
    "raised by ... on blocks.0.fc1"). Nothing in depgraph sets ``_depgraph_name``:
    it lets code that calls handlers directly name its layers.
    """
    # Read from the instance dict: a module's missing-attribute lookup raises and catches inside
    # nn.Module.__getattr__, and every handler call names its layer up front.
    name = getattr(layer, "__dict__", {}).get("_depgraph_name") or getattr(type(layer), "_depgraph_name", None)
    return f"{name} ({type(layer).__name__})" if name else type(layer).__name__


class BasePruningFunc:
    """Base class of per-module pruning handlers; subclass it for a custom layer.

    Override ``prune_out_channels``, ``prune_in_channels``, ``get_out_channels``
    and ``get_in_channels``. Set ``TARGET_MODULES`` to the module type (or tuple
    of types) handled, as in the original API (``None``: any); a module owned by
    another handler is refused, while a module of a type no handler is
    registered for is duck-typed, so ``LinearPruner()`` can serve a custom layer
    laid out like ``nn.Linear``. A module whose registered handler is of this
    handler's class is accepted too (``LayernormPruner`` also serves
    ``nn.RMSNorm``, ``LSTMPruner`` serves ``nn.GRU`` and ``nn.RNN``).
    Set ``mixes_channels = True`` when the layer computes statistics across the
    channel dimension (LayerNorm, GroupNorm), or otherwise lets a removed channel
    influence the kept ones (the recurrence of an LSTM, the inner head dims of
    attention): pruning through it is then valid but not exactly equal to
    zeroing those channels, and ``depgraph.verify`` says so.
    Set ``acts_as`` to the built-in layer type the layer computes like when its
    weights are laid out differently (GPT-2's ``Conv1D`` is an ``nn.Linear``
    with a transposed weight): ``root_module_types`` and importance
    ``target_types`` that name that type then include the layer (see
    :func:`matches_layer_types`), and that type's own pruning functions hand
    the layer on to this handler.

    Example:
        >>> class ScalePruner(BasePruningFunc):
        ...     TARGET_MODULES = (MyScale,)
        ...     def prune_out_channels(self, layer, idxs):
        ...         idxs = self.check_idxs(layer, idxs, "out")
        ...         prune_tensor(layer.scale, 0, keep_index(layer.scale.shape[0], idxs))
        ...         return layer
        ...     prune_in_channels = prune_out_channels
        ...     def get_out_channels(self, layer):
        ...         return layer.scale.shape[0]
        ...     get_in_channels = get_out_channels
    """

    #: The module type, or tuple of types, this handler prunes; None: any (the original's default).
    TARGET_MODULES: type | tuple[type, ...] | None = None
    mixes_channels: bool = False
    acts_as: type | None = None
    #: Public names: ``depgraph.functional`` exports ``prune_{name}_out_channels`` and
    #: ``prune_{name}_in_channels`` (this handler's bound methods) for each.
    names: tuple[str, ...] = ()

    def __init__(self, pruning_dim: int = 1) -> None:
        # ``pruning_dim`` is accepted for compatibility with custom pruners written
        # for the original API; depgraph derives dims from the trace instead.
        self.pruning_dim = pruning_dim
        # Bind once so ``handler.prune_out_channels is handler.prune_out_channels``.
        self.prune_out_channels = self.prune_out_channels  # type: ignore[method-assign]
        self.prune_in_channels = self.prune_in_channels  # type: ignore[method-assign]

    # -- to override -------------------------------------------------------
    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove output channels ``idxs`` of ``layer`` in place and return it.

        Args:
            layer: the module to prune.
            idxs: channel indices to remove, in any order; duplicates are ignored.

        Returns:
            ``layer`` itself.

        Raises:
            InvalidIndicesError: an index is out of range (see :meth:`check_idxs`).
            OverPruningError: every output channel would be removed.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement prune_out_channels")

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove input channels ``idxs`` of ``layer`` in place and return it (as :meth:`prune_out_channels`).

        A handler whose layer has one set of channels (a norm, a per-channel scale)
        writes ``prune_in_channels = prune_out_channels``; the graph then passes
        channels through the layer.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement prune_in_channels")

    def get_out_channels(self, layer: nn.Module) -> int | None:
        """The current number of output channels of ``layer`` (None: it has none to prune)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_out_channels")

    def get_in_channels(self, layer: nn.Module) -> int | None:
        """The current number of input channels of ``layer`` (None: it has none to prune)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_in_channels")

    def in_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        """The dim of the layer's (first) input that holds its in-channels."""
        return 1 if ndim >= 2 else 0

    def out_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        """The dim of the layer's (first) output that holds its out-channels."""
        return 1 if ndim >= 2 else 0

    def weight_layout(self, layer: nn.Module) -> tuple[int, int] | None:
        """``(out_dim, in_dim)`` of ``layer.weight`` when the layer maps input channels to output channels.

        Calibration (bias compensation, activation statistics, OBDC) measures the
        inputs of exactly these layers and reads their weight through this
        layout. ``None`` (the default): the layer is not such a consumer.
        """
        return None

    # -- helpers for subclasses -------------------------------------------
    def stand_in(self, layer: nn.Module) -> BasePruningFunc | None:
        """The handler to use instead of this one: ``layer``'s own, when it acts as one of ``TARGET_MODULES``.

        ``tp.prune_linear_out_channels(gpt2_conv1d, idxs)`` then prunes the
        ``Conv1D`` along its own layout instead of refusing it.
        """
        types = target_types(self)
        if not types or isinstance(layer, types):
            return None
        own = find_handler(layer)
        if own is None or own is self or own.acts_as is None:
            return None
        return own if issubclass(own.acts_as, types) else None

    def accepts(self, layer: object) -> bool:
        """Whether ``layer`` is one this handler prunes: one of ``TARGET_MODULES``, or a layer
        whose registered handler is of this handler's class (or a base of it)."""
        types = target_types(self)
        if not types or isinstance(layer, types):
            return True
        own = find_handler(layer) if isinstance(layer, nn.Module) else None
        return own is not None and isinstance(self, type(own))

    def check_layer(self, layer: nn.Module) -> None:
        """Raise :class:`HandlerMismatchError` when ``layer`` belongs to another handler.

        A module of one of ``TARGET_MODULES`` is accepted. So is a module of a type no
        handler is registered for: custom layers are duck-typed, which is what lets
        ``customized_pruners={MyLinear: LinearPruner()}`` work; a missing attribute is
        then reported by :meth:`check_idxs`. A module that another handler owns (a
        ``Conv2d`` given to the linear pruner) is refused, because pruning it with the
        wrong layout would silently corrupt it.
        """
        if self.accepts(layer):
            return
        if find_handler(layer) is None and isinstance(layer, nn.Module):
            return
        names = ", ".join(t.__name__ for t in target_types(self))
        raise HandlerMismatchError(
            f"{type(self).__name__} prunes {names}, not {describe_layer(layer)}; "
            f"use the pruning function for {type(layer).__name__} (see depgraph.functional)"
        )

    def check_idxs(self, layer: nn.Module, idxs: Indices, side: str) -> torch.Tensor:
        """Check the layer type and the indices; return sorted unique int64 indices."""
        self.check_layer(layer)
        check_plain(layer, describe_layer(layer))
        try:
            n = self.get_out_channels(layer) if side == "out" else self.get_in_channels(layer)
        except AttributeError as err:
            raise HandlerMismatchError(
                f"{type(self).__name__} cannot prune {describe_layer(layer)}: {err}; "
                "subclass a handler for this layer and register it (customized_pruners=)"
            ) from None
        if n is None:
            raise HandlerMismatchError(f"{describe_layer(layer)} has no {side} channels to prune")
        return normalize_idxs(idxs, int(n), layer, side)

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        """How many equal groups the input channels form (a grouped conv's ``groups``; 1 otherwise)."""
        return 1

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        """How many equal groups the output channels form (a grouped conv's ``groups``; 1 otherwise)."""
        return 1

    def check(self, layer: nn.Module, idxs: Indices, to_output: bool) -> None:
        """Validate a prune of ``layer`` without changing it (the original handler protocol).

        Args:
            layer: the module to prune.
            idxs: channel indices to remove.
            to_output: output channels if True, else input channels.

        Raises:
            HandlerMismatchError: ``layer`` belongs to another handler, or has no such channels.
            InvalidIndicesError: an index is negative, not an integer or out of range.
            OverPruningError: every channel would be removed.
        """
        self.check_idxs(layer, idxs, "out" if to_output else "in")

    def __call__(
        self,
        layer: nn.Module,
        idxs: Indices,
        to_output: bool = True,
        inplace: bool = True,
        dry_run: bool = False,
    ) -> nn.Module:
        """Prune ``layer``'s output (``to_output``) or input channels ``idxs``; return the pruned layer.

        Everything is checked first (:meth:`check`), so a refused call changes nothing.

        Args:
            layer: the module to prune.
            idxs: channel indices to remove, in any order.
            to_output: prune output channels (default, as in the original) or input channels.
            inplace: prune ``layer`` itself; ``False`` prunes and returns a deep copy.
            dry_run: only check; return ``layer`` unchanged (the original accepted the flag
                and pruned anyway).

        Returns:
            The pruned module (``layer`` itself unless ``inplace=False``).

        Raises:
            HandlerMismatchError, InvalidIndicesError, OverPruningError: see :meth:`check`.

        Example:
            >>> tp.function.LinearPruner()(nn.Linear(4, 3), [0], to_output=True).out_features
            2
        """
        self.check(layer, idxs, to_output=to_output)
        if dry_run:
            return layer
        if not inplace:
            layer = copy.deepcopy(layer)
        fn = self.prune_out_channels if to_output else self.prune_in_channels
        return fn(layer, idxs)

    def _prune_parameter_and_grad(
        self, weight: nn.Parameter, keep_idxs: Indices, pruning_dim: int
    ) -> nn.Parameter:
        """A new Parameter holding ``weight`` (and its ``.grad``) at ``keep_idxs`` along ``pruning_dim``.

        The original's helper, kept because handlers written for it call it. Its
        result is a *new* Parameter; depgraph's own handlers use
        :func:`prune_tensor`, which keeps the Parameter object.
        """
        keep = torch.as_tensor(list(keep_idxs) if not isinstance(keep_idxs, torch.Tensor) else keep_idxs,
                               dtype=torch.long, device=weight.device)
        pruned = nn.Parameter(torch.index_select(weight.data, pruning_dim, keep), requires_grad=weight.requires_grad)
        if weight.grad is not None:
            pruned.grad = torch.index_select(weight.grad, pruning_dim, keep)
        return pruned

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


H = TypeVar("H", bound=type)


def register_handler(*module_types: type) -> Callable[[H], H]:
    """Class decorator: instantiate the handler and make it the ``handler`` part of ``module_types``' specs.

    The handler is stored in the one layer registry (:mod:`depgraph.layers`);
    ``register_layer`` is the way to give a new layer every part at once.
    Warns (``stacklevel=2``) when it replaces an existing registration.

    Example:
        >>> @register_handler(MyScale)
        ... class ScalePruner(BasePruningFunc): ...
    """

    def deco(cls: H) -> H:
        instance = cls()
        for t in module_types or target_types(cls):
            set_layer_part(t, "handler", instance, "pruning handler")
        cls.INSTANCE = instance  # type: ignore[attr-defined]
        return cls

    return deco


def target_types(handler: BasePruningFunc | type[BasePruningFunc]) -> tuple[type, ...]:
    """A handler's ``TARGET_MODULES`` as a tuple: the original API allows one type, a tuple or None."""
    types = handler.TARGET_MODULES
    if types is None:
        return ()
    return types if isinstance(types, tuple) else (types,)


def find_handler(module: nn.Module, extra: dict | None = None) -> BasePruningFunc | None:
    """The handler for a module: exact type first, then the nearest registered base class.

    ``extra`` maps types (or module instances) to handlers and takes precedence,
    which is how ``customized_pruners`` work.
    """
    if extra:
        if module in extra:
            return extra[module]
        for cls in type(module).__mro__:
            if cls in extra:
                return extra[cls]
    return find_layer_part(module, "handler")


def get_handler(module_type: type) -> BasePruningFunc:
    """The registered handler for a module type.

    Raises:
        UnknownModuleError: no handler is registered for it; the message lists the known types.
    """
    handler = find_layer_part(module_type, "handler")
    if handler is not None:
        return handler
    known = ", ".join(sorted(t.__name__ for t in registered_handlers()))
    raise UnknownModuleError(
        f"no pruning handler is registered for {module_type.__name__}; known types: {known}. "
        "Register one with DependencyGraph.register_customized_layer or customized_pruners="
    )


def registered_handlers() -> dict[type, BasePruningFunc]:
    """A copy of the type -> handler registry (the ``handler`` parts of the layer specs)."""
    return {t: spec.handler for t, spec in registered_layers().items() if spec.handler is not None}


def matches_layer_types(module: object, types: tuple[type, ...], extra: dict | None = None) -> bool:
    """Whether ``module`` is one of ``types``, or its handler ``acts_as`` one of them.

    This is how ``root_module_types`` and importance ``target_types`` are read:
    naming ``nn.Linear`` also names GPT-2's ``Conv1D``, which computes a linear
    map with its weight stored transposed.
    """
    if isinstance(module, types):
        return True
    if not isinstance(module, nn.Module):
        return False
    handler = find_handler(module, extra)
    role = getattr(handler, "acts_as", None)
    return role is not None and issubclass(role, types)


class _PrunerBoxView(MutableMapping):
    """The registry under the original ``PrunerBox`` name: a live view, not a copy.

    Lookups resolve through the MRO like :func:`get_handler`; assignment registers
    a handler for a type (without the overwrite warning, as a plain dict would).
    """

    def __getitem__(self, key: type) -> BasePruningFunc:
        if not isinstance(key, type):
            raise KeyError(key)
        return get_handler(key)

    def __setitem__(self, key: type, value: BasePruningFunc) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a plain dict assignment does not warn either
            set_layer_part(key, "handler", value, "pruning handler")

    def __delitem__(self, key: type) -> None:
        if key not in registered_handlers():
            raise KeyError(key)
        set_layer_part(key, "handler", None, "pruning handler")

    def __iter__(self) -> Iterator[type]:
        return iter(registered_handlers())

    def __len__(self) -> int:
        return len(registered_handlers())

    def __repr__(self) -> str:
        items = ", ".join(f"{t.__name__}: {h!r}" for t, h in registered_handlers().items())
        return f"PrunerBox({{{items}}})"


PrunerBox = _PrunerBoxView()
