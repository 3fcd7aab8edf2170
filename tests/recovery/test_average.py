"""Weight averaging of recoveries (``depgraph.average_models``, ``depgraph average``): the exact weighted
mean, the refusals before anything is written, and each saved form read back by its own loader."""

from __future__ import annotations

import copy

import pytest
import torch

import depgraph as tp
from depgraph.cli import main
from depgraph.errors import OptionError, RecoveryError
from depgraph.recovery import average_state_dicts

from ._models import cnn_pair, llama_pair, prune, write_image_folder, write_tokenizer

pytest.importorskip("torchvision")


def _moved(model: torch.nn.Module, seed: int, scale: float = 0.01) -> torch.nn.Module:
    """A copy with every floating-point tensor moved a little: a stand-in for a recovery of ``model``."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*other.parameters(), *other.buffers()]:
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g, dtype=t.dtype) * scale)
        for m in other.modules():  # BatchNorm counters differ between real runs too
            if getattr(m, "num_batches_tracked", None) is not None:
                m.num_batches_tracked.fill_(seed)
    return other


def test_the_average_is_the_weighted_mean_and_leaves_its_inputs_alone() -> None:
    _, student = cnn_pair()  # a pruned torchvision ResNet-18: BatchNorm, integer counters, odd widths
    models = [_moved(student, s) for s in (1, 2, 3)]
    before = [copy.deepcopy(m.state_dict()) for m in models]
    soup = tp.average_models(models, weights=[2, 1, 1])
    for name, t in soup.state_dict().items():
        parts = [m.state_dict()[name] for m in models]
        if t.is_floating_point():
            torch.testing.assert_close(t, (2 * parts[0] + parts[1] + parts[2]) / 4, rtol=0, atol=1e-6)
            assert not torch.equal(t, parts[0])
        else:  # counters come from the first model, not a mean of integers
            assert torch.equal(t, parts[0]) and not torch.equal(t, parts[1])
        assert t.dtype == parts[0].dtype
    for m, state in zip(models, before, strict=True):
        assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    assert soup is not models[0] and soup.fc.in_features == student.fc.in_features < 512
    # a model averaged with itself is itself, bit for bit; equal weights by default
    same = tp.average_models([models[0], models[0]])
    assert all(torch.equal(v, models[0].state_dict()[k]) for k, v in same.state_dict().items())


def test_low_precision_weights_are_summed_in_float32() -> None:
    _, student = llama_pair()
    a, b = _moved(student, 1).to(torch.bfloat16), _moved(student, 2).to(torch.bfloat16)
    soup = average_state_dicts(iter([a.state_dict(), b.state_dict()]))  # a generator: read one at a time
    for k, v in soup.items():
        exact = (a.state_dict()[k].float() + b.state_dict()[k].float()) / 2
        assert v.dtype == torch.bfloat16 and torch.equal(v, exact.to(torch.bfloat16)), k


def test_models_that_differ_are_refused_by_name() -> None:
    teacher, student = cnn_pair()
    narrower = prune(teacher, torch.randn(1, 3, 32, 32), ratio=0.3)
    with pytest.raises(RecoveryError, match=r"'conv1.weight' is \(32, 3, 7, 7\) in model 1 but \(44, 3, 7, 7\) "
                                            r"in model 2; only recoveries of the same pruned model"):
        tp.average_models([student, narrower])
    with pytest.raises(RecoveryError, match="model 2 is not the same architecture as model 1: it lacks"):
        tp.average_models([student, torch.nn.Linear(2, 2)])
    with pytest.raises(RecoveryError, match=r"is torch.float32 in a but torch.float64 in b"):
        average_state_dicts([student.state_dict(), student.double().state_dict()], names=["a", "b"])
    with pytest.raises(RecoveryError, match="needs two or more models, got 1"):
        tp.average_models([student])


@pytest.mark.parametrize(("weights", "message"), [
    ([1.0], "1 weights for 2 (or more )?models"), ([1.0, -1.0], "weights must be finite numbers >= 0, got -1.0"),
    ([0, 0], "the weights sum to 0"), ([1.0, float("nan")], "got nan")])
def test_bad_weights_are_refused(weights, message) -> None:
    _, student = cnn_pair()
    with pytest.raises(OptionError, match=message):
        tp.average_models([student, student], weights)
    with pytest.raises(OptionError, match=message):  # also when the models come one at a time
        average_state_dicts(iter([student.state_dict(), student.state_dict()]), weights)


def test_a_generator_of_fewer_models_than_weights_is_refused_when_it_ends() -> None:
    _, student = cnn_pair()
    with pytest.raises(OptionError, match="3 weights for 2 models; give one weight per model"):
        average_state_dicts(iter([student.state_dict(), student.state_dict()]), [1, 1, 1])


def test_the_command_averages_hugging_face_folders_that_load_without_depgraph(tmp_path, capsys) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    _, student = llama_pair()
    folders = []
    for seed in (1, 2):
        folders.append(tmp_path / f"rec{seed}")
        _moved(student, seed).save_pretrained(folders[-1])
        write_tokenizer(folders[-1])
    out = tmp_path / "soup"
    assert main(["average", *map(str, folders), "--weights", "3,1", "--output", str(out), "--plain"]) == 0
    printed = capsys.readouterr().out
    assert "average of 2 models" in printed and "0.7500" in printed and "0.2500" in printed
    assert "BatchNorm" not in printed  # a Llama has none: nothing to say about them
    soup = AutoModelForCausalLM.from_pretrained(out).eval()
    a, b = (AutoModelForCausalLM.from_pretrained(f).eval() for f in folders)
    for k, v in soup.state_dict().items():
        torch.testing.assert_close(v, 0.75 * a.state_dict()[k] + 0.25 * b.state_dict()[k], rtol=0, atol=1e-6)
    assert soup.config.intermediate_size == student.config.intermediate_size < 64
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()


def test_the_command_re_measures_batchnorm_of_an_averaged_depgraph_file(tmp_path, capsys) -> None:
    import torchvision

    from depgraph.recovery.data import open_dataset
    from depgraph.utils.batchnorm import recalibrate_batchnorm
    from depgraph.workflow import load_source

    torch.manual_seed(0)
    base = torchvision.models.resnet18()  # what --base resnet18 builds: 1000 classes, random weights
    student = prune(base.eval(), torch.randn(1, 3, 32, 32))
    files = []
    for seed in (1, 2):
        files.append(tmp_path / f"rec{seed}.pth")
        tp.save(_moved(student, seed), files[-1])
    images = write_image_folder(tmp_path / "images")
    plain = ["average", *map(str, files), "--base", "resnet18", "--plain"]
    assert main([*plain, "--output", str(tmp_path / "plain.pth")]) == 0
    assert "the BatchNorm running statistics are the models' average; give --data" in capsys.readouterr().out
    argv = [*plain, "--output", str(tmp_path / "soup.pth"), "--data", str(images), "--input-size", "32"]
    assert main(argv) == 0
    assert "re-measured the running statistics of 20 BatchNorm layers" in capsys.readouterr().out

    averaged = tp.load(torchvision.models.resnet18(), tmp_path / "plain.pth").eval()
    soup = tp.load(torchvision.models.resnet18(), tmp_path / "soup.pth").eval()
    one = tp.load(torchvision.models.resnet18(), files[0])
    assert soup.conv1.out_channels == student.conv1.out_channels < 64
    torch.testing.assert_close(averaged.conv1.weight, (one.conv1.weight + _moved(student, 2).conv1.weight) / 2)
    assert torch.equal(soup.conv1.weight, averaged.conv1.weight)  # the weights are the average ...
    assert not torch.allclose(soup.bn1.running_mean, averaged.bn1.running_mean)  # ... the statistics re-measured
    spec = load_source("resnet18", input_size=32).spec  # what the command reads the images with
    data = open_dataset(images, spec, max_samples=256)
    expected = copy.deepcopy(averaged)
    recalibrate_batchnorm(expected, [torch.stack([x for x, _ in data])])
    torch.testing.assert_close(soup.bn1.running_var, expected.bn1.running_var)


@pytest.mark.parametrize(("extra", "error", "message"), [
    (["--weights", "1"], "OptionError", "1 weights for 2 models; give one weight per model"),
    (["--weights", "0,0"], "OptionError", "the weights sum to 0"),
    (["--data", "nope"], "CalibrationDataError", "--data 'nope' does not exist"),
])
def test_bad_inputs_fail_before_anything_loads(tmp_path, monkeypatch, capsys, extra, error, message) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("a.pth", "b.pth"):
        (tmp_path / name).write_bytes(b"")  # not even readable: nothing may be loaded before the refusal
    assert main(["average", "a.pth", "b.pth", "--base", "resnet18", "--output", "o.pth", *extra]) == 1
    err = capsys.readouterr().err
    assert error in err and message in err
    assert not (tmp_path / "o.pth").exists()


def test_missing_models_one_model_and_different_prunes_write_nothing(tmp_path, monkeypatch, capsys) -> None:
    import torchvision

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    base = torchvision.models.resnet18().eval()
    tp.save(prune(base, torch.randn(1, 3, 32, 32)), tmp_path / "half.pth")
    tp.save(prune(base, torch.randn(1, 3, 32, 32), ratio=0.3), tmp_path / "less.pth")
    cases = [(["half.pth", "gone.pth"], "RecoveryError", "model 'gone.pth' does not exist"),
             (["half.pth"], "OptionError", "average needs two or more models, got 1"),
             (["half.pth", "less.pth"], "RecoveryError", "only recoveries of the same pruned model"),
             (["half.pth", "half.pth", "--output", "no/such/o.pth"], "OutputError", "does not exist")]
    for models, error, message in cases:
        out = [] if "--output" in models else ["--output", "o.pth"]
        assert main(["average", *models, "--base", "resnet18", "--input-size", "32", *out]) == 1
        err = capsys.readouterr().err
        assert error in err and message in err, err
        assert not (tmp_path / "o.pth").exists()
