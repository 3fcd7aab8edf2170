"""Reading an op's arguments as torch would bind them, and finding the callables a rule covers."""

from __future__ import annotations

from typing import Any

from ..trace.graph import OpNode

_MISSING = object()


def arg(op: OpNode, pos: int, name: str, default: Any = None) -> Any:
    """Argument ``pos`` (0 = first after ``self`` for methods is still 0: self counts) or ``name``."""
    if name in op.kwargs:
        return op.kwargs[name]
    if pos < len(op.args):
        return op.args[pos]
    return default


def int_list(x: Any) -> list[int]:
    """Normalise ``dims``-style arguments: an int, a tuple/list, or varargs packed as a tuple."""
    if x is None:
        return []
    if isinstance(x, int):
        return [x]
    if len(x) == 1 and isinstance(x[0], (list, tuple)):
        return list(x[0])
    return [int(v) for v in x]


def lookup(names: str, *spaces) -> list:
    """The callables named in ``names`` (space-separated) that exist in any of ``spaces``, each once.

    Shared by every dimension-rule module so a rule registers for ``torch.x``,
    ``torch.Tensor.x`` and ``F.x`` alike, and a name this torch build lacks is skipped.
    """
    found = []
    for name in names.split():
        for space in spaces:
            f = getattr(space, name, None)
            if f is not None and f not in found:
                found.append(f)
    return found
