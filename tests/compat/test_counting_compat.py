"""``count_ops_and_params`` against Torch-Pruning 1.6's, model by model.

Where a model is built only from layers both libraries count the same way, the
MACs are equal to the unit. Where depgraph counts more, every module that differs
is one of three documented kinds (README "Coming from Torch-Pruning"):

* a subclass of a counted layer (torchvision's ``LayerNorm2d``, timm's
  ``BatchNormAct2d`` / ``LayerNorm``): the original looks layers up by exact
  type and counts them as 0 (and counts an activation inside, which depgraph
  leaves in the layer's own count);
* a ``Linear`` applied to tokens: the original adds its bias once per call,
  depgraph once per output element (as both do for convolutions);
* torch functions called by a module (attention matmuls, ``F.linear``,
  ``scaled_dot_product_attention``): the original counts modules only.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import depgraph as tp

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
torch_pruning = pytest.importorskip("torch_pruning")

def _model(name: str) -> nn.Module:
    if name.startswith("timm/"):
        return timm.create_model(name[5:], pretrained=False, num_classes=10).eval()
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    return torchvision.models.get_model(name, num_classes=10, **kwargs).eval()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_b0", "googlenet",
                                  "shufflenet_v2_x0_5", "regnet_y_400mf", "timm/resnet18d"])
def test_macs_and_params_equal_the_original(name: str) -> None:
    model = _model(name)
    x = torch.randn(1, 3, 64, 64)
    ours, theirs = tp.utils.count_ops_and_params(model, x), torch_pruning.utils.count_ops_and_params(model, x)
    assert ours == (int(theirs[0]), theirs[1])


def _both(model: nn.Module, x: torch.Tensor) -> tuple:
    ours = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    theirs = torch_pruning.utils.count_ops_and_params(model, x)
    assert ours[1] == theirs[1]
    return ours[0] - theirs[0], ours[2]


def _positions(model: nn.Module, x: torch.Tensor) -> dict[nn.Module, int]:
    """Output positions (elements / out_features) of every Linear in one call."""
    seen: dict[nn.Module, int] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: seen.__setitem__(m, o.numel() // m.out_features))
             for m in model.modules() if type(m) is nn.Linear]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_convnext_difference_is_exactly_layernorm2d_and_token_biases() -> None:
    from torchvision.models.convnext import LayerNorm2d

    model = _model("convnext_tiny")
    x = torch.randn(1, 3, 32, 32)
    diff, layers = _both(model, x)
    subclass = sum(layers[m] for m in model.modules() if isinstance(m, LayerNorm2d))
    biases = sum(m.out_features * (n - 1) for m, n in _positions(model, x).items() if m.bias is not None)
    assert subclass > 0 and biases > 0 and diff == subclass + biases


def test_subclass_of_a_counted_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), timm.layers.BatchNormAct2d(8, apply_act=False)).eval()
    diff, layers = _both(model, torch.randn(1, 3, 10, 10))
    assert diff == layers[model[1]] > 0


def test_linear_bias_on_tokens() -> None:
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    diff, _ = _both(model, torch.randn(1, 5, 8))
    assert diff == 4 * (5 - 1)
    assert _both(model, torch.randn(1, 8))[0] == 0


class _Attention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return torch.softmax(x @ x.transpose(1, 2), -1) @ x


def test_torch_functions_in_a_module() -> None:
    model = nn.Sequential(nn.Linear(8, 8, bias=False), _Attention()).eval()
    diff, layers = _both(model, torch.randn(1, 5, 8))
    assert diff == layers[model[1]] == 2 * 5 * 5 * 8
