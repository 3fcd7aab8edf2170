"""The original's handler protocol on BasePruningFunc, and handlers written for the original library.

``__call__(layer, idxs, to_output=True, inplace=True, dry_run=False)``, ``check``,
``get_in_channel_groups`` / ``get_out_channel_groups`` and ``_prune_parameter_and_grad``
behave as in torch-pruning 1.6 (typed errors instead of AssertionError). The custom
handlers below are written the way the original's own examples write them (its
custom-layer test and its Hugging Face Swin example) and must run unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp
from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError


def test_call_prunes_outputs_by_default_and_inputs_on_request():
    fc = nn.Linear(6, 5)
    assert tp.function.LinearPruner()(fc, [0, 4]) is fc and fc.out_features == 3
    tp.function.LinearPruner()(fc, [1], to_output=False)
    assert fc.weight.shape == (3, 5) and fc.in_features == 5


def test_call_not_inplace_returns_a_pruned_copy():
    fc = nn.Linear(6, 5)
    pruned = tp.function.LinearPruner()(fc, [0], inplace=False)
    assert pruned is not fc and pruned.out_features == 4 and fc.out_features == 5


def test_call_dry_run_checks_and_changes_nothing():
    conv = nn.Conv2d(4, 8, 3)
    before = conv.weight.detach().clone()
    assert tp.function.ConvPruner()(conv, [1, 2], dry_run=True) is conv
    assert torch.equal(conv.weight, before) and conv.out_channels == 8
    with pytest.raises(InvalidIndicesError, match="out of range for the 8 out channels"):
        tp.function.ConvPruner()(conv, [8], dry_run=True)


@pytest.mark.parametrize(
    "layer, idxs, to_output, error, match",
    [
        (nn.Linear(4, 3), [3], True, InvalidIndicesError, "index 3 is out of range for the 3 out channels"),
        (nn.Linear(4, 3), [-1], False, InvalidIndicesError, "negative pruning index -1"),
        (nn.Linear(4, 3), [0, 1, 2], True, OverPruningError, "would leave it empty"),
        (nn.Conv2d(3, 3, 1), [0], True, HandlerMismatchError, "LinearPruner prunes Linear, not Conv2d"),
    ],
)
def test_check_refuses_with_typed_errors_and_changes_nothing(layer, idxs, to_output, error, match):
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(error, match=match):
        tp.function.LinearPruner().check(layer, idxs, to_output)
    with pytest.raises(error, match=match):
        tp.function.LinearPruner()(layer, idxs, to_output=to_output)
    assert all(torch.equal(state[k], v) for k, v in layer.state_dict().items())


def test_channel_groups_as_the_original_reports_them():
    assert tp.function.ConvPruner().get_in_channel_groups(nn.Conv2d(8, 4, 1, groups=4)) == 4
    assert tp.function.ConvPruner().get_out_channel_groups(nn.Conv2d(8, 4, 1, groups=2)) == 2
    assert tp.function.GroupNormPruner().get_in_channel_groups(nn.GroupNorm(3, 6)) == 3
    assert tp.function.LinearPruner().get_out_channel_groups(nn.Linear(2, 2)) == 1


def test_prune_parameter_and_grad_keeps_positions_and_grad():
    w = nn.Parameter(torch.arange(12.0).reshape(3, 4))
    w.grad = torch.ones(3, 4)
    out = tp.pruner.BasePruningFunc._prune_parameter_and_grad(tp.function.LinearPruner(), w, [0, 3], 1)
    assert isinstance(out, nn.Parameter) and out.tolist() == [[0, 3], [4, 7], [8, 11]]
    assert out.grad.shape == (3, 2)


# -- a handler written for the original (its tests/test_customized_layer.py) ----------------------


class CustomizedLayer(nn.Module):
    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.scale = nn.Parameter(torch.rand(in_dim) + 0.5)
        self.bias = nn.Parameter(torch.randn(in_dim))
        self.fc = nn.Linear(in_dim, in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt()
        return self.fc(torch.div(x, norm) * self.scale + self.bias)


class FullyConnectedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.customized_layer = CustomizedLayer(32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.customized_layer(F.relu(self.fc1(x))))


class MyPruner(tp.pruner.BasePruningFunc):
    """As the original writes it: new Parameters, list indices, one method for both sides, and a
    ``get_out_channels`` that reads ``self.in_dim`` (the handler, not the layer) and so raises."""

    def prune_out_channels(self, layer: CustomizedLayer, idxs: Sequence[int]) -> nn.Module:
        keep_idxs = sorted(set(range(layer.in_dim)) - set(idxs))
        layer.in_dim = layer.in_dim - len(idxs)
        layer.scale = torch.nn.Parameter(layer.scale.data.clone()[keep_idxs])
        layer.bias = torch.nn.Parameter(layer.bias.data.clone()[keep_idxs])
        tp.prune_linear_in_channels(layer.fc, idxs)
        tp.prune_linear_out_channels(layer.fc, idxs)
        return layer

    def get_out_channels(self, layer):
        return self.in_dim

    prune_in_channels = prune_out_channels
    get_in_channels = get_out_channels


@pytest.mark.parametrize("how", ["register_customized_layer", "customized_pruners", "instance"])
def test_a_handler_written_for_the_original_runs_unchanged(how):
    model = FullyConnectedNet()
    DG = tp.DependencyGraph()
    if how == "register_customized_layer":
        DG.register_customized_layer(layer_type_or_instance=CustomizedLayer, layer_pruner=MyPruner())
        kwargs = {}
    elif how == "instance":
        DG.register_customized_layer(model.customized_layer, MyPruner())
        kwargs = {}
    else:
        kwargs = {"customized_pruners": {CustomizedLayer: MyPruner()}}
    DG.build_dependency(model, example_inputs=torch.randn(1, 16), **kwargs)
    assert model.customized_layer in DG.module2node and model.customized_layer.fc not in DG.module2node  # a leaf
    group = DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=[0, 1, 6])
    with pytest.warns(UserWarning, match=r"MyPruner.get_out_channels\(customized_layer\) raised AttributeError"):
        group.exec()
    assert model.fc1.out_features == 29 and model.customized_layer.in_dim == 29 and model.fc2.in_features == 29
    assert model(torch.randn(2, 16)).shape == (2, 4)


class ScaleLayer(nn.Module):
    """A per-channel scale on (B, C, H, W), pruned exactly by an original-style handler."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class ScalePruner(tp.pruner.BasePruningFunc):
    def prune_out_channels(self, layer, idxs):
        keep = sorted(set(range(layer.scale.numel())) - set(idxs))
        layer.scale = self._prune_parameter_and_grad(layer.scale, keep, 0)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return layer.scale.numel()

    get_in_channels = get_out_channels


