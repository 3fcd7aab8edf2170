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
