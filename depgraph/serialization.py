"""Save a pruned model as data and re-create it from the unpruned definition.

``torch.save(model)`` pickles code; a plain ``state_dict`` cannot be loaded
into a fresh, unpruned model because every pruned tensor has another shape and
layers keep their widths in attributes (``out_channels``, ``groups``,
``normalized_shape``, ``head_dim``). :func:`state_dict` adds both to the
weights; :func:`load_state_dict` reshapes a fresh model to match and loads them.

Non-persistent buffers (``register_buffer(..., persistent=False)``) are left out
of ``model.state_dict()`` because the constructor recomputes them; a pruned one
(a rotary embedding's ``inv_freq`` after head dims were pruned) is not what the
constructor gives, so the non-persistent buffers of every module depgraph
pruned travel in ``"buffers"``. Size fields of configs held by modules (a
Hugging Face ``model.config``, which some forwards read: Phi-3 slices its qkv
at ``config.num_attention_heads * head_dim``) travel in ``"configs"``.

Example:
    >>> sd = tp.state_dict(pruned)                 # or tp.save(pruned, "pruned.pth")
    >>> model = torchvision.models.resnet18()      # unpruned definition
    >>> tp.load_state_dict(model, sd)              # or tp.load(model, "pruned.pth")
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable
from typing import IO, Any, TypeVar

import torch
import torch.nn as nn

from ._caller import user_stacklevel
from .errors import DepgraphError, PrunedStateError
from .state_schema import check_against_model, check_layout, config_value, plain

__all__ = ["state_dict", "load_state_dict", "save", "load", "register_pruned_class"]

_FORMAT = "depgraph.pruned/2"  # /2 adds "classes"; /1 files (no class swaps) still load
_READS = ("depgraph.pruned/1", _FORMAT)


_M = TypeVar("_M", bound=type[nn.Module])

# "module.QualName" -> (class, names of the instance attributes it needs)
_PRUNED_CLASSES: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {}


def _class_key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_pruned_class(*state: str) -> Callable[[_M], _M]:
    """Register a subclass that pruning swaps a module into, so that :func:`state_dict` records the swap.

    Why: a prune the original class cannot express (heads removed from
    ``nn.MultiheadAttention``) turns the module into a depgraph subclass in
    place (``module.__class__ = Sub``). Re-creating the model from its unpruned
    definition must make the same swap, or the reloaded model runs the wrong
    forward. Only registered classes are ever instantiated on load, so a file
    cannot name arbitrary code.

    Args:
        *state: Instance attributes (in ``__dict__``; tensors, numbers, strings)
            the subclass needs besides the parameters and public attributes
            that :func:`state_dict` records anyway.

    Returns:
        A class decorator that returns the class unchanged.

    Example:
        >>> @register_pruned_class("_heads_kept")
        ... class PrunedMultiheadAttention(nn.MultiheadAttention): ...
    """

    def wrap(cls: _M) -> _M:
        key = _class_key(cls)
        if key in _PRUNED_CLASSES and _PRUNED_CLASSES[key][0] is not cls:
            import warnings

            warnings.warn(f"depgraph: register_pruned_class replaces the class registered as {key}", stacklevel=2)
        _PRUNED_CLASSES[key] = (cls, tuple(state))
        return cls

    return wrap


def _swapped_classes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {"class": key, "state": {attr: value}}}`` for modules of a registered class."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        entry = _PRUNED_CLASSES.get(_class_key(type(m)))
        if entry is None or entry[0] is not type(m):
            continue
        state = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v)
                 for k in entry[1] if (v := m.__dict__.get(k)) is not None}
        out[name] = {"class": _class_key(type(m)), "state": state}
    return out


_plain = plain


def state_dict(model: nn.Module) -> dict[str, Any]:
    """The weights plus everything needed to reshape an unpruned copy of ``model`` to match.

    Returns:
        ``{"format", "state_dict", "shapes", "attributes", "records", "buffers", "configs", "classes"}``;
        plain data (tensors, ints, tuples, strings), loadable with ``torch.load(weights_only=True)``.
    """
    from .dependency import records as _records  # lazy: the dependency package imports the handlers

    attributes: dict[str, dict[str, Any]] = {}
    records: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = {k: (int(v) if isinstance(v, int) and not isinstance(v, bool) else v)
                 for k, v in vars(m).items() if not k.startswith("_") and _plain(v)}
        if attrs:
            attributes[name] = attrs
        rec = _records.export_records(m)
        if rec:
            records[name] = rec
    sd = model.state_dict()
    return {
        "format": _FORMAT,
        "state_dict": sd,
        "shapes": {k: tuple(v.shape) for k, v in sd.items()},
        "attributes": attributes,
        "records": records,
        "buffers": _pruned_non_persistent(model, records),
        "configs": _config_sizes(model),
        "classes": _swapped_classes(model),
    }


_config_value = config_value


def _config_fields(cfg: Any) -> dict[str, Any]:
    """The fields of a config's ``to_dict()`` that :func:`_config_value` keeps."""
    return {k: v for k, v in cfg.to_dict().items() if _config_value(v)}


