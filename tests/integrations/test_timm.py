"""timm vision transformers and ConvNeXt: heads, head dims, MLP and hidden dims, in every block.

Markers:
    zoo   every test here (timm architectures shrunk to two blocks, random weights, offline).

Each case prunes one kind of channel in every block, runs the model, keeps the
output shape and proves the result with ``depgraph.verify``: exact for heads and
MLP channels; for head dims exact where the attention scale is a stored number
(Swin) and not where ``scaled_dot_product_attention`` recomputes
``1/sqrt(head_dim)`` (ViT, DeiT); shapes only for hidden dims (norms mix them).
``xfail(strict=True)`` marks what depgraph cannot prune yet, with the reason.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.zoo

MODELS = {
    "vit_tiny_patch16_224": dict(img_size=32, depth=2),
    "vit_small_patch16_224": dict(img_size=32, depth=1),
    "deit_tiny_distilled_patch16_224": dict(img_size=32, depth=2),
    "swin_tiny_patch4_window7_224": dict(img_size=32, depths=(1, 1), num_heads=(2, 4), embed_dim=32, window_size=4),
    "convnext_atto": dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64)),
    "eva02_tiny_patch14_224": dict(img_size=28, depth=2),
    "levit_128s": dict(img_size=64),
}
# exact: True (must be exact), False (exactness does not apply), None (no such layers)
# LeViT keeps its attention scale as a number and normalises with BatchNorm only: all exact.
EXACT = {
    "heads": {"vit_tiny_patch16_224": True, "vit_small_patch16_224": True, "deit_tiny_distilled_patch16_224": True,
              "swin_tiny_patch4_window7_224": True, "convnext_atto": None, "levit_128s": True},
    "head_dims": {"vit_tiny_patch16_224": False, "vit_small_patch16_224": False, "deit_tiny_distilled_patch16_224": False,
                  "swin_tiny_patch4_window7_224": True, "convnext_atto": None, "levit_128s": True},
    "mlp": dict.fromkeys(MODELS, True),
    "hidden": {**dict.fromkeys(MODELS, False), "levit_128s": True},
}
NOT_PRUNABLE = {
    # A limit of the model's code, not of depgraph: EvaAttention reshapes its output to the width
    # of its *input* (``x.transpose(1, 2).reshape(B, N, C)`` with ``B, N, C = x.shape``), so the
    # attention width (heads x head dim) and the hidden size can only ever change together.
    **{("eva02_tiny_patch14_224", k): "EvaAttention reshapes its output to its input's width C "
       "(reshape(B, N, C)): heads x head_dim must stay equal to the hidden size" for k in ("heads", "head_dims", "hidden")},
}


def _linear(m: nn.Module) -> nn.Module:
    return m if isinstance(m, nn.Linear) else next(c for c in m.modules() if isinstance(c, nn.Linear))


def _prune(DG, root, fn, idxs) -> None:
    group = DG.get_pruning_group(root, fn, idxs)
    assert DG.check_pruning_group(group), group.details()
    group.prune()


def prune_blocks(DG, model: nn.Module, kind: str) -> int:
    """Prune ``kind`` in every block; the number of groups pruned."""
    if kind == "hidden":
        conv = next(c for c in model.modules() if isinstance(c, nn.Conv2d))
        _prune(DG, conv, tp.prune_conv_out_channels, [0, 3])
        return 1
    n = 0
    for name, m in list(model.named_modules()):
        if kind == "mlp" and name.endswith("mlp") and (hasattr(m, "fc2") or hasattr(m, "ln2")):
            fc2 = m.fc2 if hasattr(m, "fc2") else _linear(m.ln2)  # LeViT: Linear + BatchNorm1d
            fn = tp.prune_linear_in_channels if isinstance(fc2, nn.Linear) else tp.prune_conv_in_channels
            _prune(DG, fc2, fn, [0, 3])
            n += 1
        elif kind in ("heads", "head_dims") and name.endswith("attn") and hasattr(m, "qkv"):
            proj = _linear(m.proj)
            head_dim = proj.in_features // m.num_heads
            idxs = list(range(head_dim)) if kind == "heads" else [3]
            _prune(DG, proj, tp.prune_linear_in_channels, idxs)
            n += 1
    return n


def _case(name: str, kind: str):
    reason = NOT_PRUNABLE.get((name, kind))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(name, kind, marks=marks, id=f"{name}-{kind}")


CASES = [_case(n, k) for k in EXACT for n in MODELS if EXACT[k].get(n) is not None or (n, k) in NOT_PRUNABLE]


@pytest.mark.parametrize("name,kind", CASES)
def test_prune_timm(name: str, kind: str) -> None:
    model = timm.create_model(name, pretrained=False, num_classes=10, **MODELS[name]).eval()
    size = MODELS[name].get("img_size", 32)
    x = torch.randn(2, 3, size, size)
    original = copy.deepcopy(model)
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, x)
    assert prune_blocks(DG, model, kind) >= 1
    assert model(x).shape == (2, 10)
    result = tp.verify(original, model, x)
    assert result.shapes_match, str(result)
    if EXACT[kind][name]:
        assert result.applies and result.exact, str(result)
    else:
        assert not result.applies, str(result)
    if kind == "heads":
        for m in model.modules():
            if hasattr(m, "qkv") and hasattr(m, "num_heads"):
                assert m.num_heads * (_linear(m.proj).in_features // m.num_heads) == _linear(m.proj).in_features
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in original.parameters())
