"""Export of pruned models (torchvision ResNet-18, timm ViT-Tiny, a tiny HF Llama), checked against eager.

Each export is run (``ExportedProgram.module()``, onnxruntime or onnx's
reference evaluator) and compared with the eager pruned model; the file read
back from disk must compute the same. A program that computes something else
is refused with a typed error and leaves no file.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.errors import ExportError, ExportMismatchError

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")


def _pruned(model: nn.Module, example_inputs, head: nn.Module) -> nn.Module:
    tp.pruner.BasePruner(model, example_inputs, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                         ignored_layers=[head]).step()
    return model.eval()


def _resnet() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    m = torchvision.models.resnet18(num_classes=10)
    return _pruned(m, torch.randn(1, 3, 32, 32), m.fc)


def _vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    m = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10)
    return _pruned(m, torch.randn(1, 3, 32, 32), m.head)


def _llama() -> nn.Module:
    pytest.importorskip("transformers")
    from ..recovery._models import VOCAB, tiny_llama

    m = tiny_llama()
    return _pruned(m, {"input_ids": torch.randint(0, VOCAB, (1, 8))}, m.lm_head)


def test_resnet18_program_and_onnx_match_eager_and_reload(tmp_path) -> None:
    model, x = _resnet(), torch.randn(2, 3, 32, 32)
    assert model.conv1.out_channels == 32
    result = tp.export_program(model, x, tmp_path / "r.pt2")
    assert result.format == "torch.export" and result.outputs == 1 and result.max_abs_diff <= 1e-5
    loaded = torch.export.load(str(tmp_path / "r.pt2")).module()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))

    onnx_result = tp.export_onnx(model, x, tmp_path / "r.onnx")
    assert onnx_result.checked_with in ("onnxruntime", "onnx.reference")
    assert onnx_result.max_abs_diff <= 1e-4 and (tmp_path / "r.onnx").is_file()
    import onnx

    graph = onnx.load(str(tmp_path / "r.onnx")).graph
    conv1 = next(i for i in graph.initializer if tuple(i.dims) == (32, 3, 7, 7))  # the pruned width is in the file
    assert conv1 is not None


def test_vit_tiny_program() -> None:
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    assert model.blocks[0].mlp.fc1.out_features < 768
    assert tp.export_program(model, x).max_abs_diff <= 1e-4


@pytest.mark.slow
def test_vit_tiny_onnx(tmp_path) -> None:
    assert tp.export_onnx(_vit(), torch.randn(1, 3, 32, 32), tmp_path / "v.onnx").max_abs_diff <= 1e-4


def _llama_inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 64, (1, 8))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_llama_program_without_cache(tmp_path) -> None:
    model, inputs = _llama(), _llama_inputs()
    result = tp.export_program(model, inputs, tmp_path / "l.pt2")
    assert result.outputs == 1 and result.max_abs_diff <= 1e-4  # logits only: exported with use_cache=False
    loaded = torch.export.load(str(tmp_path / "l.pt2")).module()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs, use_cache=False).logits, model(**inputs).logits)


@pytest.mark.slow
def test_llama_onnx(tmp_path) -> None:
    assert tp.export_onnx(_llama(), _llama_inputs(), tmp_path / "l.onnx").max_abs_diff <= 1e-4


class _Drifting(nn.Module):
    """Reads Python state at each call: an export bakes in the value seen while tracing, eager moves on."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(x) * self.calls


def test_a_program_that_differs_from_eager_is_refused_and_not_written(tmp_path) -> None:
    x = torch.randn(2, 4)
    with pytest.raises(ExportMismatchError, match="the torch.export program differs from the eager model") as e:
        tp.export_program(_Drifting(), x, tmp_path / "d.pt2")
    assert e.value.max_abs_diff > 0.1
    assert not (tmp_path / "d.pt2").exists()
    with pytest.raises(ExportMismatchError, match=r"the ONNX file \(run by .*\) differs"):
        tp.export_onnx(_Drifting(), x, tmp_path / "d.onnx")
    assert not (tmp_path / "d.onnx").exists()


def test_a_model_the_exporter_cannot_trace_is_a_typed_error(tmp_path) -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1 if x.sum() > 0 else x - 1  # data-dependent control flow

    with pytest.raises(ExportError, match="torch.export failed on Branchy"):
        tp.export_program(Branchy(), torch.ones(2))


def test_tolerance_is_relative_and_absolute() -> None:
    from depgraph.export.check import compare_outputs

    ref = [torch.tensor([1000.0, 1.0])]
    assert compare_outputs(ref, [torch.tensor([1000.05, 1.0])], atol=1e-4, rtol=1e-4, what="p") == pytest.approx(
        0.05, rel=1e-3)
    with pytest.raises(ExportMismatchError, match="max abs diff 0.01 exceeds atol 0.0001"):
        compare_outputs(ref, [torch.tensor([1000.0, 1.01])], atol=1e-4, rtol=1e-4, what="p")
    with pytest.raises(ExportError, match="returns 2 outputs, the eager model 1"):
        compare_outputs(ref, [ref[0], ref[0]], atol=0, rtol=0, what="p")


