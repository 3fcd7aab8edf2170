"""benchmarks/out_of_core.py runs end to end on its tiny shape (the real sizes are measured by hand).

Markers:
    slow  writes a checkpoint, evicts it from the page cache and prunes it in a child process.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]


def _benchmark():
    spec = importlib.util.spec_from_file_location("out_of_core", ROOT / "benchmarks" / "out_of_core.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_run_prunes_within_its_budget(tmp_path, monkeypatch) -> None:
    bench = _benchmark()
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    result = bench.main(["--size", "tiny", "--plan", "--max-memory", "4MB", "--shard-size", "1000000",
                         "--workdir", str(tmp_path), "--save"])
    prune = result["prune"]
    assert prune["mode"] == "stream" and len(prune["shards_written"]) >= 3
    assert 0 < prune["peak_materialized"] <= 4_000_000 < result["checkpoint_bytes"]
    assert prune["params_after"] < prune["params_before"]
    assert result["raw_read_Bps"] > 0
    saved = json.loads((tmp_path / "results" / "out_of_core_tiny.json").read_text())
    assert saved["prune"]["params_after"] == prune["params_after"]
    assert not list(tmp_path.glob("ooc-*"))  # the checkpoints are removed


def test_a_budget_below_one_layer_is_refused_before_writing(tmp_path) -> None:
    bench = _benchmark()
    with pytest.raises(SystemExit, match=r"--max-memory 100KB cannot hold one decoder layer of the tiny shape"):
        bench.main(["--size", "tiny", "--plan", "--max-memory", "100KB", "--workdir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing written
