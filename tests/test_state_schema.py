"""Loading a pruned state is allow-listed: malformed, truncated or crafted files are refused before the
model changes (depgraph/state_schema.py, depgraph/serialization.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from tests._checks import build
from tests.test_serialization import _encoder, _head_pruned_encoder

torchvision = pytest.importorskip("torchvision")


def _pruned_resnet18() -> nn.Module:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    DG = build(model, x)
    DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [0, 3, 5]).prune()
    return model


@pytest.fixture(scope="module")
def pruned_state() -> dict:
    return tp.state_dict(_pruned_resnet18())


def _unchanged(model: nn.Module, before: dict) -> bool:
    after = model.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _copy(state: dict) -> dict:
    return {k: ({n: (dict(v) if isinstance(v, dict) else v) for n, v in s.items()} if isinstance(s, dict) else s)
            for k, s in state.items()}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.pop("attributes"), r"the section 'attributes' is missing"),
        (lambda s: s.update(code="print('hi')"), r"the section 'code' is unknown"),
        (lambda s: s["state_dict"].update({"conv1.weight": "not a tensor"}), r"'state_dict' entries must be tensors"),
        (lambda s: s["shapes"].update({"conv1.weight": (-1, 3)}), r"'shapes' entries must be tuples of sizes"),
        (lambda s: s["attributes"].update({"conv1": {"out_channels": [1, 2]}}), r"'attributes' entries must be"),
        (lambda s: s["records"].update({"conv1": {"_depgraph_kept": {"out": [0, 1]}}}),
         r"records\['conv1'\]\['_depgraph_kept'\] must map"),
        (lambda s: s["records"].update({"conv1": {"forward": 1}}), r"records\['conv1'\] has the unknown entry"),
    ],
)
def test_malformed_states_are_refused_by_name(pruned_state, edit, match) -> None:
    state = _copy(pruned_state)
    edit(state)
    model = torchvision.models.resnet18(weights=None)
    before = model.state_dict()
    with pytest.raises(tp.PrunedStateError, match=match):
        tp.load_state_dict(model, state)
    assert _unchanged(model, before) and model.conv1.out_channels == 64


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"forward": 3}, r"conv1.forward: would shadow Conv2d.forward"),
        ({"_reversed_padding_repeated_twice": (0, 0)}, r"conv1._reversed_padding_repeated_twice: private"),
        ({"padding_mode": 7}, r"conv1.padding_mode: the model holds str here, the state int"),
    ],
)
def test_attributes_outside_the_allow_list_are_refused(pruned_state, attrs, match) -> None:
    state = _copy(pruned_state)
    state["attributes"]["conv1"] = {**state["attributes"]["conv1"], **attrs}
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(tp.PrunedStateError, match=match):
        tp.load_state_dict(model, state)
    assert "forward" not in vars(model.conv1) and model.conv1.out_channels == 64


def test_a_crafted_classes_section_cannot_set_forward(tmp_path) -> None:
    """The 'classes' section once went into module.__dict__ unchecked: a file could replace ``forward``."""
    model, _ = _head_pruned_encoder(torch.randn(2, 6, 32))
    state = tp.state_dict(model)
    assert state["classes"], "the head prune must swap the attention class"
    name = next(iter(state["classes"]))
    state["classes"][name]["state"]["forward"] = torch.zeros(1)
    torch.save(state, tmp_path / "crafted.pth")
    fresh = _encoder()
    before = fresh.state_dict()
    with pytest.raises(tp.PrunedStateError, match=r"may only set \['_heads_kept'\], not \['forward'\]"):
        tp.load(fresh, tmp_path / "crafted.pth")
    attn = fresh.layers[0].self_attn
    assert type(attn) is nn.MultiheadAttention and "forward" not in vars(attn) and _unchanged(fresh, before)


def test_a_truncated_file_is_refused(tmp_path) -> None:
    tp.save(_pruned_resnet18(), tmp_path / "pruned.pth")
    data = (tmp_path / "pruned.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(tp.PrunedStateError, match=r"cannot read .*cut.pth.* may be truncated"):
        tp.load(model, tmp_path / "cut.pth")
    assert model.conv1.out_channels == 64
    with pytest.raises(FileNotFoundError):
        tp.load(model, tmp_path / "missing.pth")


def test_a_whole_pickled_model_is_refused_with_the_way_to_load_it(tmp_path) -> None:
    torch.save(_pruned_resnet18(), tmp_path / "whole.pth")
    with pytest.raises(tp.PrunedStateError, match=r"whole pickled model.*weights_only=False"):
        tp.load(torchvision.models.resnet18(weights=None), tmp_path / "whole.pth")


def test_a_crafted_config_field_cannot_name_a_method() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    state = tp.state_dict(model)
    state["configs"][""]["to_dict"] = 1
    fresh = transformers.LlamaForCausalLM(cfg).eval()
    with pytest.raises(tp.PrunedStateError, match=r"would get \['to_dict'\], which are private or methods"):
        tp.load_state_dict(fresh, state)
    assert callable(fresh.config.to_dict)


def test_the_error_family_keeps_value_and_type_error_clauses_working() -> None:
    assert issubclass(tp.OptionError, ValueError) and issubclass(tp.OptionError, tp.DepgraphError)
    assert issubclass(tp.OptionTypeError, TypeError) and issubclass(tp.OptionTypeError, tp.DepgraphError)
    assert issubclass(tp.PrunedStateError, ValueError) and issubclass(tp.PrunedStateError, tp.DepgraphError)
