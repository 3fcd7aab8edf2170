"""README "Prune your own model": every command and snippet of the walkthrough runs, in order.

The test writes the files the walkthrough reads (a ResNet-18 ``state_dict``, an image folder, a
tiny Llama folder with its tokenizer, a text corpus) into a temporary working folder, then runs
each ``depgraph ...`` line of the section's ``bash`` blocks through ``depgraph.cli.main`` (exit
code 0) and each ``py`` block with ``exec`` there. The subsections from "Calibration data" on
have their own tests (``Recover and export``: ``tests/recovery/test_readme_commands.py``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from depgraph.cli import main

from ._files import write_images, write_text, write_tiny_llama

torchvision = pytest.importorskip("torchvision")
pytest.importorskip("transformers")

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _section() -> str:
    start = README.index("## Prune your own model")
    end = README.index("### Calibration data", start)
    return README[start:end]


def _steps() -> list[tuple[str, str]]:
    """``(kind, text)`` in README order: ``("cmd", "depgraph prune ...")`` or ``("py", code)``."""
    steps = []
    for m in re.finditer(r"^```(bash|py)\n(.*?)^```", _section(), flags=re.M | re.S):
        if m.group(1) == "py":
            steps.append(("py", m.group(2)))
            continue
        for line in m.group(2).splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                steps.append(("cmd", line.split("  #")[0].strip()))
    return steps


def test_walkthrough_has_the_vision_and_llm_commands() -> None:
    commands = [text for kind, text in _steps() if kind == "cmd"]
    assert any(c.startswith("depgraph prune resnet18 --weights resnet18.pth --target macs=0.5") for c in commands)
    assert any(c.startswith("depgraph prune ./tiny-llama --target params=0.8 --calib corpus.txt") for c in commands)


def test_every_walkthrough_step_runs(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), "resnet18.pth")
    write_images(tmp_path / "val_images", n=8, size=(80, 72))
    write_tiny_llama(tmp_path / "tiny-llama")
    write_text(tmp_path / "corpus.txt", n_words=600)
    for kind, text in _steps():
        if kind == "py":
            exec(compile(text, "README.md", "exec"), {"__name__": "walkthrough"})  # noqa: S102 - our README
            continue
        argv = shlex.split(text)
        assert argv[0] == "depgraph", f"a walkthrough command the test cannot run: {text}"
        code = main([*argv[1:], "--plain"])
        captured = capsys.readouterr()
        assert code == 0, f"{text}\n{captured.out}\n{captured.err}"
    report = (tmp_path / "resnet18_report.md").read_text()
    assert "- target: macs=0.5" in report and "| layer1.0.conv1 | Conv2d |" in report
    assert '"target": "params=0.8"' in (tmp_path / "llama_report.json").read_text()
