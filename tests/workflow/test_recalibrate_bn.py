"""BatchNorm statistics re-measured by ``prune_model`` / ``depgraph prune`` with data, and which images calibrate.

The checkpoints are torchvision models whose BatchNorm statistics were first fitted to the
calibration images (as a trained model's fit its data), so a prune makes them measurably stale.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import depgraph as tp
from depgraph.cli import main
from depgraph.errors import OptionError, SourceError
from depgraph.utils import recalibrate_batchnorm
from depgraph.workflow import InputSpec, load_calibration, load_source, prune_model
from depgraph.workflow.calibration_data import spread

torchvision = pytest.importorskip("torchvision")
pytest.importorskip("PIL")

RGB32 = InputSpec("image", (3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _class_tree(root, classes: int = 3, per_class: int = 4):
    """``root/c0 .. c{k}``: each class a different brightness, so a one-class sample is visibly biased."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            level = 40 + 80 * c
            pixels = (torch.randint(0, 40, (32, 32, 3), generator=g) + level).clamp(0, 255).to(torch.uint8)
            Image.fromarray(pixels.numpy(), "RGB").save(root / f"c{c}" / f"{i:02d}.png")
    return root


def _fitted_checkpoint(tmp_path, images, name: str = "resnet18", size: int = 32) -> str:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    spec = load_source(name, input_size=size).spec
    recalibrate_batchnorm(model, load_calibration(images, spec, num_samples=64, batch_size=8))
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def test_recalibrated_prune_matches_batch_statistics_and_reloads(tmp_path) -> None:
    images = _class_tree(tmp_path / "imgs", per_class=8)
    source = load_source("resnet18", _fitted_checkpoint(tmp_path, images, size=64), input_size=64)
    kwargs = dict(ratio=0.5, calib=images, num_samples=24, calib_batch_size=8, latency=False)
    source_stats = source.model.bn1.running_mean.clone()
    stale = prune_model(source, recalibrate_bn=False, **kwargs)
    fresh = prune_model(source, output=tmp_path / "p.pth", report=tmp_path / "r.md", **kwargs)  # the default with data
    assert stale.report.batchnorm == "unchanged"
    assert fresh.report.batchnorm == "running statistics of 20 BatchNorm layers re-estimated on the calibration data"
    assert not any("BatchNorm" in n for n in fresh.report.notes + stale.report.notes)
    assert fresh.report.verified and fresh.report.verify.startswith("verify: exact")  # checked before the update
    assert "batchnorm" in fresh.report.seconds
    assert "- BatchNorm statistics: running statistics of 20" in (tmp_path / "r.md").read_text()

    x = torch.cat(load_calibration(images, source.spec, num_samples=24, batch_size=24))
    exact = copy.deepcopy(fresh.model)
    recalibrate_batchnorm(exact, [x])  # one batch of all the samples: the statistics eval mode would need
    with torch.no_grad():
        ref = exact.eval()(x)
        gap_stale = (stale.model.eval()(x) - ref).abs().max()
        gap_fresh = (fresh.model.eval()(x) - ref).abs().max()
    # stale statistics move the logits by most of their size; pooled over 3 batches of 8 (each
    # normalised by its own batch on the way, as in training) the gap to exact ones is small
    assert gap_stale > 0.5 * ref.abs().max()
    assert gap_fresh < 0.3 * gap_stale
    # the source is never changed, and the saved file holds the new statistics
    assert torch.equal(source.model.bn1.running_mean, source_stats)
    reloaded = tp.load(torchvision.models.resnet18(weights=None), tmp_path / "p.pth").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), fresh.model.eval()(x), rtol=0, atol=0)


def test_without_data_the_statistics_stay_and_a_real_checkpoint_gets_a_note(tmp_path) -> None:
    images = _class_tree(tmp_path / "imgs")
    real = prune_model(load_source("resnet18", _fitted_checkpoint(tmp_path, images), input_size=32), ratio=0.3,
                       latency=False)
    assert real.report.batchnorm == "unchanged"
    assert any("BatchNorm statistics are the unpruned model's" in n and "--calib" in n for n in real.report.notes)
    random_weights = prune_model(load_source("resnet18", input_size=32), ratio=0.3, latency=False)
    assert not any("BatchNorm" in n for n in random_weights.report.notes)  # nothing to say about random weights
    squeeze = prune_model(load_source("squeezenet1_1", input_size=32), ratio=0.3, calib=[torch.randn(2, 3, 32, 32)],
                          latency=False)
    assert squeeze.report.batchnorm == "unchanged"  # the default with data but no BatchNorm layer


