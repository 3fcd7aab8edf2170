"""``depgraph prune CHECKPOINT --calib data.txt --max-memory ...``: calibration data from files, streamed.

Markers: zoo (a tiny random Llama checkpoint plus a word-level tokenizer, written by the test).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from depgraph.cli import main
from depgraph.streaming import prune_checkpoint
from depgraph.workflow.calibration_data import load_calibration
from depgraph.workflow.inputs import input_spec_for_checkpoint

from ..workflow._files import write_jsonl, write_text, write_tokenizer
from .test_prune_checkpoint import _load, _save

pytest.importorskip("transformers")

pytestmark = pytest.mark.zoo


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    folder = _save(tmp_path_factory.mktemp("llama") / "src", "llama", tie_word_embeddings=False)
    write_tokenizer(folder)  # --calib text is tokenised by the checkpoint's own tokenizer
    return folder


@pytest.mark.parametrize(("importance", "compensation", "kind"),
                         [("activation_weight", "lstsq", "txt"), ("fluctuation", None, "jsonl")])
def test_calib_file_streams_like_the_python_call(src, tmp_path, capsys, importance, compensation, kind) -> None:
    data = write_text(tmp_path / "corpus.txt") if kind == "txt" else write_jsonl(tmp_path / "docs.jsonl")
    argv = ["prune", str(src), "--ratio", "0.25", "--head-ratio", "0.25", "--importance", importance,
            "--calib", str(data), "--calib-samples", "6", "--calib-batch-size", "3", "--seq-len", "16",
            "--max-memory", "1MB", "--output", str(tmp_path / "cli"), "--plain"]
    if compensation:
        argv += ["--compensation", compensation]
    assert main(argv) == 0
    assert "(stream)" in capsys.readouterr().out
    batches = load_calibration(data, input_spec_for_checkpoint(src, seq_len=16), num_samples=6, batch_size=3)
    assert sum(b["input_ids"].shape[0] for b in batches) == 6
    prune_checkpoint(src, tmp_path / "api", ratio=0.25, head_ratio=0.25, importance=importance, calib=batches,
                     compensation=compensation or "bias", max_memory="1MB", progress=False)  # fluctuation -> bias
    a, b = _load(tmp_path / "api").state_dict(), _load(tmp_path / "cli").state_dict()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert _load(tmp_path / "cli").config.mlp_bias is True  # compensated: biases created and declared


def test_calib_errors_are_reported_before_writing(src, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    base = ["prune", str(src), "--ratio", "0.25", "--max-memory", "1MB", "--output", str(out), "--plain"]
    assert main([*base, "--compensation", "bias"]) == 2
    assert "compensation='bias' is calibrated on data: pass calib=" in capsys.readouterr().err
    assert main([*base, "--importance", "fluctuation", "--calib", str(tmp_path / "nope.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--importance", "taylor", "--calib", str(write_text(tmp_path / "c.txt"))]) == 2
    assert "importance must be one of" in capsys.readouterr().err
    assert not out.exists()


def test_progress_bars_per_stage_and_the_report(src, tmp_path, capfd) -> None:
    pytest.importorskip("tqdm")
    calib = [torch.randint(0, 30, (2, 12), generator=torch.Generator().manual_seed(0))]
    report = prune_checkpoint(src, tmp_path / "out", ratio=0.25, importance="fluctuation", calib=calib,
                              compensation="bias", max_memory="1MB", progress=True)
    err = capfd.readouterr().err
    assert all(stage in err for stage in ("calibrate", "score groups", "write shards")), err[-500:]
    text = str(report)
    assert "read " in text and "wrote " in text and "peak weights held" in text and "peak RSS" in text
    assert report.bytes_read > 0 and report.bytes_written > 0 and 0 < report.peak_materialized <= 1_000_000


def test_prune_hidden_flag_streamed_and_in_memory(src, tmp_path, capsys) -> None:
    """--prune-hidden is prune_hidden=True on both paths: streamed (--max-memory) and loaded whole."""
    base = ["prune", str(src), "--ratio", "0.25", "--head-ratio", "0.25", "--prune-hidden", "--plain"]
    assert main([*base, "--max-memory", "1MB", "--output", str(tmp_path / "stream")]) == 0
    assert "(stream)" in capsys.readouterr().out
    assert main([*base, "--output", str(tmp_path / "memory"), "--no-latency"]) == 0  # fits: in memory
    prune_checkpoint(src, tmp_path / "api", ratio=0.25, head_ratio=0.25, prune_hidden=True, max_memory="1MB",
                     progress=False)
    ref = _load(tmp_path / "api")
    assert ref.config.hidden_size == 72 and ref.model.embed_tokens.weight.shape == (100, 72)
    for folder in ("stream", "memory"):
        got = _load(tmp_path / folder)
        a, b = ref.state_dict(), got.state_dict()
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), folder
        assert got.config.hidden_size == 72, folder
