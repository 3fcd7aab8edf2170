"""``depgraph export`` end to end: a pruned file written by ``depgraph prune``, exported and checked."""

from __future__ import annotations

import pytest
import torch

from depgraph.cli import main

pytest.importorskip("torchvision")
pytest.importorskip("onnx")


def test_export_pruned_resnet_file_to_both_formats(tmp_path, capsys) -> None:
    pruned = tmp_path / "pruned.pth"
    assert main(["prune", "resnet18", "--ratio", "0.5", "--input-size", "32", "--output", str(pruned), "--plain"]) == 0
    capsys.readouterr()
    code = main(["export", str(pruned), "--base", "resnet18", "--onnx", str(tmp_path / "r.onnx"),
                 "--torch-export", str(tmp_path / "r.pt2"), "--input-size", "32", "--plain"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "torch.export" in printed and "onnx" in printed and "max abs diff vs eager" in printed
    program = torch.export.load(str(tmp_path / "r.pt2")).module()
    assert program(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    assert (tmp_path / "r.onnx").stat().st_size > 1000


def test_export_hf_folder_with_torch_export(tmp_path, capsys) -> None:
    pytest.importorskip("transformers")
    from ..recovery._models import write_llama_folders

    _, pruned = write_llama_folders(tmp_path)
    code = main(["export", str(pruned), "--torch-export", str(tmp_path / "l.pt2"), "--seq-len", "8", "--plain"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "'input_ids': (1, 8)" in printed
    assert (tmp_path / "l.pt2").is_file()


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
