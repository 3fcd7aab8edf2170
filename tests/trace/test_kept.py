"""Tensors computed by the forward and kept between calls (depgraph/trace/kept.py)."""

from __future__ import annotations

import torch
import torch.nn as nn

import depgraph as tp
from depgraph.trace.kept import find_kept

from .._checks import build, prune_and_verify

X = torch.randn(2, 4, 8)


class CachedBias(nn.Module):
    """LeViT style: a per-head bias gathered once and cached in a dict, in eval mode."""

    def __init__(self, record: bool = False):
        super().__init__()
        self.record = record
        self.num_heads, self.head_dim = 2, 4
        self.qkv = nn.Linear(8, 3 * 8)
        self.proj = nn.Linear(8, 8)
        self.biases = nn.Parameter(torch.randn(2, 7))
        self.register_buffer("idxs", torch.randint(0, 7, (4, 4)), persistent=False)
        self.cache: dict[str, torch.Tensor] = {}
        self.last_attn = None

    def bias(self) -> torch.Tensor:
        if "b" not in self.cache:
            self.cache["b"] = self.biases[:, self.idxs]  # (H, N, N)
        return self.cache["b"]

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-1, -2) * 0.5 + self.bias()).softmax(-1)  # (B, H, N, N)
        if self.record:
            self.last_attn = attn  # kept for inspection, overwritten by every call
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


def test_cached_tensors_are_found():
    model = CachedBias(record=True).eval()
    DG = build(model, X)
    where = sorted(k.where for k in DG.trace.kept)
    assert where == ["cache['b']", "last_attn"]
    assert [k.is_cache for k in sorted(DG.trace.kept, key=lambda k: k.where)] == [True, False]
    assert find_kept(model, {}) == []  # only tensors the traced ops produced count


def test_a_dict_cache_is_dropped_after_a_prune():
    model = CachedBias().eval()
    prune_and_verify(model, X, model.proj, tp.prune_linear_in_channels, list(range(4)))  # head 0
    assert model.num_heads == 1 and model.biases.shape == (1, 7)
    assert model(X).shape == X.shape and model.cache["b"].shape == (1, 4, 4)


def test_a_dict_cache_is_dropped_without_the_forward_check():
    model = CachedBias().eval()
    DG = build(model, X, check_forward=False)
    DG.get_pruning_group(model.proj, tp.prune_linear_in_channels, list(range(4))).prune()
    assert "b" not in model.cache
    assert model(X).shape == X.shape


def test_a_recorded_tensor_is_left_alone():
    model = CachedBias(record=True).eval()
    prune_and_verify(model, X, model.proj, tp.prune_linear_in_channels, list(range(4)))
    assert model.last_attn.shape[1] == 1  # the forward check's call overwrote it


def test_a_cache_filled_before_the_build_is_recomputed_in_the_trace():
    model = CachedBias().eval()
    model(X)  # fills the cache: traced as is, the bias would be a constant of unknown origin
    DG = build(model, X)
    assert [k.where for k in DG.trace.kept] == ["cache['b']"]
    assert DG.check_pruning_group(DG.get_pruning_group(model.proj, tp.prune_linear_in_channels, list(range(4))))


class DictTable(nn.Module):
    """A dict of tensors the forward only reads: taking it out breaks the call, so it goes back."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.tables = {"scale": torch.rand(8)}

    def forward(self, x):
        return self.fc(x) * self.tables["scale"]


def test_a_dict_the_model_needs_is_put_back():
    model = DictTable()
    table = model.tables["scale"]
    DG = build(model, X)
    assert model.tables["scale"] is table and DG.trace.kept == []


def test_verify_copies_a_model_whose_cache_holds_non_leaf_tensors():
    model = CachedBias().eval()
    done = prune_and_verify(model, X, model.proj, tp.prune_linear_in_channels, list(range(4)))
    model.cache.clear()
    model(X)  # with gradients on: the cached bias now has a grad_fn, which deepcopy refuses
    cached = model.cache["b"]
    assert cached.grad_fn is not None
    assert tp.verify(done.original, model, X).exact
    assert model.cache["b"] is cached
