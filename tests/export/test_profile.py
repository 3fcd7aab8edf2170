"""``profile_onnx``: per-node times of an exported file under onnxruntime, read like an eager ``LayerProfile``.

Checked on torchvision's ResNet-18 and its pruned copy: onnxruntime's fused
graph has no BatchNorm or ReLU nodes left, every node of the pruned export
pairs with the unpruned one by name, and the MACs charged to the nodes are
exactly the convolutions' and the classifier's that ``count_ops_and_params``
counts in eager mode.
"""

from __future__ import annotations

import pytest
import torch

import depgraph as tp
from depgraph.errors import ExportError, OptionError
from depgraph.export import profile_onnx
from depgraph.export.profile import feeds, onnx_session
from depgraph.utils.layer_latency import compare_profiles, gap_by_kind, layer_table, profile_layers

pytest.importorskip("onnxruntime")
torchvision = pytest.importorskip("torchvision")

X = torch.randn(1, 3, 32, 32)


def _resnet18(ratio: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    if ratio:
        tp.pruner.BasePruner(model, X, tp.importance.GroupMagnitudeImportance(), pruning_ratio=ratio,
                             ignored_layers=[model.fc], round_to=8).step()
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    out = {}
    for tag, ratio in (("base", 0.0), ("pruned", 0.5)):
        model = _resnet18(ratio)
        path = tmp_path_factory.mktemp("onnx") / f"{tag}.onnx"
        tp.export_onnx(model, (X,), path, dynamo=False)
        out[tag] = (model, path)
    return out


def test_nodes_are_the_fused_graph_with_the_eager_macs(exported) -> None:
    model, path = exported["pruned"]
    prof = profile_onnx(path, X, repeat=2, warmup=1)
    kinds = {t.kind for t in prof.layers}
    assert "Conv" in kinds and not kinds & {"BatchNormalization", "Relu", "Add"}  # fused into the convs
    assert len([t for t in prof.layers if t.kind == "Conv"]) == 20  # resnet18: 17 convs + 3 downsample convs
    eager = profile_layers(model, X, repeat=1, warmup=0, kernels=False)
    conv_linear = sum(t.macs for t in eager.layers if t.kind in ("Conv2d", "Linear"))
    assert prof.macs == conv_linear - model.fc.out_features > 0  # the eager counter adds the classifier's bias
    assert prof.layers[-1].kind == "Gemm" and prof.layers[-1].macs == model.fc.in_features * model.fc.out_features
    first = prof.layers[0]
    assert (first.in_channels, first.out_channels) == (3, model.conv1.out_channels)
    assert first.kernel == "CPUExecutionProvider"
    assert prof.total_ms > 0 and all(t.ms >= 0 for t in prof.layers)


def test_pruned_and_unpruned_exports_pair_node_by_node(exported) -> None:
    before = profile_onnx(exported["base"][1], X, repeat=2, warmup=0, clock="thread")
    after = profile_onnx(exported["pruned"][1], (X,), repeat=2, warmup=0, clock="thread")
    changes = compare_profiles(before, after)
    assert all(c.before is not None and c.after is not None for c in changes)
    convs = [c for c in changes if c.kind == "Conv"]
    assert sorted({round(c.macs_speedup, 6) for c in convs}) == [2.0, 4.0]  # stem: 3 inputs kept; others: both halved
    gap = gap_by_kind(before, after)
    assert "Conv" in gap and "(between modules)" in gap
    assert abs(sum(gap.values()) - (after.total_ms - before.total_ms * after.macs / before.macs)) < 1e-9
    assert "| Conv" not in layer_table(changes, kinds=["Gemm"]) and "Gemm" not in layer_table(changes, kinds=["Conv"])


def test_inputs_by_name_and_sessions_per_thread_count(exported) -> None:
    _, path = exported["pruned"]
    session = onnx_session(path, threads=2)
    (name,) = [i.name for i in session.get_inputs()]
    by_name = feeds(session, {name: X})
    assert list(by_name) == [name] and by_name[name].shape == (1, 3, 32, 32)
    out_name, out_pos = session.run(None, by_name)[0], session.run(None, feeds(session, X))[0]
    assert out_name.shape == (1, 10) and (out_name == out_pos).all()


def test_bad_calls_are_refused_with_typed_errors(exported, tmp_path) -> None:
    _, path = exported["pruned"]
    with pytest.raises(OptionError, match="repeat >= 1"):
        profile_onnx(path, X, repeat=0)
    with pytest.raises(OptionError, match="clock must be one of"):
        profile_onnx(path, X, clock="cycles")
    with pytest.raises(OptionError, match="threads >= 1"):
        onnx_session(path, threads=0)
    with pytest.raises(ExportError, match="takes 1 inputs"):
        profile_onnx(path, (X, X), repeat=1)
    with pytest.raises(ExportError, match="not in the example inputs"):
        profile_onnx(path, {"image": X}, repeat=1)
    with pytest.raises(ExportError, match="cannot run .* on these inputs"):
        profile_onnx(path, torch.randn(1, 3, 16, 16), repeat=1)  # the file's shapes are the example's
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="cannot load"):
        profile_onnx(bad, X, repeat=1)


def test_nodes_onnxruntime_inserts_keep_their_names_across_sessions(tmp_path) -> None:
    """Pruned MobileNet-V2's layout reorders get a ``_token_<n>`` from onnxruntime, not the same in every session."""
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                         ignored_layers=[model.classifier[-1]], round_to=8).step()
    path = tmp_path / "mobilenet.onnx"
    tp.export_onnx(model, (x,), path, dynamo=False)
    first, *others = (profile_onnx(path, x, repeat=1, warmup=0) for _ in range(3))
    names = [t.name for t in first.layers]
    assert all([t.name for t in p.layers] == names for p in others) and len(set(names)) == len(names)
    assert any(n.startswith("ReorderOutput") for n in names) and not any("_token_" in n for n in names)
