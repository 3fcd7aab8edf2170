"""Training data for ``depgraph recover`` read from a path: an image folder, a text file or a ``.jsonl``.

A minimal reader behind one function (:func:`open_dataset`); the command line
calls only that, so a richer reader can take its place.

* a folder of images: with one subfolder per class (``ImageFolder`` layout) the
  samples are ``(image, class index)``, classes in sorted order; a flat folder
  gives ``(image,)`` without labels. Images are converted to the model's
  channel count, resized to ``image_size`` and normalised with ``mean``/``std``.
* a ``.txt`` file: tokenized as one stream and cut into blocks of ``seq_len``
  tokens (the usual causal-LM packing): ``{"input_ids"}``.
* a ``.jsonl`` file: one JSON object a line, with ``text`` (tokenized, padded
  or cut to ``seq_len``, with ``attention_mask``) or ``input_ids``, and
  optionally ``label`` (an integer class).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import RecoveryError

__all__ = ["open_dataset", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class _Images(Dataset):
    def __init__(self, files: list[tuple[Path, int | None]], channels: int, size: tuple[int, int],
                 mean: Sequence[float], std: Sequence[float]):
        self.files, self.channels, self.size = files, channels, size
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        from PIL import Image

        path, label = self.files[i]
        with Image.open(path) as im:
            im = im.convert("L" if self.channels == 1 else "RGB").resize((self.size[1], self.size[0]))
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        x = data.reshape(self.size[0], self.size[1], -1).permute(2, 0, 1).float().div(255.0)  # (C, H, W)
        x = (x - self.mean) / self.std
        return (x,) if label is None else (x, torch.tensor(label))


class _Tokens(Dataset):
    def __init__(self, samples: list[dict[str, torch.Tensor]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.samples[i]


def open_dataset(path: str | os.PathLike, *, tokenizer: Any = None, seq_len: int = 128,
                 image_size: tuple[int, int] = (224, 224), channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 max_samples: int | None = None) -> Dataset:
    """A dataset read from ``path`` (see the module docstring for the accepted layouts).

    Raises:
        RecoveryError: the path is missing, empty, of an unknown kind, or text without a tokenizer.
    """
    p = Path(path)
    if p.is_dir():
        return _image_folder(p, image_size, channels, mean, std, max_samples)
    if not p.is_file():
        raise RecoveryError(f"data {os.fspath(path)!r} does not exist")
    if p.suffix.lower() not in (".txt", ".jsonl"):
        raise RecoveryError(f"data {os.fspath(path)!r}: give an image folder, a .txt file or a .jsonl file")
    if p.suffix.lower() == ".jsonl":
        return _jsonl(p, tokenizer, seq_len, max_samples)
    if tokenizer is None:
        raise RecoveryError(f"data {os.fspath(path)!r} is text, but the model folder has no tokenizer")
    ids = tokenizer(p.read_text(encoding="utf-8"))["input_ids"]
    if not ids:
        raise RecoveryError(f"data {os.fspath(path)!r} holds no text")
    blocks = [ids[i:i + seq_len] for i in range(0, max(len(ids) - seq_len, 0) + 1, seq_len)]
    samples = [{"input_ids": torch.tensor(b)} for b in blocks[:max_samples]]
    return _Tokens(samples)


def _image_folder(p: Path, size: tuple[int, int], channels: int, mean: Sequence[float] | None,
                  std: Sequence[float] | None, max_samples: int | None) -> Dataset:
    def images(folder: Path) -> list[Path]:
        return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)

    classes = sorted(d for d in p.iterdir() if d.is_dir())
    files: list[tuple[Path, int | None]]
    if classes:
        files = [(f, c) for c, d in enumerate(classes) for f in images(d)]
    else:
        files = [(f, None) for f in images(p)]
    if not files:
        raise RecoveryError(f"data folder {os.fspath(p)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if max_samples is not None:
        files = files[:: max(1, len(files) // max_samples)][:max_samples]  # spread over the classes
    default_mean, default_std = ((0.5,), (0.5,)) if channels == 1 else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return _Images(files, channels, size, mean or default_mean, std or default_std)


def _jsonl(p: Path, tokenizer: Any, seq_len: int, max_samples: int | None) -> Dataset:
    samples = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecoveryError(f"{os.fspath(p)}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not ({"text", "input_ids"} & set(row)):
            raise RecoveryError(f"{os.fspath(p)}:{n}: each line must be an object with 'text' or 'input_ids'")
        if "input_ids" in row:
            ids = list(row["input_ids"])[:seq_len]
        elif tokenizer is None:
            raise RecoveryError(f"{os.fspath(p)}:{n} has 'text', but the model folder has no tokenizer")
        else:
            ids = tokenizer(row["text"])["input_ids"][:seq_len]
        pad = getattr(tokenizer, "pad_token_id", None) or 0
        sample = {"input_ids": torch.tensor(ids + [pad] * (seq_len - len(ids))),
                  "attention_mask": torch.tensor([1] * len(ids) + [0] * (seq_len - len(ids)))}
        if "label" in row:
            sample["labels"] = torch.tensor(int(row["label"]))
        samples.append(sample)
        if max_samples is not None and len(samples) >= max_samples:
            break
    if not samples:
        raise RecoveryError(f"{os.fspath(p)} holds no samples")
    return _Tokens(samples)