# -- dynamic axes: one program for every batch (and sequence length), checked at two sizes of each ----------
def test_dynamic_batch_resnet18_program_and_onnx_run_at_other_batches(tmp_path) -> None:
    model = _resnet()
    result = tp.export_program(model, torch.randn(1, 3, 32, 32), tmp_path / "r.pt2", dynamic=True)
    # a batch of 1 is tiled to 2 (torch.export fixes sizes 0 and 1), then checked at 2 and 3
    assert result.sizes == ({"batch": 2}, {"batch": 3}) and result.max_abs_diff <= 1e-4
    loaded = torch.export.load(str(tmp_path / "r.pt2")).module()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=1e-4)
    static = tp.export_program(model, torch.randn(2, 3, 32, 32))
    assert static.sizes == ()
    with pytest.raises(Exception, match="(?i)guard|shape|size"):  # the static program refuses another batch
        static.program.module()(x)

    onnx_result = tp.export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "r.onnx", dynamic=True)
    assert onnx_result.sizes == ({"batch": 2}, {"batch": 3}) and onnx_result.max_abs_diff <= 1e-4
    from depgraph.export.to_onnx import run_onnx

    got, _ = run_onnx(str(tmp_path / "r.onnx"), {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got[0]), model(x), atol=1e-4, rtol=1e-4)


def test_dynamic_batch_and_sequence_llama_program(tmp_path) -> None:
    model = _llama()
    ids = torch.randint(0, 64, (2, 12))
    result = tp.export_program(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                               tmp_path / "l.pt2", dynamic=True)
    assert result.sizes == ({"batch": 2, "sequence": 12}, {"batch": 3, "sequence": 6})
    assert result.max_abs_diff <= 1e-4
    loaded = torch.export.load(str(tmp_path / "l.pt2")).module()
    other = torch.randint(0, 64, (4, 9))
    with torch.no_grad():
        want = model(input_ids=other, attention_mask=torch.ones_like(other)).logits
        got = loaded(input_ids=other, attention_mask=torch.ones_like(other), use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_dynamic_batch_and_sequence_llama_onnx(tmp_path) -> None:
    ids = torch.randint(0, 64, (1, 8))
    result = tp.export_onnx(_llama(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                            tmp_path / "l.onnx", dynamic=True)
    assert result.sizes == ({"batch": 2, "sequence": 8}, {"batch": 3, "sequence": 4})
    assert result.max_abs_diff <= 1e-4


def test_dynamic_export_of_a_model_that_fixes_its_batch_is_a_typed_error(tmp_path) -> None:
    class FixedBatch(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.shape[0] == 2 else x  # a branch on the batch size: the trace fixes it

    with pytest.raises(ExportError, match=r"torch.export failed on FixedBatch with a dynamic batch"):
        tp.export_program(FixedBatch(), torch.ones(2, 4), dynamic=True)
    # the ONNX exporter falls back to a static graph: the run at the second batch finds it
    with pytest.raises(ExportError, match=r"(?s)cannot be run.*run at batch 3: the exporter fixed a dimension"):
        tp.export_onnx(FixedBatch(), torch.ones(2, 4), tmp_path / "f.onnx", dynamic=True)
    assert not (tmp_path / "f.onnx").exists()


def test_dynamic_axes_and_resized_inputs() -> None:
    from depgraph.export.dynamic import dynamic_axes, resize_inputs, trace_and_check_sizes

    class TwoInputs(nn.Module):
        def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return pixels.mean() + input_ids.float().mean() * scale

    ids = torch.tensor([[5, 6, 7]])
    axes = dynamic_axes(TwoInputs(), (torch.randn(1, 3, 4, 4),), {"input_ids": ids, "scale": 2.0})
    assert axes.arg_names == ("pixels",)
    assert axes.axes == {"pixels": {0: "batch"}, "input_ids": {0: "batch", 1: "sequence"}}
    args, kwargs, sizes, other = trace_and_check_sizes(axes, (torch.randn(1, 3, 4, 4),),
                                                       {"input_ids": ids, "scale": 2.0})
    assert sizes == {"batch": 2, "sequence": 3} and other == {"batch": 3, "sequence": 4}
    assert args[0].shape == (2, 3, 4, 4) and kwargs["scale"] == 2.0
    torch.testing.assert_close(kwargs["input_ids"], torch.tensor([[5, 6, 7], [5, 6, 7]]))  # tiled: valid ids
    _, k2 = resize_inputs(axes, args, kwargs, batch=3, sequence=5)
    torch.testing.assert_close(k2["input_ids"][0], torch.tensor([5, 6, 7, 5, 6]))
    with pytest.raises(ExportError, match=r"dynamic export of TwoInputs: the example inputs do not bind"):
        dynamic_axes(TwoInputs(), (torch.ones(1), torch.ones(1), 1.0, 2.0), {})
