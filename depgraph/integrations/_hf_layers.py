"""Find the attention and MLP layers of a transformer and measure their widths.

Sizes are read from weight shapes, never from size attributes: after a prune
the weights are the truth and attributes are what we are about to fix.
Layers are recognised by the names of their projections, which the
architectures share across families (``q_proj``/``query``/``q``, fused
``qkv_proj``/``c_attn``; ``up_proj``/``fc1``/``c_fc``/``wi`` ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

__all__ = ["AttentionLayer", "MlpLayer", "LayerIndex", "find_attention", "find_mlps", "in_width", "out_width",
           "stage_of", "config_scopes"]

# (query, key, value) child names of attention modules with separate projections
_SEPARATE = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"))
_FUSED = ("qkv_proj", "c_attn", "qkv", "query_key_value", "Wqkv")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim", "head_size")
# (up, down) child names of MLPs; the MLP width is the down projection's input width
_MLP_PAIRS = (("gate_up_proj", "down_proj"), ("up_proj", "down_proj"), ("fc1", "fc2"), ("c_fc", "c_proj"),
              ("wi", "wo"), ("wi_1", "wo"), ("intermediate", "output"))


def _weight(layer: nn.Module):
    w = getattr(layer, "weight", None)
    return w if w is not None and w.ndim == 2 else None


def _transposed(layer: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` stores its weight as (in, out); ``nn.Linear`` as (out, in)."""
    return not isinstance(layer, nn.Linear) and hasattr(layer, "nf")


def out_width(layer: nn.Module) -> int:
    w = _weight(layer)
    return int(w.shape[0 if not _transposed(layer) else 1])


def in_width(layer: nn.Module) -> int:
    w = _weight(layer)
    return int(w.shape[1 if not _transposed(layer) else 0])


def _proj(module: nn.Module, name: str) -> nn.Module | None:
    """The child ``name`` if it is a projection, or its ``.dense`` (BERT's ``intermediate.dense``)."""
    child = getattr(module, name, None)
    if not isinstance(child, nn.Module):
        return None
    if _weight(child) is None:
        child = getattr(child, "dense", None)
    return child if isinstance(child, nn.Module) and _weight(child) is not None else None


@dataclass
class AttentionLayer:
    """One attention module and its measured widths."""

    name: str
    module: nn.Module
    q: nn.Module                 # the query projection (or the fused qkv projection)
    k: nn.Module | None          # the key projection (None when fused)
    fused: bool
    hidden: int                  # input width: the residual stream
    q_width: int                 # heads * head_dim
    kv_width: int                # kv_heads * head_dim
    head_dim: int | None         # from the module's head-dim attribute (kept current by the graph)

    @property
    def heads(self) -> int | None:
        """Query heads implied by the measured width and head size; None when the head size is unknown."""
        return self.q_width // self.head_dim if self.head_dim else None

    @property
    def kv_heads(self) -> int | None:
        """Key/value heads implied by the measured width and head size; None when the head size is unknown."""
        return self.kv_width // self.head_dim if self.head_dim else None


@dataclass
class MlpLayer:
    name: str
    module: nn.Module
    down: nn.Module              # the down projection: its input channels are the MLP's width
    width: int                   # the intermediate width
    hidden: int


def _head_dim(module: nn.Module) -> int | None:
    for attr in HEAD_DIM_ATTRS:
        v = vars(module).get(attr)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return int(v)
    return None


def _attention(name: str, module: nn.Module) -> AttentionLayer | None:
    for qn, kn, vn in _SEPARATE:
        q, k, v = (_proj(module, n) for n in (qn, kn, vn))
        if q is not None and k is not None and v is not None:
            return AttentionLayer(name, module, q, k, False, in_width(q), out_width(q), out_width(k),
                                  _head_dim(module))
    for fn in _FUSED:
        qkv = _proj(module, fn)
        if qkv is None:
            continue
        total, hd = out_width(qkv), _head_dim(module)
        split = vars(module).get("split_size")
        kv_heads = vars(module).get("num_key_value_heads")
        if isinstance(split, int) and 3 * split == total:      # GPT-2: q, k, v of equal width
            q_width = kv_width = split
        elif isinstance(kv_heads, int) and hd:                   # Phi-3: q then k then v
            kv_width = kv_heads * hd
            q_width = total - 2 * kv_width
        else:
            q_width = kv_width = total // 3
        return AttentionLayer(name, module, qkv, None, True, in_width(qkv), q_width, kv_width, hd)
    return None


def find_attention(model: nn.Module) -> list[AttentionLayer]:
    """Every attention module under ``model``, outermost first (a module is counted once)."""
    out: list[AttentionLayer] = []
    for name, m in model.named_modules():
        if m is model or any(name.startswith(a.name + ".") for a in out):
            continue
        a = _attention(name, m)
        if a is not None:
            out.append(a)
    return out


def _mlp(name: str, module: nn.Module) -> MlpLayer | None:
    for up_name, down_name in _MLP_PAIRS:
        up, down = _proj(module, up_name), _proj(module, down_name)
        if up is not None and down is not None and up is not down:
            return MlpLayer(name, module, down, in_width(down), out_width(down))
    return None


def find_mlps(model: nn.Module) -> list[MlpLayer]:
    return [m for name, module in model.named_modules() if (m := _mlp(name, module)) is not None]


class LayerIndex:
    """Where the attention and MLP modules are, found once; :meth:`measure` reads their widths now.

    Pruning changes widths, never which modules exist, so a hook that runs after
    every prune searches the module tree once.
    """

    def __init__(self, model: nn.Module) -> None:
        self._attention = [(a.name, a.module) for a in find_attention(model)]
        self._mlps = [(m.name, m.module) for m in find_mlps(model)]

    def measure(self) -> tuple[list[AttentionLayer], list[MlpLayer]]:
        attention = [a for name, m in self._attention if (a := _attention(name, m)) is not None]
        mlps = [x for name, m in self._mlps if (x := _mlp(name, m)) is not None]
        return attention, mlps

    @property
    def attention_modules(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of every attention module found, in model order: what ``measure_attention`` indexes."""
        return list(self._attention)

    def measure_attention(self, which: Iterable[int]) -> list[AttentionLayer]:
        """The attention modules at positions ``which`` of :attr:`attention_modules`, measured now.

        A hook that knows which layers a prune reached measures those, not every layer of the model.
        """
        return [a for i in which if (a := _attention(*self._attention[i])) is not None]


def stage_of(name: str) -> int | None:
    """The stage index of a hierarchical model's layer (``encoder.layers.2.blocks.0`` -> 2)."""
    m = re.search(r"\.layers\.(\d+)\.blocks\.", name)
    return int(m.group(1)) if m else None


def config_scopes(model: nn.Module) -> list[tuple[nn.Module, Any]]:
    """``(module, config)`` for each distinct config object, at the outermost module holding it.

    T5's encoder and decoder hold copies of the model config; each copy is kept in step too.
    """
    seen: set[int] = set()
    out = []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict") and id(cfg) not in seen:
            seen.add(id(cfg))
            out.append((m, cfg))
    return out
