"""Sizes read from shapes vs sizes written in the code (depgraph/trace/shape_int.py).

A reshape size read from ``x.shape`` (or ``-1``) is recomputed on every call,
so its dim may shrink. A literal is code: its dim freezes. A size read from a
module attribute (``self.num_heads``) may shrink too, and the attribute is
updated after the prune.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.trace.shape_int import AttrExpr, AttrInt, ShapeInt, attributes_tagged, is_computed, tag_shape

from .._checks import build, member, prune_and_verify

# -- the ints themselves ---------------------------------------------------------------------


def test_shape_int_arithmetic_stays_computed():
    n = ShapeInt(12)
    for v in (n + 1, 1 + n, n - 2, 20 - n, n * 2, 3 * n, n // 4, 48 // n, n % 5, 30 % n, n**2, -n, +n, abs(-n)):
        assert isinstance(v, ShapeInt) and is_computed(v)
    assert repr(n) == "12" and n == 12 and hash(n) == hash(12)
    assert not isinstance(n / 4, ShapeInt)  # a float is not a size


def test_is_computed():
    assert is_computed(-1) and is_computed(ShapeInt(3))
    assert not is_computed(3) and not is_computed(AttrInt(3, None, "x"))


def test_tag_shape():
    size = tag_shape(torch.Size([2, 3]))
    assert isinstance(size, torch.Size) and all(isinstance(v, ShapeInt) for v in size)
    assert isinstance(tag_shape(4), ShapeInt) and tag_shape(True) is True and tag_shape("a") == "a"


def test_attr_int_arithmetic_keeps_its_terms():
    owner = object()
    h, d, kv = AttrInt(4, owner, "heads"), AttrInt(8, owner, "head_dim"), AttrInt(2, owner, "kv")
    assert (h.owner, h.attr) == (owner, "heads") and repr(h) == "4"
    q = h * d
    assert type(q) is AttrExpr and q == 32
    assert q.terms == ((1, ((owner, "heads", 4), (owner, "head_dim", 8))),)
    end = q + kv * d  # Phi-3's query_pos + num_key_value_heads * head_dim, in the order written
    assert end == 48 and [c for c, _ in end.terms] == [1, 1]
    assert [a for _, f in end.terms for _, a, _ in f] == ["heads", "head_dim", "kv", "head_dim"]
    assert (2 * h).terms == ((2, ((owner, "heads", 4),)),) and (h + 1).terms[-1] == (1, ())
    assert (10 - h) == 6 and (10 - h).terms == ((10, ()), (-1, ((owner, "heads", 4),)))
    assert (h - 1).terms[-1] == (-1, ()) and (-h).terms[0][0] == -1
    assert type(h // 2) is int and type(h % 3) is int  # not invertible: plain code
    assert type(copy.deepcopy(q)) is int and type(copy.copy(h)) is int  # a config copied in a forward


def test_a_shape_int_wins_over_attributes():
    h, n = AttrInt(4, None, "heads"), ShapeInt(12, frozenset({(0, 1)}))
    for v in (h * n, n * h, h + n, n - h):
        assert type(v) is ShapeInt and v.src == frozenset({(0, 1)})


def test_config_objects_held_by_modules_are_tagged():
    class Config:
        def __init__(self):
            self.num_heads, self.name = 4, "cfg"

    m = nn.Linear(3, 4)
    m.config = Config()
    with attributes_tagged(m.modules()):
        assert isinstance(m.config.num_heads, AttrInt) and m.config.num_heads.owner is m.config
    assert type(m.config.num_heads) is int and m.config.name == "cfg"


def test_attributes_are_tagged_and_restored():
    m = nn.Linear(3, 4)
    m.heads, m._private, m.flag = 2, 5, True
    with attributes_tagged(m.modules()):
        assert isinstance(m.heads, AttrInt) and m.heads.owner is m and m.heads.attr == "heads"
        assert isinstance(m.in_features, AttrInt)
        assert type(m._private) is int and m.flag is True
        m.heads = 7  # the model may change its own attributes
    assert type(m.in_features) is int and m.in_features == 3 and m.heads == 7


def test_attributes_are_restored_when_the_body_raises():
    m = nn.Linear(3, 4)
    with pytest.raises(ValueError, match="boom"), attributes_tagged([m]):
        raise ValueError("boom")
    assert type(m.out_features) is int


# -- what the rules make of them -------------------------------------------------------------


class Flatten(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4 * 9, 2)

    def forward(self, x):
        y = self.conv(x)
        if self.how == "literal":
            return self.fc(y.view(-1, 36))  # LeNet's x.view(-1, 16 * 5 * 5)
        if self.how == "shape":
            return self.fc(y.view(y.shape[0], y.shape[1] * y.shape[2] * y.shape[3]))
        return self.fc(y.view(y.size(0), -1))


def test_a_literal_view_size_freezes():
    model = Flatten("literal")
    DG = build(model, torch.randn(2, 3, 3, 3))
    group = DG.get_pruning_group(model.conv, tp.prune_conv_out_channels, [1])
    assert group.blocked_by == ["Tensor.view in <model>: size 36 of dim 1 is written into the code"]
    assert list(DG.get_all_groups()) == []


@pytest.mark.parametrize("how", ["shape", "inferred"])
def test_sizes_read_from_the_shape_follow(how):
    model = Flatten(how)
    done = prune_and_verify(model, torch.randn(2, 3, 3, 3), model.conv, tp.prune_conv_out_channels, [1])
    assert member(done.groups[0], model.fc, out=False) == list(range(9, 18))


class Heads(nn.Module):
    """Multi-head style reshapes sized by module attributes."""

    def __init__(self, merge: str):
        super().__init__()
        self.merge = merge
        self.num_heads, self.head_dim = 3, 4
        self.proj = nn.Linear(8, 12)
        self.out = nn.Linear(12, 8)

    def forward(self, x):
        b, t, _ = x.shape
        h = torch.relu(self.proj(x).view(b, t, self.num_heads, self.head_dim))  # index = h*4 + d
        if self.merge == "inferred":
            return self.out(h.reshape(b, t, -1))
        return self.out(h.reshape(b, t, self.num_heads * self.head_dim))  # a product: code, not an attribute


def test_attribute_sizes_follow_and_are_updated():
    model = Heads("inferred")
    x = torch.randn(2, 5, 8)
    prune_and_verify(model, x, model.proj, tp.prune_linear_out_channels, [4, 5, 6, 7])
    assert (model.num_heads, model.head_dim) == (2, 4) and type(model.num_heads) is int
    model = Heads("inferred")
    done = prune_and_verify(model, x, model.proj, tp.prune_linear_out_channels, [5])
    assert member(done.groups[0], model.proj, out=True) == [1, 5, 9]  # one dim of every head
    assert (model.num_heads, model.head_dim) == (3, 3)


def test_a_size_computed_from_attributes_freezes():
    model = Heads("product")
    DG = build(model, torch.randn(2, 5, 8))
    group = DG.get_pruning_group(model.proj, tp.prune_linear_out_channels, [4, 5, 6, 7])
    # The product cannot follow a prune, so neither may the attributes it reads (the view binds them).
    assert any("reads <model> (Heads).num_heads = 3 where it cannot follow a prune" in r for r in group.blocked_by)


class SplitQKV(nn.Module):
    """GPT-2 style: one projection split into q, k, v by ``self.split_size``."""

    def __init__(self):
        super().__init__()
        self.split_size = 4
        self.qkv = nn.Linear(6, 12)
        self.out = nn.Linear(4, 6)

    def forward(self, x):
        q, k, v = self.qkv(x).split(self.split_size, dim=-1)
        return self.out(q * k + v)


def test_split_by_an_attribute_follows_and_is_updated():
    model = SplitQKV()
    done = prune_and_verify(model, torch.randn(2, 3, 6), model.out, tp.prune_linear_in_channels, [2])
    assert member(done.groups[0], model.qkv, out=True) == [2, 6, 10]
    assert model.split_size == 3


def test_sizes_compared_in_python_are_noted_and_arithmetic_is_not():
    from depgraph.trace.shape_int import ShapeInt, size_reads_recorded

    c, b = ShapeInt(8, frozenset({(3, 1)})), ShapeInt(2, frozenset({(5, 0)}))
    assert hash(c) == hash(8) and {c: 1}[8] == 1  # still a usable int
    with size_reads_recorded() as reads:
        _ = c * 2 + b  # arithmetic: followed by the rules, not a read
        x = torch.zeros(1).view(int(b) - 1)  # noqa: F841 - a plain int: no record either
    assert reads == set()
    with size_reads_recorded() as reads:
        assert c > 4 and (b == 2) and bool(c // 2)
    assert reads == {(3, 1), (5, 0)}
    assert (c <= 4) is False  # outside a trace: nothing collects, comparisons are plain


def test_the_trace_records_the_dims_a_forward_compares():
    """A prune of a dim the forward compared runs the model before it commits; other prunes do not."""

    class Guard(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 6, 1)

        def forward(self, x):
            y = self.a(x)
            if y.shape[1] < 2:
                raise ValueError("too narrow")
            return torch.cat([y, self.b(x)], 1)

    model, x = Guard(), torch.randn(1, 3, 4, 4)
    DG = tp.DependencyGraph().build_dependency(model, x)
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    DG.get_pruning_group(model.b, tp.prune_conv_out_channels, [0]).prune()
    assert calls == []
    DG.get_pruning_group(model.a, tp.prune_conv_out_channels, [0]).prune()
    assert calls == [1] and model(x).shape == (1, 12, 4, 4)


def test_size_reads_go_to_the_innermost_collector_of_their_own_thread():
    import threading

    from depgraph.trace.shape_int import size_reads_recorded

    c = ShapeInt(8, frozenset({(3, 1)}))
    other = []
    with size_reads_recorded() as outer:
        with size_reads_recorded() as inner:  # equal (empty) to outer when it closes: popped by identity
            pass
        worker = threading.Thread(target=lambda: other.append(c > 4))  # another thread's comparison
        worker.start()
        worker.join()
        assert c == 8
    assert inner == set() and outer == {(3, 1)} and other == [True]
