"""How recovery calls a model on a batch and reads back logits, labels and hidden states.

One convention covers the three families without per-model code:

* a ``dict`` batch (Hugging Face style) is passed as keyword arguments; its
  ``labels`` (or ``label``) entry is taken out and becomes the task labels;
* a ``(inputs, labels)`` tuple or list (torchvision ``ImageFolder``, a
  ``TensorDataset``) passes ``inputs`` positionally; a one-element tuple or a
  bare tensor has no labels;
* the logits are the output itself (a tensor), its ``logits`` entry (a
  ``ModelOutput`` or dict), or the first tensor of a tuple.

A Hugging Face causal LM (a model that can ``generate`` and is not
encoder-decoder) whose batch has no labels is trained on its own inputs:
labels are ``input_ids`` with padding (``attention_mask == 0``) set to -100,
and the loss compares position ``t`` with token ``t + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import RecoveryError

__all__ = ["Batch", "split_batch", "logits_of", "is_causal_lm", "is_hf_model"]

IGNORE_INDEX = -100  # the label value cross-entropy skips (PyTorch's and Hugging Face's default)


@dataclass
class Batch:
    """One batch split into what the model receives and what the losses compare against."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    labels: torch.Tensor | None
    mask: torch.Tensor | None  # (B, T) 1 = a real token; None for non-token outputs


def is_hf_model(model: nn.Module) -> bool:
    """A ``transformers`` model: it has a ``config`` with ``model_type`` and ``save_pretrained``."""
    return hasattr(model, "save_pretrained") and hasattr(getattr(model, "config", None), "model_type")


def is_causal_lm(model: nn.Module) -> bool:
    """A Hugging Face decoder-only language model, trained on next-token prediction."""
    if not is_hf_model(model):
        return False
    can_generate = getattr(model, "can_generate", None)
    config = model.config
    return bool(callable(can_generate) and can_generate() and not getattr(config, "is_encoder_decoder", False))


def split_batch(batch: Any, causal_lm: bool) -> Batch:
    """Model inputs, labels and token mask of ``batch`` (see the module docstring).

    Raises:
        RecoveryError: the batch is none of the accepted forms.
    """
    if isinstance(batch, dict):
        kwargs = dict(batch)
        labels = kwargs.pop("labels", None)
        if labels is None:
            labels = kwargs.pop("label", None)
        mask = kwargs.get("attention_mask")
        if causal_lm and labels is None and "input_ids" in kwargs:
            labels = kwargs["input_ids"].clone()
            if mask is not None:
                labels[mask == 0] = IGNORE_INDEX
        if mask is None and causal_lm and "input_ids" in kwargs:
            mask = torch.ones_like(kwargs["input_ids"])
        return Batch((), kwargs, labels, mask)
    if isinstance(batch, torch.Tensor):
        if causal_lm:
            return split_batch({"input_ids": batch}, causal_lm)
        return Batch((batch,), {}, None, None)
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 2 and isinstance(batch[0], torch.Tensor):
        labels = batch[1] if len(batch) == 2 else None
        if labels is not None and not isinstance(labels, torch.Tensor):
            raise RecoveryError(f"the labels of an (inputs, labels) batch must be a tensor, got {type(labels).__name__}")
        if causal_lm:
            return split_batch({"input_ids": batch[0], **({"labels": labels} if labels is not None else {})}, True)
        return Batch((batch[0],), {}, labels, None)
    raise RecoveryError(
        f"cannot read a batch of type {type(batch).__name__}: recovery takes a dict of model keyword inputs "
        "(Hugging Face style, labels under 'labels'), an (inputs, labels) pair, an (inputs,) tuple or a tensor; "
        "give a collate_fn that returns one of these"
    )


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output (see the module docstring).

    Raises:
        RecoveryError: no tensor is found where logits are expected.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) or hasattr(output, "keys"):  # dict or HF ModelOutput
        if output.get("logits") is not None:
            return output["logits"]
        first = next((v for v in output.values() if isinstance(v, torch.Tensor)), None)
    elif isinstance(output, (tuple, list)):
        first = next((v for v in output if isinstance(v, torch.Tensor)), None)
    else:
        first = getattr(output, "logits", None)
    if not isinstance(first, torch.Tensor):
        raise RecoveryError(f"cannot find logits in a model output of type {type(output).__name__}: "
                            "the model must return a tensor, a tuple starting with one, or an output with .logits")
    return first
