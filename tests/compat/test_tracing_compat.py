"""How the model is called and traced, as in Torch-Pruning 1.6.

* A tuple/list given as ``example_inputs`` is passed as positional arguments and,
  when the model refuses that, as one argument (torchvision's detection models
  take a list of images), in the trace, in ``verify`` and in ``count_ops_and_params``.
* The trace runs in eval mode and gives every module its own mode back after.
* ``pruner.ignored_layers`` lists each ignored module with its sub-modules.
* A custom layer whose handler only knows its channel count (HF Swin's patch
  merging works on (B, L, C) tokens) gets its channels on the dim of that size.
* Gradients follow every prune, so an iterative Taylor loop keeps running.

Detection models are marked ``slow``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp

torchvision = pytest.importorskip("torchvision")


class _ListModel(nn.Module):
    """Takes a list of images of different sizes, as torchvision's detection models do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.conv2(torch.relu(self.conv1(x[None]))).mean((2, 3))[0] for x in images])


def test_list_inputs_are_retried_as_one_argument() -> None:
    model = _ListModel().eval()
    images = [torch.randn(3, 8, 10), torch.randn(3, 12, 6)]
    original = copy.deepcopy(model)
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=images)
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[1, 4])
    assert {dep.target.name for dep, _ in group} == {"conv1", "conv2"}
    group.prune()
    assert model.conv2.in_channels == 6
    assert tp.verify(original, model, images).exact
    macs, params = tp.utils.count_ops_and_params(model, images)
    assert params == tp.utils.count_params(model) and macs > 0


def test_positional_failure_is_reported_when_both_forms_fail() -> None:
    model = _ListModel().eval()
    with pytest.raises(tp.TraceError, match="as one argument"):
        tp.DependencyGraph().build_dependency(model, example_inputs=[torch.randn(5, 8, 8)])


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) + y)


def test_tuple_inputs_stay_positional() -> None:
    model = _TwoInputs().eval()
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=(torch.randn(2, 4), torch.randn(2, 6)))
    # y is an input: its width is fixed, so a's outputs are not offered
    assert [g[0].dep.target.name for g in DG.get_all_groups()] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_320_fpn", "maskrcnn_resnet50_fpn"])
def test_detection_models_trace_a_list_of_images(name: str) -> None:
    kwargs = dict(weights=None, weights_backbone=None, num_classes=5, min_size=96, max_size=128)
    model = torchvision.models.get_model(name, trainable_backbone_layers=5 if "resnet" in name else 6, **kwargs)
    model.eval()
    images = [torch.rand(3, 96, 128), torch.rand(3, 128, 96)]
    ignored = [model.rpn.head.cls_logits, model.rpn.head.bbox_pred, model.roi_heads]
    pruner = tp.pruner.MetaPruner(model, images, tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=ignored)
    assert len(pruner.ignored_layers) == sum(len(list(m.modules())) for m in ignored)
    assert model.roi_heads.box_predictor.cls_score in pruner.ignored_layers
    body = model.backbone.body
    first = next(m for m in body.modules() if isinstance(m, nn.Conv2d))
    width = first.out_channels
    pruner.step()
    assert first.out_channels < width
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and {"boxes", "labels", "scores"} <= set(out[0])
    macs, _ = tp.utils.count_ops_and_params(model, images)
    assert macs > 0


def test_ignored_layers_list_submodules_as_the_original() -> None:
    torch_pruning = pytest.importorskip("torch_pruning")
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    ignored = [model.layer4[1], model.fc]
    ours = tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(), ignored_layers=ignored)
    theirs = torch_pruning.pruner.MetaPruner(model, x, torch_pruning.importance.MagnitudeImportance(),
                                             ignored_layers=ignored)
    assert ours.ignored_layers == theirs.ignored_layers
    assert model.layer4[1].bn2 in ours.ignored_layers


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn = nn.Linear(8, 16), nn.BatchNorm1d(16)
        self.drop, self.fc2 = nn.Dropout(0.5), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def test_trace_runs_in_eval_mode_and_restores_every_mode() -> None:
    model = _Mlp().train()
    model.drop.eval()  # a mixed state: each module must get its own flag back
    stats = model.bn.running_mean.clone()
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 8))  # batch 1, BatchNorm1d
    assert model.training and model.fc1.training and model.bn.training and not model.drop.training
    assert torch.equal(model.bn.running_mean, stats)
    DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=[0, 3]).prune()
    assert model.bn.num_features == 14 and model.training
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 8), tp.importance.MagnitudeImportance(),
                                  pruning_ratio=0.25, ignored_layers=[model.fc2])
    pruner.step()
    assert model.fc1.out_features == int(14 * 0.75) and model.training and not model.drop.training


def test_trace_restores_modes_when_the_model_fails() -> None:
    model = _Mlp().train()
    with pytest.raises(tp.TraceError, match="failed on the example inputs"):
        tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 5))
    assert all(m.training for m in model.modules())


# -- a custom layer on tokens (channels last) --------------------------------------------------


