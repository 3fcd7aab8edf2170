"""Integration models are tiny (two layers, widths of 32): torch runs them on one thread.

They carry the ``zoo`` marker (real architectures), which otherwise keeps torch's
default thread count; on a loaded machine a thread pool made these tests 20x slower.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
