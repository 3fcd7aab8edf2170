"""Shared fixtures of the test-suite.

Every test starts from the same random state, so random weights, inputs and
index choices are reproducible run to run. Tests of hand-built nets run
torch on one thread: their tensors are tiny, and a thread pool only adds
contention (on a busy 2-core machine a 4x4 conv took 20x longer on two
threads). Model-zoo tests (marker ``zoo``) keep torch's default.

The shared checking functions live in ``tests/_checks.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_state(request: pytest.FixtureRequest) -> Iterator[None]:
    torch.manual_seed(0)
    if request.node.get_closest_marker("zoo") is not None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
