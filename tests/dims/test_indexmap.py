"""Index maps (depgraph/dims/indexmap.py) against an independent set-of-pairs model.

Every map is a relation between source and destination positions. The
reference :func:`relation` spells it out pair by pair in plain Python (fine
for a dozen positions); the maps themselves must agree with it on whole index
tensors: ``apply`` reaches exactly the image of the given set, reports a true
source for each reached position, ``inverse`` is the transposed relation, and
``Compose`` is relational composition.
"""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from depgraph.dims import Compose, Gather, Identity, IndexMap, Lookup, Offset
from depgraph.errors import DepgraphError

MAX = 12  # axis sizes drawn by hypothesis


def relation(m: IndexMap) -> set[tuple[int, int]]:
    """The (source, destination) pairs of a map, computed without calling it."""
    if isinstance(m, Identity):
        return {(i, i) for i in range(m.n_src)}
    if isinstance(m, Offset):
        return {(i, i + m.shift) for i in range(m.n_src) if 0 <= i + m.shift < m.n_dst}
    if isinstance(m, Gather):
        return {(int(s), j) for j, s in enumerate(m.table.tolist()) if s >= 0}
    if isinstance(m, Lookup):
        return {(j, int(d)) for j, d in enumerate(m.table.tolist()) if d >= 0}
    if isinstance(m, Compose):
        a, b = relation(m.first), relation(m.second)
        return {(i, k) for i, j in a for j2, k in b if j == j2}
    raise TypeError(type(m))


def image(pairs: set[tuple[int, int]], src: list[int]) -> set[int]:
    s = set(src)
    return {j for i, j in pairs if i in s}


