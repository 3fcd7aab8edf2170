"""What a saved pruned state may contain: checked in full before a load changes anything.

A file made by :func:`depgraph.save` is data, not code, and loading it must
stay that way: ``torch.load(weights_only=True)`` refuses pickled objects, but
the data itself says which attributes to set on which modules. Loading is
therefore allow-listed, in two passes that both run before the model changes:

* :func:`check_layout`, against the state alone: every section has the type
  and value types it must have (a truncated or hand-edited file is named, not
  met later as a ``KeyError``).
* :func:`check_against_model`, against the fresh model: an attribute is set
  only where the module already holds a plain value of the same kind (a size,
  a flag, a scale), never a private name, a method (``forward``) or a
  sub-module; a swapped-in class only receives the state it registered; a
  config only receives fields it already has.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["REQUIRED", "OPTIONAL", "RECORD_NAMES", "plain", "config_value", "check_layout", "check_against_model"]

REQUIRED = ("format", "state_dict", "shapes", "attributes")
OPTIONAL = ("records", "buffers", "configs", "classes")
RECORD_NAMES = ("_depgraph_kept", "_depgraph_kept_params", "_depgraph_inexact")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plain(v: Any) -> bool:
    """Attributes worth recording: sizes (ints, tuples of ints), flags, scales and names."""
    if isinstance(v, bool) or v is None:
        return True
    if type(v) in (int, float, str):  # exact: a str Enum (HF's QuantizationMethod) would not load weights_only
        return True
    return isinstance(v, tuple) and all(_number(x) for x in v)


def config_value(v: Any, top: bool = True) -> bool:
    """Numbers, lists of numbers, and (nested) dicts of those and plain values: sizes and ``rope_parameters``
    (longrope factor lists, Gemma 3's per-layer-type dicts). Top-level strings and flags are left alone."""
    if isinstance(v, dict):
        return all(isinstance(k, str) and config_value(x, top=False) for k, x in v.items())
    if isinstance(v, list):
        return all(_number(x) for x in v)
    return _number(v) or (not top and plain(v))


def _index(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 1 and not t.dtype.is_floating_point and t.dtype != torch.bool


def _str_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


def _record_problems(name: str, rec: Any) -> list[str]:
    if not _str_dict(rec):
        return [f"records[{name!r}] must be a dict"]
    out = [f"records[{name!r}] has the unknown entry {k!r} (known: {list(RECORD_NAMES)})"
           for k in rec if k not in RECORD_NAMES]
    kept = rec.get("_depgraph_kept", {})
    if not (isinstance(kept, dict) and set(kept) <= {"out", "in", "inner"} and all(map(_index, kept.values()))):
        out.append(f"records[{name!r}]['_depgraph_kept'] must map 'out'/'in'/'inner' to 1-D integer tensors")
    params = rec.get("_depgraph_kept_params", {})
    if not (_str_dict(params) and all(isinstance(d, dict) and all(isinstance(k, int) and _index(t)
                                                                   for k, t in d.items())
                                      for d in params.values())):
        out.append(f"records[{name!r}]['_depgraph_kept_params'] must map names to {{dim: 1-D integer tensor}}")
    inexact = rec.get("_depgraph_inexact", [])
    if not (isinstance(inexact, (list, tuple, set)) and all(isinstance(r, str) for r in inexact)):
        out.append(f"records[{name!r}]['_depgraph_inexact'] must be a list of strings")
    return out


def _state_value(v: Any) -> bool:
    return isinstance(v, torch.Tensor) or plain(v) or (isinstance(v, list) and all(_number(x) for x in v))


def check_layout(state: dict[str, Any]) -> list[str]:
    """Every way ``state``'s sections differ from what :func:`depgraph.state_dict` writes (empty: fine)."""
    problems = [f"the section {k!r} is missing" for k in REQUIRED if k not in state]
    problems += [f"the section {k!r} is unknown (known: {list(REQUIRED + OPTIONAL)})"
                 for k in state if k not in REQUIRED + OPTIONAL]
    if problems:
        return problems

    def section(key: str, ok, what: str) -> None:
        value = state.get(key, {})
        if not _str_dict(value):
            problems.append(f"{key!r} must be a dict keyed by name, got {type(value).__name__}")
            return
        bad = [k for k, v in value.items() if not ok(v)]
        if bad:
            problems.append(f"{key!r} entries must be {what}; not so for {bad[:5]}")

    section("state_dict", lambda v: isinstance(v, torch.Tensor), "tensors")
    section("shapes", lambda v: isinstance(v, (tuple, list)) and all(isinstance(n, int) and n >= 0 for n in v),
            "tuples of sizes")
    section("attributes", lambda v: _str_dict(v) and all(plain(x) for x in v.values()),
            "dicts of plain values (numbers, flags, strings, tuples of numbers)")
    section("buffers", lambda v: isinstance(v, torch.Tensor), "tensors")
    section("configs", lambda v: _str_dict(v) and all(config_value(x) for x in v.values()),
            "dicts of numeric config fields")
    section("classes", lambda v: _str_dict(v) and isinstance(v.get("class"), str) and _str_dict(v.get("state"))
            and set(v) == {"class", "state"} and all(_state_value(x) for x in v["state"].values()),
            "{'class': name, 'state': {attribute: tensor or plain value}}")
    for name, rec in state.get("records", {}).items() if _str_dict(state.get("records", {})) else ():
        problems += _record_problems(name, rec)
    if not _str_dict(state.get("records", {})):
        problems.append("'records' must be a dict keyed by module name")
    return problems


def _same_kind(old: Any, new: Any) -> bool:
    if old is None or new is None:
        return True
    if _number(old) and _number(new):
        return True
    if isinstance(old, tuple) and isinstance(new, tuple):
        return True
    return type(old) is type(new)


def _attribute_problems(name: str, m: nn.Module, attrs: dict[str, Any]) -> list[str]:
    out = []
    for k, v in attrs.items():
        where = f"{name or '<root>'}.{k}"
        if k.startswith("_"):
            out.append(f"{where}: private attributes are never loaded")
        elif k not in vars(m):
            if hasattr(type(m), k):
                out.append(f"{where}: would shadow {type(m).__name__}.{k}; only attributes the module already "
                           "holds as plain values are loaded")
        elif not plain(vars(m)[k]) or not _same_kind(vars(m)[k], v):
            out.append(f"{where}: the model holds {type(vars(m)[k]).__name__} here, the state "
                       f"{type(v).__name__}; only plain values of the same kind are loaded")
    return out


def check_against_model(
    modules: dict[str, nn.Module],
    state: dict[str, Any],
    registered: dict[str, tuple[type, tuple[str, ...]]],
    configs: dict[str, Any],
) -> list[str]:
    """Every attribute, class state or config field ``state`` would set that loading does not allow."""
    problems = []
    for name, attrs in state["attributes"].items():
        m = modules.get(name)
        if m is not None:
            problems += _attribute_problems(name, m, attrs)
    for name, entry in state.get("classes", {}).items():
        known = registered.get(entry["class"])
        if known is None:
            continue  # reported (with the registered names) by the caller
        extra = sorted(set(entry["state"]) - set(known[1]))
        if extra:
            problems.append(f"{name}: the state of {entry['class']} may only set {list(known[1])}, "
                            f"not {extra}")
    for name, fields in state.get("configs", {}).items():
        cfg = configs.get(name)
        if cfg is None:
            continue
        have = cfg.to_dict()
        bad = sorted(k for k in fields if k.startswith("_") or (k not in have and hasattr(type(cfg), k)))
        if bad:
            problems.append(f"the config of {name or '<root>'} would get {bad[:5]}, which are private or "
                            f"methods of {type(cfg).__name__}; only numeric fields are loaded")
    return problems
