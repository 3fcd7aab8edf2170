"""Image files as model input: listed once, each decoded only when a sample is asked for.

    files = list_images("photos/")                 sorted, sub-folders included
    x = read_image(files[0], spec)                 (C, H, W) float, resized, in [0, 1], then normalised
    data = ImageFiles(files, spec, labels=None)    a map-style Dataset decoding in __getitem__

Calibration (:func:`~depgraph.workflow.load_calibration`) reads its few dozen
images at once through :func:`read_image`; recovery trains on whole folders
through :class:`ImageFiles`, so that no image is decoded before a batch needs
it and none is held in memory after. Profiled on 15 000 28x28 PNGs, decoding
them all up front took 3-4 s of one quiet core (proportionally longer on a
loaded one) before the first step, most of it Pillow's per-file Python (open
and header parsing, load, ``tobytes``) rather than the PNG decoding itself;
reading per sample spreads that cost over the training steps (a batch of 128
is ~25 ms next to a ~1 s ResNet-20 step) or, with DataLoader workers, moves it
beside them. ``torchvision.io.decode_png`` (one C call per file) cut the decoding
by about a third on those PNGs, but it returns a palette PNG's indices where
Pillow returns its colours, and torchvision deprecates its image codecs since
0.29: Pillow stays the one decoder, so every path gives the same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import CalibrationDataError
from .inputs import InputSpec

__all__ = ["IMAGE_SUFFIXES", "ImageFiles", "list_images", "read_image", "check_image_spec"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_TEXT_SUFFIXES = (".txt", ".text", ".md", ".jsonl")
_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder`` (recursively), in sorted path order.

    Raises:
        CalibrationDataError: the folder holds no image (naming a text file there, if any).
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        texts = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _TEXT_SUFFIXES)
        hint = f"; it holds text ({', '.join(texts[:3])}): give the file itself" if texts else ""
        raise CalibrationDataError(f"{folder} holds no image ({', '.join(IMAGE_SUFFIXES)}){hint}")
    return files


def check_image_spec(spec: InputSpec, where: str | os.PathLike) -> str:
    """The Pillow mode images are converted to for ``spec``; refuses a model that does not take images.

    Raises:
        CalibrationDataError: the model does not take images, takes a channel count an image file
            cannot give, or Pillow is missing.
    """
    if spec.kind != "image":
        raise CalibrationDataError(f"{where} holds images, but the model takes {spec.describe()}: "
                                   "give calibration data of that kind")
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        raise CalibrationDataError("reading an image folder needs Pillow: pip install pillow") from None
    mode = _PIL_MODES.get(spec.shape[0])
    if mode is None:
        raise CalibrationDataError(f"the model takes {spec.shape[0]}-channel images; an image folder gives 1, 3 "
                                   "or 4 channels: pass a Python dataset instead")
    return mode


def read_image(path: str | os.PathLike, spec: InputSpec, mode: str | None = None) -> torch.Tensor:
    """One image as ``spec`` takes it: ``(C, H, W)`` float32, bilinear-resized, scaled to [0, 1], normalised.

    Args:
        path: the image file.
        spec: the model's input (channels, height, width, mean and std).
        mode: the Pillow mode for ``spec`` (from :func:`check_image_spec`; computed when None).

    Raises:
        CalibrationDataError: the file cannot be decoded.
    """
    mode = mode or check_image_spec(spec, path)
    x = _pil_pixels(path, mode, spec.shape).float() / 255.0  # (C, H, W) bytes -> [0, 1]
    if spec.mean is not None and spec.std is not None:
        x = (x - torch.tensor(spec.mean).view(-1, 1, 1)) / torch.tensor(spec.std).view(-1, 1, 1)
    return x


def _pil_pixels(path: str | os.PathLike, mode: str, shape: tuple[int, ...]) -> torch.Tensor:
    """``(C, H, W)`` uint8 through Pillow: converted to ``mode``, bilinear-resized to ``shape``."""
    from PIL import Image

    channels, height, width = shape
    try:
        with Image.open(path) as im:
            im = im.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
            raw = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    except OSError as e:
        raise CalibrationDataError(f"cannot read image {path}: {e}") from None
    return raw.view(height, width, channels).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)


class ImageFiles(Dataset):
    """A map-style dataset of image files, decoded in ``__getitem__``: ``x`` or ``(x, label)``.

    ``x`` is in the form the model is called with (``spec.wrap``: a tensor, or ``{key: tensor}``);
    the label, when ``labels`` is given, a 0-d int64 tensor. Nothing is decoded when it is built,
    so a run that uses a part of a large folder decodes only that part, and DataLoader workers
    decode beside the training step.
    """

    def __init__(self, files: Sequence[str | os.PathLike], spec: InputSpec, labels: Sequence[int] | None = None):
        if labels is not None and len(labels) != len(files):
            raise CalibrationDataError(f"ImageFiles: {len(labels)} labels for {len(files)} files")
        self.files = [Path(f) for f in files]
        self.spec = spec
        self.labels = torch.tensor(list(labels), dtype=torch.int64) if labels is not None else None
        self.mode = check_image_spec(spec, self.files[0].parent if self.files else "the image list")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        x = self.spec.wrap(read_image(self.files[i], self.spec, self.mode))
        return x if self.labels is None else (x, self.labels[i])  # a 0-d int64 tensor
