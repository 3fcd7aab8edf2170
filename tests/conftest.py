"""Shared fixtures of the test-suite.

Every test starts from the same random state, so random weights, inputs and
index choices are reproducible run to run. Every test runs torch on one
thread: most tensors are tiny, and on a busy 2-core machine a thread pool
only adds contention (a 4x4 conv took 20x longer on two threads, and a
torchvision EfficientNet-B1 zoo test 45 s instead of 10 s).

The shared checking functions live in ``tests/_checks.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_state() -> Iterator[None]:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
