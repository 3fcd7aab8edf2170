"""Tests for depgraph/functional/_blocks.py: per-block index checks."""

from __future__ import annotations

import pytest
import torch

from depgraph.errors import InvalidIndicesError
from depgraph.functional._blocks import split_blocks


def _split(idxs, block_size=3, num_blocks=4):
    return split_blocks(torch.tensor(idxs, dtype=torch.long), block_size, num_blocks)


def test_split_reports_full_blocks_and_local_positions():
    s = _split([0, 1, 2, 4, 7, 10])
    assert s.full == (0,) and s.survivors == (1, 2, 3)
    assert s.local == ((0, 1, 2), (1,), (1,), (1,))
    assert s.equal_counts("conv", "group") == 1
    assert s.equal_positions("conv", "group") == (1,)


def test_equal_counts_allows_different_rows():
    assert _split([0, 5, 7, 9]).equal_counts("conv", "group") == 1
    with pytest.raises(InvalidIndicesError, match="group 0: 1, group 1: 1, group 2: 0, group 3: 0"):
        _split([0, 5]).equal_counts("conv", "group")


def test_equal_positions_refuses_different_positions():
    with pytest.raises(InvalidIndicesError, match=r"conv: .*group 0: \[0\], group 1: \[2\]"):
        _split([0, 5, 6, 9]).equal_positions("conv", "group")


def test_full_blocks_can_be_forbidden():
    s = _split([3, 4, 5, 6, 7, 8], num_blocks=4)
    assert s.equal_counts("mha", "head") == 0  # survivors 0 and 3 lose nothing
    with pytest.raises(InvalidIndicesError, match="head 0: 0, head 1: 3"):
        s.equal_counts("mha", "head", allow_full=False)


def test_empty_split():
    s = _split([])
    assert s.full == () and s.equal_counts("x", "g") == 0 and s.equal_positions("x", "g") == ()
