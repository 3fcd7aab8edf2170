"""Reading an op's arguments by position or keyword, as torch would bind them."""

from __future__ import annotations

from typing import Any

from ..trace.graph import OpNode, Value

_MISSING = object()


def arg(op: OpNode, pos: int, name: str, default: Any = None) -> Any:
    """Argument ``pos`` (0 = first after ``self`` for methods is still 0: self counts) or ``name``."""
    if name in op.kwargs:
        return op.kwargs[name]
    if pos < len(op.args):
        return op.args[pos]
    return default


def first_value(op: OpNode) -> Value | None:
    return op.inputs[0] if op.inputs else None


def int_list(x: Any) -> list[int]:
    """Normalise ``dims``-style arguments: an int, a tuple/list, or varargs packed as a tuple."""
    if x is None:
        return []
    if isinstance(x, int):
        return [x]
    if len(x) == 1 and isinstance(x[0], (list, tuple)):
        return list(x[0])
    return [int(v) for v in x]


def shape_args(op: OpNode, start: int = 1) -> list[int]:
    """Shape given as varargs (``x.view(a, b)``) or one sequence (``x.view((a, b))``)."""
    rest = op.args[start:]
    if not rest:
        for key in ("size", "shape", "sizes", "dims"):
            if key in op.kwargs:
                return [int(v) for v in op.kwargs[key]]
        return []
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        return [int(v) for v in rest[0]]
    return [int(v) for v in rest if not isinstance(v, Value)]
