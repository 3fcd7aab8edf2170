"""Soft pruning: zero a group's channels instead of removing them.

Zeroing every entry a channel owns in every member (weights and biases on
the pruned side, norm affines) makes the network compute what the pruned one
would, while shapes stay, so training can continue and channels can be
revived (the "soft filter pruning" recipe). Norm layers still normalise over
the zeroed channels, exactly as the hard-pruned model differs there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .._types import CHANNEL_SIDES
from ..dependency.transaction import Transaction
from ..errors import UnsupportedOpError
from ..importance.channels import channel_slices

if TYPE_CHECKING:  # the graph imports criteria and pruners; only the types are needed here
    from ..dependency.group import Group


__all__ = ["zero_group"]


@torch.no_grad()
def zero_group(group: Group) -> None:
    """Set to zero every parameter entry owned by the group's channels.

    All or nothing: every member's layout is checked before anything is
    zeroed, and the zeroing runs in a :class:`~depgraph.dependency.transaction.Transaction`
    that puts the old values back on any exception or interrupt.

    Raises:
        UnsupportedOpError: a member's layer type has no known channel layout
            (nothing is changed in that case).
    """
    plans = []
    unknown = []
    for item in group.items:
        dep = item.dep
        side = dep.side
        slices = (
            channel_slices(dep.target.module, side, getattr(dep.target, "pruning_dim", None))
            if side in CHANNEL_SIDES else []
        )
        if not slices:
            unknown.append(f"{dep.target.name} ({type(dep.target.module).__name__})")
            continue
        plans.append((slices, torch.as_tensor(list(item.idxs), dtype=torch.long)))
    if unknown:
        raise UnsupportedOpError(
            "soft pruning cannot zero channels of "
            + ", ".join(unknown)
            + "; register their layout with depgraph.importance.register_channel_slices"
        )
    root = group.items[0].dep.target.name if group.items else "?"
    with Transaction(f"soft-pruning the group rooted at {root}") as tx:
        tx.cover_values(sl.param for slices, _ in plans for sl in slices)
        for slices, idxs in plans:
            for sl in slices:
                pos = sl.flat_positions(idxs).flatten()
                sl.param.data.view(-1)[pos] = 0
