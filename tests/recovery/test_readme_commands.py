"""The commands of README "Recover and export", run as written, and what they write checked.

The folder they run in holds what the README says: a tiny random Llama
``teacher/`` and its pruned copy ``pruned/`` (both with a tokenizer),
``train.txt``, an ``images/`` folder with one subfolder per class, and the
``resnet18.pth`` state dict of the unpruned ResNet-18 (``depgraph prune
resnet18`` builds the same weights: seed 0). The ``accelerate launch`` line
(two processes) is run by the slow test.
"""

from __future__ import annotations

import os
import re
import shlex
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
pytest.importorskip("onnx")

ROOT = Path(depgraph.__file__).resolve().parents[1]


def _commands(after: str) -> list[str]:
    """The lines of the first bash block after ``after`` in README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(after, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


COMMANDS = _commands("### Recover and export")
CORRECTION = _commands("**Teacher correction.**")
SOUP = _commands("**Averaging recoveries (a model soup).**")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    import torchvision

    write_llama_folders(tmp_path)
    write_text(tmp_path / "train.txt")
    write_image_folder(tmp_path / "images")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_shows_the_commands() -> None:
    assert [c.split()[:2] for c in COMMANDS] == [
        ["depgraph", "recover"], ["depgraph", "export"], ["depgraph", "prune"], ["depgraph", "recover"],
        ["depgraph", "export"], ["accelerate", "launch"]]


def test_readme_commands_run_and_write_what_they_say(workdir, capsys) -> None:
    for line in COMMANDS:
        if line.startswith("depgraph "):
            code = main([*shlex.split(line)[1:], "--plain"] + (["--no-progress"] if " recover " in line else []))
            assert code == 0, (line, capsys.readouterr())
    printed = capsys.readouterr().out
    assert printed.count("distillation gap (KL to teacher)") == 2

    from transformers import AutoModelForCausalLM

    import depgraph as tp

    recovered = AutoModelForCausalLM.from_pretrained(workdir / "recovered").eval()
    pruned = AutoModelForCausalLM.from_pretrained(workdir / "pruned").eval()
    assert recovered.config.hidden_size == pruned.config.hidden_size < 32
    ids = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        logits = recovered(input_ids=ids).logits
        assert not torch.allclose(logits, pruned(input_ids=ids).logits)  # trained
        program = torch.export.load("llama.pt2").module()
        torch.testing.assert_close(program(input_ids=ids, use_cache=False).logits, logits)
        other = torch.randint(0, VOCAB, (3, 7))  # --dynamic: another batch and sequence length
        torch.testing.assert_close(program(input_ids=other, use_cache=False).logits,
                                   recovered(input_ids=other).logits, atol=1e-5, rtol=1e-5)
    assert Path("llama.onnx").is_file() and "batch 2, sequence 16; batch 3, sequence 8" in printed

    import torchvision

    resnet = tp.load(torchvision.models.resnet18(), "resnet18_recovered.pth").eval()
    assert resnet.conv1.out_channels == 32
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load("resnet18.pt2").module()(x), resnet(x), atol=1e-4, rtol=1e-4)
    assert Path("resnet18.onnx").is_file()


def test_readme_teacher_correction_runs_as_written(workdir, capsys) -> None:
    """Fine-tune the teacher (no distillation), prune it, distil from it: each line as README shows it."""
    assert [c.split()[:2] for c in CORRECTION] == [["depgraph", "recover"], ["depgraph", "prune"],
                                                   ["depgraph", "recover"]]
    assert "--teacher" not in CORRECTION[0]  # the fine-tune holds one model
    for line in CORRECTION:
        code = main([*shlex.split(line)[1:], "--plain"] + (["--no-progress"] if " recover " in line else []))
        assert code == 0, (line, capsys.readouterr())

    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(workdir / "teacher")
    corrected = AutoModelForCausalLM.from_pretrained(workdir / "corrected")
    pruned = AutoModelForCausalLM.from_pretrained(workdir / "pruned-corrected")
    recovered = AutoModelForCausalLM.from_pretrained(workdir / "recovered-corrected")
    assert corrected.num_parameters() == teacher.num_parameters()  # fine-tuned, not pruned
    assert not torch.equal(corrected.lm_head.weight, teacher.lm_head.weight)
    assert recovered.num_parameters() == pruned.num_parameters() < 0.85 * corrected.num_parameters()
    assert not torch.equal(recovered.lm_head.weight, pruned.lm_head.weight)


def test_readme_model_soup_runs_as_written(workdir, capsys) -> None:
    """Two recoveries of one pruned model with different recipes, then their mean: each line as README shows it."""
    assert [c.split()[:2] for c in SOUP] == [["depgraph", "recover"], ["depgraph", "recover"], ["depgraph", "average"]]
    for line in SOUP:
        code = main([*shlex.split(line)[1:], "--plain"] + (["--no-progress"] if " recover " in line else []))
        assert code == 0, (line, capsys.readouterr())

    from transformers import AutoModelForCausalLM

    a, b, soup = (AutoModelForCausalLM.from_pretrained(workdir / f).state_dict()
                  for f in ("recovered-a", "recovered-b", "soup"))
    assert not torch.equal(a["lm_head.weight"], b["lm_head.weight"])  # two different recoveries
    for k, v in soup.items():
        torch.testing.assert_close(v, (a[k] + b[k]) / 2, rtol=0, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_readme_accelerate_launch_runs_two_cpu_processes(workdir) -> None:
    line = next(c for c in COMMANDS if c.startswith("accelerate launch"))
    args = shlex.split(line)[2:]
    # the same launcher, from this interpreter, on a free port (tests may run side by side)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(_free_port()),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args,
           "--no-progress", "--plain"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=workdir)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 processes" in run.stdout, run.stdout  # the gloo group formed; one table, from the main process
    assert run.stdout.count("distillation gap") == 1

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(workdir / "recovered2").config.hidden_size < 32
