"""Training data for ``depgraph recover`` read from a path, through the calibration-data reader.

Files are read by the readers ``depgraph prune --calib`` uses
(:func:`depgraph.workflow.load_calibration`, and for images
:mod:`depgraph.workflow.images`), so both commands accept the same data and
refuse the same misfits. Recovery adds one thing calibration does not need:
labels. An image folder with one subfolder per class (``ImageFolder``
layout, classes in sorted order) gives ``(image, class index)`` samples; a
flat folder, a ``.txt`` or a ``.jsonl`` gives unlabelled samples (a causal LM
is then trained on next-token prediction, any other model on distillation
alone).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DepgraphError, RecoveryError

__all__ = ["open_dataset"]

_ALL = 1 << 62  # "no limit" for the reader's num_samples


class _Samples(Dataset):
    """Samples cut out of the reader's batches, each with its label when there is one."""

    in_memory = True  # tokenised or decoded already: DataLoader workers would only copy (recovery.workers)

    def __init__(self, batches: list[Any], label: int | None = None):
        self.items: list[Any] = []
        for batch in batches:
            for sample in _unbatch(batch):
                self.items.append(sample if label is None else (_main(sample), torch.tensor(label)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _unbatch(batch: Any) -> list[Any]:
    if isinstance(batch, torch.Tensor):
        return list(batch)
    n = len(next(iter(batch.values())))
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def _main(sample: Any) -> torch.Tensor:
    return sample if isinstance(sample, torch.Tensor) else next(iter(sample.values()))


def open_dataset(path: str | os.PathLike, spec: Any, *, seq_len: int | None = None,
                 max_samples: int | None = None) -> Dataset:
    """A dataset of the samples at ``path``, in the form ``spec`` (a :class:`~depgraph.workflow.InputSpec`) says.

    An image folder is listed here and decoded per sample as batches are drawn
    (:class:`~depgraph.workflow.images.ImageFiles`): training starts after one batch is
    read, uses only the images it draws, and can decode in DataLoader workers. Text is
    tokenised here, at once. ``max_samples`` takes that many samples evenly spread over the
    data (each class folder's files, a text's windows, a ``.jsonl``'s documents), not its first
    ones: sorted data would otherwise train on one corner of it.

    Raises:
        CalibrationDataError: the reader refuses the data (missing, empty, of a kind the model cannot
            read). An image file that cannot be decoded is refused when its batch is drawn.
        RecoveryError: a class subfolder holds no image.
    """
    from ..workflow import load_calibration
    from ..workflow.calibration_data import spread
    from ..workflow.images import ImageFiles, list_images

    limit = max_samples or _ALL
    p = Path(path)
    classes = sorted(d for d in p.iterdir() if d.is_dir()) if p.is_dir() else []
    if not classes:
        if p.is_dir():  # a flat image folder: unlabelled
            return ImageFiles(spread(list_images(p), limit), spec)
        return _Samples(load_calibration(p, spec, num_samples=limit, batch_size=256, seq_len=seq_len))
    per_class = -(-limit // len(classes))  # spread --max-samples over the classes
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(classes):
        try:
            found = spread(list_images(folder), per_class)
        except DepgraphError as e:
            raise RecoveryError(f"class folder {os.fspath(folder)!r} of {os.fspath(p)!r}: {e}") from None
        files += found
        labels += [label] * len(found)
    return ImageFiles(files, spec, labels)
