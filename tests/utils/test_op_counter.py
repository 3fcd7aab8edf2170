"""Tests of depgraph/utils/op_counter.py and its MAC rules.

The ResNet-18 figures are the published seed numbers; everything else is
checked against hand-derived formulas on small layers.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from depgraph.errors import TraceError
from depgraph.utils import count_ops_and_params, register_op_rule

RESNET18_MACS = 1_822_177_768
RESNET18_PARAMS = 11_689_512


def test_resnet18_seed_figures():
    model = torchvision.models.resnet18(weights=None)
    macs, params = count_ops_and_params(model, torch.randn(1, 3, 224, 224))
    assert macs == RESNET18_MACS
    assert params == RESNET18_PARAMS


def test_macs_are_per_example_and_training_flag_restored():
    model = torchvision.models.resnet18(weights=None).train()
    running = model.bn1.running_mean.clone()
    macs, _ = count_ops_and_params(model, (torch.randn(3, 3, 224, 224),))
    assert macs == RESNET18_MACS
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model.bn1.running_mean, running)  # ran in eval mode


def test_layer_wise_sums_and_root():
    model = torchvision.models.resnet18(weights=None)
    macs, params, layer_macs, layer_params = count_ops_and_params(
        model, torch.randn(1, 3, 224, 224), layer_wise=True
    )
    assert layer_macs[model] == macs and layer_params[model] == params
    assert set(layer_macs) == set(model.modules())
    # conv1: 64 * 112 * 112 outputs, 3 * 7 * 7 taps, no bias
    assert layer_macs[model.conv1] == 64 * 112 * 112 * 3 * 49
    assert layer_macs[model.fc] == 512 * 1000 + 1000
    assert layer_macs[model.layer1] == sum(layer_macs[b] for b in model.layer1)
    assert layer_params[model.fc] == 512 * 1000 + 1000


def test_no_hooks_left_behind_even_on_failure():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2))  # shapes do not chain
    with pytest.raises(TraceError, match="could not run Sequential"):
        count_ops_and_params(model, torch.randn(1, 4))
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert count_ops_and_params(nn.Linear(4, 3), torch.randn(1, 4)) == (4 * 3 + 3, 15)


def test_grouped_and_transposed_conv():
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=True)
    macs, _ = count_ops_and_params(conv, torch.randn(1, 8, 5, 5))
    assert macs == 16 * 25 * (8 // 4) * 9 + 16 * 25
    deconv = nn.ConvTranspose2d(4, 6, 2, stride=2, bias=False)
    macs, _ = count_ops_and_params(deconv, torch.randn(1, 4, 3, 3))
    assert macs == 4 * 9 * 6 * 4  # every input element scattered to C_out * k*k outputs


def test_norms_activations_pools():
    model = nn.Sequential(
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.GroupNorm(2, 4),
        nn.GELU(),
        nn.Flatten(),
        nn.LayerNorm(16, elementwise_affine=False),
    )
    macs, _ = count_ops_and_params(model, torch.randn(1, 4, 4, 4))
    assert macs == 2 * 64 + 64 + 64 + 2 * 16 + 16 + 16


def test_attention_matmuls_are_counted_once():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24, bias=False)

        def forward(self, x):  # (B, T, 8)
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            a = (q @ k.transpose(-1, -2)).softmax(-1)  # (B, T, T): T*T*8 MACs
            return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None]) + a @ v

    b, t = 2, 5
    macs, _ = count_ops_and_params(Attn(), torch.randn(b, t, 8))
    linear = t * 8 * 24
    matmuls = t * t * 8 + t * t * 8
    sdpa = t * 8 + t * t * 8 + t * t + t * t * 8
    assert macs == linear + matmuls + sdpa


def test_multihead_attention_and_lstm():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    macs, _ = count_ops_and_params(mha, (torch.randn(1, 3, 8),) * 3)
    n, e, h = 3, 8, 2
    expect = 3 * n * e * e + 3 * n * e + n * e + 2 * n * n * e + h * n * n + n * e * e + n * e
    assert macs == expect
    lstm = nn.LSTM(4, 6, num_layers=1, batch_first=True)
    macs, _ = count_ops_and_params(lstm, torch.randn(2, 7, 4))
    per_step = 24 * 4 + 24 * 6 + 2 * 24 + 4 * 6
    assert macs == 7 * per_step  # 2 rows x 7 steps / batch 2


def test_dict_inputs_and_einsum():
    class M(nn.Module):
        def forward(self, a, b):
            return torch.einsum("bij,bjk->bik", a, b)

    macs, params = count_ops_and_params(M(), {"a": torch.randn(1, 2, 3), "b": torch.randn(1, 3, 4)})
    assert (macs, params) == (2 * 3 * 4, 0)


def test_custom_rule_registration_warns_on_replace():
    class Scale(nn.Module):
        def forward(self, x):
            return x * 2

    @register_op_rule(Scale)
    def rule(module, inputs, output):
        return output.numel()

    assert count_ops_and_params(Scale(), torch.randn(1, 10))[0] == 10
    with pytest.warns(UserWarning, match="replacing the MAC rule for Scale"):
        register_op_rule(Scale)(lambda m, i, o: 0)


def test_hugging_face_bert_attention_is_counted():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100
    )
    model = transformers.BertModel(cfg).eval()
    macs, _ = count_ops_and_params(model, {"input_ids": torch.randint(0, 100, (2, 10))})
    t, e, h, d, ff = 10, 64, 4, 16, 128
    attention = h * (t * d + t * t * d + t * t + t * t * d)  # SDPA: scale, QK^T, softmax, AV
    layer = (
        4 * (t * e * e + t * e) + attention + 2 * (2 * t * e) + (t * e * ff + t * ff) + (t * ff * e + t * e)
    )
    embeddings_norm, pooler = 2 * t * e, e * e + e
    assert macs == 2 * layer + embeddings_norm + pooler