def test_an_original_style_handler_through_base_pruner_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), ScaleLayer(8), nn.Conv2d(8, 4, 1))
    original = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), ScaleLayer(8), nn.Conv2d(8, 4, 1))
    original.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 6, 6)
    pruner = tp.pruner.BasePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  customized_pruners={ScaleLayer: ScalePruner()}, ignored_layers=[model[3]])
    pruner.step()
    assert model[0].out_channels == 4 and model[2].scale.shape == (4,) and model[3].in_channels == 4
    result = tp.verify(original, model, x)
    assert result.exact, result


def test_hf_swin_patch_merging_customized_pruner_makes_it_a_leaf():
    """The original's HF Swin example: a customized pruner on SwinPatchMerging (whose inside also traces).

    transformers 5 dropped ``SwinPatchMerging.dim`` and ``SwinSelfAttention``; the handler reads
    the width from the norm instead and heads come from ``SwinAttention``. Otherwise as the original.
    """
    transformers = pytest.importorskip("transformers")
    from transformers.models.swin.modeling_swin import SwinAttention, SwinPatchMerging

    class SwinPatchMergingPruner(tp.BasePruningFunc):
        def prune_out_channels(self, layer: nn.Module, idxs: list):
            tp.prune_linear_out_channels(layer.reduction, idxs)
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            dim = layer.norm.normalized_shape[0] // 4
            idxs_repeated = idxs + [i + dim for i in idxs] + [i + 2 * dim for i in idxs] + [i + 3 * dim for i in idxs]
            tp.prune_linear_in_channels(layer.reduction, idxs_repeated)
            tp.prune_layernorm_out_channels(layer.norm, idxs_repeated)
            return layer

        def get_out_channels(self, layer):
            return layer.reduction.out_features

        def get_in_channels(self, layer):
            return layer.norm.normalized_shape[0] // 4

    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                        window_size=4, num_labels=5)
    model = transformers.SwinForImageClassification(config).eval()
    x = torch.randn(1, 3, 32, 32)
    num_heads = {}
    for m in model.modules():
        if isinstance(m, SwinAttention):
            for proj in (m.q_proj, m.k_proj, m.v_proj):
                num_heads[proj] = m.num_attention_heads
    pruner = tp.pruner.BasePruner(
        model, x, global_pruning=False, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
        num_heads=num_heads, output_transform=lambda out: out.logits.sum(), ignored_layers=[model.classifier],
        customized_pruners={SwinPatchMerging: SwinPatchMergingPruner()},
        root_module_types=(nn.Linear, nn.LayerNorm, SwinPatchMerging),
    )
    merging = model.swin.encoder.layers[0].downsample
    assert merging in pruner.DG.module2node and merging.reduction not in pruner.DG.module2node
    for group in pruner.step(interactive=True):
        group.prune()
    assert merging.norm.normalized_shape[0] == 4 * 8 and merging.reduction.in_features == 4 * 8
    assert merging.reduction.out_features == 16
    assert model(x).logits.shape == (1, 5)
