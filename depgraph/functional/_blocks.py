"""Check pruning indices against a layout of equal contiguous blocks.

Grouped convolutions, GroupNorm and attention heads all lay their channels out
as ``num_blocks`` contiguous blocks of ``block_size``::

    channel i  ->  block i // block_size, local position i % block_size

Such a layer stays valid only while its blocks stay equal-sized, so the
handlers split the indices per block and check them here, before any weight is
touched. Two rules exist because the two weight axes of a grouped layer differ:

* *equal counts*: rows of a grouped conv are independent, so each block may
  lose different rows as long as every surviving block loses as many;
* *equal positions*: a grouped conv's in-channel columns are shared by all
  blocks (weight dim 1 has one column per local position), so every surviving
  block must lose exactly the same local positions.

In both rules a block that loses every position ("full") simply disappears.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidIndicesError

__all__ = ["BlockSplit", "split_blocks"]


@dataclass(frozen=True)
class BlockSplit:
    """Pruning indices seen block by block.

    Attributes:
        block_size: Channels per block.
        local: For every block (by position), the sorted local positions it loses.
    """

    block_size: int
    local: tuple[tuple[int, ...], ...]

    @property
    def num_blocks(self) -> int:
        return len(self.local)

    @property
    def full(self) -> tuple[int, ...]:
        """Blocks that lose every position and therefore disappear."""
        return tuple(b for b, pos in enumerate(self.local) if len(pos) == self.block_size)

    @property
    def survivors(self) -> tuple[int, ...]:
        """Blocks that keep at least one position."""
        return tuple(b for b, pos in enumerate(self.local) if len(pos) < self.block_size)

    def equal_counts(self, owner: str, unit: str, allow_full: bool = True) -> int:
        """Return how many positions each surviving block loses; raise if they differ.

        Args:
            owner: The layer, for the error message.
            unit: What a block is called ("group", "head").
            allow_full: Whether whole blocks may disappear (False for attention
                heads, whose number is fixed by ``num_heads``).

        Raises:
            InvalidIndicesError: surviving blocks would end up with different sizes.
        """
        kept = self.survivors if allow_full else tuple(range(self.num_blocks))
        counts = {b: len(self.local[b]) for b in kept}
        if len(set(counts.values())) > 1:
            lost = ", ".join(f"{unit} {b}: {c}" for b, c in counts.items())
            whole = f"whole {unit}s or " if allow_full else ""
            raise InvalidIndicesError(
                f"{owner}: every {unit} of {self.block_size} channels must lose the same number of "
                f"channels, but they would lose {lost}; prune {whole}an equal number from every {unit}"
            )
        return next(iter(counts.values()), 0)

    def equal_positions(self, owner: str, unit: str) -> tuple[int, ...]:
        """Return the local positions every surviving block loses; raise if they differ.

        Raises:
            InvalidIndicesError: surviving blocks would lose different local positions.
        """
        sets = {b: self.local[b] for b in self.survivors}
        if len(set(sets.values())) > 1:
            lost = ", ".join(f"{unit} {b}: {list(p)}" for b, p in sets.items())
            raise InvalidIndicesError(
                f"{owner}: every {unit} of {self.block_size} channels shares one weight slice, so all "
                f"{unit}s must lose the same local positions, but they would lose {lost}; prune whole "
                f"{unit}s or the same positions (i % {self.block_size}) in every {unit}"
            )
        return next(iter(sets.values()), ())


def split_blocks(idxs: torch.Tensor, block_size: int, num_blocks: int) -> BlockSplit:
    """Split sorted, in-range indices into per-block local positions."""
    if num_blocks == 1:  # an ungrouped layer: the indices are the local positions, no loop per index
        return BlockSplit(block_size=block_size, local=(tuple(idxs.tolist()),))
    local: list[list[int]] = [[] for _ in range(num_blocks)]
    for i in idxs.tolist():
        local[i // block_size].append(i % block_size)
    return BlockSplit(block_size=block_size, local=tuple(tuple(p) for p in local))
