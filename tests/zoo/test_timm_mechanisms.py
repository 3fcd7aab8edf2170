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
                        paths shifted by a negative ``ZeroPad2d``, summed and concatenated
                        (nasnetalarge, pnasnet5large; fixed with the first mechanism).
    attention tables    heads and head dims meeting tables sized by the head count or a stored
                        width: SAM-ViT (heads merged into the batch as ``B * num_heads``,
                        relative-position tables of ``head_dim`` columns), TNT (inner attention on
                        ``B * patches`` sequences), SHViT (``self.pdim`` sizes a piece of ``qkv``
                        and ``split(x, [pdim, dim - pdim])``). Pruned with heads
                        (``prune_num_heads=True``); each must lose heads or head dims as stated.
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections.abc import Callable
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
    pruner: dict = field(default_factory=dict)  # extra BasePruner arguments
    widths: dict = field(default_factory=dict)  # "module.attr" -> value after the prune
    check: Callable[[torch.nn.Module], None] | None = None  # more assertions on the pruned model


HEADS = dict(prune_num_heads=True, head_pruning_ratio=0.5)


def _shsa_consistent(model: torch.nn.Module, pdims: int) -> None:
    """SHViT's stored widths match the pruned layers: ``pdim`` (the attended piece, ``pdims`` in all
    before the prune) shrank with the stream, and ``qkv`` holds ``2 * qk_dim + pdim`` rows."""
    mixers = [m for m in model.modules() if type(m).__name__ == "SHSA"]
    assert mixers and sum(m.pdim for m in mixers) < pdims
    for m in mixers:
        assert m.qkv.c.out_channels == 2 * m.qk_dim + m.pdim and m.pre_norm.num_channels == m.pdim

CASES = [
    Case("tf_efficientnet_b0"),
    Case("tf_mobilenetv3_small_100"),
    Case("resnetblur18"),
    Case("densenetblur121d", slow=True),
    Case("tresnet_m", slow=True),
    Case("nf_resnet26", size=32, exact=False, inexact="normalises with statistics over dim 2"),
    Case("resnetv2_50x1_bit", size=32, exact=False, inexact="normalises with statistics over dim 2", slow=True),
    Case("pnasnet5large", slow=True),
    Case("nasnetalarge", slow=True),
    Case("samvit_base_patch16", kwargs=dict(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=4, window_size=4,
                                            global_attn_indexes=(1,), neck_chans=32),
         exact=False, inexact="normalises over", pruner=HEADS,
         widths={"blocks.0.attn.num_heads": 2, "blocks.1.attn.num_heads": 2, "blocks.0.attn.head_dim": 8,
                 "blocks.1.attn.rel_pos_h.shape": (15, 8)}),
    Case("tnt_s_patch16_224", kwargs=dict(depth=2, img_size=64), exact=False, inexact="normalises over",
         pruner=HEADS, widths={"blocks.0.attn_in.num_heads": 2, "blocks.1.attn_out.num_heads": 3}, slow=True),
    Case("shvit_s1", kwargs=dict(embed_dim=(32, 64, 96), partial_dim=(8, 16, 24), depth=(1, 2, 2)),
         exact=False, inexact="normalises over channel groups",
         widths={"stages.1.blocks.0.mixer.m.dim": 32}, check=lambda m: _shsa_consistent(m, 2 * 16 + 2 * 24), slow=True),
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
                                  ignored_layers=[model.get_classifier()], **case.pruner)
    with warnings.catch_warnings():
        # no group left unpruned, no head axis refused
        warnings.filterwarnings("error", message=r"(?s).*(left the group|cannot be removed)")
        pruner.step()
    for path, value in case.widths.items():
        got = operator.attrgetter(path)(model)
        assert (tuple(got) if path.endswith(".shape") else got) == value, (path, got)
    if case.check is not None:
        case.check(model)
    after = sum(p.numel() for p in model.parameters())
    assert after < 0.6 * before, f"only {before - after} of {before} parameters were removed"
    result = check_result(original, model, x, shapes, exact=case.exact)
    if not case.exact:
        assert any(case.inexact in r for r in result.reasons), result.reasons
    return model, result


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_base_pruner_half(case: Case) -> None:
    prune_half(case)


@pytest.mark.parametrize("fused", [False, True], ids=["explicit", "sdpa"])
def test_samvit_heads_and_relative_position_tables_exact(fused: bool) -> None:
    """A SAM-ViT head, then a head dim of the global block: the relative-position tables lose that
    column, and the query fold that keeps ``scale == head_dim ** -0.5`` divides them by the same
    factor, so the bias ``q . rel_pos`` is unchanged. The explicit path is exact; with sdpa's
    default scale exactness is not claimed, but the difference is rounding all the same."""
    from depgraph.dependency.heads import find_attention_heads

    torch.manual_seed(0)
    model = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=10, img_size=64, patch_size=8, embed_dim=64,
                              depth=2, num_heads=4, window_size=4, global_attn_indexes=(1,), neck_chans=32).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.fused_attn = fused
            block.attn.rel_pos_h.normal_()
            block.attn.rel_pos_w.normal_()
    x = torch.randn(1, 3, 64, 64)
    original, shapes = copy.deepcopy(model), output_shapes(model, x)
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, x)
    blocks = find_attention_heads(DG)
    assert [len(b.units) for b in blocks] == [4, 4]  # the windowed block (batch = windows) too
    blocks[0].group([1]).prune()
    attn = model.blocks[1].attn
    group = DG.get_pruning_group(attn.qkv, tp.prune_linear_out_channels, [0])
    assert {it.dep.target.name for it in group.items} >= {"blocks.1.attn.rel_pos_h", "blocks.1.attn.rel_pos_w"}
    group.prune()
    assert (model.blocks[0].attn.num_heads, attn.head_dim, tuple(attn.rel_pos_h.shape)) == (3, 15, (15, 15))
    result = check_result(original, model, x, shapes, exact=not fused)
    if fused:
        assert result.max_diff <= result.tol, result  # within exactness tolerance (before the fix: 1e-3)
