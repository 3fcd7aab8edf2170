"""Shared fixtures of the test-suite.

Every test starts from the same random state, so random weights, inputs and
index choices are reproducible run to run. The shared checking functions live
in ``tests/_checks.py``.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
