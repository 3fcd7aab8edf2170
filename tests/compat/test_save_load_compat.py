"""``tp.save`` / ``tp.load`` read what Torch-Pruning's (``torch.save`` / ``torch.load``) wrote.

depgraph's own two-argument form stays weights-only; one argument is the
original's ``tp.load(f)``, which unpickles a whole model: depgraph warns that it
runs pickle and loads it.
"""

from __future__ import annotations

import io

import pytest
import torch

import depgraph as tp

torchvision = pytest.importorskip("torchvision")
torch_pruning = pytest.importorskip("torch_pruning")


def _pruned_resnet() -> torch.nn.Module:
    model = torchvision.models.resnet18(num_classes=10).eval()
    DG = torch_pruning.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    DG.get_pruning_group(model.conv1, torch_pruning.prune_conv_out_channels, idxs=[2, 6, 9]).prune()
    return model


def test_load_one_argument_reads_a_model_saved_by_torch_pruning(tmp_path) -> None:
    model = _pruned_resnet()
    path = tmp_path / "tp.pth"
    torch_pruning.save(model, path)
    with pytest.warns(UserWarning, match="runs pickle"):
        loaded = tp.load(path)
    assert type(loaded) is type(model) and loaded.conv1.out_channels == 61
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.eval()(x), model(x))
    with pytest.warns(UserWarning, match="runs pickle"):
        again = tp.load(str(path), "cpu")  # the original's second positional is map_location
    assert again.layer1[0].conv1.in_channels == 61


def test_load_one_argument_of_a_weights_only_file_does_not_warn(tmp_path, recwarn) -> None:
    path = tmp_path / "sd.pth"
    torch_pruning.save({"w": torch.ones(3)}, path)
    assert torch.equal(tp.load(path)["w"], torch.ones(3))
    buffer = io.BytesIO()
    tp.save({"step": 3}, buffer)  # not a module: written as torch.save does
    buffer.seek(0)
    assert tp.load(buffer) == {"step": 3}
    assert not [w for w in recwarn if "pickle" in str(w.message)]


def test_own_two_argument_form_stays_weights_only(tmp_path) -> None:
    model = _pruned_resnet()
    path = tmp_path / "dg.pth"
    tp.save(model, path)
    raw = torch.load(path, weights_only=True)  # no pickled code in the file
    assert raw["format"]
    fresh = tp.load(torchvision.models.resnet18(num_classes=10), path)
    x = torch.randn(1, 3, 32, 32)
    assert fresh.conv1.out_channels == 61 and torch.equal(fresh.eval()(x), model(x))
    with pytest.raises(tp.DepgraphError, match="not a depgraph pruned state"):
        torch.save({"w": torch.ones(1)}, path)
        tp.load(torchvision.models.resnet18(num_classes=10), path)
