"""Group scores shared by the trials of a ratio search: each group of the unpruned model is scored once.

Every trial of :func:`~depgraph.workflow.prune_to_target` prunes a fresh copy of the same
unpruned model with a copy of the same calibrated criterion, and the pruner scores every
group before it prunes any (``BasePruner._prune``). A group's scores therefore depend on
the unpruned weights and the calibration statistics, not on the trial's ratio; only the
ratio decides how many channels go. Recomputing them per trial is pure waste, and for
criteria with real work per group (``reconstruction``'s greedy least-squares pass is
``O(n^3)`` per consumer) it dominated the search.

:class:`TrialScores` keeps the scores of the groups planned on an unpruned graph
(``group.version == 0``) under a key made of names, not objects (each trial has its own
copy): every member's node name, pruning function, side and channel indices. A group
planned after a commit of the trial (the pruner re-plans a group an earlier one overlapped)
is scored afresh. Criteria are called exactly as before on the first trial, so the search
result is the same with and without the cache (``tests/workflow/test_score_cache.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # the graph imports the workflow's criteria; only the type is needed here
    from ..dependency.group import Group

__all__ = ["TrialScores", "CachedImportance"]


def _indices_digest(idxs: Any) -> bytes:
    data = torch.as_tensor(list(idxs) if not isinstance(idxs, torch.Tensor) else idxs, dtype=torch.long)
    return hashlib.blake2b(data.cpu().numpy().tobytes(), digest_size=16).digest()


def group_key(group: Group) -> Hashable | None:
    """A name-based key of ``group`` valid across copies of one unpruned model; None: do not cache it.

    Only groups planned on a graph with no commit yet (``version == 0``) get a key: their
    members' widths and weights are the unpruned model's in every trial.
    """
    if getattr(group, "version", None) != 0:
        return None
    from ..dependency.node import fn_name

    members = []
    for dep, idxs in group:
        members.append((dep.target.name, fn_name(dep.handler), dep.side, len(idxs), _indices_digest(idxs)))
    return tuple(members)


class TrialScores:
    """The score store of one search: share it between the :class:`CachedImportance` of each trial.

    Attributes:
        hits: groups whose scores came from the store.
        misses: groups the criterion scored (and the store kept when they had a key).
    """

    def __init__(self) -> None:
        self._scores: dict[Hashable, torch.Tensor | None] = {}
        self.hits = 0
        self.misses = 0

    def wrap(self, importance: Any) -> CachedImportance:
        """``importance`` (one trial's copy) answering from this store where it can."""
        return CachedImportance(importance, self)

    def score(self, importance: Any, group: Group) -> torch.Tensor | None:
        """``importance(group)``, from the store when ``group`` has a key that was scored before."""
        key = group_key(group)
        if key is not None and key in self._scores:
            self.hits += 1
            kept = self._scores[key]
            return kept.clone() if kept is not None else None  # a copy: in-place use cannot reach the store
        self.misses += 1
        scores = importance(group)
        if key is not None:
            self._scores[key] = scores.detach().clone() if isinstance(scores, torch.Tensor) else scores
        return scores

    def __len__(self) -> int:
        return len(self._scores)


class CachedImportance:
    """A criterion that looks each unpruned group up in a :class:`TrialScores` before scoring it.

    Every other attribute is the wrapped criterion's (``stats`` for bias compensation, ...).
    """

    def __init__(self, importance: Any, store: TrialScores) -> None:
        self.importance = importance
        self.store = store

    def __call__(self, group: Group) -> torch.Tensor | None:
        return self.store.score(self.importance, group)

    def __getattr__(self, name: str) -> Any:
        if name in ("importance", "store"):  # not set yet (unpickling, copying): no recursion
            raise AttributeError(name)
        return getattr(self.importance, name)
