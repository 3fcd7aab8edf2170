"""timm architectures, one per pruning mechanism that used to break, refuse or prune nothing.

Markers:
    zoo   every test here (random weights, small inputs, offline).
    slow  models too large for the default run; run with ``-m slow``.

Each model is pruned by ``BasePruner`` at ratio 0.5 (Torch-Pruning-style arguments,
the classifier kept), must shrink, run, keep its output shape and pass
``depgraph.verify``: exact where exactness applies (``EXACT``), shapes only where a
normalisation mixes a pruned dim (the reason is checked).

Mechanisms:
    same-padding conv   ``Conv2dSame`` pads, then runs ``F.conv2d`` on its own weight
                        (TF EfficientNet / MobileNetV3 ports).
    blur pooling        ``BlurPool2d``: a depthwise ``F.conv2d`` with a buffer filter and
                        ``groups=self.channels`` (resnetblur, densenetblur, TResNet).
    weight standardisation  ``StdConv2d`` / ``ScaledStdConv2d`` standardise the weight per output
                        channel over its fan-in before ``F.conv2d`` (NF-ResNets, BiT ResNetV2):
                        output channels go exactly, input channels change the statistics.
    NASNet cells        separable branches of same-padded depthwise convs (``Conv2dSame``),
                        summed and concatenated (pnasnet5large; fixed with the first mechanism).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch

import depgraph as tp
from tests._checks import check_result, output_shapes
from tests.zoo._zoo import randomize_norms

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.zoo


@dataclass(frozen=True)
class Case:
    """One model: creation kwargs, input size, and what verify must say."""

    name: str
    size: int = 64
    kwargs: dict = field(default_factory=dict)
    exact: bool = True  # False: exactness does not apply (``inexact`` names why)
    inexact: str = ""
    slow: bool = False


CASES = [
    Case("tf_efficientnet_b0"),
    Case("tf_mobilenetv3_small_100"),
    Case("resnetblur18"),
    Case("densenetblur121d", slow=True),
    Case("tresnet_m", slow=True),
    Case("nf_resnet26", size=32, exact=False, inexact="normalises with statistics over dim 2"),
    Case("resnetv2_50x1_bit", size=32, exact=False, inexact="normalises with statistics over dim 2", slow=True),
    Case("pnasnet5large", slow=True),
]


def _param(case: Case):
    return pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.slow else [])


def prune_half(case: Case) -> tuple[torch.nn.Module, tp.VerifyResult]:
    """BasePruner at 0.5 with the classifier kept; checks shapes and verify; returns the pruned model."""
    torch.manual_seed(0)
    model = timm.create_model(case.name, pretrained=False, num_classes=10, **case.kwargs).eval()
    randomize_norms(model)
    x = torch.randn(1, 3, case.size, case.size)
    original, shapes = copy.deepcopy(model), output_shapes(model, x)
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model.get_classifier()])
    pruner.step()
    after = sum(p.numel() for p in model.parameters())
    assert after < 0.6 * before, f"only {before - after} of {before} parameters were removed"
    result = check_result(original, model, x, shapes, exact=case.exact)
    if not case.exact:
        assert any(case.inexact in r for r in result.reasons), result.reasons
    return model, result


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_base_pruner_half(case: Case) -> None:
    prune_half(case)