def _configs_by_module(model: nn.Module) -> dict[str, Any]:
    """Each distinct config object (anything with ``to_dict``) under the first module holding it."""
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for name, m in model.named_modules():
        cfg = vars(m).get("config")
        if cfg is not None and callable(getattr(cfg, "to_dict", None)) and id(cfg) not in seen:
            seen.add(id(cfg))
            out[name] = cfg
    return out


def _config_sizes(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {name: _config_fields(cfg) for name, cfg in _configs_by_module(model).items()}


def _load_configs(model: nn.Module, configs: dict[str, dict[str, Any]]) -> None:
    """Set the recorded fields that differ (through the config's own ``__setattr__``: aliases apply)."""
    mine = _configs_by_module(model)
    for name, fields in configs.items():
        cfg = mine.get(name)
        if cfg is None:
            continue
        now = _config_fields(cfg)
        for k, v in fields.items():
            if k not in now or now[k] != v:
                setattr(cfg, k, v)


def _pruned_non_persistent(model: nn.Module, records: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``{qualified name: tensor}`` of the non-persistent buffers of modules depgraph pruned."""
    out: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if name not in records:
            continue
        for b in sorted(m._non_persistent_buffers_set):
            t = m._buffers.get(b)
            if t is not None:
                out[f"{name}.{b}" if name else b] = t.detach().clone()
    return out


def load_state_dict(model: nn.Module, state_dict: dict[str, Any], *, strict: bool = True) -> nn.Module:
    """Reshape ``model`` (an unpruned instance of the same definition) to the pruned one and load it.

    Everything is checked against ``model`` before it is touched, and the load runs as one
    :class:`~depgraph.dependency.transaction.Transaction`: a failure part-way (or Ctrl-C)
    restores tensors, attributes, module classes and configs, so a refused load leaves
    ``model`` as it was.

    Args:
        model: A fresh instance of the definition the pruned model was made from.
        state_dict: What :func:`depgraph.state_dict` returned (the name Torch-Pruning gives it).
        strict: Refuse tensors the model lacks and tensors the state lacks, as
            ``nn.Module.load_state_dict`` does.

    Returns:
        ``model``, now the pruned model.

    Raises:
        PrunedStateError: the state was not made by :func:`depgraph.state_dict`, is
            malformed, would set what loading does not allow (a private or unknown
            attribute, a method, a sub-module, state a swapped-in class did not
            register), or ``model`` is not an instance of the same definition
            (modules, module classes or tensors differ); the message lists every
            problem, and the model is unchanged.
        DepgraphError: applying the checked state failed part-way (the model is restored).
    """
    if not isinstance(state_dict, dict) or state_dict.get("format") not in _READS:
        raise PrunedStateError("not a depgraph pruned state: make it with depgraph.state_dict(model) or depgraph.save")
    layout = check_layout(state_dict)
    if layout:
        raise PrunedStateError("malformed pruned state (the model is unchanged): " + "; ".join(layout[:8])
                               + ". Save it again with depgraph.save(model, path)")
    modules = dict(model.named_modules())
    _check_fits(model, modules, state_dict, strict)
    from .dependency.transaction import Transaction  # lazy: the dependency package imports the handlers

    # One transaction: any failure or interrupt restores tensors, attributes, classes and configs.
    what = ("loading the pruned state (load it into an instance of the unpruned definition the pruned model "
            "was made from)")
    with Transaction(what, [model, *_configs_by_module(model).values()]):
        _apply(model, modules, state_dict, strict)
    return model


def _check_fits(model: nn.Module, modules: dict[str, nn.Module], state: dict[str, Any], strict: bool) -> None:
    """Every reason ``state`` cannot be loaded into ``model``, raised together before anything changes."""
    problems = check_against_model(modules, state, _PRUNED_CLASSES, _configs_by_module(model))
    missing = [n for n in state["attributes"] if n not in modules]
    if missing:
        problems.append(f"the pruned state names modules this model lacks: {missing[:5]}")
    for name, entry in state.get("classes", {}).items():
        m = modules.get(name)
        known = _PRUNED_CLASSES.get(entry["class"])
        if known is None:
            problems.append(f"{name}: the pruned state makes it a {entry['class']}, which is not registered "
                            f"(known: {sorted(_PRUNED_CLASSES)}); import the module that defines it first")
        elif m is not None and not issubclass(known[0], type(m)):
            problems.append(f"{name} is a {type(m).__qualname__}, but the pruned module is a "
                            f"{known[0].__qualname__}, made from a {known[0].__mro__[1].__qualname__}")
    if strict:
        own = set(model.state_dict().keys())
        shapes = state["shapes"]
        new_biases = {k for k in shapes if _bias_slot(modules, k)}
        extra = sorted(set(shapes) - own - new_biases)
        lacking = sorted(own - set(shapes))
        if extra:
            problems.append(f"the pruned state has tensors this model does not have: {extra[:5]}"
                            + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))
        if lacking:
            problems.append(f"this model has tensors the pruned state lacks: {lacking[:5]}"
                            + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""))
        for key in state.get("buffers", {}):
            owner, _, attr = key.rpartition(".")
            if modules.get(owner) is None or modules[owner]._buffers.get(attr) is None:
                problems.append(f"the pruned state has the buffer {key!r}, which this model does not have")
    if problems:
        raise PrunedStateError("cannot load the pruned state into this model (left unchanged): "
                            + "; ".join(problems) + ". Load it into an instance of the unpruned definition "
                            "the pruned model was made from")


def _apply(model: nn.Module, modules: dict[str, nn.Module], state: dict[str, Any], strict: bool) -> None:
    """Swap classes, set attributes, records, configs and buffers, reshape tensors, then load the weights."""
    from .dependency import records as _records  # lazy: the dependency package imports the handlers

    for name, entry in state.get("classes", {}).items():
        m = modules[name]
        m.__class__ = _PRUNED_CLASSES[entry["class"]][0]
        m.__dict__.update(entry["state"])
    for name, attrs in state["attributes"].items():
        m = modules[name]
        for k, v in attrs.items():
            if k in vars(m) and vars(m)[k] != v:
                m.__dict__[k] = v
    for name, rec in state.get("records", {}).items():
        _records.set_records(modules[name], rec)
    _load_configs(model, state.get("configs", {}))
    _load_buffers(modules, state.get("buffers", {}), strict)
    _add_missing_biases(model, modules, state["shapes"])
    own = model.state_dict(keep_vars=True)
    for key, shape in state["shapes"].items():
        t = own.get(key)
        if t is None:
            continue  # only without strict: _check_fits refused it otherwise
        if tuple(t.shape) != tuple(shape):
            with torch.no_grad():
                t.data = torch.empty(shape, dtype=t.dtype, device=t.device)
            if getattr(t, "grad", None) is not None:
                t.grad = None
    _refresh_rnns(model)
    model.load_state_dict(state["state_dict"], strict=strict)


def _refresh_rnns(model: nn.Module) -> None:
    for m in model.modules():  # RNNs cache views of their weights
        if isinstance(m, nn.RNNBase):
            m._init_flat_weights()


def _bias_slot(modules: dict[str, nn.Module], key: str) -> bool:
    """``key`` is the bias of a module defined without one (bias compensation added it)."""
    owner_name, _, attr = key.rpartition(".")
    m = modules.get(owner_name)
    return attr == "bias" and m is not None and "bias" in m._parameters and m._parameters["bias"] is None


def _load_buffers(modules: dict[str, nn.Module], buffers: dict[str, torch.Tensor], strict: bool) -> None:
    for key, t in buffers.items():
        owner, _, attr = key.rpartition(".")
        m = modules.get(owner)
        old = m._buffers.get(attr) if m is not None else None
        if old is None:
            if strict:
                raise DepgraphError(f"the pruned state has the buffer {key!r}, which this model does not have")
            continue
        m._buffers[attr] = t.to(old.device)


def _add_missing_biases(model: nn.Module, modules: dict[str, nn.Module], shapes: dict[str, tuple]) -> None:
    """Register the biases bias compensation gave to layers defined without one.

    ``compensate_bias`` turns ``bias=None`` into a parameter; the unpruned
    definition still has ``bias=None``, so the slot is created here, shaped
    and typed like the state (filled by ``load_state_dict`` right after).
    """
    for key, shape in shapes.items():
        if _bias_slot(modules, key):
            m = modules[key.rpartition(".")[0]]
            w = getattr(m, "weight", None)
            like = w if isinstance(w, torch.Tensor) else torch.empty(0)
            m.bias = nn.Parameter(torch.zeros(shape, dtype=like.dtype, device=like.device))


def save(model: nn.Module, path: str | os.PathLike | IO[bytes]) -> None:
    """Write ``model``'s weights and pruned shapes to ``path``, without pickling code.

    ``torch.save(depgraph.state_dict(model), path)``: read it back with
    ``depgraph.load(unpruned_model, path)``. In Torch-Pruning ``tp.save`` is
    ``torch.save``, so anything that is not a module (a state dict, a checkpoint
    dict) is written by ``torch.save`` as it is.
    """
    torch.save(state_dict(model) if isinstance(model, nn.Module) else model, path)


def load(model: nn.Module | str | os.PathLike | IO[bytes], path: Any = None, map_location: Any = None) -> Any:
    """Load a file written by :func:`save` into an unpruned ``model``; or, with one argument, any file.

    ``load(model, path)`` re-creates the pruned model in ``model`` (weights only,
    no pickle). ``load(path)`` / ``load(path, map_location)`` is Torch-Pruning's
    ``tp.load`` (``torch.load``): it returns what the file holds. A whole pickled
    model (what Torch-Pruning's ``tp.save(model, path)`` writes) can only be read
    by unpickling, which runs code from the file: depgraph then warns and does it,
    so load only files you trust.

    Example:
        >>> pruned = tp.load("pruned_by_torch_pruning.pth")   # warns: runs pickle
        >>> model = tp.load(torchvision.models.resnet18(), "pruned.pth")

    Raises:
        PrunedStateError: (with a model) the file cannot be read as weights-only data
            (truncated, not a torch file, or a whole pickled model), or its state is
            refused (see :func:`load_state_dict`). The model is unchanged.
        OSError: the file cannot be opened.
    """
    if not isinstance(model, nn.Module):
        return _load_any(model, map_location if path is None else path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError ...
        raise PrunedStateError(
            f"cannot read {os.fspath(path)!r} as a depgraph pruned state ({type(e).__name__}: {str(e)[:200]}); "
            "it may be truncated, or a whole pickled model: such a file loads with "
            "depgraph.load(path) or torch.load(path, weights_only=False), which run its pickled code"
        ) from None
    return load_state_dict(model, state)


def _load_any(f: Any, map_location: Any) -> Any:
    """Torch-Pruning's ``tp.load(f)``: weights-only when the file allows, else pickle with a warning."""
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if hasattr(f, "seek"):
            f.seek(0)
    warnings.warn(f"depgraph.load({f!r}): the file is not weights-only (a whole pickled model, as "
                  "Torch-Pruning's tp.save writes); loading it runs pickle, which can execute code from the "
                  "file - load only files you trust. depgraph.save(model, path) writes weights only: "
                  "depgraph.load(unpruned_model, path) reads them back", UserWarning, stacklevel=user_stacklevel())
    return torch.load(f, map_location=map_location, weights_only=False)
