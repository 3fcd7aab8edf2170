"""``depgraph recover`` refusals: typed, exit code 1, before any training or writing.

The successful runs (a Hugging Face folder from text, a depgraph file from an
image folder, two processes under ``accelerate launch``) are the README
commands, run by ``test_readme_commands.py``.
"""

from __future__ import annotations

import re

import pytest
import torch

from depgraph.cli import main

from ._models import write_llama_folders

pytest.importorskip("accelerate")
pytest.importorskip("transformers")
pytest.importorskip("torchvision")


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (["recover", "missing_dir", "--teacher", "resnet18", "--data", "x.txt", "--output", "o.pth"],
         "RecoveryError", "pruned model 'missing_dir' does not exist"),
        (["recover", "p.pth", "--teacher", "resnet18", "--data", "x.txt", "--output", "no/such/folder/o.pth"],
         "OutputError", "no/such/folder' does not exist"),
        (["recover", "p.pth", "--teacher", "resnet18", "--teacher-weights", "nope.pth", "--data", "x.txt",
          "--output", "o.pth"], "SourceError", "weights file 'nope.pth' does not exist"),
        (["recover", "p.pth", "--teacher", "resnet18", "--data", "x.txt", "--eval-data", "held.txt",
          "--output", "o.pth"], "CalibrationDataError", "--eval-data 'held.txt' does not exist"),
        (["recover", "p.pth", "--data", "x.txt", "--output", "o.pth"],
         "OptionError", "distillation (kd_weight 1, hidden_weight 0) needs a teacher"),
        (["recover", "p.pth", "--teacher-weights", "w.pth", "--kd-weight", "0", "--data", "x.txt", "--output", "o.pth"],
         "OptionError", "--teacher-weights 'w.pth' is the state dict of a teacher given by name: name it with --teacher"),
    ],
)
def test_bad_inputs_fail_before_any_work(tmp_path, monkeypatch, capsys, argv, error, message) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.pth").write_bytes(b"")
    (tmp_path / "x.txt").write_text("some text", encoding="utf-8")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert error in err and message in err


def test_data_that_does_not_fit_is_refused(tmp_path, capsys) -> None:
    teacher, pruned = write_llama_folders(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["recover", str(pruned), "--teacher", str(teacher), "--output", str(tmp_path / "o"), "--no-progress"]
    assert main([*argv, "--data", str(empty)]) == 1
    assert "holds no image" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "the cat"}\n', encoding="utf-8")
    assert main([*argv, "--data", str(bad)]) == 1
    assert "bad.jsonl:1 has no string field 'text' (it has ['txt'])" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_timm_teacher_and_a_pickled_student_round_trip(tmp_path, capsys) -> None:
    """The third source form: a whole pickled module, written back pickled; a timm teacher by name."""
    timm = pytest.importorskip("timm")
    import copy

    import torch

    import depgraph as tp

    torch.manual_seed(0)
    teacher = timm.create_model("resnet10t", pretrained=False, num_classes=1000).eval()
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    student = copy.deepcopy(teacher)
    tp.pruner.BasePruner(student, torch.randn(1, 3, 32, 32), tp.importance.GroupMagnitudeImportance(),
                         pruning_ratio=0.5, ignored_layers=[student.fc]).step()
    torch.save(student, tmp_path / "student.pth")  # Torch-Pruning's tp.save: the whole module
    images = tmp_path / "flat"
    images.mkdir()
    from ._models import write_image_folder

    write_image_folder(tmp_path / "classes")
    for f in (tmp_path / "classes").rglob("*.png"):
        f.rename(images / f"{f.parent.name}_{f.name}")  # a flat folder: no labels, distillation only
    out = tmp_path / "recovered.pth"
    argv = ["recover", str(tmp_path / "student.pth"), "--teacher", "resnet10t", "--teacher-weights",
            str(tmp_path / "teacher.pth"), "--data", str(images), "--input-size", "32", "--steps", "3",
            "--batch-size", "4", "--output", str(out), "--no-progress", "--plain"]
    assert main(argv) == 1  # unpickling runs code from the file: only when asked
    assert "pass trust_pickle=True (--trust-pickle)" in capsys.readouterr().err
    code = main([*argv, "--trust-pickle"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "distillation gap" in printed and "task loss" not in printed  # no labels in a flat folder
    assert "3 steps in" in printed and "on 1 process (1 CPU thread each)" in printed  # the tests run on one
    recovered = torch.load(out, weights_only=False).eval()
    assert type(recovered) is type(student) and recovered.fc.in_features == student.fc.in_features < 512
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(recovered(x), student.eval()(x))
    assert main(["export", str(out), "--torch-export", str(tmp_path / "r.pt2"), "--input-size", "32",
                 "--trust-pickle", "--plain"]) == 0
    assert (tmp_path / "r.pt2").is_file()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--warmup-steps", "-1", "must be an integer >= 0"), ("--eval-batches", "0", "must be a positive integer"),
    ("--weight-decay", "-0.1", "must be a number >= 0"), ("--num-workers", "-1", "must be an integer >= 0")])
