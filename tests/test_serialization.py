"""tp.state_dict / tp.load_state_dict / tp.save / tp.load: a pruned model re-created from its definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from tests._checks import build

torchvision = pytest.importorskip("torchvision")


def _prune_everything(model: nn.Module, x, step: int = 3, root_types=(nn.Conv2d, nn.Linear)) -> None:
    DG = build(model, x)
    for group in list(DG.get_all_groups(root_module_types=root_types)):
        n = len(group[0].idxs)
        group = DG.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, list(range(1, n, step)))
        if DG.check_pruning_group(group):
            group.prune()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "shufflenet_v2_x0_5"])
def test_round_trip_through_a_file(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    pruned = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    _prune_everything(pruned, x)
    tp.save(pruned, tmp_path / "pruned.pth")

    fresh = torchvision.models.get_model(name, weights=None).eval()
    assert any(a.shape != b.shape for a, b in zip(fresh.parameters(), pruned.parameters(), strict=True))
    tp.load(fresh, tmp_path / "pruned.pth")
    assert repr(fresh) == repr(pruned)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))
    # the records travel too, so verify still works on the re-created model
    original = torchvision.models.get_model(name, weights=None).eval()
    assert tp.verify(original, fresh, x).shapes_match


def test_grouped_conv_and_lstm_attributes_round_trip() -> None:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.lstm = nn.LSTM(16, 12, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Linear(24, 3)

        def forward(self, x):
            y = self.pool(self.dw(self.conv(x))).flatten(1)
            out, _ = self.lstm(y.unsqueeze(1).repeat(1, 5, 1))
            return self.head(out[:, -1])

    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    pruned = Net().eval()
    _prune_everything(pruned, x, step=2, root_types=(nn.Conv2d, nn.Linear, nn.LSTM))
    assert pruned.dw.groups < 8 and pruned.lstm.hidden_size < 12
    fresh = Net().eval()
    tp.load_state_dict(fresh, tp.state_dict(pruned))
    assert (fresh.dw.groups, fresh.lstm.hidden_size) == (pruned.dw.groups, pruned.lstm.hidden_size)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))


def test_refuses_what_it_did_not_make() -> None:
    model = torchvision.models.resnet18()
    with pytest.raises(tp.DepgraphError, match="not a depgraph pruned state"):
        tp.load_state_dict(model, model.state_dict())
    state = tp.state_dict(torchvision.models.resnet18())
    state["attributes"]["no.such.layer"] = {"out_channels": 3}
    with pytest.raises(tp.DepgraphError, match="modules this model lacks"):
        tp.load_state_dict(model, state)


class _Gated(nn.Module):
    """A Linear whose output is scaled by a non-persistent buffer (as RoPE's ``inv_freq`` is computed)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)
        self.register_buffer("gain", torch.linspace(0.5, 2.0, 16), persistent=False)

    def forward(self, x):
        return self.fc2(self.fc1(x) * self.gain)


def test_pruned_non_persistent_buffer_round_trips() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    pruned = _Gated().eval()
    DG = build(pruned, x)
    DG.get_pruning_group(pruned.fc1, tp.prune_linear_out_channels, [0, 5, 9]).prune()
    assert pruned.gain.shape == (13,)
    state = tp.state_dict(pruned)
    assert "gain" not in state["state_dict"] and set(state["buffers"]) == {"gain"}
    fresh = tp.load_state_dict(_Gated().eval(), state)
    assert torch.equal(fresh.gain, pruned.gain)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))
    # modules depgraph did not touch keep their buffers out of the file
    assert tp.state_dict(_Gated())["buffers"] == {}


