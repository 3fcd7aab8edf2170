"""Index maps between two channel axes: small, composable, invertible, vectorised.

A map relates positions of a *source* axis (size ``n_src``) to positions of a
*destination* axis (size ``n_dst``). ``apply(idx)`` returns the destination
positions reached from the source positions ``idx`` together with, for each of
them, the position in ``idx`` it came from, so callers can carry per-index data
(the root channel) along. Maps work on int64 tensors: no Python object per
channel index.
"""

from __future__ import annotations

import torch

from ..errors import DepgraphError

__all__ = ["IndexMap", "Identity", "Offset", "Gather", "Lookup", "Compose"]


def _long(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.long)


class IndexMap:
    """Base class. Override ``apply`` and ``inverse``.

    Call tree::

        m.apply(idx)     -> (dst_idx, src_pos)   dst_idx[i] comes from idx[src_pos[i]]
        m.inverse()      -> IndexMap from dst to src
        m.then(other)    -> Compose(m, other)
    """

    n_src: int
    n_dst: int

    def apply(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self) -> IndexMap:
        raise NotImplementedError

    def then(self, other: IndexMap) -> IndexMap:
        return Compose(self, other)

    def __call__(self, idx) -> torch.Tensor:
        return self.apply(_long(idx))[0]


class Identity(IndexMap):
    """Position ``i`` maps to ``i`` (elementwise ops, permute of whole axes)."""

    def __init__(self, n: int):
        self.n_src = self.n_dst = n

    def apply(self, idx):
        return idx, torch.arange(idx.numel())

    def inverse(self):
        return self

    def __repr__(self):
        return f"Identity({self.n_src})"


class Offset(IndexMap):
    """``i`` maps to ``i + shift``; positions falling outside ``[0, n_dst)`` are dropped.

    ``cat`` places input k at ``shift = sum(sizes[:k])``; the inverse is how an
    output index finds its input (and drops indices owned by other inputs).
    """

    def __init__(self, shift: int, n_src: int, n_dst: int):
        self.shift, self.n_src, self.n_dst = int(shift), int(n_src), int(n_dst)

    def apply(self, idx):
        out = idx + self.shift
        keep = ((out >= 0) & (out < self.n_dst)).nonzero().flatten()
        return out[keep], keep

    def inverse(self):
        return Offset(-self.shift, self.n_dst, self.n_src)

    def __repr__(self):
        return f"Offset({self.shift:+d}, {self.n_src}->{self.n_dst})"


class Gather(IndexMap):
    """Destination ``j`` is a copy of source ``table[j]`` (``-1``: of no source).

    Covers slicing with steps, repeat/tile/repeat_interleave, channel
    permutations and GQA's repeat of key/value heads. ``apply`` finds *every*
    destination copy of the given sources.
    """

    def __init__(self, table, n_src: int):
        self.table = _long(table)
        self.n_src, self.n_dst = int(n_src), int(self.table.numel())

    def apply(self, idx):
        pos = torch.full((self.n_src + 1,), -1, dtype=torch.long)
        pos[idx] = torch.arange(idx.numel())
        src = pos[torch.where(self.table >= 0, self.table, self.n_src)]
        dst = (src >= 0).nonzero().flatten()
        return dst, src[dst]

    def inverse(self):
        return Lookup(self.table, self.n_src)

    def __repr__(self):
        return f"Gather({self.n_src}->{self.n_dst})"


class Lookup(IndexMap):
    """Source ``j`` maps to ``table[j]`` (the inverse of :class:`Gather`)."""

    def __init__(self, table, n_dst: int):
        self.table = _long(table)
        self.n_src, self.n_dst = int(self.table.numel()), int(n_dst)

    def apply(self, idx):
        out = self.table[idx]
        keep = (out >= 0).nonzero().flatten()
        return out[keep], keep

    def inverse(self):
        return Gather(self.table, self.n_dst)

    def __repr__(self):
        return f"Lookup({self.n_src}->{self.n_dst})"


class Compose(IndexMap):
    """``first`` then ``second``."""

    def __init__(self, first: IndexMap, second: IndexMap):
        if first.n_dst != second.n_src:
            raise DepgraphError(f"cannot compose {first} with {second}: sizes {first.n_dst} != {second.n_src}")
        self.first, self.second = first, second
        self.n_src, self.n_dst = first.n_src, second.n_dst

    def apply(self, idx):
        mid, pos1 = self.first.apply(idx)
        out, pos2 = self.second.apply(mid)
        return out, pos1[pos2]

    def inverse(self):
        return Compose(self.second.inverse(), self.first.inverse())

    def __repr__(self):
        return f"{self.first} -> {self.second}"
