"""``depgraph recover`` end to end: files the tests write, the command, the files it writes back.

The two-process test starts the command with ``accelerate launch`` (two CPU
processes, gloo), the way a multi-GPU run is started.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import depgraph
from depgraph.cli import main

from ._models import VOCAB, write_image_folder, write_llama_folders, write_text

pytest.importorskip("accelerate")
pytest.importorskip("transformers")
pytest.importorskip("torchvision")


def test_recover_hf_llama_folder_from_text(tmp_path, capsys) -> None:
    teacher, pruned = write_llama_folders(tmp_path)
    text = write_text(tmp_path / "train.txt")
    out = tmp_path / "recovered"
    code = main(["recover", str(pruned), "--teacher", str(teacher), "--data", str(text), "--output", str(out),
                 "--steps", "6", "--lr", "1e-2", "--batch-size", "4", "--seq-len", "16", "--no-progress", "--plain"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "distillation gap (KL to teacher)" in printed and "task loss" in printed and "1 process" in printed
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))

    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(pruned).eval()
    after = AutoModelForCausalLM.from_pretrained(out).eval()
    assert after.config.hidden_size == before.config.hidden_size < 32  # still the pruned width
    ids = torch.randint(0, VOCAB, (1, 8))
    with torch.no_grad():
        assert not torch.allclose(after(input_ids=ids).logits, before(input_ids=ids).logits)  # it was trained


def test_recover_vision_file_with_teacher_weights_from_image_folder(tmp_path, capsys) -> None:
    import torchvision

    import depgraph as tp

    torch.manual_seed(0)  # the weights `depgraph prune resnet18` builds with its default --seed 0
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    assert main(["prune", "resnet18", "--ratio", "0.5", "--input-size", "32",
                 "--output", str(tmp_path / "pruned.pth"), "--plain"]) == 0
    images = write_image_folder(tmp_path / "images")
    out = tmp_path / "recovered.pth"
    code = main(["recover", str(tmp_path / "pruned.pth"), "--teacher", "resnet18", "--teacher-weights",
                 str(tmp_path / "resnet18.pth"), "--data", str(images), "--input-size", "32",
                 "--output", str(out), "--steps", "3", "--batch-size", "4", "--no-progress", "--plain"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "task loss" in printed  # the class subfolders are labels
    recovered = tp.load(torchvision.models.resnet18(), out).eval()
    pruned = tp.load(torchvision.models.resnet18(), tmp_path / "pruned.pth").eval()
    assert recovered.conv1.out_channels == pruned.conv1.out_channels == 32
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(recovered(x), pruned(x))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["recover", "missing_dir", "--teacher", "resnet18", "--data", "x.txt", "--output", "o.pth"],
         "pruned model 'missing_dir' does not exist"),
        (["recover", "p.pth", "--teacher", "resnet18", "--data", "x.txt", "--output", "no/such/folder/o.pth"],
         "the folder 'no/such/folder' does not exist"),
        (["recover", "p.pth", "--teacher", "resnet18", "--teacher-weights", "nope.pth", "--data", "x.txt",
          "--output", "o.pth"], "the weights file 'nope.pth' does not exist"),
    ],
)
def test_bad_inputs_fail_before_any_work(tmp_path, monkeypatch, capsys, argv, message) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.pth").write_bytes(b"")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "RecoveryError" in err and message in err


def test_data_that_does_not_fit_is_refused(tmp_path, capsys) -> None:
    teacher, pruned = write_llama_folders(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["recover", str(pruned), "--teacher", str(teacher), "--output", str(tmp_path / "o"), "--no-progress"]
    assert main([*argv, "--data", str(empty)]) == 1
    assert "holds no images" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "the cat"}\n', encoding="utf-8")
    assert main([*argv, "--data", str(bad)]) == 1
    assert "bad.jsonl:1: each line must be an object with 'text' or 'input_ids'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_through_accelerate_launch(tmp_path) -> None:
    teacher, pruned = write_llama_folders(tmp_path)
    text = write_text(tmp_path / "train.txt")
    out = tmp_path / "recovered"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    cmd = [*launch, "-m", "depgraph", "recover", str(pruned), "--teacher", str(teacher), "--data", str(text),
           "--output", str(out), "--steps", "4", "--batch-size", "2", "--seq-len", "16", "--no-progress", "--plain"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(depgraph.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 processes" in run.stdout, run.stdout  # one table, printed by the main process only
    assert run.stdout.count("distillation gap") == 1

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size < 32
