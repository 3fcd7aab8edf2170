"""The ``depgraph`` command line (``depgraph/cli.py``, ``depgraph/__main__.py``).

Most tests call ``main(argv)`` in-process on resnet18 at 64x64 (a few seconds
each); one runs ``python -m depgraph`` in a subprocess to cover the module
entry point.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

import depgraph
from depgraph.cli import IMPORTANCES, find_classifier, load_model, main

torchvision = pytest.importorskip("torchvision")

SMALL = ["--input-size", "64", "--plain"]


def _load(path, name: str = "resnet18") -> torch.nn.Module:
    """The CLI's default file is depgraph's weights-only format: loaded into the unpruned definition."""
    return depgraph.load(torchvision.models.get_model(name, weights=None), path)


def _load_and_run(path) -> torch.Tensor:
    model = _load(path)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 64, 64))


def test_prune_prints_table_verifies_and_saves(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["prune", "resnet18", "--ratio", "0.5", "--round-to", "8", *SMALL]) == 0
    out = capsys.readouterr().out

    assert "resnet18: pruning ratio 0.5 (per group, importance l2, round_to 8)" in out
    # the seed figures of the README pruner example (parameters do not depend on the input size)
    assert "11,689,512" in out and "3,055,880" in out
    assert "MACs" in out
    assert re.search(r"output shape +\(1, 1000\) +\(1, 1000\) +same", out)
    assert "ignored layers: fc" in out
    assert "verify: exact" in out
    assert "time: measure" in out and "prune" in out and "verify" in out
    saved = tmp_path / "resnet18_pruned.pth"
    assert f"saved the pruned model to {saved.name} (weights-only" in out
    assert f"model = depgraph.load(torchvision.models.get_model('resnet18', weights=None), '{saved.name}')" in out

    assert _load_and_run(saved).shape == (2, 1000)
    torch.load(saved, weights_only=True)  # plain data: no pickled code
    pruned = _load(saved)
    assert sum(p.numel() for p in pruned.parameters()) == 3_055_880
    assert pruned.fc.out_features == 1000  # the classifier is always kept


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_every_importance_choice_prunes_exactly(importance: str, capsys) -> None:
    argv = ["prune", "resnet18", "--ratio", "0.3", "--importance", importance, "--output", "-", "--input-size", "32"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"importance {importance}" in out
    assert "verify: exact" in out
    assert "saved" not in out


def test_global_pruning_and_extra_ignored_layer(tmp_path, capsys) -> None:
    path = tmp_path / "m.pth"
    argv = ["prune", "resnet18", "--ratio", "0.4", "--global", "--ignore", "layer4.1.conv1", "--output", str(path)]
    assert main([*argv, *SMALL]) == 0
    out = capsys.readouterr().out
    assert "(global, importance l2)" in out
    assert "ignored layers: fc, layer4.1.conv1" in out
    model = _load(path)
    assert model.layer4[1].conv1.out_channels == 512
    assert _load_and_run(path).shape == (2, 1000)


def test_rich_table_when_rich_is_installed(capsys) -> None:
    pytest.importorskip("rich")
    assert main(["prune", "resnet18", "--ratio", "0.2", "--input-size", "64", "--output", "-"]) == 0
    out = capsys.readouterr().out
    assert "┃" in out and "params" in out and "output shape" in out


def test_plain_fallback_without_rich(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # makes ``import rich.console`` fail
    monkeypatch.setitem(sys.modules, "rich.console", None)
    assert main(["groups", "resnet18", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "┃" not in out
    assert "resnet18: 12 prunable groups" in out


def test_groups_lists_every_group(capsys) -> None:
    assert main(["groups", "resnet18", *SMALL, "--details"]) == 0
    out = capsys.readouterr().out
    assert "resnet18: 12 prunable groups" in out
    assert "conv1 (Conv2d)" in out and "layer1.0.conv1" in out
    assert "ignored layers: fc" in out
    assert "prune_conv_out_channels on conv1" in out  # --details prints the members


def test_unknown_model_exits_2_and_says_how_to_list_names(capsys) -> None:
    assert main(["prune", "resnet5", "--ratio", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet5'" in err
    assert "did you mean: resnet50" in err
    assert "torchvision.models.list_models()" in err and "timm.list_models" in err


def test_unknown_ignored_layer_exits_2(capsys) -> None:
    assert main(["prune", "resnet18", "--ratio", "0.5", "--ignore", "layer9", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "--ignore names no layer of the model" in err and "'layer9'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prune", "resnet18", "--ratio", "1.5"], "must be in [0, 1], got 1.5"),
        (["prune", "resnet18", "--ratio", "abc"], "argument --ratio: must be a number in [0, 1] (e.g. 0.5), got 'abc'"),
        (["prune", "resnet18", "--ratio", "0.5", "--batch-size", "two"], "must be a positive integer, got 'two'"),
        (["prune", "resnet18"], "one of the arguments --ratio --target is required"),
        (["prune", "resnet18", "--ratio", "0.5", "--target", "macs=0.5"], "not allowed with argument"),
        (["prune", "resnet18", "--ratio", "0.5", "--round-to", "0"], "must be a positive integer"),
        (["prune", "resnet18", "--ratio", "0.5", "--importance", "obd"], "invalid choice: 'obd'"),
        ([], "the following arguments are required"),
    ],
)
def test_bad_arguments_exit_2(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert f"depgraph {depgraph.__version__}" in capsys.readouterr().out


def test_find_classifier() -> None:
    assert find_classifier(torchvision.models.resnet18()) is not None
    squeeze = torchvision.models.squeezenet1_0()
    assert find_classifier(squeeze) is squeeze.classifier[1]  # a 1x1 conv, no Linear at all
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    assert find_classifier(vit) is vit.head


def test_models_are_built_without_downloading_weights(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("load_model tried to download weights")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", refuse)
    model, size = load_model("lraspp_mobilenet_v3_large")  # its builder defaults to an ImageNet backbone
    assert size == (3, 224, 224) and not model.training
    assert find_classifier(model) is model.classifier.high_classifier


def test_python_m_depgraph(tmp_path) -> None:
    path = tmp_path / "r18.pth"
    argv = ["prune", "resnet18", "--ratio", "0.25", "--output", str(path), *SMALL]
    run = subprocess.run([sys.executable, "-m", "depgraph", *argv], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "verify: exact" in run.stdout
    assert _load_and_run(path).shape == (2, 1000)


def test_pickle_format_on_request(tmp_path, capsys) -> None:
    path = tmp_path / "whole.pth"
    argv = ["prune", "resnet18", "--ratio", "0.25", "--output", str(path), "--save-format", "pickle", *SMALL]
    assert main(argv) == 0
    assert "weights_only=False), which runs pickled code" in capsys.readouterr().out
    model = torch.load(path, weights_only=False)
    assert model.layer1[0].conv1.out_channels == 48


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("missing/dir/m.pth", "the folder .*missing/dir' does not exist; create it first"),
        (".", "is a folder; give a file path"),
    ],
)
def test_output_is_checked_before_pruning(tmp_path, monkeypatch, capsys, output, message) -> None:
    monkeypatch.chdir(tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("the model was pruned before --output was checked")

    monkeypatch.setattr(depgraph.pruner, "BasePruner", never)
    monkeypatch.setattr("depgraph.cli.load_model", never)
    monkeypatch.setattr("depgraph.workflow.load_source", never)
    assert main(["prune", "resnet18", "--ratio", "0.5", "--output", output, *SMALL]) == 2
    assert re.search(message, capsys.readouterr().err)
