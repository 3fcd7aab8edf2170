"""Options resolved once and obeyed on every path (depgraph/pruner/base.py, options.py, depgraph/defaults.py,
depgraph/importance/compensation_modes.py): ``ignored_layers`` means one thing, root types have one default,
options given without their mode warn or are refused, compensation is one typed mode, and
``prune_head_dims=False`` keeps every head's size."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import depgraph as tp
import depgraph.importance as I
from depgraph.defaults import CONV_AND_LINEAR, DEFAULT_ROOT_TYPES, DEFAULT_TARGET_TYPES
from tests._checks import assert_refused_unchanged

torchvision = pytest.importorskip("torchvision")
MAG = I.GroupMagnitudeImportance


# -- ignored_layers: one meaning on every path ---------------------------------------------------
def test_manual_prune_width_never_shrinks_an_ignored_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 4, 4)
    pruner = tp.pruner.BasePruner(model, x, MAG(), pruning_ratio=0.5, ignored_layers=[model[0]])
    for ratio_or_idxs in ([2, 6], 0.25):
        assert_refused_unchanged(
            model, lambda r=ratio_or_idxs: pruner.manual_prune_width(model[0], tp.prune_conv_out_channels, r),
            tp.UnsupportedOpError, r"manual_prune_width: .* must not change \(0 is in ignored_layers\); nothing was pruned")
    # the graph of the pruner knows it too: a hand-made group is refused
    group = pruner.DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [2, 6])
    assert not pruner.DG.check_pruning_group(group)
    assert_refused_unchanged(model, group.prune, tp.UnsupportedOpError, "0 is in ignored_layers")
    pruner.step()
    assert model[0].out_channels == 8


def test_resnet18_ignored_layer_is_kept_by_step_manual_prune_and_groups():
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    kept = model.layer2[0].conv1
    pruner = tp.pruner.BasePruner(model, x, MAG(), pruning_ratio=0.5, ignored_layers=[kept, model.fc])
    assert kept in pruner.DG.ignored_layers
    roots = {g[0].dep.target.module for g in pruner.DG.get_all_groups()}
    assert kept not in roots and model.fc not in roots
    assert_refused_unchanged(model, lambda: pruner.manual_prune_width(kept, tp.prune_conv_out_channels, 0.5),
                             tp.UnsupportedOpError, r"layer2.0.conv1 is in ignored_layers")
    pruner.step()
    assert kept.out_channels == 128 and model.fc.out_features == 1000
    assert kept.in_channels == 32  # its input still follows the layer feeding it
    assert tp.verify(torchvision.models.resnet18(weights=None).eval(), model, x).shapes_match


def test_torch_pruning_manual_prune_width_would_shrink_it():
    """The difference README documents: the original's manual_prune_width ignores ``ignored_layers``."""
    torch_pruning = pytest.importorskip("torch_pruning")
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1))
    pruner = torch_pruning.pruner.BasePruner(model, torch.randn(1, 3, 4, 4),
                                             torch_pruning.importance.GroupMagnitudeImportance(),
                                             ignored_layers=[model[0]])
    pruner.manual_prune_width(model[0], torch_pruning.prune_conv_out_channels, [2, 6])
    assert model[0].out_channels == 6


# -- one default list of root types ----------------------------------------------------------------
def test_one_default_root_type_list():
    import inspect

    from depgraph.dependency.heads import find_attention_heads
    from depgraph.pruner.options import PrunerOptions

    # one definition (depgraph.defaults) for the graph, the pruners and head finding
    default = lambda f: inspect.signature(f).parameters["root_module_types"].default  # noqa: E731
    assert default(tp.DependencyGraph.get_all_groups) is DEFAULT_ROOT_TYPES
    assert default(tp.pruner.BasePruner.__init__) is DEFAULT_ROOT_TYPES
    assert PrunerOptions().root_module_types is DEFAULT_ROOT_TYPES
    assert default(find_attention_heads) is DEFAULT_ROOT_TYPES
    assert MAG().target_types == DEFAULT_TARGET_TYPES and DEFAULT_TARGET_TYPES[:2] == CONV_AND_LINEAR
    assert I.FPGMImportance().target_types == CONV_AND_LINEAR


def test_graph_and_pruner_offer_the_same_groups_by_default():
    from depgraph.pruner import planning

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 8, 1)
            self.lstm = nn.LSTM(8, 6, batch_first=True)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.lstm(self.conv(x).transpose(1, 2))[0])

    model, x = Net().eval(), torch.randn(2, 4, 5)
    DG = tp.DependencyGraph().build_dependency(model, x)
    pruner = tp.pruner.BasePruner(model, x, MAG(), ignored_layers=[model.fc])
    graph_roots = [g[0].dep.target.name for g in DG.get_all_groups([model.fc])]
    pruner_roots = [c.root for c in planning.candidates(pruner, pooled=None)]
    assert graph_roots == ["conv", "lstm"]  # the defaults: Conv1d and LSTM root groups on both paths
    assert pruner_roots == [model.conv, model.lstm]


# -- options without their mode --------------------------------------------------------------------
def test_head_ratios_without_prune_num_heads_warn_by_name():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    with pytest.warns(UserWarning, match=r"head_pruning_ratio given without prune_num_heads=True"):
        tp.pruner.BasePruner(model, torch.randn(1, 4), MAG(), head_pruning_ratio=0.5)
    with pytest.warns(UserWarning, match=r"head_pruning_ratio_dict given without prune_num_heads"):
        tp.pruner.BasePruner(model, torch.randn(1, 4), MAG(), head_pruning_ratio_dict={model[0]: 0.5})


