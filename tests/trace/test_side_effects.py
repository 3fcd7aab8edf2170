"""No side effects on the user's model from measuring or planning (depgraph/trace/kept.py):
``count_ops_and_params`` puts activation caches back as it found them, and an activation the forward
keeps on ``self`` but overwrites on every call does not make every prune run a forward check."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn

import depgraph as tp

from .._checks import build, prune_and_verify


class KeepsSkip(nn.Module):
    """DeepLabV3+ style: the encoder's low-level features kept on ``self`` for the decoder."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(16, 4, 1)
        self.low_level = None
        self.by_scale: dict[int, torch.Tensor] = {}

    def forward(self, x):
        self.low_level = self.stem(x)  # overwritten by every call
        self.by_scale[x.shape[-1]] = self.mid(self.low_level)
        y = self.up(self.by_scale[x.shape[-1]])
        return self.head(torch.cat([y, self.low_level], 1))


class FillsOnMiss(nn.Module):
    """A plain attribute computed once and read back by later calls: may be stale after a prune."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(4, 8)
        self.fc = nn.Linear(8, 2)
        self.table = None

    def forward(self, x):
        if self.table is None:
            self.table = self.emb(torch.ones(1, 4))
        return self.fc(x[..., :1] * self.table)


X = torch.randn(1, 3, 8, 8)


def _saved_size(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.tell()


def test_count_ops_and_params_leaves_activation_caches_as_found():
    model = KeepsSkip().eval()
    size = _saved_size(model)
    macs, params = tp.utils.count_ops_and_params(model, X)
    assert macs > 0 and params == sum(p.numel() for p in model.parameters())
    assert model.low_level is None and model.by_scale == {}
    assert _saved_size(model) == size  # a whole-model save carries no activation
    with torch.no_grad():
        model(X)
    kept, cached = model.low_level, model.by_scale[8]
    tp.utils.count_ops_and_params(model, torch.randn(2, 3, 8, 8))
    assert model.low_level is kept and model.by_scale[8] is cached and list(model.by_scale) == [8]


def test_an_overwritten_activation_runs_no_forward_check_per_group(monkeypatch):
    model = KeepsSkip().eval()
    DG = build(model, X)
    where = {k.where: k for k in DG.trace.kept}
    assert where["low_level"].rewritten and not where["by_scale[8]"].rewritten
    assert where["low_level"].may_be_stale is False
    calls = []
    real = tp.DependencyGraph._forward_failure
    monkeypatch.setattr(tp.DependencyGraph, "_forward_failure", lambda self: calls.append(1) or real(self))
    group = DG.get_pruning_group(model.stem, tp.prune_conv_out_channels, [0, 3])
    group.prune()
    assert calls == []  # only the overwritten attribute reached: nothing can be stale
    assert model.stem.out_channels == 6 and model.head.in_channels == 14


def test_a_pruner_step_on_a_model_keeping_activations_checks_only_what_may_be_stale(monkeypatch):
    model = KeepsSkip().eval()
    calls = []
    real = tp.DependencyGraph._forward_failure
    monkeypatch.setattr(tp.DependencyGraph, "_forward_failure", lambda self: calls.append(1) or real(self))
    pruner = tp.pruner.BasePruner(model, X, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model.head])
    pruner.step()
    assert model.stem.out_channels == 4 and model.mid.out_channels == 4
    assert len(calls) == 1  # the dict entry (a cache read back) reached by the mid group only
    with torch.no_grad():
        assert model(X).shape == (1, 4, 8, 8)


def test_verified_exact_with_a_kept_activation():
    model = KeepsSkip().eval()
    prune_and_verify(model, X, model.stem, tp.prune_conv_out_channels, [1, 2])


def test_a_plain_attribute_filled_on_a_miss_stays_checked():
    model = FillsOnMiss().eval()
    x = torch.randn(3, 4)
    DG = build(model, x)
    (kept,) = DG.trace.kept
    assert kept.where == "table" and not kept.rewritten and kept.may_be_stale


@pytest.mark.zoo
def test_count_ops_leaves_timm_levit_attention_bias_caches_empty():
    """LeViT fills ``attention_bias_cache`` on every eval call; measuring it must not leave them filled."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("levit_128s", pretrained=False).eval()
    caches = [m.attention_bias_cache for m in model.modules() if hasattr(m, "attention_bias_cache")]
    x = torch.randn(1, 3, 224, 224)
    assert caches and all(c == {} for c in caches)
    size = _saved_size(model)
    macs, _ = tp.utils.count_ops_and_params(model, x)
    assert macs > 0 and all(c == {} for c in caches) and _saved_size(model) == size
    with torch.no_grad():
        model(x)  # a plain call fills them (what count_ops_and_params used to leave behind)
    assert all(len(c) == 1 for c in caches)


def test_kept_channel_records_follow_deepcopy_but_not_a_whole_model_save(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    import copy

    model = torchvision.models.resnet18(weights=None).eval()
    original, x = copy.deepcopy(model), torch.randn(1, 3, 32, 32)
    tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                         ignored_layers=[model.fc]).step()
    assert model.conv1.__dict__["_depgraph_kept"]["out"].numel() == 32
    # a copy of the model without any record, for the size a pickle of the model alone has
    bare = copy.deepcopy(model)
    for m in bare.modules():
        for k in [k for k in vars(m) if k.startswith("_depgraph_")]:
            del m.__dict__[k]
    assert abs(_saved_size(model) - _saved_size(bare)) < 16 * sum(1 for _ in model.modules())  # bytes, not records
    torch.save(model, tmp_path / "whole.pth")
    loaded = torch.load(tmp_path / "whole.pth", weights_only=False)
    assert loaded.conv1.__dict__["_depgraph_kept"] == {} and type(loaded.conv1.__dict__["_depgraph_kept"]) is dict
    result = tp.verify(original, loaded, x)
    assert result.exact is None and "conv1" in result.unrecorded  # honest: the records were not saved
    # deepcopy keeps them (a snapshot between iterative steps is a valid original), so does tp.save
    assert tp.verify(original, copy.deepcopy(model), x).exact
    tp.save(model, tmp_path / "pruned.pth")
    fresh = tp.load(torchvision.models.resnet18(weights=None), tmp_path / "pruned.pth").eval()
    assert tp.verify(original, fresh, x).exact
