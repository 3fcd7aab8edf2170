"""What to prune in a causal LM checkpoint: one options object shared by the streamed and in-memory paths.

The recipe is the one a transformers config can describe after pruning: the
same fraction of MLP channels and of key/value heads (with the query heads that
read them) goes from every layer, the embedding and LM head are kept (so the
hidden size stays) and head dims stay (RoPE frequencies). Both checkpoint paths build
their :class:`~depgraph.pruner.BasePruner` through :meth:`PruneOptions.make_pruner`, which
is why they decide the same channels; the layers kept and the attention settings come from
:func:`~depgraph.workflow.keep.hf_prune_settings`, as ``prune_model``'s do in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..errors import OptionError

if TYPE_CHECKING:
    from ..workflow.keep import HFPruneSettings

__all__ = ["PruneOptions", "IMPORTANCES", "DATA_FREE", "DATA_AWARE", "COMPENSATIONS"]

#: Criteria that read weights only (or nothing).
DATA_FREE = ("magnitude", "l2", "l1", "lamp", "fpgm", "random")
#: Criteria calibrated on data (``calib=``): the calibration pass runs one layer's weights at a time.
DATA_AWARE = ("activation_weight", "fluctuation")
#: Every criterion the checkpoint paths compute.
IMPORTANCES = DATA_FREE + DATA_AWARE
#: What each prune does to the consumers of removed channels (needs calibration data):
#: ``bias`` folds the removed inputs' mean into the bias (``BiasMean``), ``lstsq`` refits
#: the kept columns and the bias by least squares (``LeastSquares``).
COMPENSATIONS = ("bias", "lstsq")


@dataclass(frozen=True)
class PruneOptions:
    """Ratios and criterion of a checkpoint prune.

    Attributes:
        ratio: fraction of MLP channels removed from every layer, in [0, 1).
        head_ratio: fraction of key/value heads removed from every layer (default: ``ratio``);
            0 leaves attention alone.
        importance: one of :data:`IMPORTANCES` (``magnitude`` = ``l2``: group L2 magnitude);
            those of :data:`DATA_AWARE` need calibration data.
        global_pruning: rank channels across layers (the config must still describe the result).
        round_to: keep channel counts multiples of this.
        ignore: qualified names of more layers to keep.
        seed: seed of the ``random`` criterion's generator.
        compensation: None, or one of :data:`COMPENSATIONS` (calibrated on the same data).
        prune_hidden: also prune the hidden size (the residual stream: embedding, every norm,
            every projection's input or output on it, the LM head's input) at ``ratio``, as
            one group spanning every layer; the LM head's vocabulary is kept.
        damping: the least-squares ridge term (relative to the mean input energy).

    Raises:
        OptionError: a ratio outside [0, 1), an unknown criterion or compensation, a bad
            ``round_to`` or ``damping``.
    """

    ratio: float = 0.2
    head_ratio: float | None = None
    importance: str = "magnitude"
    global_pruning: bool = False
    round_to: int | None = None
    ignore: tuple[str, ...] = ()
    seed: int = 0
    compensation: str | None = None
    damping: float = 1e-4
    prune_hidden: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("ratio", "head_ratio"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                problems.append(f"{name} must be in [0, 1), got {v!r}")
        if self.importance not in IMPORTANCES:
            problems.append(f"importance must be one of {', '.join(IMPORTANCES)}, got {self.importance!r} "
                            "(other data-aware criteria, gradients and Hessians are not streamed)")
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            problems.append(f"round_to must be a positive integer, got {self.round_to!r}")
        if self.compensation is not None and self.compensation not in COMPENSATIONS:
            problems.append(f"compensation must be one of {', '.join(COMPENSATIONS)} or None, "
                            f"got {self.compensation!r}")
        if isinstance(self.damping, bool) or not isinstance(self.damping, (int, float)) or self.damping < 0:
            problems.append(f"damping must be a non-negative number, got {self.damping!r}")
        if not isinstance(self.prune_hidden, bool):
            problems.append(f"prune_hidden must be True or False, got {self.prune_hidden!r}")
        if problems:
            raise OptionError("; ".join(problems))
        object.__setattr__(self, "ignore", tuple(self.ignore))

    @property
    def data_aware(self) -> bool:
        """Whether the criterion needs calibration data (then inputs must be given)."""
        return self.importance in DATA_AWARE

    @property
    def needs_calib(self) -> bool:
        """Whether the recipe reads calibration data (a data-aware criterion or a compensation)."""
        return self.data_aware or self.compensation is not None

    @property
    def heads(self) -> float:
        """The head ratio in force: ``head_ratio`` when given, else the channel ratio."""
        return self.ratio if self.head_ratio is None else self.head_ratio

    def make_importance(self) -> Any:
        """A fresh criterion (a fresh seeded generator for ``random``: two runs draw the same scores)."""
        from .. import importance as imp

        if self.importance in ("magnitude", "l2", "l1"):
            return imp.GroupMagnitudeImportance(p=1 if self.importance == "l1" else 2)
        if self.importance == "random":
            return imp.RandomImportance(generator=torch.Generator().manual_seed(self.seed))
        return imp.create_importance(self.importance)

    def settings(self, model: nn.Module) -> HFPruneSettings:
        """The layers kept whole and the attention settings, as the in-memory ``prune_model`` takes them
        (:func:`~depgraph.workflow.keep.hf_prune_settings`): LM head, embedding (unless
        ``prune_hidden``), the ``ignore`` names; whole heads at ``heads``, head size kept.

        Raises:
            OptionError: an ``ignore`` name is not a module of the model.
        """
        from ..workflow.keep import hf_prune_settings

        return hf_prune_settings(model, head_ratio=self.heads, ignore=self.ignore, prune_hidden=self.prune_hidden)

    def ignored_layers(self, model: nn.Module) -> list[nn.Module]:
        """The layers the pruner keeps whole (see :meth:`settings`)."""
        return list(self.settings(model).ignored_layers)

    def make_pruner(self, model: nn.Module, example_inputs: Any, importance: Any) -> Any:
        """The :class:`~depgraph.pruner.BasePruner` of this recipe for ``model``."""
        from ..pruner import BasePruner

        return BasePruner(model, example_inputs, importance, pruning_ratio=self.ratio,
                          global_pruning=self.global_pruning, round_to=self.round_to,
                          **self.settings(model).pruner_kwargs())

    def describe(self) -> dict[str, Any]:
        """The options as plain data, written next to the pruned shards so a run can be reproduced."""
        return {"ratio": self.ratio, "head_ratio": self.heads, "importance": self.importance,
                "global_pruning": self.global_pruning, "round_to": self.round_to,
                "ignore": list(self.ignore), "seed": self.seed, "compensation": self.compensation,
                "damping": self.damping, "prune_hidden": self.prune_hidden}

