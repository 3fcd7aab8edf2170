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
from typing import Any

import torch
import torch.nn as nn

from .errors import DepgraphError

__all__ = ["state_dict", "load_state_dict", "save", "load"]

_FORMAT = "depgraph.pruned/1"
_RECORDS = ("_depgraph_kept", "_depgraph_kept_params", "_depgraph_inexact")


def _plain(v: Any) -> bool:
    """Attributes worth recording: sizes (ints, tuples of ints), flags and scales."""
    if isinstance(v, bool) or v is None:
        return True
    if isinstance(v, (int, float, str)):
        return True
    return isinstance(v, tuple) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def state_dict(model: nn.Module) -> dict[str, Any]:
    """The weights plus everything needed to reshape an unpruned copy of ``model`` to match.

    Returns:
        ``{"format", "state_dict", "shapes", "attributes", "records", "buffers", "configs"}``;
        plain data (tensors, ints, tuples, strings), loadable with ``torch.load(weights_only=True)``.
    """
    attributes: dict[str, dict[str, Any]] = {}
    records: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = {k: (int(v) if isinstance(v, int) and not isinstance(v, bool) else v)
                 for k, v in vars(m).items() if not k.startswith("_") and _plain(v)}
        if attrs:
            attributes[name] = attrs
        rec = {k: m.__dict__[k] for k in _RECORDS if k in m.__dict__}
        if rec:
            records[name] = {k: (sorted(v) if isinstance(v, set) else v) for k, v in rec.items()}
    sd = model.state_dict()
    return {
        "format": _FORMAT,
        "state_dict": sd,
        "shapes": {k: tuple(v.shape) for k, v in sd.items()},
        "attributes": attributes,
        "records": records,
        "buffers": _pruned_non_persistent(model, records),
        "configs": _config_sizes(model),
    }


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _config_value(v: Any, top: bool = True) -> bool:
    """Numbers, lists of numbers, and (nested) dicts of those and plain values: sizes and ``rope_parameters``
    (longrope factor lists, Gemma 3's per-layer-type dicts). Top-level strings and flags are left alone."""
    if isinstance(v, dict):
        return all(isinstance(k, str) and _config_value(x, top=False) for k, x in v.items())
    if isinstance(v, list):
        return all(_number(x) for x in v)
    return _number(v) or (not top and _plain(v))


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


def load_state_dict(model: nn.Module, pruned_state: dict[str, Any], strict: bool = True) -> nn.Module:
    """Reshape ``model`` (an unpruned instance of the same definition) to the pruned one and load it.

    Raises:
        DepgraphError: the state was not made by :func:`depgraph.state_dict`, or names a
            module or tensor that ``model`` does not have.
    """
    if not isinstance(pruned_state, dict) or pruned_state.get("format") != _FORMAT:
        raise DepgraphError("not a depgraph pruned state: make it with depgraph.state_dict(model) or depgraph.save")
    modules = dict(model.named_modules())
    missing = [n for n in pruned_state["attributes"] if n not in modules]
    if missing:
        raise DepgraphError(f"the pruned state names modules this model lacks: {missing[:5]}; "
                            "load it into an instance of the same model definition")
    for name, attrs in pruned_state["attributes"].items():
        m = modules[name]
        for k, v in attrs.items():
            if k in vars(m) and vars(m)[k] != v:
                m.__dict__[k] = v
    for name, rec in pruned_state.get("records", {}).items():
        for k, v in rec.items():
            modules[name].__dict__[k] = set(v) if k == "_depgraph_inexact" else v
    _load_configs(model, pruned_state.get("configs", {}))
    _load_buffers(modules, pruned_state.get("buffers", {}), strict)
    _add_missing_biases(model, modules, pruned_state["shapes"])
    own = model.state_dict(keep_vars=True)
    for key, shape in pruned_state["shapes"].items():
        t = own.get(key)
        if t is None:
            if strict:
                raise DepgraphError(f"the pruned state has {key!r}, which this model does not have")
            continue
        if tuple(t.shape) != tuple(shape):
            with torch.no_grad():
                t.data = torch.empty(shape, dtype=t.dtype, device=t.device)
            if getattr(t, "grad", None) is not None:
                t.grad = None
    for m in model.modules():  # RNNs cache views of their weights
        if isinstance(m, nn.RNNBase):
            m._init_flat_weights()
    model.load_state_dict(pruned_state["state_dict"], strict=strict)
    return model


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
        owner_name, _, attr = key.rpartition(".")
        m = modules.get(owner_name)
        if attr == "bias" and m is not None and "bias" in m._parameters and m._parameters["bias"] is None:
            w = getattr(m, "weight", None)
            like = w if isinstance(w, torch.Tensor) else torch.empty(0)
            m.bias = nn.Parameter(torch.zeros(shape, dtype=like.dtype, device=like.device))


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """``torch.save(depgraph.state_dict(model), path)``."""
    torch.save(state_dict(model), path)


def load(model: nn.Module, path: str | os.PathLike, map_location: Any = None) -> nn.Module:
    """Load a file written by :func:`save` into an unpruned ``model``."""
    return load_state_dict(model, torch.load(path, map_location=map_location, weights_only=True))
