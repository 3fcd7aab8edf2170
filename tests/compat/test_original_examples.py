"""Torch-Pruning 1.6's own documented examples, run with ``import depgraph as tp``.

Each test restates the essential calls of one example of the original repository
(VainF/Torch-Pruning): its README quickstart, ``tests/test_customized_layer.py``,
``examples/transformers/prune_hf_{bert,vit,swin}.py`` and ``prune_timm_vit.py``,
``examples/LLMs/prune_llm.py``, ``examples/timm_models/prune_timm_models.py`` and
``examples/torchvision_models/torchvision_pruning.py``. Weights are random and
configs tiny (nothing is downloaded); data loading, training and printing are
left out. Where transformers 5 renamed what an example touches (``ViTSelfAttention``
-> ``ViTAttention`` with ``q_proj``/``head_dim``, Swin's ``query`` -> ``q_proj``,
``SwinPatchMerging.dim`` gone), the test uses the new names and says so; every
depgraph call is the example's own.

Where the original runs on the same model (torchvision, plain PyTorch), the test
runs the example with both libraries and compares the resulting widths. Tests on
224-pixel inputs and the larger torchvision models are marked ``slow``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from types import ModuleType

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph

torchvision = pytest.importorskip("torchvision")


def _widths(model: nn.Module) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def _original() -> ModuleType:
    return pytest.importorskip("torch_pruning")


# -- README quickstart ---------------------------------------------------------------------------


def _readme_low_level(tp: ModuleType, model: nn.Module) -> list[str]:
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 224, 224))
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9])
    if DG.check_pruning_group(group):
        group.prune()
    str(group.details())
    names = sorted({dep.target.name.split(" ")[0] for dep, _ in group if "ElementWise" not in dep.target.name})
    for group in DG.get_all_groups(ignored_layers=[model.conv1], root_module_types=[nn.Conv2d, nn.Linear]):
        group.prune(idxs=[2, 4, 6])
    return names


def test_readme_dependency_graph_matches_the_original(tmp_path) -> None:
    original = _original()
    ours, theirs = torchvision.models.resnet18().eval(), torchvision.models.resnet18().eval()
    theirs.load_state_dict(ours.state_dict())
    names = _readme_low_level(depgraph, ours)
    assert names == _readme_low_level(original, theirs)
    assert "layer2.0.downsample.0" in names and ours.conv1.out_channels == 61
    # the one deliberate difference: get_all_groups never offers the model's output (fc's 1000 classes)
    assert ours.fc.out_features == 1000 and theirs.fc.out_features == 997
    mine, other = _widths(ours), _widths(theirs)
    assert mine.pop("fc.weight")[1] == other.pop("fc.weight")[1] and mine.pop("fc.bias") == (1000,)
    other.pop("fc.bias")
    assert mine == other
    ours.zero_grad()
    torch.save(ours, tmp_path / "model.pth")
    loaded = torch.load(tmp_path / "model.pth", weights_only=False)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x), ours(x))


def _readme_pruner(tp: ModuleType, model: nn.Module) -> tuple:
    example_inputs = torch.randn(1, 3, 224, 224)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    ignored_layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    pruner = tp.pruner.BasePruner(model, example_inputs, importance=imp, pruning_ratio=0.5,
                                  ignored_layers=ignored_layers, round_to=8)
    base = tp.utils.count_ops_and_params(model, example_inputs)
    tp.utils.print_tool.before_pruning(model)
    pruner.step()
    tp.utils.print_tool.after_pruning(model)
    return base, tp.utils.count_ops_and_params(model, example_inputs)


@pytest.mark.slow
def test_readme_high_level_pruner_prints_the_documented_numbers(capsys) -> None:
    original = _original()
    ours, theirs = torchvision.models.resnet18(), torchvision.models.resnet18()
    theirs.load_state_dict(ours.state_dict())
    (base_macs, base_params), (macs, params) = _readme_pruner(depgraph, ours)
    # the README's printed result: MACs 1.822177768 G -> 0.487202536 G, #Params 11.689512 M -> 3.05588 M
    assert (base_macs, base_params, macs, params) == (1822177768, 11689512, 487202536, 3055880)
    assert "(conv1): Conv2d(3, 64" in capsys.readouterr().out
    _readme_pruner(original, theirs)
    assert _widths(ours) == _widths(theirs)


def _readme_interactive(tp: ModuleType, model: nn.Module, **kwargs) -> list[int]:
    example_inputs = torch.randn(1, 3, 32, 32)
    pruner = tp.pruner.BasePruner(model, example_inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.5, iterative_steps=3, ignored_layers=[model.fc], **kwargs)
    widths = []
    for _ in range(3):
        for group in pruner.step(interactive=True):
            dep, idxs = group[0]
            assert isinstance(dep.target.module, nn.Module) and callable(dep.handler) and len(idxs) > 0
            group.prune()
        widths.append(model.layer1[0].conv1.out_channels)
        tp.utils.count_ops_and_params(model, example_inputs)
    return widths + [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("global_pruning", [False, True])
def test_readme_interactive_pruning_matches_the_original(global_pruning: bool) -> None:
    original = _original()
    ours, theirs = torchvision.models.resnet18(num_classes=10), torchvision.models.resnet18(num_classes=10)
    theirs.load_state_dict(ours.state_dict())
    assert (_readme_interactive(depgraph, ours, global_pruning=global_pruning)
            == _readme_interactive(original, theirs, global_pruning=global_pruning))


def test_readme_scoped_pruning_ratios_run() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    scopes = {(model.layer1, model.layer2): 0.4, model.layer3: 0.2}
    _readme_interactive(depgraph, model, global_pruning=True, pruning_ratio_dict=scopes)
    assert model.layer4[0].conv1.out_channels != 512 and model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_readme_sparse_training_loop() -> None:
    tp = depgraph
    model = torchvision.models.resnet18(num_classes=10)
    x, target = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for cls in (tp.pruner.BNScalePruner, tp.pruner.GroupNormPruner):
        pruner = cls(model, x[:1], importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.25,
                     ignored_layers=[model.fc])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        model.train()
        pruner.update_regularizer()
        optimizer.zero_grad()
        F.cross_entropy(model(x), target).backward()
        before = model.bn1.weight.grad.clone()
        pruner.regularize(model)
        assert not torch.equal(model.bn1.weight.grad, before)  # the sparsity gradient was added
        optimizer.step()
    pruner.step()
    assert model.conv1.out_channels == 48 and model(x).shape == (4, 10)


def test_readme_low_level_functions() -> None:
    tp = depgraph
    model = torchvision.models.resnet18()
    tp.prune_conv_out_channels(model.conv1, idxs=[2, 6, 9])
    tp.prune_batchnorm_out_channels(model.bn1, idxs=[2, 6, 9])
    tp.prune_conv_in_channels(model.layer2[0].conv1, idxs=[2, 6, 9])
    assert model.conv1.weight.shape[0] == 61 and model.bn1.running_mean.shape == (61,)
    assert model.layer2[0].conv1.in_channels == 61


# -- tests/test_customized_layer.py --------------------------------------------------------------


class CustomizedLayer(nn.Module):
    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.scale = nn.Parameter(torch.rand(self.in_dim))
        self.bias = nn.Parameter(torch.rand(self.in_dim))
        self.fc = nn.Linear(self.in_dim, self.in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt()
        x = torch.div(x, norm)
        return self.fc(x * self.scale + self.bias)


class FullyConnectedNet(nn.Module):
    def __init__(self, input_size: int, num_classes: int, hidden_units: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_size, hidden_units)
        self.customized_layer = CustomizedLayer(hidden_units)
        self.fc2 = nn.Linear(hidden_units, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.customized_layer(F.relu(self.fc1(x))))


def _my_pruner(tp: ModuleType) -> object:
    # the example subclasses tp.pruner.BasePruningFunc; tp.BasePruningFunc is the same class in the
    # original (the tp.pruner spelling is checked by test_public_api.py)
    class MyPruner(tp.BasePruningFunc):
        def prune_out_channels(self, layer: CustomizedLayer, idxs: Sequence[int]) -> nn.Module:
            keep_idxs = sorted(set(range(layer.in_dim)) - set(idxs))
            layer.in_dim = layer.in_dim - len(idxs)
            layer.scale = torch.nn.Parameter(layer.scale.data.clone()[keep_idxs])
            layer.bias = torch.nn.Parameter(layer.bias.data.clone()[keep_idxs])
            tp.prune_linear_in_channels(layer.fc, idxs)
            tp.prune_linear_out_channels(layer.fc, idxs)
            return layer

        def get_out_channels(self, layer: CustomizedLayer) -> int:
            # the original example returns self.in_dim (the pruner's, a bug it never calls);
            # depgraph sizes the layer's channels with this getter when it builds the graph
            return layer.in_dim

        prune_in_channels = prune_out_channels
        get_in_channels = get_out_channels

    return MyPruner()


@pytest.mark.parametrize("lib", ["depgraph", "torch_pruning"])
def test_customized_layer_example(lib: str) -> None:
    tp = depgraph if lib == "depgraph" else _original()
    model = FullyConnectedNet(128, 10, 256)
    DG = tp.DependencyGraph()
    DG.register_customized_layer(CustomizedLayer, _my_pruner(tp))
    DG.build_dependency(model, example_inputs=torch.randn(1, 128))
    pruning_group = DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=[0, 1, 6])
    str(pruning_group)
    pruning_group.prune()
    assert model(torch.randn(1, 128)).shape == (1, 10)
    assert model.fc1.out_features == 253 and model.customized_layer.in_dim == 253 and model.fc2.in_features == 253


# -- examples/transformers ------------------------------------------------------------------------


def test_prune_hf_bert_example() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.modeling_bert import BertSelfAttention

    tp = depgraph
    config = transformers.BertConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=96, max_position_embeddings=32)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 96, (1, 7))
    example_inputs = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids)}
    imp = tp.importance.MagnitudeImportance(p=2, group_reduction="mean")
    base_macs, base_params = tp.utils.count_ops_and_params(model, example_inputs)
    num_heads = {}
    for m in model.modules():
        if isinstance(m, BertSelfAttention):
            num_heads[m.query] = num_heads[m.key] = num_heads[m.value] = m.num_attention_heads
    pruner = tp.pruner.MetaPruner(model, example_inputs, global_pruning=True, importance=imp, iterative_steps=1,
                                  pruning_ratio=0.5, num_heads=num_heads, prune_head_dims=False,
                                  prune_num_heads=True, head_pruning_ratio=0.5,
                                  output_transform=lambda out: out.pooler_output.sum(),
                                  ignored_layers=[model.pooler])
    for g in pruner.step(interactive=True):
        g.prune()
    for m in model.modules():
        if isinstance(m, BertSelfAttention):
            m.num_attention_heads = pruner.num_heads[m.query]
            m.attention_head_size = m.query.out_features // m.num_attention_heads
            m.all_head_size = m.query.out_features
            assert (m.num_attention_heads, m.attention_head_size) == (2, 16)
    out = model(**example_inputs)
    assert out.last_hidden_state.shape[:2] == (1, 7)
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    assert macs < base_macs and params < base_params


def test_prune_hf_vit_example() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.vit.modeling_vit import ViTAttention  # ViTSelfAttention before transformers 5

    tp = depgraph
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=96, num_labels=10)
    model = transformers.ViTForImageClassification(config).eval()
    example_inputs = torch.randn(1, 3, 32, 32)
    base_macs, base_params = tp.utils.count_ops_and_params(model, example_inputs)
    num_heads = {}
    ignored_layers = [model.classifier]
    for m in model.modules():
        if isinstance(m, ViTAttention):
            num_heads[m.q_proj] = num_heads[m.k_proj] = num_heads[m.v_proj] = m.num_attention_heads
    pruner = tp.pruner.BasePruner(model, example_inputs, global_pruning=False,
                                  importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                  ignored_layers=ignored_layers, output_transform=lambda out: out.logits.sum(),
                                  num_heads=num_heads, prune_head_dims=True, prune_num_heads=False,
                                  head_pruning_ratio=0.5)
    for g in pruner.step(interactive=True):
        g.prune()
    for m in model.modules():
        if isinstance(m, ViTAttention):
            m.num_attention_heads = pruner.num_heads[m.q_proj]
            m.head_dim = m.q_proj.out_features // m.num_attention_heads
            assert (m.num_attention_heads, m.head_dim) == (4, 8)
    assert model(example_inputs).logits.shape == (1, 10)
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    assert macs < base_macs and params < base_params


def test_prune_hf_swin_example_with_its_customized_pruner() -> None:
    """examples/transformers/prune_hf_swin.py with its ``SwinPatchMergingPruner`` as written.

    Two adaptations to transformers 5, both outside the user's pruner: ``SwinPatchMerging`` no
    longer stores ``dim`` (the pruner reads ``layer.dim``), so the test sets it as transformers 4
    did; ``SwinSelfAttention`` (query/key/value) became ``SwinAttention`` (q/k/v_proj, head_dim).
    """
    transformers = pytest.importorskip("transformers")
    from transformers.models.swin.modeling_swin import SwinAttention, SwinPatchMerging

    tp = depgraph

    class SwinPatchMergingPruner(tp.BasePruningFunc):

        def prune_out_channels(self, layer: nn.Module, idxs: list):
            tp.prune_linear_out_channels(layer.reduction, idxs)
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            dim = layer.dim
            idxs_repeated = idxs + \
                [i+dim for i in idxs] + \
                [i+2*dim for i in idxs] + \
                [i+3*dim for i in idxs]
            tp.prune_linear_in_channels(layer.reduction, idxs_repeated)
            tp.prune_layernorm_out_channels(layer.norm, idxs_repeated)
            return layer

        def get_out_channels(self, layer):
            return layer.reduction.out_features

        def get_in_channels(self, layer):
            return layer.dim

    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                                     window_size=4, num_labels=5)
    model = transformers.SwinForImageClassification(config).eval()
    for m in model.modules():
        if isinstance(m, SwinPatchMerging):
            m.dim = m.norm.normalized_shape[0] // 4  # transformers 4 kept SwinPatchMerging(dim).dim
    example_inputs = torch.randn(1, 3, 32, 32)
    imp = tp.importance.MagnitudeImportance(p=2, group_reduction="mean")
    base_macs, base_params = tp.utils.count_ops_and_params(model, example_inputs)
    num_heads = {}
    ignored_layers = [model.classifier]
    for m in model.modules():
        if isinstance(m, SwinAttention):
            num_heads[m.q_proj] = num_heads[m.k_proj] = num_heads[m.v_proj] = m.num_attention_heads
    merge = model.swin.encoder.layers[0].downsample
    pruner = tp.pruner.MetaPruner(
        model, example_inputs, global_pruning=False, importance=imp, iterative_steps=1, ch_sparsity=0.5,
        num_heads=num_heads, output_transform=lambda out: out.logits.sum(), ignored_layers=ignored_layers,
        customized_pruners={SwinPatchMerging: SwinPatchMergingPruner()},
        root_module_types=(nn.Linear, nn.LayerNorm, SwinPatchMerging),
    )
    assert merge in pruner.DG.module2node and merge.reduction not in pruner.DG.module2node  # a leaf
    for g in pruner.step(interactive=True):
        g.prune()
    for m in model.modules():
        if isinstance(m, SwinAttention):
            m.head_dim = m.q_proj.out_features // m.num_attention_heads
    # every width halved; the merging layer pruned by the user's pruner on both sides, consistently
    stage0, stage1 = model.swin.encoder.layers
    assert model.swin.embeddings.patch_embeddings.projection.out_channels == 8
    assert stage0.blocks[0].attention.q_proj.out_features == 8 and stage0.blocks[0].mlp.fc1.out_features == 32
    assert merge.norm.normalized_shape == (32,) and (merge.reduction.in_features, merge.reduction.out_features) == (32, 16)
    assert stage1.blocks[0].attention.q_proj.weight.shape == (16, 16) and stage1.blocks[0].mlp.fc1.out_features == 64
    assert model.classifier.in_features == 16 and model(example_inputs).logits.shape == (1, 5)
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    assert macs < base_macs and params < base_params


def _timm_vit_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """The example's replacement forward of timm's Attention: reshape to the pruned width, not C.

    (Recent timm passes ``attn_mask``; the example's forward, written before, took ``x`` only.)
    """
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p)
    x = x.transpose(1, 2).reshape(B, N, -1)
    return self.proj_drop(self.proj(x))


@pytest.mark.parametrize("prune_num_heads", [False, True])
def test_prune_timm_vit_example(prune_num_heads: bool, capsys) -> None:
    timm = pytest.importorskip("timm")
    tp = depgraph
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              num_classes=10).eval()
    example_inputs = torch.randn(1, 3, 32, 32)
    base_macs, base_params = tp.utils.count_ops_and_params(model, example_inputs)
    tp.utils.print_tool.before_pruning(model)
    num_heads = {}
    ignored_layers = [model.head]
    for m in model.modules():
        if isinstance(m, timm.models.vision_transformer.Attention):
            m.forward = _timm_vit_forward.__get__(m, timm.models.vision_transformer.Attention)
            num_heads[m.qkv] = m.num_heads
    pruner = tp.pruner.BasePruner(model, example_inputs, global_pruning=False,
                                  importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=0.5,
                                  ignored_layers=ignored_layers, num_heads=num_heads,
                                  prune_num_heads=prune_num_heads, prune_head_dims=not prune_num_heads,
                                  head_pruning_ratio=0.5, round_to=1)
    for g in pruner.step(interactive=True):
        g.prune()
    for m in model.modules():
        if isinstance(m, timm.models.vision_transformer.Attention):
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            assert (m.num_heads, m.head_dim) == ((2, 64) if prune_num_heads else (3, 32))
    tp.utils.print_tool.after_pruning(model, do_print=True)
    assert "=>" in capsys.readouterr().out
    assert model(example_inputs).shape == (1, 10)
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    assert macs < base_macs and params < base_params
    mean, std = tp.utils.benchmark.measure_latency(model, example_inputs=torch.randn(2, 3, 32, 32), repeat=2)
    assert mean > 0


# -- examples/LLMs/prune_llm.py ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_prune_llm_example(family: str) -> None:
    transformers = pytest.importorskip("transformers")
    tp = depgraph
    size = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=64)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**size))
    else:
        model = transformers.GemmaForCausalLM(transformers.GemmaConfig(**size, head_dim=16))
    model.eval()
    inputs = torch.randint(0, 96, (1, 12))
    reference = copy.deepcopy(model)
    num_heads, out_channel_groups = {}, {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = model.config.num_attention_heads
            num_heads[m.k_proj] = model.config.num_key_value_heads
            num_heads[m.v_proj] = model.config.num_key_value_heads
    _is_gqa = model.config.num_attention_heads != model.config.num_key_value_heads
    pruner = tp.pruner.MetaPruner(model, example_inputs=inputs,
                                  importance=tp.importance.GroupNormImportance(p=2, group_reduction="mean"),
                                  global_pruning=False, pruning_ratio=0.5, ignored_layers=[model.lm_head],
                                  num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
                                  head_pruning_ratio=0.5, out_channel_groups=out_channel_groups, round_to=4)
    for g in pruner.step(interactive=True):
        g.prune()
    # the example's own update of the attributes, after depgraph already updated them
    model.config.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            m.hidden_size = m.q_proj.out_features
            m.num_heads = m.hidden_size // m.head_dim
            model.config.num_attention_heads = m.num_heads
            if not _is_gqa:
                m.num_key_value_heads = m.num_heads
            m.num_key_value_groups = m.num_heads // m.num_key_value_heads
        elif name.endswith("mlp"):
            m.hidden_size = m.gate_proj.in_features
            model.config.intermediate_size = m.gate_proj.out_features
    if not _is_gqa:
        model.config.num_key_value_heads = model.config.num_attention_heads
    # both updates agree
    assert (model.config.hidden_size, model.config.num_attention_heads, model.config.intermediate_size) == (32, 2, 48)
    for layer in model.model.layers:
        assert layer.self_attn.num_key_value_groups == 1 and layer.self_attn.q_proj.out_features == 32
    logits = model(inputs).logits
    assert logits.shape == (1, 12, 96) and torch.isfinite(logits).all()
    assert model(inputs[:, :5]).logits.shape == (1, 5, 96)
    assert reference(inputs).logits.shape == logits.shape


# -- examples/timm_models/prune_timm_models.py ---------------------------------------------------


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "resnet18"])
def test_prune_timm_models_example(name: str) -> None:
    timm = pytest.importorskip("timm")
    tp = depgraph
    kwargs = dict(img_size=32, patch_size=8, depth=2) if "deit" in name else {}
    model = timm.create_model(name, pretrained=False, no_jit=True, **kwargs).eval()
    example_inputs = torch.randn(1, 3, 32, 32)
    model(example_inputs)
    ignored_layers, num_heads, pruning_ratio_dict = [], {}, {}
    ratios = [0.265625, 0.234375, 0.265625, 0.265625, 0.93359375, 0.328125, 0.2265625, 0.58984375, 0.54296875,
              0.701171875, 0.919921875, 0.04296875, 0.796875, 0.240966796875, 0.07763671875, 0.25, 0.25, 0.25,
              0.25, 0.25]
    k = 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == model.num_classes:
            ignored_layers.append(m)
        if hasattr(m, "num_heads"):
            if hasattr(m, "qkv"):
                num_heads[m.qkv] = m.num_heads
        elif isinstance(m, nn.Conv2d):
            pruning_ratio_dict[m] = ratios[k]
            k += 1
    base_macs, base_params = tp.utils.count_ops_and_params(model, example_inputs)
    pruner = tp.pruner.MetaPruner(model, example_inputs, global_pruning=False,
                                  importance=tp.importance.GroupNormImportance(), iterative_steps=1,
                                  pruning_ratio=0.5, pruning_ratio_dict=pruning_ratio_dict, num_heads=num_heads,
                                  ignored_layers=ignored_layers)
    for g in pruner.step(interactive=True):
        g.prune()
    for m in model.modules():
        if hasattr(m, "num_heads") and hasattr(m, "qkv"):
            m.num_heads = num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
    assert model(example_inputs).shape == (1, 1000)
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    assert macs < base_macs and params < base_params


# -- examples/torchvision_models/torchvision_pruning.py ------------------------------------------


def _torchvision_prune(model: nn.Module, example_inputs, output_transform, model_name: str) -> None:
    """The example's ``my_prune``: 50% of every layer, all but the 1000-class heads (and detection heads)."""
    from torchvision.models.vision_transformer import VisionTransformer

    tp = depgraph
    model.cpu().eval()
    ignored_layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    for p in model.parameters():
        p.requires_grad_(True)
    if "fasterrcnn" in model_name:
        ignored_layers.extend([model.rpn.head.cls_logits, model.rpn.head.bbox_pred, model.backbone.fpn,
                               model.roi_heads])
    round_to = model.encoder.layers[0].num_heads if isinstance(model, VisionTransformer) else None
    pruner = tp.pruner.MagnitudePruner(model, example_inputs=example_inputs,
                                       importance=tp.importance.MagnitudeImportance(p=1), iterative_steps=1,
                                       ch_sparsity=0.5, global_pruning=False, round_to=round_to,
                                       unwrapped_parameters=None, ignored_layers=ignored_layers)
    layer_channel_cfg = {}
    for module in model.modules():
        if module not in pruner.ignored_layers:
            if isinstance(module, nn.Conv2d):
                layer_channel_cfg[module] = module.out_channels
            elif isinstance(module, nn.Linear):
                layer_channel_cfg[module] = module.out_features
    outputs = [model.classifier[-1]] if "deeplabv3" in model_name else []
    pruner.step()
    if isinstance(model, VisionTransformer):
        model.hidden_dim = model.conv_proj.out_channels
    with torch.no_grad():
        out = model(**example_inputs) if isinstance(example_inputs, dict) else model(example_inputs)
        if output_transform:
            out = output_transform(out)
        if "rcnn" not in model_name:
            for module, ch in layer_channel_cfg.items():
                if module in outputs:  # depgraph keeps the model's output width (README)
                    continue
                now = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
                assert int(0.5 * ch) == now, (model_name, module, ch)
        if isinstance(out, (dict, list, tuple)):
            assert all(isinstance(o, torch.Tensor) for o in tp.utils.flatten_as_list(out))
        else:
            assert out.shape[0] == 1


@pytest.mark.parametrize("model_name", [
    "resnet18", "mobilenet_v3_small", "deeplabv3_mobilenet_v3_large",
    pytest.param("vit_b_16", marks=pytest.mark.slow), pytest.param("convnext_tiny", marks=pytest.mark.slow),
    pytest.param("fasterrcnn_mobilenet_v3_large_320_fpn", marks=pytest.mark.slow),
])
def test_torchvision_pruning_example(model_name: str) -> None:
    example_inputs = torch.randn(1, 3, 64, 64)
    output_transform = None
    if model_name == "vit_b_16":
        model = torchvision.models.vit_b_16(image_size=64)
    elif "deeplabv3" in model_name:
        model = torchvision.models.get_model(model_name, weights=None, weights_backbone=None, aux_loss=None)
        output_transform = lambda x: x["out"]  # noqa: E731 - as in the example
    elif "fasterrcnn" in model_name:
        model = torchvision.models.get_model(model_name, weights_backbone=None, trainable_backbone_layers=6,
                                             min_size=96, max_size=128)
        example_inputs = [torch.rand(3, 96, 128), torch.rand(3, 128, 96)]
    else:
        model = torchvision.models.get_model(model_name)
    _torchvision_prune(model, example_inputs, output_transform, model_name)

