"""Weight-normed layers (depgraph/functional/parametrized.py).

wav2vec2's positional convolution is a grouped ``Conv1d`` under
``torch.nn.utils.parametrizations.weight_norm(dim=2)``: its ``weight`` is computed
from g and v on every access, so a handler pruning ``layer.weight`` alone would
leave g and v whole and the model would fail. The real model is in
``tests/zoo/test_hf_mechanisms.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrizations, parametrize

import depgraph as tp
from depgraph.errors import UnsupportedOpError

from .._checks import assert_refused_unchanged, build, prune_all_groups, prune_and_verify


class PosConv(nn.Module):
    """Linear -> weight-normed grouped conv over time -> Linear (wav2vec2's encoder input)."""

    def __init__(self, style: str):
        super().__init__()
        self.proj = nn.Linear(6, 16)
        conv = nn.Conv1d(16, 16, 5, padding=2, groups=4)
        if style == "dim2":  # wav2vec2: one norm per kernel position, over all channels
            conv = parametrizations.weight_norm(conv, name="weight", dim=2)
        elif style == "dim0":  # the default: one norm per output channel
            conv = parametrizations.weight_norm(conv, name="weight", dim=0)
        else:  # the older hook-based weight norm
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                conv = nn.utils.weight_norm(conv, name="weight", dim=0)
        self.conv = conv
        self.out = nn.Linear(16, 3)

    def forward(self, x):  # (B, T, 6)
        h = self.proj(x).transpose(1, 2)
        h = h + torch.relu(self.conv(h))
        return self.out(h.transpose(1, 2))


@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("style", ["dim2", "dim0", "hook"])
def test_weight_normed_conv_prunes_every_group_exactly(style):
    """g and v follow the pruned weight (weight norm's own inverse), so the layer computes exactly the
    kept rows and columns of the weight it computed before; it stays weight-normed."""
    torch.manual_seed(0)
    model, x = PosConv(style).eval(), torch.randn(2, 9, 6)
    with torch.no_grad():  # the hook's weight, recomputed without autograd, can be deep-copied
        model(x)
    prune_all_groups(model, x, n_per_group=2, rounds=2, ignored_layers=[model.out])
    c = model.conv
    assert c.out_channels == c.in_channels == model.proj.out_features < 16
    assert tuple(c.weight.shape) == (c.out_channels, c.in_channels // 4, 5)
    if style == "hook":
        assert c.weight_v.shape == c.weight.shape and c.weight_g.shape[0] == c.out_channels
    else:
        assert parametrize.is_parametrized(c, "weight")
        g, v = c.parametrizations.weight.original0, c.parametrizations.weight.original1
        assert v.shape == c.weight.shape and g.shape == ((1, 1, 5) if style == "dim2" else (c.out_channels, 1, 1))


def test_weight_norm_parameters_keep_their_identity():
    model, x = PosConv("dim2").eval(), torch.randn(1, 9, 6)
    g, v = model.conv.parametrizations.weight.original0, model.conv.parametrizations.weight.original1
    prune_and_verify(model, x, model.proj, tp.prune_linear_out_channels, [0, 5])
    assert model.conv.parametrizations.weight.original0 is g and model.conv.parametrizations.weight.original1 is v
    assert v.shape[0] == model.conv.out_channels == 8  # 2 of 4 per group close to the same 2 in each


class Orthogonal(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = parametrizations.orthogonal(nn.Linear(8, 8))
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


def test_other_parametrizations_are_refused_by_name():
    """Removing rows of an orthogonal weight is not the same layer minus channels: refused, named."""
    model, x = Orthogonal().eval(), torch.randn(2, 8)
    DG = build(model, x)
    group = DG.get_pruning_group(model.fc, tp.prune_linear_out_channels, [0])
    assert not DG.check_pruning_group(group)
    msg = (r"fc \(ParametrizedLinear\): its weight is computed by the parametrization _Orthogonal "
           r"\(torch.nn.utils.parametrize\), which does not commute with removing channels")
    assert_refused_unchanged(model, group.prune, UnsupportedOpError, msg, DG)
    assert [g[0].dep.target.name for g in DG.get_all_groups(ignored_layers=[model.out])] == []


def test_a_direct_handler_call_on_a_weight_normed_layer_is_refused():
    """Outside a group the handler would prune a computed copy of the weight and leave g and v whole."""
    conv = parametrizations.weight_norm(nn.Conv1d(4, 4, 3), dim=0)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    with pytest.raises(UnsupportedOpError, match=r"ParametrizedConv1d computes its weight from others \(weight norm\)"):
        tp.prune_conv_out_channels(conv, [0])
    assert all(torch.equal(before[k], v) for k, v in conv.state_dict().items())
    from depgraph.functional.parametrized import plain_weights

    with plain_weights(conv):
        tp.prune_conv_out_channels(conv, [0])
    assert conv.parametrizations.weight.original1.shape[0] == conv.parametrizations.weight.original0.shape[0] == 3


@pytest.mark.parametrize("style", ["dim2", "hook"])
def test_pruned_weight_norm_saves_and_loads(style, tmp_path):
    model, x = PosConv(style).eval(), torch.randn(1, 9, 6)
    with torch.no_grad():
        model(x)
    DG = build(model, x)
    DG.get_pruning_group(model.proj, tp.prune_linear_out_channels, [0, 5]).prune()
    tp.save(model, tmp_path / "pruned.pth")
    fresh = tp.load(PosConv(style).eval(), tmp_path / "pruned.pth")
    with torch.no_grad():
        assert torch.allclose(fresh(x), model(x), atol=1e-6)
    assert fresh.conv.out_channels == model.conv.out_channels == 8


def test_a_zero_norm_row_cannot_be_re_expressed_and_is_refused():
    model, x = PosConv("dim0").eval(), torch.randn(1, 9, 6)
    with torch.no_grad():
        model.conv.parametrizations.weight.original0[3] = 0.0  # output channel 3 computes nothing
    DG = build(model, x)
    group = DG.get_pruning_group(model.proj, tp.prune_linear_out_channels, [0])
    assert_refused_unchanged(model, group.prune, UnsupportedOpError,
                             r"weight norm cannot reproduce its pruned weight \(a norm of zero\)", DG)
