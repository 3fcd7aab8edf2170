"""``depgraph recover`` refusals: typed, exit code 1, before any training or writing.

The successful runs (a Hugging Face folder from text, a depgraph file from an
image folder, two processes under ``accelerate launch``) are the README
commands, run by ``test_readme_commands.py``.
"""

from __future__ import annotations

import pytest

from depgraph.cli import main

from ._models import write_llama_folders

pytest.importorskip("accelerate")
pytest.importorskip("transformers")
pytest.importorskip("torchvision")


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
    assert "holds no image" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "the cat"}\n', encoding="utf-8")
    assert main([*argv, "--data", str(bad)]) == 1
    assert "bad.jsonl:1 has no string field 'text' (it has ['txt'])" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
