"""What a model takes as input: the one description sources, calibration data and targets share.

A source (a torchvision name, a Hugging Face folder, a pickled module) knows
what its model reads: images of some ``(C, H, W)`` normalised some way, or
token ids from some tokenizer. :class:`InputSpec` carries that, so that
calibration files are turned into batches the model accepts, and a file that
cannot fit (a grey-scale folder for an RGB model, text for a model without a
tokenizer) is refused before any long work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CalibrationDataError

__all__ = ["InputSpec", "IMAGENET_MEAN", "IMAGENET_STD", "input_spec_for_checkpoint"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How to feed a model one batch.

    Attributes:
        kind: ``"image"`` (pixels ``(B, C, H, W)``), ``"text"`` (token ids ``(B, T)``) or
            ``"tensor"`` (any other tensor of per-sample ``shape``).
        shape: per-sample shape: ``(C, H, W)`` for images, ``(T,)`` for text (the sequence length of
            the example input), the sample's shape otherwise.
        key: the keyword the model takes the tensor as (``"pixel_values"``, ``"input_ids"``);
            None: the first positional argument.
        mean, std: per-channel normalisation of images scaled to [0, 1] (None: none).
        tokenizer: a tokenizer object, or the folder holding one (text only).
        vocab_size: token ids must be below it (text only; None: unchecked).
    """

    kind: str
    shape: tuple[int, ...]
    key: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    tokenizer: Any = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("image", "text", "tensor"):
            raise ValueError(f"InputSpec.kind must be 'image', 'text' or 'tensor', got {self.kind!r}")

    def wrap(self, x: torch.Tensor) -> Any:
        """The batch as the model is called with it: ``{key: x}`` or ``x``."""
        return {self.key: x} if self.key is not None else x

    def unwrap(self, batch: Any) -> torch.Tensor | None:
        """The main tensor of a batch in the model's form (None when there is none to check)."""
        if isinstance(batch, torch.Tensor):
            return batch
        if isinstance(batch, dict):
            value = batch.get(self.key) if self.key is not None else next(iter(batch.values()), None)
            return value if isinstance(value, torch.Tensor) else None
        return None

    def example(self, batch_size: int = 1, device: torch.device | str = "cpu", seed: int = 0) -> Any:
        """A random batch of this spec (the example input the graph is traced with)."""
        g = torch.Generator().manual_seed(seed)
        if self.kind == "text":
            high = self.vocab_size if self.vocab_size is not None else 100
            x = torch.randint(0, high, (batch_size, *self.shape), generator=g)
        else:
            x = torch.randn(batch_size, *self.shape, generator=g)
        return self.wrap(x.to(device))

    def describe(self) -> str:
        """``"images (3, 224, 224)"``, ``"token ids (vocabulary 32000)"`` ..."""
        if self.kind == "image":
            return f"images {self.shape}" + (f" as {self.key}=" if self.key else "")
        if self.kind == "text":
            return "token ids" + (f" (vocabulary {self.vocab_size})" if self.vocab_size else "")
        return f"tensors of per-sample shape {self.shape}"


def input_spec_for_checkpoint(folder: str | Path, seq_len: int = 128) -> InputSpec:
    """The input of the language model saved in ``folder``, read from its ``config.json`` alone.

    Lets a caller that never builds the model (the streamed checkpoint path) tokenise
    calibration text with the checkpoint's tokenizer and check the ids against its vocabulary.

    Raises:
        CalibrationDataError: ``folder`` has no ``config.json``.
    """
    config = Path(folder) / "config.json"
    if not config.is_file():
        raise CalibrationDataError(f"{folder} has no config.json: not a save_pretrained folder")
    data = json.loads(config.read_text())
    vocab = data.get("vocab_size") or data.get("text_config", {}).get("vocab_size")
    return InputSpec("text", (seq_len,), key="input_ids", tokenizer=str(folder), vocab_size=vocab)