@st.composite
def index_maps(draw, n_src: int | None = None, depth: int = 2) -> IndexMap:
    n = n_src if n_src is not None else draw(st.integers(1, MAX))
    kinds = ["identity", "offset", "gather", "lookup"] + (["compose"] if depth > 0 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "identity":
        return Identity(n)
    if kind == "offset":
        n_dst = draw(st.integers(1, MAX))
        return Offset(draw(st.integers(-n, n_dst)), n, n_dst)
    if kind == "gather":
        table = draw(st.lists(st.integers(-1, n - 1), min_size=1, max_size=MAX))
        return Gather(table, n)
    if kind == "lookup":
        n_dst = draw(st.integers(1, MAX))
        return Lookup(draw(st.lists(st.integers(-1, n_dst - 1), min_size=n, max_size=n)), n_dst)
    first = draw(index_maps(n, depth - 1))
    return Compose(first, draw(index_maps(first.n_dst, depth - 1)))


@st.composite
def map_and_indices(draw):
    m = draw(index_maps())
    idx = draw(st.lists(st.integers(0, m.n_src - 1), unique=True, max_size=m.n_src))
    return m, idx


def check_apply(m: IndexMap, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply`` reaches exactly the image, and ``dst[i]`` really comes from ``idx[src_pos[i]]``."""
    t = torch.tensor(idx, dtype=torch.long)
    dst, src_pos = m.apply(t)
    assert dst.dtype == torch.long and src_pos.dtype == torch.long
    assert dst.shape == src_pos.shape
    pairs = relation(m)
    assert set(dst.tolist()) == image(pairs, idx)
    for j, p in zip(dst.tolist(), src_pos.tolist(), strict=True):
        assert (idx[p], j) in pairs
    return dst, src_pos


@settings(max_examples=300, deadline=None)
@given(map_and_indices())
def test_apply_matches_relation(case):
    m, idx = case
    check_apply(m, idx)


@settings(max_examples=300, deadline=None)
@given(map_and_indices())
def test_inverse_is_transposed_relation(case):
    m, _ = case
    inv = m.inverse()
    assert (inv.n_src, inv.n_dst) == (m.n_dst, m.n_src)
    assert relation(inv) == {(j, i) for i, j in relation(m)}
    idx = list(range(inv.n_src))
    check_apply(inv, idx)


@settings(max_examples=300, deadline=None)
@given(map_and_indices())
def test_round_trip_recovers_every_source_that_reaches_something(case):
    m, idx = case
    dst, _ = m.apply(torch.tensor(idx, dtype=torch.long))
    back, _ = m.inverse().apply(torch.unique(dst))
    reaching = {i for i, _ in relation(m) if i in set(idx)}
    assert reaching <= set(back.tolist())


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_compose_is_apply_then_apply(data):
    first = data.draw(index_maps(depth=1))
    second = data.draw(index_maps(first.n_dst, depth=1))
    idx = data.draw(st.lists(st.integers(0, first.n_src - 1), unique=True, max_size=first.n_src))
    both = first.then(second)
    assert isinstance(both, Compose)
    assert (both.n_src, both.n_dst) == (first.n_src, second.n_dst)
    t = torch.tensor(idx, dtype=torch.long)
    mid, _ = first.apply(t)
    expected, _ = second.apply(torch.unique(mid))
    got, _ = check_apply(both, idx)
    assert set(got.tolist()) == set(expected.tolist())


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.data())
def test_bijections_round_trip_exactly(n, data):
    """Identity, an in-range offset and a permutation lose nothing in either direction."""
    perm = data.draw(st.permutations(range(n)))
    maps = [Identity(n), Offset(3, n, n + 3), Gather(perm, n), Lookup(perm, n)]
    idx = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    t = torch.tensor(idx, dtype=torch.long)
    for m in maps:
        dst, pos = m.apply(t)
        assert dst.numel() == len(idx), m
        back, bpos = m.inverse().apply(dst)
        assert back.tolist() == [idx[p] for p in pos[bpos].tolist()], m


def test_gather_finds_every_copy():
    # repeat_interleave(2) of 3 heads: dst 2j, 2j+1 copy src j
    m = Gather(torch.arange(6) // 2, 3)
    dst, pos = m.apply(torch.tensor([2, 0]))
    assert sorted(zip(dst.tolist(), pos.tolist(), strict=True)) == [(0, 1), (1, 1), (4, 0), (5, 0)]
    assert m.inverse()(torch.tensor([5, 1])).tolist() == [2, 0]


def test_offset_drops_positions_owned_by_other_inputs():
    # cat([a(4), b(3)]): b sits at 4..6; the inverse map of b drops a's positions
    to_out = Offset(4, 3, 7)
    assert to_out([0, 2]).tolist() == [4, 6]
    assert to_out.inverse()([1, 3, 4, 6]).tolist() == [0, 2]


def test_call_accepts_lists_and_tensors():
    assert Identity(5)([4, 1]).tolist() == [4, 1]
    assert Identity(5)(torch.tensor([4, 1])).tolist() == [4, 1]
    assert Lookup([2, -1, 0], 3)([0, 1, 2]).tolist() == [2, 0]


def test_empty_indices_reach_nothing():
    for m in (Identity(3), Offset(1, 3, 4), Gather([0, 2], 3), Lookup([1, 1, -1], 2)):
        dst, pos = m.apply(torch.empty(0, dtype=torch.long))
        assert dst.numel() == 0 and pos.numel() == 0


def test_compose_refuses_mismatched_sizes():
    with pytest.raises(DepgraphError, match=r"cannot compose .* sizes 4 != 5"):
        Compose(Identity(4), Identity(5))
    with pytest.raises(DepgraphError, match="cannot compose"):
        Offset(0, 3, 4).then(Lookup([0, 1, 2], 3))


def test_maps_are_vectorised():
    """A few million positions go through a composed map quickly: no Python object per index."""
    n = 2_000_000
    m = Offset(5, n, n + 5).then(Gather(torch.arange(n + 5).flip(0), n + 5)).then(Identity(n + 5))
    idx = torch.arange(0, n, 2)
    start = time.perf_counter()
    dst, pos = m.apply(idx)
    back, _ = m.inverse().apply(dst)
    elapsed = time.perf_counter() - start
    assert dst.numel() == idx.numel() and torch.equal(torch.sort(back).values, idx)
    assert torch.equal(dst, n + 4 - (idx[pos] + 5))
    assert elapsed < 2.0, f"{elapsed:.2f}s for {idx.numel()} indices"
