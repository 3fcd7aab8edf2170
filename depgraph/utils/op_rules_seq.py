"""MAC formulas for sequence layers: recurrent nets and ``nn.MultiheadAttention``.

Kept apart from :mod:`depgraph.utils.op_rules` because these layers need to
read their configuration (directions, gates, projections, heads) rather than
just the shapes of one input and one output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence

from .op_rules import register_op_rule

__all__ = ["count_rnn", "count_mha"]

# Element-wise work per hidden unit and time step, besides the two mat-vecs:
# RNN adds the two projections; GRU gates the candidate with r, then mixes
# (1-z)*n + z*h; LSTM forms c = f*c + i*g and h = o*tanh(c).
_GATE_OPS = {nn.RNN: 1, nn.RNNCell: 1, nn.GRU: 4, nn.GRUCell: 4, nn.LSTM: 4, nn.LSTMCell: 4}


def _gate_ops(module: nn.Module) -> int:
    for cls in type(module).__mro__:
        if cls in _GATE_OPS:
            return _GATE_OPS[cls]
    return 1


def _steps(module: nn.RNNBase, x: Any) -> int:
    """Number of (sequence position, batch row) pairs the layer processes."""
    if isinstance(x, PackedSequence):
        return int(x.data.shape[0])  # packed rows are exactly the valid steps
    if not isinstance(x, torch.Tensor):
        return 0
    if x.dim() == 2:  # unbatched (L, H_in)
        return int(x.shape[0])
    return int(x.shape[0] * x.shape[1])  # (B, L, H) or (L, B, H)


def count_rnn(module: nn.RNNBase, inputs: tuple, output: Any) -> int:
    """RNN / GRU / LSTM: the gate matmuls of every layer and direction, per time step."""
    per_step = 0
    suffixes = ["", "_reverse"] if module.bidirectional else [""]
    for layer in range(module.num_layers):
        for sfx in suffixes:
            name = f"l{layer}{sfx}"
            per_step += getattr(module, f"weight_ih_{name}").numel()
            per_step += getattr(module, f"weight_hh_{name}").numel()
            w_hr = getattr(module, f"weight_hr_{name}", None)  # LSTM proj_size > 0
            if w_hr is not None:
                per_step += w_hr.numel()
            if module.bias:
                per_step += 2 * getattr(module, f"bias_ih_{name}").numel()
            per_step += _gate_ops(module) * module.hidden_size
    return int(per_step * _steps(module, inputs[0] if inputs else None))


@register_op_rule(nn.RNNCell, nn.GRUCell, nn.LSTMCell)
def _count_rnn_cell(module: nn.RNNCellBase, inputs: tuple, output: Any) -> int:
    per_step = module.weight_ih.numel() + module.weight_hh.numel()
    if module.bias:
        per_step += 2 * module.bias_ih.numel()
    per_step += _gate_ops(module) * module.hidden_size
    x = inputs[0] if inputs else None
    rows = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() == 2 else 1
    return int(per_step * rows)


def count_mha(module: nn.MultiheadAttention, inputs: tuple, output: Any) -> int:
    """``nn.MultiheadAttention``: the q/k/v/out projections and the two attention matmuls."""
    q, k, v = (list(inputs[:3]) + [None, None, None])[:3]
    k = q if k is None else k
    v = k if v is None else v
    if not isinstance(q, torch.Tensor):
        return 0
    if q.dim() == 2:  # unbatched (L, E)
        batch, lq, lk = 1, q.shape[0], k.shape[0]
    elif module.batch_first:  # (B, L, E)
        batch, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    else:  # (L, B, E)
        batch, lq, lk = q.shape[1], q.shape[0], k.shape[0]
    e, heads = module.embed_dim, module.num_heads
    inner = heads * module.head_dim  # == e, unless whole heads were removed (PrunedMultiheadAttention)
    macs = lq * e * inner + lk * k.shape[-1] * inner + lk * v.shape[-1] * inner  # q, k, v projections
    if module.in_proj_bias is not None:
        macs += (lq + 2 * lk) * inner
    macs += lq * inner  # q scaling by 1/sqrt(head_dim)
    macs += lq * lk * inner  # Q K^T summed over heads: heads * lq * lk * head_dim
    macs += heads * lq * lk  # softmax
    macs += lq * lk * inner  # attention-weighted sum of V
    macs += lq * inner * e  # output projection
    if module.out_proj.bias is not None:
        macs += lq * e
    return int(macs * batch)