def test_recalibration_is_refused_without_data_or_batchnorm_before_any_work(tmp_path, monkeypatch) -> None:
    import depgraph.workflow.prune as prune_module

    def reached(*a, **k):
        raise AssertionError("the refusal came after the long work started")

    monkeypatch.setattr(prune_module, "measure", reached)
    source = load_source("resnet18", input_size=32)
    with pytest.raises(OptionError, match="recalibrate_bn .* give calib="):
        prune_model(source, ratio=0.3, recalibrate_bn=True)
    squeeze = load_source("squeezenet1_1", input_size=32)  # no BatchNorm at all
    with pytest.raises(OptionError, match="squeezenet1_1 has no BatchNorm layer"):
        prune_model(squeeze, ratio=0.3, recalibrate_bn=True, calib=[torch.randn(2, 3, 32, 32)])


def test_cli_flag_prints_the_update_and_refuses_without_calib(tmp_path, capsys) -> None:
    images = _class_tree(tmp_path / "imgs")
    weights = _fitted_checkpoint(tmp_path, images)
    out = tmp_path / "p.pth"
    common = ["prune", "resnet18", "--weights", weights, "--ratio", "0.4", "--input-size", "32", "--plain",
              "--no-latency", "--calib", str(images), "--calib-samples", "12"]
    assert main([*common, "--output", str(out)]) == 0  # on by default with --calib
    printed = capsys.readouterr().out
    assert "BatchNorm: running statistics of 20 BatchNorm layers re-estimated" in printed
    assert "verify: exact" in printed and out.is_file()
    assert main([*common, "--no-recalibrate-bn", "--output", "-"]) == 0
    assert "BatchNorm:" not in capsys.readouterr().out
    assert main(["prune", "resnet18", "--ratio", "0.4", "--input-size", "32", "--plain", "--recalibrate-bn",
                 "--output", "-"]) == 2
    assert "give calib=" in capsys.readouterr().err


def test_image_folder_calibration_samples_every_class_evenly(tmp_path) -> None:
    root = _class_tree(tmp_path / "imgs", classes=3, per_class=4)
    x = torch.cat(load_calibration(root, RGB32, num_samples=6, batch_size=6))
    # two images of each class: brightness levels 40, 120 and 200 (+ up to 40), not six of the darkest class
    levels = (x.mean(dim=(1, 2, 3)) * 0.25 + 0.5) * 255
    assert sorted(int(v // 80) for v in levels) == [0, 0, 1, 1, 2, 2]
    assert spread(list(range(10)), 4) == [0, 2, 5, 7] and spread([1, 2], 5) == [1, 2]
    # and in a mixed order, so batches of 3 are not one class each
    first = torch.cat(load_calibration(root, RGB32, num_samples=6, batch_size=3)[:1])
    assert len({int(v // 80) for v in (first.mean(dim=(1, 2, 3)) * 0.25 + 0.5) * 255}) > 1


def test_map_style_dataset_is_sampled_across_its_indices() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(12.0).repeat_interleave(3 * 32 * 32).view(12, 3, 32, 32),
                                          torch.arange(12))
    x = torch.cat(load_calibration(data, RGB32, num_samples=4, batch_size=2))
    assert sorted(x[:, 0, 0, 0].tolist()) == [0.0, 3.0, 6.0, 9.0]


def test_pickled_model_whose_code_is_missing_is_a_source_error(tmp_path) -> None:
    path = tmp_path / "net.pt"
    path.write_bytes(pickle.dumps(_Missing(), protocol=2).replace(b"test_recalibrate_bn", b"gone_module_xyz_zz"))
    with pytest.raises(SourceError, match="pickled model whose code is in module .*gone_module_xyz_zz.*PYTHONPATH"):
        load_source(path, trust_pickle=True, input_size=16)


class _Missing(torch.nn.Module):
    pass
