"""MAC formulas for torch functions called outside any counted layer.

Attention blocks in timm and Hugging Face models compute ``q @ k.T`` and
``attn @ v`` (or ``F.scaled_dot_product_attention``) with plain functions, and
GPT-2's ``Conv1D`` is an ``addmm``. A counter that only hooks modules misses
all of that work, so :func:`depgraph.utils.count_ops_and_params` also watches
these functions through a ``TorchFunctionMode``. A function is charged only
when no layer with a module rule is running, so the ``F.linear`` inside an
``nn.Linear`` is never counted twice.

A rule is ``rule(args, kwargs, output) -> int``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["FunctionRule", "find_function_rule"]

FunctionRule = Callable[[tuple, dict, Any], int]

_FN_RULES: dict[Any, FunctionRule] = {}


def _register(*fns: Any) -> Callable[[FunctionRule], FunctionRule]:
    def deco(rule: FunctionRule) -> FunctionRule:
        for fn in fns:
            _FN_RULES[fn] = rule
        return rule

    return deco


def find_function_rule(func: Any) -> FunctionRule | None:
    """The MAC rule of a torch function or Tensor method, or None when it is free."""
    try:
        return _FN_RULES.get(func)
    except TypeError:  # unhashable callables are never registered
        return None


def _arg(args: tuple, kwargs: dict, i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


@_register(
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.mm,
    torch.Tensor.mm,
    torch.bmm,
    torch.Tensor.bmm,
    torch.mv,
    torch.Tensor.mv,
)
def _count_matmul(args: tuple, kwargs: dict, out: Any) -> int:
    a = _arg(args, kwargs, 0, "input")
    if not isinstance(a, torch.Tensor) or not isinstance(out, torch.Tensor):
        return 0
    # every output element is a dot product along a's last dim
    return int(out.numel() * a.shape[-1])


@_register(torch.addmm, torch.Tensor.addmm, torch.baddbmm, torch.Tensor.baddbmm)
def _count_addmm(args: tuple, kwargs: dict, out: Any) -> int:
    m1 = _arg(args, kwargs, 1, "mat1")
    if m1 is None:
        m1 = kwargs.get("batch1")
    if not isinstance(m1, torch.Tensor) or not isinstance(out, torch.Tensor):
        return 0
    return int(out.numel() * m1.shape[-1] + out.numel())  # product + the added term


@_register(F.linear)
def _count_linear(args: tuple, kwargs: dict, out: Any) -> int:
    w = _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    if not isinstance(w, torch.Tensor) or not isinstance(out, torch.Tensor):
        return 0
    return int(out.numel() * w.shape[-1] + (out.numel() if b is not None else 0))


@_register(F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d)
def _count_conv(args: tuple, kwargs: dict, out: Any) -> int:
    w = _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    if not isinstance(w, torch.Tensor) or not isinstance(out, torch.Tensor):
        return 0
    taps = w[0].numel()  # weight (C_out, C_in/groups, *kernel)
    return int(out.numel() * taps + (out.numel() if b is not None else 0))


@_register(F.scaled_dot_product_attention)
def _count_sdpa(args: tuple, kwargs: dict, out: Any) -> int:
    q = _arg(args, kwargs, 0, "query")
    k = _arg(args, kwargs, 1, "key")
    v = _arg(args, kwargs, 2, "value")
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return 0
    # q (..., L_q, E), k (..., L_k, E), v (..., L_k, E_v); "..." counts query heads
    rows = math.prod(q.shape[:-2])
    lq, lk, e, ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    return int(rows * (lq * e + lq * lk * e + lq * lk + lq * lk * ev))  # scale, QK^T, softmax, AV


@_register(torch.einsum)
def _count_einsum(args: tuple, kwargs: dict, out: Any) -> int:
    if not args or not isinstance(args[0], str) or not isinstance(out, torch.Tensor):
        return 0
    operands = args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    eq = args[0].replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    specs = lhs.split(",")
    sizes: dict[str, int] = {}
    for spec, op in zip(specs, operands, strict=False):
        if not isinstance(op, torch.Tensor):
            return 0
        head, _, tail = spec.partition("...")
        for letter, size in zip(head, op.shape, strict=False):
            sizes[letter] = int(size)
        for letter, size in zip(reversed(tail), reversed(op.shape), strict=False):
            sizes[letter] = int(size)
    if "->" not in eq:  # implicit output: letters that appear exactly once
        rhs = "".join(c for c in sorted(sizes) if lhs.count(c) == 1)
    summed = [n for c, n in sizes.items() if c not in rhs]
    return int(out.numel() * math.prod(summed))
