"""The trained student as one plain module after a sharded run (FSDP / DeepSpeed ZeRO-3).

Why: FSDP and ZeRO-3 change the student in place: FSDP2 turns its parameters
into ``DTensor`` shards, FSDP1 and ZeRO-3 into views of flat shards, so the object
passed to ``recover`` can neither be saved nor run on one process afterwards
(``save_pretrained`` of a ``DTensor`` model fails on its storage). What survives
is the gathered full state dict. These two steps turn it back into a module of
the student's own class:

    skeleton = meta_skeleton(student)        # before prepare: the structure, no parameter memory
    ...                                      # the sharded training
    model = load_full(skeleton, full_state)  # after: real tensors assigned, ties kept
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..errors import RecoveryError

__all__ = ["meta_skeleton", "load_full"]


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters are on the meta device: its structure, not its memory.

    Buffers are copied as they are (they are small, and non-persistent ones such as
    rotary frequencies are in no state dict). A parameter shared by several modules
    (tied embeddings) stays one shared meta parameter in the copy. Take it before any
    hook is added to ``model``: hooks are copied with the modules.
    """
    memo: dict[int, object] = {}
    for p in model.parameters():  # one entry per parameter object, so ties survive the copy
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo)


def load_full(skeleton: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Assign the full ``state`` to ``skeleton``'s parameters and buffers (no copy); return ``skeleton``.

    Parameters tied in the skeleton are tied again afterwards (assignment gives each
    name its own tensor), so a state dict that names only one of them is complete.

    Raises:
        RecoveryError: ``state`` lacks a parameter or buffer of the skeleton, or has one it
            does not know; the gathered weights do not belong to this model.
    """
    ties: dict[int, list[str]] = {}  # parameter object -> every name it has
    for name, p in skeleton.named_parameters(remove_duplicate=False):
        ties.setdefault(id(p), []).append(name)
    tied = [names for names in ties.values() if len(names) > 1]
    missing, unexpected = skeleton.load_state_dict(state, strict=False, assign=True)
    given = set(state)
    covered = {n for names in tied if given & set(names) for n in names}  # one name of a tie is enough
    missing = [k for k in missing if k not in covered]
    if missing or unexpected:
        raise RecoveryError(f"recover: the gathered state dict does not fit the student: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    for names in tied:
        source = skeleton.get_parameter(next(n for n in names if n in given))
        for name in names:
            owner, _, attr = name.rpartition(".")
            setattr(skeleton.get_submodule(owner), attr, source)
    return skeleton