def test_training_options_are_checked_by_the_parser(capsys, option, value, message) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["recover", "p", "--teacher", "t", "--data", "d.txt", "--output", "o", option, value])
    assert exit_.value.code == 2 and f"{option}: {message}" in capsys.readouterr().err


def test_save_every_writes_the_output_during_training(tmp_path, capsys, monkeypatch) -> None:
    """A run cut off by a time limit leaves its latest model: --output is written every N steps, each
    write with the weights of that step, then once more at the end."""
    import torch

    import depgraph.workflow.save as save_module

    from ._models import WORDS

    teacher, pruned = write_llama_folders(tmp_path)
    (tmp_path / "train.txt").write_text(" ".join(WORDS * 40), encoding="utf-8")
    saved: list[torch.Tensor] = []
    real = save_module.save_pruned

    def recording(model, *args, **kwargs):
        saved.append(model.lm_head.weight.detach().clone())
        return real(model, *args, **kwargs)

    monkeypatch.setattr(save_module, "save_pruned", recording)
    out = tmp_path / "o"
    assert main(["recover", str(pruned), "--teacher", str(teacher), "--data", str(tmp_path / "train.txt"),
                 "--seq-len", "8", "--batch-size", "2", "--steps", "5", "--lr", "1e-2", "--save-every", "2",
                 "--eval-batches", "1", "--no-progress", "--plain", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "checkpoint: step 2 saved to" in text and "checkpoint: step 4 saved to" in text
    assert "checkpoint: step 5" not in text  # the last step is the final save
    assert len(saved) == 3 and not torch.equal(saved[0], saved[1]) and not torch.equal(saved[1], saved[2])
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(reloaded.lm_head.weight, saved[-1])


def test_a_depgraph_file_of_a_hugging_face_model_comes_back_as_a_depgraph_file(tmp_path, capsys) -> None:
    """A Hugging Face model pruned to widths its config cannot hold (here: one layer's MLP kept whole) is
    saved with depgraph.save; recover writes the same form (checkpoints too), not a save_pretrained folder."""
    import torch
    from transformers import AutoModelForCausalLM

    import depgraph as tp

    from ._models import VOCAB, WORDS

    teacher_dir, _ = write_llama_folders(tmp_path)
    student = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    tp.pruner.BasePruner(student, {"input_ids": torch.randint(0, VOCAB, (1, 8))},
                         tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                         ignored_layers=[student.lm_head, student.model.layers[0].mlp]).step()
    assert student.model.layers[0].mlp.up_proj.out_features != student.model.layers[1].mlp.up_proj.out_features
    tp.save(student, tmp_path / "pruned.pth")
    (tmp_path / "train.txt").write_text(" ".join(WORDS * 40), encoding="utf-8")
    out = tmp_path / "recovered.pth"
    assert main(["recover", str(tmp_path / "pruned.pth"), "--teacher", str(teacher_dir), "--data",
                 str(tmp_path / "train.txt"), "--seq-len", "8", "--batch-size", "2", "--steps", "2", "--lr", "1e-2",
                 "--save-every", "1", "--eval-batches", "1", "--no-progress", "--plain", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "checkpoint: step 1 saved to" in text and out.is_file()
    recovered = tp.load(AutoModelForCausalLM.from_pretrained(teacher_dir), out).eval()
    assert recovered.model.layers[1].mlp.up_proj.out_features == student.model.layers[1].mlp.up_proj.out_features
    ids = torch.randint(0, VOCAB, (1, 8))
    with torch.no_grad():
        assert not torch.allclose(recovered(input_ids=ids).logits, student(input_ids=ids).logits)


def test_eval_data_measures_the_gap_on_held_out_text(tmp_path, capsys) -> None:
    """--eval-data: the before/after gap is measured on the held-out file, not on the training text
    (a model trained to fit train.txt: its gap on a different text differs from the gap on train.txt)."""
    from ._models import WORDS

    teacher, pruned = write_llama_folders(tmp_path)
    (tmp_path / "train.txt").write_text(" ".join(WORDS * 40), encoding="utf-8")
    (tmp_path / "held.txt").write_text(" ".join(reversed(WORDS * 40)), encoding="utf-8")
    common = ["recover", str(pruned), "--teacher", str(teacher), "--data", str(tmp_path / "train.txt"),
              "--seq-len", "8", "--batch-size", "2", "--steps", "3", "--lr", "1e-2", "--eval-batches", "2",
              "--no-progress", "--plain"]

    def gap_rows(*extra: str) -> list[str]:
        assert main([*common, *extra, "--output", str(tmp_path / f"o{len(extra)}")]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if "distillation gap" in line]

    own, held = gap_rows(), gap_rows("--eval-data", str(tmp_path / "held.txt"))
    assert len(own) == len(held) == 1 and "on --eval-data" in held[0] and "on --eval-data" not in own[0]
    assert own[0].split()[-2:] != held[0].split()[-2:]  # other batches measured: other numbers


def test_without_a_teacher_it_fine_tunes_the_model_alone(tmp_path, capsys) -> None:
    """No --teacher with --kd-weight 0: the teacher folder is never read, the table has no gap row, and the
    result is a save_pretrained folder of the tuned weights."""
    import transformers

    from ._models import WORDS

    _, pruned = write_llama_folders(tmp_path)
    (tmp_path / "train.txt").write_text(" ".join(WORDS * 40), encoding="utf-8")
    (tmp_path / "held.txt").write_text(" ".join(reversed(WORDS * 40)), encoding="utf-8")
    out = tmp_path / "tuned"
    assert main(["recover", str(pruned), "--data", str(tmp_path / "train.txt"), "--kd-weight", "0", "--seq-len", "8",
                 "--batch-size", "2", "--steps", "4", "--lr", "1e-2", "--eval-batches", "2", "--eval-every", "2",
                 "--eval-data", str(tmp_path / "held.txt"), "--keep-best", "--no-progress", "--plain",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "distillation gap" not in printed and "KL to teacher" not in printed
    assert "task loss on --eval-data" in printed and "kept the weights of step" in printed
    tuned = transformers.AutoModelForCausalLM.from_pretrained(out)
    original = transformers.AutoModelForCausalLM.from_pretrained(pruned)
    assert tuned.config.intermediate_size == original.config.intermediate_size
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, original.state_dict()[k])]
    kept = int(re.search(r"kept the weights of step (\d+) of 4", printed).group(1))
    assert bool(changed) == (kept > 0)  # the weights written are those of the step it names