def test_isomorphic_without_a_shared_ranking_warns():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    with pytest.warns(UserWarning, match=r"isomorphic=True given without global_pruning=True"):
        tp.pruner.BasePruner(model, torch.randn(1, 4), MAG(), isomorphic=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tp.pruner.BasePruner(model, torch.randn(1, 4), MAG(), isomorphic=True, global_pruning=True)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def _calibration(model):
    xs = [torch.randn(8, 6) + 1.0 for _ in range(3)]
    return xs, I.collect_activation_stats(model, xs), I.collect_input_covariance(model, xs)


@pytest.mark.parametrize("mode", ["bias", "lstsq"])
def test_compensation_modes_match_their_flag_spellings(mode):
    outs = []
    for spelling in ("flag", "mode"):
        model = _mlp()
        xs, stats, cov = _calibration(model)
        if mode == "bias":
            kw = ({"bias_compensation": True, "calibration_stats": stats} if spelling == "flag"
                  else {"compensation": I.BiasMean(stats)})
        else:
            kw = {"lstsq_compensation": cov} if spelling == "flag" else {"compensation": I.LeastSquares(cov)}
        pruner = tp.pruner.BasePruner(model, xs[0], MAG(), pruning_ratio=0.5, **kw)
        assert type(pruner.options.compensation) is (I.BiasMean if mode == "bias" else I.LeastSquares)
        pruner.step()
        with torch.no_grad():
            outs.append(model(xs[0]))
    plain = _mlp()
    tp.pruner.BasePruner(plain, xs[0], MAG(), pruning_ratio=0.5).step()
    assert torch.equal(outs[0], outs[1])
    with torch.no_grad():
        assert not torch.equal(outs[0], plain(xs[0]))  # compensation changed the consumer


def test_compensation_conflicts_are_refused():
    model = _mlp()
    xs, stats, cov = _calibration(model)
    cases = [
        ({"compensation": I.BiasMean(stats), "lstsq_compensation": cov},
         r"compensation= and lstsq_compensation= both given"),
        ({"compensation": I.LeastSquares(cov), "bias_compensation": True}, r"compensation= and bias_compensation="),
        ({"compensation": "bias"}, r"compensation must be tp.importance.BiasMean\(stats\) or"),
        ({"compensation": I.LeastSquares(cov), "soft_pruning": True}, r"cannot be combined with soft_pruning"),
        ({"lstsq_compensation": cov, "bias_compensation": True}, r"lstsq_compensation already refits the bias"),
        ({"lstsq_compensation": stats}, r"lstsq_compensation: LeastSquares\(cov\) needs covariances"),
    ]
    for kwargs, match in cases:
        with pytest.raises(tp.OptionError, match=match):
            tp.pruner.BasePruner(model, xs[0], MAG(), **kwargs)
    with pytest.raises(tp.OptionError, match="damping must be a non-negative number"):
        I.LeastSquares(cov, damping=-1)


# -- prune_head_dims=False is obeyed ------------------------------------------------------------------
def _tiny_llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval(), {"input_ids": torch.randint(0, 64, (1, 8))}


@pytest.mark.zoo
@pytest.mark.parametrize("with_num_heads", [False, True])
@pytest.mark.parametrize("prune_num_heads", [False, True])
def test_prune_head_dims_false_keeps_every_head_whole_on_llama(with_num_heads, prune_num_heads):
    model, x = _tiny_llama()
    rope = dict(model.config.rope_parameters)
    extra = {"num_heads": {layer.self_attn.q_proj: 4 for layer in model.model.layers}} if with_num_heads else {}
    if prune_num_heads:
        extra.update(prune_num_heads=True, head_pruning_ratio=0.5)
    pruner = tp.pruner.BasePruner(model, x, MAG(), pruning_ratio=0.25, prune_head_dims=False,
                                  ignored_layers=[model.lm_head], **extra)
    pruner.step()
    heads = 2 if prune_num_heads else 4
    for layer in model.model.layers:
        attn = layer.self_attn
        assert attn.head_dim == 16 and attn.q_proj.out_features == heads * 16
        assert attn.k_proj.out_features == heads // 2 * 16 and attn.o_proj.in_features == heads * 16
        assert layer.mlp.up_proj.out_features < 128  # the other groups were pruned
    assert model.config.head_dim == 16 and dict(model.config.rope_parameters) == rope
    assert model.model.layers[0].self_attn.q_proj.in_features < 64  # hidden size pruned too
    with torch.no_grad():
        assert model(**x).logits.shape == (1, 8, 64)


@pytest.mark.zoo
def test_prune_head_dims_default_still_prunes_head_dims_on_llama():
    model, x = _tiny_llama()
    original = copy.deepcopy(model)
    tp.pruner.BasePruner(model, x, MAG(), pruning_ratio=0.25, ignored_layers=[model.lm_head]).step()
    assert model.model.layers[0].self_attn.head_dim < 16
    assert original.model.layers[0].self_attn.head_dim == 16


@pytest.mark.zoo
@pytest.mark.filterwarnings("ignore:depgraph. after this prune")  # layers differ on purpose
def test_head_pruning_keeps_the_heads_of_an_ignored_layer():
    model, x = _tiny_llama()
    kept, pruned = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ignored layer's heads are kept on purpose: no warning
        pruner = tp.pruner.BasePruner(model, x, MAG(), pruning_ratio=0.0, prune_num_heads=True,
                                      head_pruning_ratio=0.5, ignored_layers=[kept.q_proj, model.lm_head])
    pruner.step()
    assert kept.q_proj.out_features == 64 and kept.k_proj.out_features == 32
    assert pruned.q_proj.out_features == 32 and pruned.k_proj.out_features == 16
    group = pruner.DG.get_pruning_group(kept.q_proj, tp.prune_linear_out_channels, list(range(16)))
    assert not pruner.DG.check_pruning_group(group)
