"""How many DataLoader worker processes ``num_workers="auto"`` gives a recovery.

Workers pay off when producing a sample costs work (an image decoded from its file, a
user's dataset that reads from disk) and there are cores the training step leaves idle: a
CPU run computes on ``torch.get_num_threads()`` threads per process, an accelerator run needs
one core per process to feed its device. Data already in memory (tokenised text, a
``TensorDataset``, anything marked ``in_memory = True``) gets none: a worker would only add
copies between processes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import TensorDataset

from ..workflow.threads import usable_cores

__all__ = ["MAX_AUTO_WORKERS", "auto_workers", "resolve_workers", "in_memory"]

#: The most workers ``"auto"`` starts per training process (each holds a copy of the dataset object).
MAX_AUTO_WORKERS = 8


def in_memory(data: Any) -> bool:
    """Whether every sample of ``data`` is already a tensor in memory (no work per sample to overlap)."""
    return isinstance(data, TensorDataset) or bool(getattr(data, "in_memory", False))


def auto_workers(data: Any, *, on_accelerator: bool, processes: int = 1, cores: int | None = None,
                 threads: int | None = None) -> int:
    """The idle cores per training process, at most :data:`MAX_AUTO_WORKERS`; 0 for data in memory.

    Args:
        data: the dataset the loader reads.
        on_accelerator: the step runs on a GPU (or another accelerator), not on CPU threads.
        processes: training processes on this machine (``LOCAL_WORLD_SIZE`` under a launcher).
        cores: cores this process may use (default: its CPU affinity).
        threads: CPU threads of the step (default: ``torch.get_num_threads()``).
    """
    if in_memory(data):
        return 0
    per_process = (usable_cores() if cores is None else cores) // max(processes, 1)
    busy = 1 if on_accelerator else (torch.get_num_threads() if threads is None else threads)
    return max(0, min(MAX_AUTO_WORKERS, per_process - busy))


def resolve_workers(spec: int | str, data: Any, *, on_accelerator: bool, processes: int) -> int:
    """``"auto"`` -> :func:`auto_workers` with this machine's local process count, ``N`` -> N."""
    if spec != "auto":
        return int(spec)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    return auto_workers(data, on_accelerator=on_accelerator, processes=local)