@pytest.mark.zoo
@pytest.mark.filterwarnings("ignore:depgraph. after this prune")  # layer by layer: uneven on the way
@pytest.mark.parametrize("family,kind", [
    *(("llama", k) for k in ("head_dims", "heads", "mlp", "hidden")),
    ("phi3", "heads"),    # its forward reads config.num_attention_heads: the config travels too
    ("gemma", "hidden"),  # its embedding scale, a non-persistent buffer, follows the hidden size
])
def test_pruned_llm_reloads_with_equal_logits(family: str, kind: str, tmp_path) -> None:
    pytest.importorskip("transformers")
    from tests.integrations._hf import FAMILIES, logits, output_of, prune_uniformly

    fam = FAMILIES[family]
    pruned, inputs = fam.build(), fam.example_inputs()
    DG = build(pruned, inputs, output_transform=output_of)
    prune_uniformly(DG, pruned, kind)
    tp.save(pruned, tmp_path / "pruned.pth")
    fresh = tp.load(fam.build(), tmp_path / "pruned.pth")
    if family == "phi3":
        assert fresh.config.num_attention_heads == pruned.config.num_attention_heads == 2
    if kind == "head_dims":  # the rotary frequencies of the pruned pair are gone, in the reload too
        assert fresh.model.rotary_emb.inv_freq.shape == (3,)
        assert torch.equal(fresh.model.rotary_emb.inv_freq, pruned.model.rotary_emb.inv_freq)
    assert torch.equal(logits(fresh, inputs), logits(pruned, inputs))


@pytest.mark.zoo
def test_tp_load_then_save_pretrained_keeps_the_rope_config(tmp_path) -> None:
    """The config travels whole (longrope factor lists too), so a tp.load-ed model saves for transformers."""
    pytest.importorskip("transformers")
    from tests.integrations._hf import FAMILIES, logits

    fam = FAMILIES["llama"]
    pruned, inputs = fam.build(), fam.example_inputs()
    DG = build(pruned, inputs)
    DG.get_pruning_group(pruned.model.layers[0].self_attn.q_proj, tp.prune_linear_out_channels, [1, 5]).prune()
    assert pruned.config.rope_parameters["rope_type"] == "longrope"  # pair 1 of 4 kept pairs went
    tp.save(pruned, tmp_path / "pruned.pth")
    fresh = tp.load(fam.build(), tmp_path / "pruned.pth")
    assert fresh.config.rope_parameters == pruned.config.rope_parameters
    fresh.save_pretrained(tmp_path / "hf")
    reloaded = type(fresh).from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(logits(reloaded, inputs), logits(pruned, inputs))


# -- a module whose class pruning swaps: nn.MultiheadAttention that lost heads -------------------