class _Merge(nn.Module):
    """Concatenates pairs of tokens: (B, L, C) -> (B, L/2, 2C) -> norm -> Linear(2C, C')."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(2 * dim), nn.Linear(2 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2], x[:, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class _MergePruner(tp.BasePruningFunc):
    def prune_out_channels(self, layer: _Merge, idxs: list) -> nn.Module:
        tp.prune_linear_out_channels(layer.reduction, idxs)
        return layer

    def prune_in_channels(self, layer: _Merge, idxs: list) -> nn.Module:
        dim = layer.norm.normalized_shape[0] // 2
        both = idxs + [i + dim for i in idxs]  # a list: the original hands handlers lists
        tp.prune_linear_in_channels(layer.reduction, both)
        tp.prune_layernorm_out_channels(layer.norm, both)
        return layer

    def get_out_channels(self, layer: _Merge) -> int:
        return layer.reduction.out_features

    def get_in_channels(self, layer: _Merge) -> int:
        return layer.norm.normalized_shape[0] // 2


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.merge, self.head = nn.Linear(4, 6), _Merge(6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, 4), L = 10 != channels
        return self.head(self.merge(self.embed(x)))


def test_custom_layer_channels_last_follow_the_handler_channel_count() -> None:
    model = _Tokens().eval()
    x = torch.randn(2, 10, 4)
    DG = tp.DependencyGraph().build_dependency(model, x, customized_pruners={_Merge: _MergePruner()})
    group = DG.get_pruning_group(model.embed, tp.prune_linear_out_channels, idxs=[1, 4])
    assert [dep.target.name for dep, _ in group] == ["embed", "merge"]
    group.prune()
    assert model.merge.reduction.in_features == 8 and model.merge.norm.normalized_shape == (8,)
    assert model(x).shape == (2, 5, 3)
    DG.get_pruning_group(model.merge, DG.get_pruner_of_module(model.merge).prune_out_channels, idxs=[0]).prune()
    assert model.head.in_features == 5 and model(x).shape == (2, 5, 3)


# -- gradients follow a prune -------------------------------------------------------------------


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 64, 3, padding=1)
        self.grouped = nn.Conv2d(64, 32, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(32)
        self.up2 = nn.ConvTranspose2d(32, 16, 2, stride=2, groups=2)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.up(torch.relu(self.enc(x))))
        return self.head(torch.relu(self.up2(torch.relu(self.bn(self.grouped(x))))))


def _taylor_loop(model: nn.Module, x: torch.Tensor, ignored: list, steps: int = 3) -> None:
    pruner = tp.pruner.MetaPruner(model, x, tp.importance.TaylorImportance(), pruning_ratio=0.5,
                                  iterative_steps=steps, ignored_layers=ignored)
    for _ in range(steps):
        model(x).float().pow(2).mean().backward()
        for group in pruner.step(interactive=True):
            group.prune()
        wrong = [(n, tuple(p.shape), tuple(p.grad.shape)) for n, p in model.named_parameters()
                 if p.grad is not None and p.grad.shape != p.shape]
        assert not wrong
    model(x).float().pow(2).mean().backward()  # the graph of the pruned model backpropagates


def test_iterative_taylor_loop_with_conv_transpose() -> None:
    model = _Decoder().train()
    _taylor_loop(model, torch.randn(2, 3, 8, 8), [model.head])
    assert model.up.out_channels == 32 and model.enc.out_channels == 4


def test_iterative_taylor_loop_on_torchvision_model() -> None:
    model = torchvision.models.mobilenet_v3_small(num_classes=10).train()
    _taylor_loop(model, torch.randn(2, 3, 32, 32), [model.classifier[-1]], steps=2)
    assert model.features[0][0].out_channels == 8


class _Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.lstm = nn.LSTM(16, 24, batch_first=True)
        self.ln = nn.LayerNorm(24)
        self.mha = nn.MultiheadAttention(24, 4, batch_first=True)
        self.fc = nn.Linear(24, 32)
        self.act = nn.PReLU(32)
        self.scale = nn.Parameter(torch.rand(32))
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(x))
        h = self.ln(h)
        a, _ = self.mha(h, h, h)
        y = self.act(self.fc(a + h).transpose(1, 2)).transpose(1, 2)
        return self.out(y * self.scale)


def test_iterative_taylor_loop_with_lstm_attention_norms_and_parameters() -> None:
    model = _Seq().train()
    _taylor_loop(model, torch.randint(0, 20, (2, 5)), [model.out], steps=2)
    assert model.scale.shape == (model.fc.out_features,) and model.scale.grad.shape == model.scale.shape


# -- an explicit request may change an output (the original's issue 21) --------------------------


class _Activations(nn.Module):
    """Returns its logits and an intermediate activation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 12), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return self.fc3(hidden), hidden


def test_explicit_request_prunes_an_output_with_a_warning() -> None:
    model = _Activations().eval()
    x = torch.randn(2, 8)
    DG = tp.DependencyGraph().build_dependency(model, x)
    assert [g[0].dep.target.name for g in DG.get_all_groups()] == ["fc1"]  # fc2 feeds an output
    group = DG.get_pruning_group(model.fc3, tp.prune_linear_in_channels, [0, 1])
    assert DG.check_pruning_group(group) and {dep.target.name for dep, _ in group} == {"fc2", "fc3"}
    with pytest.warns(UserWarning, match=r"changes the shape of the model's outputs: output 1 dim 1 \(12 -> 10\)"):
        group.prune()
    logits, hidden = model(x)
    assert logits.shape == (2, 4) and hidden.shape == (2, 10)
    with pytest.warns(UserWarning, match=r"output 1 dim 1 \(10 -> 9\)"):
        DG.get_pruning_group(model.fc2, tp.prune_linear_out_channels, [3]).prune()
    pruner = tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5)
    pruner.step()
    assert model.fc2.out_features == 9 and model.fc3.out_features == 4 and model.fc1.out_features == 8
