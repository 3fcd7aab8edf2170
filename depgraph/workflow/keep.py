"""What a prune keeps whole, and how a Hugging Face model's pruner treats attention: one answer for every path.

``prune_model`` (a model in memory) and ``depgraph.streaming`` (a checkpoint planned on
``meta``, streamed or loaded whole) both take the layers they protect and the
attention settings of their :class:`~depgraph.pruner.BasePruner` from
:func:`hf_prune_settings`, so the same options protect the same layers and remove the
same heads on both paths (the streamed result is tested bit for bit against the
in-memory one).

The settings are the widths a transformers config can describe after the prune:
the embedding and the LM head (or a task head) keep their outputs, so the hidden size
stays unless ``prune_hidden``; heads go whole and keep their size (RoPE frequencies,
``head_dim``), and with ``head_ratio=0`` no head goes.

Example:
    >>> settings = hf_prune_settings(model, head_ratio=0.25, ignore=["model.layers.0.mlp"])
    >>> BasePruner(model, example, importance, pruning_ratio=0.2, **settings.pruner_kwargs()).step()
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..errors import OptionError

__all__ = ["TASK_HEADS", "named_layers", "hf_kept_layers", "HFPruneSettings", "hf_prune_settings"]

#: Attributes holding a Hugging Face model's task head, whose outputs are the task's classes or space.
TASK_HEADS = ("classifier", "score", "head", "visual_projection", "text_projection")


def named_layers(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The modules of ``model`` called ``names`` (qualified names), in that order.

    Raises:
        OptionError: some names are no module of the model; each gets its closest names, if any.
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        hints = [f"{n!r}" + (f" (did you mean {', '.join(c)}?)" if (c := difflib.get_close_matches(n, modules, 3))
                             else "") for n in missing]
        raise OptionError(f"ignore names no layer of the model ({type(model).__name__}): " + "; ".join(hints))
    return [modules[n] for n in names]


def hf_kept_layers(model: nn.Module, prune_hidden: bool = False) -> list[nn.Module]:
    """The layers a Hugging Face model keeps whole: input embedding, output embedding, task head.

    The output embedding's and task head's outputs are the vocabulary or the classes. The
    input embedding's are the hidden size, kept so the residual stream stays, unless
    ``prune_hidden`` (then one group prunes it across every layer).
    """
    keep: list[nn.Module] = []
    embeddings = (None if prune_hidden else model.get_input_embeddings(), model.get_output_embeddings())
    head = next((getattr(model, n) for n in TASK_HEADS if isinstance(getattr(model, n, None), nn.Module)), None)
    for m in (*embeddings, head):
        if m is not None and all(m is not k for k in keep):
            keep.append(m)
    return keep


@dataclass(frozen=True)
class HFPruneSettings:
    """The layers kept whole and the attention settings of a Hugging Face model's pruner.

    Attributes:
        ignored_layers: :func:`hf_kept_layers`, then the ``ignore`` names' modules.
        head_ratio: fraction of attention (key/value) heads removed per layer; 0 removes none.
    """

    ignored_layers: list[nn.Module]
    head_ratio: float

    def pruner_kwargs(self) -> dict[str, Any]:
        """``BasePruner`` keyword arguments: ``ignored_layers`` and whole heads of unchanged size.

        ``prune_head_dims=False`` leaves every attention group's channels alone, so with
        ``head_ratio=0`` attention is untouched without being ignored (its output projection
        stays in the hidden-size group that ``prune_hidden`` prunes).
        """
        return dict(ignored_layers=list(self.ignored_layers), prune_num_heads=self.head_ratio > 0,
                    head_pruning_ratio=self.head_ratio, prune_head_dims=False)


def hf_prune_settings(model: nn.Module, *, head_ratio: float = 0.0, ignore: Sequence[str] = (),
                      prune_hidden: bool = False) -> HFPruneSettings:
    """What a prune of the Hugging Face ``model`` keeps and how it treats attention.

    Args:
        model: the model to prune (on any device, ``meta`` included).
        head_ratio: fraction of attention heads removed per layer, in [0, 1).
        ignore: qualified names of more layers whose outputs are kept.
        prune_hidden: prune the hidden size too (the input embedding is then not kept).

    Returns:
        A :class:`HFPruneSettings`.

    Raises:
        OptionError: ``head_ratio`` outside [0, 1) or ``ignore`` names no module of the model.
    """
    if isinstance(head_ratio, bool) or not isinstance(head_ratio, (int, float)) or not 0.0 <= head_ratio < 1.0:
        raise OptionError(f"head_ratio must be in [0, 1), got {head_ratio!r}")
    keep = hf_kept_layers(model, prune_hidden)
    keep += [m for m in named_layers(model, ignore) if all(m is not k for k in keep)]
    return HFPruneSettings(keep, float(head_ratio))