def _encoder(num_layers: int = 2) -> nn.TransformerEncoder:
    """Weights fixed by seed; heads 0 and 2 of every layer made weakest, so they are the ones removed."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False).eval()
    with torch.no_grad():
        for layer in model.layers:
            rows = torch.cat([torch.arange(h * 8, h * 8 + 8) + j * 32 for h in (0, 2) for j in range(3)])
            layer.self_attn.in_proj_weight[rows] *= 0.01
    return model


def _head_pruned_encoder(x: torch.Tensor) -> tuple[nn.TransformerEncoder, tp.pruner.BasePruner]:
    model = _encoder()
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                                  prune_num_heads=True, head_pruning_ratio=0.5)
    pruner.step()
    return model, pruner


def assert_same_pruned_model(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    """Same module classes, recorded attributes and state (``_heads_kept`` too), and identical outputs."""
    sa, sb = tp.state_dict(a), tp.state_dict(b)
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]
    assert sa["attributes"] == sb["attributes"] and sa["shapes"] == sb["shapes"]
    assert sa["classes"].keys() == sb["classes"].keys()
    for name, entry in sa["classes"].items():
        assert entry["class"] == sb["classes"][name]["class"]
        assert all(torch.equal(v, sb["classes"][name]["state"][k]) for k, v in entry["state"].items())
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        # a per-head mask (B * original heads, L, S) reaches only the kept heads: _heads_kept must agree
        mask = torch.randn(2 * 4, x.shape[1], x.shape[1])
        ma, mb = a.layers[0].self_attn, b.layers[0].self_attn
        assert torch.equal(ma(x, x, x, attn_mask=mask)[0], mb(x, x, x, attn_mask=mask)[0])


def test_head_pruned_multihead_attention_round_trips(tmp_path) -> None:
    from depgraph.functional.pruned_mha import PrunedMultiheadAttention

    torch.set_num_threads(1)
    x = torch.randn(2, 6, 32)
    pruned, _ = _head_pruned_encoder(x)
    for layer in pruned.layers:
        assert type(layer.self_attn) is PrunedMultiheadAttention
        assert layer.self_attn._heads_kept.tolist() == [1, 3] and layer.linear1.out_features == 32
    tp.save(pruned, tmp_path / "pruned.pth")
    fresh = tp.load(_encoder(), tmp_path / "pruned.pth")
    assert_same_pruned_model(fresh, pruned, x)
    assert tp.verify(_encoder(), fresh, x).shapes_match


def test_wrong_definition_is_refused_and_left_unchanged() -> None:
    x = torch.randn(2, 6, 32)
    state = tp.state_dict(_head_pruned_encoder(x)[0])
    for wrong, match in ((_encoder(3), r"tensors the pruned state lacks: \['layers.2"),
                         (_encoder(1), r"modules this model lacks: \['layers.1")):
        before = {k: v.clone() for k, v in wrong.state_dict().items()}
        with pytest.raises(tp.DepgraphError, match=match):
            tp.load_state_dict(wrong, state)
        assert all(type(layer.self_attn) is nn.MultiheadAttention for layer in wrong.layers)
        assert wrong.layers[0].self_attn.num_heads == 4
        assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())
    # a module of another class where the pruned state swaps one
    wrong = _encoder()
    wrong.layers[1].self_attn = nn.Linear(32, 32)
    with pytest.raises(tp.DepgraphError, match=r"layers.1.self_attn is a Linear, but the pruned module is a "
                                               r"PrunedMultiheadAttention, made from a MultiheadAttention"):
        tp.load_state_dict(wrong, state)
    assert type(wrong.layers[0].self_attn) is nn.MultiheadAttention


def test_a_load_failing_part_way_restores_the_model(monkeypatch) -> None:
    x = torch.randn(2, 6, 32)
    state = tp.state_dict(_head_pruned_encoder(x)[0])
    fresh = _encoder()
    with torch.no_grad():
        expected = fresh(x)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(nn.Module, "load_state_dict", broken)
    with pytest.raises(tp.DepgraphError, match="disk on fire.*restored unchanged"):
        tp.load_state_dict(fresh, state)
    monkeypatch.undo()
    attn = fresh.layers[0].self_attn
    assert type(attn) is nn.MultiheadAttention and attn.num_heads == 4 and "_heads_kept" not in vars(attn)
    assert attn.in_proj_weight.shape == (96, 32) and fresh.layers[0].linear1.out_features == 64
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


def test_unregistered_class_is_refused() -> None:
    x = torch.randn(2, 6, 32)
    state = tp.state_dict(_head_pruned_encoder(x)[0])
    state["classes"]["layers.0.self_attn"]["class"] = "os.system"
    with pytest.raises(tp.DepgraphError, match=r"layers.0.self_attn: .* os.system, which is not registered"):
        tp.load_state_dict(_encoder(), state)


def test_str_enum_attributes_are_not_recorded(tmp_path) -> None:
    """A str Enum on a module (HF sets one after a quantized load) must not make tp.load's
    ``weights_only`` unpickling fail: only plain ints, floats and strings are recorded."""
    import enum

    class Method(str, enum.Enum):
        GGUF = "gguf"

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    model.quantization_method = Method.GGUF
    tp.save(model, tmp_path / "m.pth")
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3))
    tp.load(fresh, tmp_path / "m.pth")
    assert torch.equal(fresh[0].weight, model[0].weight)
