"""Model zoo: every torchvision classification model, plus segmentation and detection models.

Markers:
    zoo   every test here (select with ``-m zoo``).
    slow  models too large for the default run; run with ``-m slow``.

Each model is traced, every group from ``get_all_groups`` is pruned by a few
channels (in rounds, so the whole model shrinks), and the result must run,
keep its output shapes, and pass ``depgraph.verify`` exactly wherever exactness
applies.
"""

from __future__ import annotations

import pytest
import torch

from tests.zoo._zoo import prune_every_group

torchvision = pytest.importorskip("torchvision")
models = torchvision.models

pytestmark = pytest.mark.zoo

# Large enough that the default run would take minutes each (>= ~300M params or huge activations).
SLOW = {
    "vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "regnet_y_16gf", "regnet_x_32gf",
    "regnet_x_16gf", "efficientnet_b7", "efficientnet_b6", "efficientnet_b5", "efficientnet_v2_l",
    "efficientnet_v2_m", "convnext_large", "convnext_base", "swin_v2_b", "swin_b", "swin_v2_s", "swin_s",
    "maxvit_t", "vgg19_bn", "vgg19", "vgg16_bn", "vgg16", "vgg13_bn", "vgg13", "vgg11_bn", "densenet201",
    "densenet161", "densenet169", "wide_resnet101_2", "resnext101_64x4d", "resnext101_32x8d", "resnet152",
    "vit_b_16", "vit_b_32", "inception_v3",
}
# Transformers and models whose architecture fixes the input size.
INPUT_SIZE = {"vit": 224, "swin": 224, "maxvit": 224, "inception": 299}

CLASSIFIERS = models.list_models(module=models)


def _input_size(name: str) -> int:
    return next((s for prefix, s in INPUT_SIZE.items() if name.startswith(prefix)), 64)


def _param(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name


@pytest.mark.parametrize("name", [_param(n) for n in CLASSIFIERS])
def test_classification_model(name: str) -> None:
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    torch.manual_seed(0)
    model = models.get_model(name, weights=None, **kwargs).eval()
    size = _input_size(name)
    prune_every_group(model, torch.randn(1, 3, size, size))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "densenet121"])
def test_repeated_rounds_shrink_the_whole_model(name: str) -> None:
    """Three rounds over every group: indices stay consistent as widths keep changing."""
    torch.manual_seed(0)
    model = models.get_model(name, weights=None).eval()
    before = sum(p.numel() for p in model.parameters())
    prune_every_group(model, torch.randn(1, 3, 64, 64), rounds=3)
    assert sum(p.numel() for p in model.parameters()) < before


SEGMENTATION = [
    "lraspp_mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large",
    pytest.param("fcn_resnet50", marks=pytest.mark.slow),
    pytest.param("deeplabv3_resnet50", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_model(name: str) -> None:
    torch.manual_seed(0)
    model = models.get_model(name, weights=None, weights_backbone=None, aux_loss=False).eval()
    prune_every_group(model, torch.randn(1, 3, 64, 64))


DETECTION = [
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "ssdlite320_mobilenet_v3_large",
    pytest.param("retinanet_resnet50_fpn", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", DETECTION)
def test_detection_backbone(name: str) -> None:
    """Detection models in eval mode: prune the backbone (its feature maps keep their shapes)."""
    torch.manual_seed(0)
    model = models.get_model(name, weights=None, weights_backbone=None).eval()
    backbone = model.backbone
    prune_every_group(backbone, torch.randn(1, 3, 128, 128))
    with torch.no_grad():
        out = model([torch.rand(3, 128, 128)])
    assert isinstance(out, list) and "boxes" in out[0]
