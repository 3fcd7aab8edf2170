"""Random architectures from the supported ops, pruned at random, must stay exact.

Hypothesis draws a stack of blocks (conv-bn-relu, residual adds, dense and
parallel concats, chunk/split-and-merge, GLU gates, grouped and depthwise
convs, channel shuffles in both spellings, pooling) ending in a classifier
over pooled or flattened features. It then prunes random groups with random
root indices, a few times over. Every accepted prune must keep the output
shapes and be proven exact by ``verify``; every refused one must leave the
model untouched.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import depgraph as tp

from .._checks import assert_refused_unchanged, build, check_result, output_shapes

SIZE = 6  # input H = W; every block keeps it


def cbr(cin: int, cout: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups), nn.BatchNorm2d(cout), nn.ReLU())


class Block(nn.Module):
    """One block; ``out`` is its output width."""

    out: int


class CBR(Block):
    def __init__(self, c, width, k):
        super().__init__()
        self.f, self.out = cbr(c, width, k), width

    def forward(self, x):
        return self.f(x)


class Residual(Block):
    def __init__(self, c, hidden):
        super().__init__()
        self.f = nn.Sequential(cbr(c, hidden, 3), nn.Conv2d(hidden, c, 1), nn.BatchNorm2d(c))
        self.out = c

    def forward(self, x):
        return F.relu(x + self.f(x))


class Dense(Block):
    """DenseNet: the input and a new branch, concatenated."""

    def __init__(self, c, growth):
        super().__init__()
        self.f, self.out = cbr(c, growth, 3), c + growth

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


class Parallel(Block):
    """Inception: two branches of different widths, concatenated."""

    def __init__(self, c, a, b):
        super().__init__()
        self.a, self.b, self.out = cbr(c, a), cbr(c, b, 3), a + b

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class SplitMerge(Block):
    """ShuffleNetV2 unit: one half passes through, the other is transformed."""

    def __init__(self, c):
        super().__init__()
        self.f, self.out = cbr(c // 2, c // 2, 3), c

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([a, self.f(b)], 1)


class Gate(Block):
    """GLU: half the channels gate the other half."""

    def __init__(self, c):
        super().__init__()
        self.out = c // 2

    def forward(self, x):
        a, b = torch.chunk(x, 2, 1)
        return a * torch.sigmoid(b)


class Grouped(Block):
    def __init__(self, c, groups, per_group):
        super().__init__()
        self.f, self.out = cbr(c, groups * per_group, 3, groups), groups * per_group

    def forward(self, x):
        return self.f(x)


class Depthwise(Block):
    def __init__(self, c, mult):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c * mult, 3, padding=1, groups=c), nn.BatchNorm2d(c * mult))
        self.out = c * mult

    def forward(self, x):
        return self.f(x)


class Shuffle(Block):
    def __init__(self, c, groups, by_view):
        super().__init__()
        self.groups, self.by_view, self.out = groups, by_view, c

    def forward(self, x):
        if not self.by_view:
            return F.channel_shuffle(x, self.groups)
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class Pool(Block):
    def __init__(self, c, kind):
        super().__init__()
        self.kind, self.out = kind, c

    def forward(self, x):
        if self.kind == "max":
            return F.max_pool2d(x, 3, 1, 1)
        return F.avg_pool2d(x, 3, 1, 1) + F.interpolate(F.adaptive_avg_pool2d(x, 3), size=x.shape[-2:])


class RandomNet(nn.Module):
    def __init__(self, blocks: list[Block], flatten: bool, classes: int = 4):
        super().__init__()
        self.blocks, self.flatten = nn.ModuleList(blocks), flatten
        c = blocks[-1].out
        self.fc = nn.Linear(c * SIZE * SIZE if flatten else c, classes)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.fc(torch.flatten(x, 1) if self.flatten else x.mean((2, 3)))


def divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


@st.composite
def random_nets(draw) -> RandomNet:
    c = 3
    blocks: list[Block] = [CBR(c, draw(st.integers(4, 8)), draw(st.sampled_from([1, 3])))]
    for _ in range(draw(st.integers(1, 5))):
        c = blocks[-1].out
        kinds = ["cbr", "residual", "dense", "parallel", "pool"]
        if c % 2 == 0:
            kinds += ["split", "shuffle"] + (["gate"] if c >= 4 else [])
        if divisors(c):
            kinds += ["grouped"]
        if c <= 6:
            kinds += ["depthwise"]
        if c >= 16:  # keep nets small: only narrowing blocks
            kinds = ["cbr", "gate"] if c % 2 == 0 else ["cbr"]
        kind = draw(st.sampled_from(kinds))
        width = st.integers(2, 6)
        if kind == "cbr":
            block: Block = CBR(c, draw(width), draw(st.sampled_from([1, 3])))
        elif kind == "residual":
            block = Residual(c, draw(width))
        elif kind == "dense":
            block = Dense(c, draw(width))
        elif kind == "parallel":
            block = Parallel(c, draw(width), draw(width))
        elif kind == "pool":
            block = Pool(c, draw(st.sampled_from(["max", "avg"])))
        elif kind == "split":
            block = SplitMerge(c)
        elif kind == "gate":
            block = Gate(c)
        elif kind == "shuffle":
            block = Shuffle(c, draw(st.sampled_from(divisors(c))), draw(st.booleans()))
        elif kind == "grouped":
            block = Grouped(c, draw(st.sampled_from(divisors(c))), draw(st.integers(1, 3)))
        else:
            block = Depthwise(c, draw(st.integers(1, 2)))
        blocks.append(block)
    return RandomNet(blocks, flatten=draw(st.booleans()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_nets(), st.data())
def test_random_nets_prune_exactly(model, data):
    model.eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong channel shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_()
                m.bias.normal_()
    x = torch.randn(2, 3, SIZE, SIZE)
    original = copy.deepcopy(model)
    shapes = output_shapes(model, x)
    DG = build(model, x)
    pruned = 0
    for _ in range(data.draw(st.integers(1, 4), label="prunes")):
        groups = list(DG.get_all_groups())
        if not groups:
            break
        group = data.draw(st.sampled_from(groups), label="group")
        root = group[0]
        width = len(root.idxs)
        idxs = data.draw(st.lists(st.integers(0, width - 1), min_size=1, max_size=width - 1, unique=True),
                         label="idxs")
        plan = DG.get_pruning_group(root.dep.target.module, root.dep.handler, idxs)
        if DG.check_pruning_group(plan):
            plan.prune()
            pruned += 1
        else:  # the closure widened the set until it empties a layer or reaches a fixed dim
            assert_refused_unchanged(model, plan.prune, tp.DepgraphError, "would lose all|must not change", DG)
    event(f"{pruned} prunes")
    assert len(DG.pruning_history()) == pruned
    check_result(original, model, x, shapes)
