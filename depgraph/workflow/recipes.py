"""Criterion and compensation by name, calibrated on the user's data, with per-family defaults.

The defaults are the best rows measured in ``benchmarks/quality`` (README "Quality on real
weights and data"):

    language models, with data   reconstruction + lstsq when its  (SmolLM2 at 20% fewer params: 2.19x
                                 Gram matrices fit the budget,     ppl against 2.96x for fluctuation +
                                 else block by block when one      bias, which keeps 2 numbers a channel;
                                 block's do, else fluctuation +    block by block: 1.93x against one
                                 bias                              pass's 1.86x, 512 windows)
    vision models, with data     activation x weight, per group   (ResNet-20 at 2x MACs: -0.47 points
                                                                    after a short fine-tune, the best row)
    without data                 group L2 magnitude, per group     (no calibration possible; on LLMs it
                                                                    measured far worse: give data)

Reconstruction keeps a float64 Gram matrix of every pruned Linear's input, ``(C + 1)**2 * 8`` bytes
(:func:`linear_consumers`: a Llama's MLP down projections, and its attention output projections
when heads go): 0.57 GB on SmolLM2-135M (30 x 1536 inputs; needed with working copies: 0.76 GB),
31 GB on Llama-7B (32 x 11008; needed: 40.7 GB). So the language-model default is sized: :func:`resolve_recipe` marks it, and
:func:`choose_by_memory` picks reconstruction when those bytes (plus one layer's working copies)
fit the budget of :mod:`depgraph.workflow.calib_memory`; else reconstruction block by block
(:mod:`depgraph.workflow.blockwise`: one block's Gram matrices at a time, plus the hidden states)
when that fits; fluctuation + bias otherwise, and says which and why in the report. A criterion or
compensation the user names is never replaced.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..errors import OptionError

if TYPE_CHECKING:
    from .calib_memory import ReconstructionMemory

__all__ = ["Recipe", "Scoring", "resolve_recipe", "choose_by_memory", "build_scoring", "linear_consumers",
           "shrinkable_linears",
           "CRITERIA", "DATA_AWARE", "COMPENSATIONS"]

#: Criteria that read weights only (``l1``/``l2`` are the group magnitude with that p).
DATA_FREE = ("l2", "l1", "lamp", "fpgm", "bn_scale", "random")
#: Criteria calibrated on data (``taylor`` backpropagates the model's own loss or its predictions).
DATA_AWARE = ("activation", "activation_weight", "fluctuation", "reconstruction", "taylor")
CRITERIA = DATA_FREE + DATA_AWARE
#: ``bias``: fold removed channels' mean into the consumer's bias; ``lstsq``: refit consumers by least squares.
COMPENSATIONS = ("none", "bias", "lstsq")


@dataclass(frozen=True)
class Recipe:
    """What decides the channels: a criterion, a compensation and the allocation.

    Attributes:
        importance: one of :data:`CRITERIA`.
        compensation: one of :data:`COMPENSATIONS`.
        global_pruning: rank channels across groups (per-layer widths differ) or per group (uniform).
        why: where the choice came from (the user, or which measured default).
        sized: the language-model default, still to be sized by :func:`choose_by_memory`.
        blockwise: calibrate and prune the stack of blocks one block at a time
            (:mod:`depgraph.workflow.blockwise`; reconstruction + lstsq, per group).
    """

    importance: str
    compensation: str
    global_pruning: bool
    why: str
    sized: bool = False
    blockwise: bool = False

    def describe(self) -> str:
        """``"fluctuation + bias compensation, per group"``: the recipe in one phrase, for reports."""
        comp = "" if self.compensation == "none" else f" + {self.compensation} compensation"
        order = ", block by block" if self.blockwise else ""
        return f"{self.importance}{comp}, {'global' if self.global_pruning else 'per group'}{order}"


def resolve_recipe(importance: str | None, compensation: str | None, global_pruning: bool | None, *,
                   language_model: bool, has_data: bool, blockwise: bool = False) -> Recipe:
    """The recipe to run: the user's choices checked, the per-family default for the rest.

    ``blockwise`` is reconstruction + lstsq per group (what it is built on): the default
    criterion becomes that, and another criterion, compensation or global pruning is refused.

    Raises:
        OptionError: an unknown criterion or compensation, or one that needs data given none;
            ``blockwise`` with another recipe or without data.
    """
    if blockwise:
        return _blockwise_recipe(importance, compensation, global_pruning, has_data)
    problems = []
    if importance is not None and importance not in CRITERIA:
        problems.append(f"unknown importance {importance!r}; choose from {', '.join(CRITERIA)}")
    if compensation is not None and compensation not in COMPENSATIONS:
        problems.append(f"unknown compensation {compensation!r}; choose from {', '.join(COMPENSATIONS)}")
    if problems:
        raise OptionError("; ".join(problems))
    sized = importance is None and compensation is None and language_model and has_data
    if importance is None:
        if not has_data:
            importance, why = "l2", "default without calibration data"
        elif language_model:
            importance, why = "fluctuation", "default for language models (benchmarks/quality: SmolLM2)"
            if sized:
                why = "default for language models of any size (the memory reconstruction needs was not measured)"
        else:
            importance, why = "activation_weight", "default for vision models (benchmarks/quality: ResNet-20)"
    else:
        why = "chosen"
    if compensation is None:
        compensation = {"fluctuation": "bias", "reconstruction": "lstsq"}.get(importance, "none")
    if not has_data and (importance in DATA_AWARE or compensation != "none"):
        what = f"importance {importance!r}" if importance in DATA_AWARE else f"{compensation} compensation"
        raise OptionError(f"{what} is calibrated on data: give calibration data (--calib PATH) or a data-free "
                          f"criterion ({', '.join(DATA_FREE)}) without compensation")
    return Recipe(importance, compensation, bool(global_pruning), why, sized)


def _blockwise_recipe(importance: str | None, compensation: str | None, global_pruning: bool | None,
                      has_data: bool) -> Recipe:
    wrong = []
    if importance not in (None, "reconstruction"):
        wrong.append(f"importance {importance!r}")
    if compensation not in (None, "lstsq"):
        wrong.append(f"compensation {compensation!r}")
    if global_pruning:
        wrong.append("global pruning")
    if wrong:
        raise OptionError(f"block-by-block pruning is reconstruction + lstsq compensation, per group; it cannot "
                          f"use {', '.join(wrong)}")
    if not has_data:
        raise OptionError("block-by-block pruning is calibrated on data: give calibration data (--calib PATH)")
    why = "chosen" if importance or compensation else \
        "block by block: reconstruction + lstsq (one block's Gram matrices at a time)"
    return Recipe("reconstruction", "lstsq", False, why, blockwise=True)


def choose_by_memory(recipe: Recipe, memory: ReconstructionMemory) -> Recipe:
    """The sized language-model default: reconstruction + lstsq when ``memory`` fits in one pass, else block
    by block when that fits (``memory.blockwise_bytes`` is only set when block by block can run), else
    fluctuation + bias.

    ``recipe`` comes from :func:`resolve_recipe`; one the user chose (``sized`` False) is returned as is.
    """
    if not recipe.sized:
        return recipe
    if memory.fits or memory.blockwise_fits:
        return Recipe("reconstruction", "lstsq", recipe.global_pruning, memory.reason(),
                      blockwise=not memory.fits)
    return Recipe("fluctuation", "bias", recipe.global_pruning, memory.reason())


@dataclass
class Scoring:
    """A calibrated criterion and compensation mode, bound to one model (copy them together)."""

    importance: Any
    compensation: Any

    def copy_with(self, model: nn.Module, keep: Sequence[nn.Module]) -> tuple[nn.Module, Scoring, list[nn.Module]]:
        """A deep copy of the model, this scoring and the kept layers, sharing one memo.

        Statistics are keyed by module, so they must follow the copy; gradients (Taylor) are
        not copied by ``deepcopy`` and are carried over by hand. The least-squares Gram matrices
        are shared, not copied: nothing changes them after calibration (a new batch replaces a
        record), and copying them per search trial held two or three sets at once.
        """
        from ..importance import InputCovariance

        memo: dict[int, Any] = {}
        for part in (self.importance, self.compensation):
            cov = getattr(part, "cov", None)
            if isinstance(cov, InputCovariance):
                memo.update((id(record), record) for record in cov.values())
        model2, scoring, keep2 = copy.deepcopy((model, self, list(keep)), memo)
        for p, q in zip(model.parameters(), model2.parameters(), strict=True):
            if p.grad is not None:
                q.grad = p.grad.clone()
        return model2, scoring, keep2


def build_scoring(recipe: Recipe, model: nn.Module, batches: list[Any] | None, example_inputs: Any,
                  keep: Sequence[nn.Module], consumers: Sequence[nn.Module] | None = None,
                  pruner_kwargs: Mapping[str, Any] | None = None) -> Scoring:
    """Make ``recipe``'s criterion and compensation, calibrated on ``batches`` (one pass each).

    Args:
        consumers: :func:`linear_consumers` when already found (least squares measures them).
        pruner_kwargs: the pruner's attention settings, as :func:`linear_consumers` takes them.
    """
    from .. import importance as imp

    name, comp = recipe.importance, recipe.compensation
    cov = None
    if name == "reconstruction" or comp == "lstsq":
        layers = list(consumers) if consumers is not None else \
            linear_consumers(model, example_inputs, keep, pruner_kwargs)
        if not layers:
            raise OptionError("least-squares reconstruction refits nn.Linear consumers of pruned channels; "
                              f"{type(model).__name__} has none: use another criterion or compensation")
        cov = imp.collect_input_covariance(model, batches, layers=layers)
    if name in ("l1", "l2"):
        criterion: Any = imp.GroupMagnitudeImportance(p=int(name[1]))
    elif name == "random":
        criterion = imp.RandomImportance(generator=torch.Generator().manual_seed(0))
    elif name in ("activation_weight", "fluctuation"):
        criterion = imp.create_importance(name).calibrate(model, batches)
    elif name == "activation":
        criterion = imp.ActivationImportance()
        with criterion.compute_importance(model), torch.no_grad():
            for b in batches:
                _call(model.eval(), b)
    elif name == "reconstruction":
        criterion = imp.ReconstructionImportance(cov)
    elif name == "taylor":
        criterion = imp.GroupTaylorImportance()
        _accumulate_gradients(model, batches)
    else:
        criterion = imp.create_importance(name)
    mode = None
    if comp == "bias":
        stats = getattr(criterion, "stats", None)
        mode = imp.BiasMean(None if stats is not None else imp.collect_activation_stats(model, batches))
    elif comp == "lstsq":
        mode = imp.LeastSquares(cov)
    return Scoring(criterion, mode)


def _call(model: nn.Module, batch: Any) -> Any:
    from ..trace.recorder import call_model

    return call_model(model, batch)


def _accumulate_gradients(model: nn.Module, batches: list[Any]) -> None:
    """``.grad`` of the model's loss: its own (a language model on its ids) or cross-entropy on its predictions.

    Without labels, the predicted class is the label: the gradient then measures how much each
    weight supports the model's current decisions.
    """
    model.eval()
    model.zero_grad(set_to_none=True)
    for b in batches:
        batch = dict(b, labels=b["input_ids"]) if isinstance(b, dict) and "input_ids" in b \
            and "labels" not in b else b
        with torch.enable_grad():
            out = _call(model, batch)
            loss = getattr(out, "loss", None)
            if loss is None:
                logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
                if logits is None:
                    raise OptionError(f"taylor needs a loss: {type(model).__name__} returns no logits tensor")
                logits = logits.reshape(-1, logits.shape[-1])
                loss = nn.functional.cross_entropy(logits, logits.argmax(-1).detach())
            loss.backward()


def linear_consumers(model: nn.Module, example_inputs: Any, keep: Sequence[nn.Module],
                     pruner_kwargs: Mapping[str, Any] | None = None) -> list[nn.Module]:
    """The ``nn.Linear`` layers whose inputs some group the pruner may shrink removes (what least squares refits).

    Args:
        pruner_kwargs: the pruner's attention settings (:meth:`HFPruneSettings.pruner_kwargs`, without
            ``ignored_layers``): with heads kept whole and none removed, the attention output
            projections lose no input, so their Gram matrices are not measured.
    """
    from ..importance import GroupMagnitudeImportance
    from ..pruner import BasePruner

    pruner = BasePruner(model, example_inputs, GroupMagnitudeImportance(), pruning_ratio=0.0,
                        ignored_layers=list(keep), **dict(pruner_kwargs or {}))
    return shrinkable_linears(pruner)


def shrinkable_linears(pruner: Any) -> list[nn.Module]:
    """The ``nn.Linear`` layers whose inputs some group of ``pruner.shrinkable_groups()`` removes, in graph order.

    The one rule of what least squares measures, for every path that already has its pruner (the
    streamed checkpoint path plans on a meta model and asks its own pruner): a Linear that only a
    group the pruner leaves whole feeds (an attention output projection while no head goes) never
    loses an input, so its Gram matrix would never be read.
    """
    found: dict[int, nn.Module] = {}
    for group in pruner.shrinkable_groups():
        for dep, _ in group:
            m = dep.target.module
            if isinstance(m, nn.Linear) and pruner.DG.is_in_channel_pruning_fn(dep.handler):
                found.setdefault(id(m), m)
    return list(found.values())
