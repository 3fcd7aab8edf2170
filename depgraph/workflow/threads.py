"""How many CPU threads a command computes with: the idle cores, not every core.

PyTorch starts one OpenMP thread per core, and OpenMP threads wait for each other
(spinning) at the end of every parallel region. On a machine other processes keep
busy, one of the threads is often descheduled, so the others spin until it runs
again: every convolution pays that wait. Measured on 2 shared cores at load ~5, a
ResNet-20 training step (batch 128, 28x28 images, a teacher forward) took 2-7 s
with 2 threads and 0.6-0.9 s with 1 (benchmarks/quality/recover_resnet_cli.py).
``--threads auto`` therefore takes as many threads as there are idle cores, read
off the load average (as ``make --load-average`` does), at least one and at most
PyTorch's own count; an explicit ``OMP_NUM_THREADS`` or ``--threads N`` wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import OptionError

__all__ = ["auto_threads", "resolve_threads", "cpu_threads", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def auto_threads(cores: int | None = None, load: float | None = None, host_cores: int | None = None,
                 current: int | None = None) -> int:
    """The thread count for this process: the cores the machine's load leaves idle.

    The load average counts runnable processes over the whole machine, so it is read as a
    busy fraction of the machine's cores (``host_cores``) and applied to the cores this
    process may use (``cores``): a container with 8 of 96 cores at load 48 gets 4 threads.

    Args:
        cores: cores this process may run on (default: its CPU affinity).
        load: the 1-minute load average (default: ``os.getloadavg()``).
        host_cores: the machine's cores (default: ``os.cpu_count()``).
        current: the most threads to use (default: ``torch.get_num_threads()``).

    Returns:
        A count in ``[1, current]``; ``current`` when ``OMP_NUM_THREADS`` is set (the user
        chose) or the load cannot be read.
    """
    current = torch.get_num_threads() if current is None else current
    if os.environ.get("OMP_NUM_THREADS"):
        return current
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows)
            return current
    cores = usable_cores() if cores is None else cores
    host_cores = (os.cpu_count() or cores) if host_cores is None else host_cores
    busy = min(1.0, max(0.0, load) / max(host_cores, 1))
    idle = int(cores * (1.0 - busy) + 0.5)
    return max(1, min(current, idle))


def resolve_threads(spec: str | int | None) -> int | None:
    """``"auto"`` -> :func:`auto_threads`, ``N`` -> N, None -> None (leave PyTorch's setting).

    Raises:
        OptionError: ``spec`` is neither ``"auto"`` nor a positive integer.
    """
    if spec is None:
        return None
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return auto_threads()
    try:
        n = int(spec)
    except (TypeError, ValueError):
        n = 0
    if isinstance(spec, bool) or n < 1 or str(n) != str(spec).strip():
        raise OptionError(f"threads must be 'auto' or a positive integer, got {spec!r}")
    return n


@contextmanager
def cpu_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored after it.

    ``n=None`` leaves the count as it is. Yields the count in effect.
    """
    before = torch.get_num_threads()
    if n is None or n == before:
        yield before
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
