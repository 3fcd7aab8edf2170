"""``depgraph export`` refusals; the successful runs are the README commands (tests/recovery/test_readme_commands.py)."""

from __future__ import annotations

import pytest

from depgraph.cli import main

pytest.importorskip("torchvision")
pytest.importorskip("onnx")


def test_export_refusals(tmp_path, capsys) -> None:
    assert main(["export", "resnet18", "--plain"]) == 2
    assert "give --onnx PATH and/or --torch-export PATH" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.pth"), "--torch-export", str(tmp_path / "x.pt2")]) == 1
    assert "does not exist" in capsys.readouterr().err
    weights_only = tmp_path / "w.pth"
    import torchvision

    import depgraph as tp

    tp.save(torchvision.models.resnet18(), weights_only)
    assert main(["export", str(weights_only), "--torch-export", str(tmp_path / "x.pt2")]) == 1
    assert "holds weights only; name its unpruned model with --base" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["export", "resnet18", "--torch-export", str(tmp_path / "x.pt2"), "--atol", "-1"])
    assert exit_.value.code == 2 and "--atol: must be a number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "x.pt2").exists()


def test_export_dynamic_batch_from_the_command_line(tmp_path, capsys) -> None:
    import torch

    out = tmp_path / "r.pt2"
    assert main(["export", "resnet18", "--input-size", "32", "--torch-export", str(out), "--dynamic", "--plain"]) == 0
    assert "batch 2; batch 3" in capsys.readouterr().out  # checked at two batch sizes
    program = torch.export.load(str(out)).module()
    assert program(torch.randn(4, 3, 32, 32)).shape == (4, 1000)
