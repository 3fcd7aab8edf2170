"""The example scripts run (with ``--quick``) and show what their docstrings promise.

Each script is loaded from ``examples/`` by path and its ``main(argv)`` called
in-process, so torch is imported once and the suite's one-thread fixture
applies. The checks read the returned results and the printed report: every
prune is proven by ``tp.verify``, and the numbers each script exists to show
(widths, accuracies, outputs after reloading) are what they should be.

``prune_llm.py`` is tested with the transformers integration
(``tests/integrations/test_prune_llm_example.py``). The last tests are smoke
tests of ``benchmarks/latency.py`` (one ratio, tiny input, one timed run; ``--per-layer`` on
ResNet-18 at 32x32, one round) and
of the meta-device Llama rows of ``benchmarks/graph_build.py`` (2 layers).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("torchvision")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SCRIPTS = ["quickstart", "global_pruning", "sparse_training", "save_and_load", "low_level"]


def load_script(path: Path) -> ModuleType:
    """Import a script by path (registered in ``sys.modules``, as dataclasses need)."""
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_example(name: str, capsys: pytest.CaptureFixture, *argv: str) -> tuple[dict, str]:
    """``main([*argv, '--quick'])``: its returned results and everything it printed."""
    results = load_script(EXAMPLES / f"{name}.py").main([*argv, "--quick"])
    return results, capsys.readouterr().out


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_has_docstring_and_help(name: str, capsys: pytest.CaptureFixture) -> None:
    module = load_script(EXAMPLES / f"{name}.py")
    assert module.__doc__ and f"python examples/{name}.py" in module.__doc__
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_quickstart(capsys: pytest.CaptureFixture) -> None:
    results, out = run_example("quickstart", capsys)
    # The README's ResNet-18 figures: parameters do not depend on the input size.
    assert (results["before"]["params"], results["after"]["params"]) == (11_689_512, 3_055_880)
    assert results["after"]["macs"] < 0.3 * results["before"]["macs"]
    assert results["before"]["shape"] == results["after"]["shape"] == (1, 1000)
    assert results["verify"].exact
    assert "verify: exact" in out
    assert "Conv2d(3, 64, kernel_size=(7, 7)" in out and "=> Conv2d(3, 32, kernel_size=(7, 7)" in out  # print_tool
    assert re.search(r"params\s+11,689,512\s+3,055,880\s+-73\.9%", out)


def test_global_pruning(capsys: pytest.CaptureFixture) -> None:
    results, out = run_example("global_pruning", capsys, "--max-ratio", "0.8")
    widths = results["widths"]
    assert list(widths) == ["before", "local", "global", "isomorphic"]
    for strategy in ("local", "global", "isomorphic"):
        assert results["verify"][strategy].exact
        for root, before in widths["before"].items():
            after = widths[strategy][root]
            assert after % 8 == 0 and after < before, (strategy, root, before, after)
            assert after >= before * (1 - 0.8), f"{strategy}: {root} pruned past max_pruning_ratio"
    assert widths["local"] != widths["global"]  # the global ranking moves channels between layers
    assert all(w == b // 2 for w, b in zip(widths["local"].values(), widths["before"].values(), strict=True))
    assert out.count("verify: exact") == 3
    assert "step 2/2 (target 0.500)" in out and "per-layer widths" in out


def test_sparse_training(capsys: pytest.CaptureFixture) -> None:
    results, out = run_example("sparse_training", capsys)
    acc = results["accuracy"]
    assert acc["dense"] > 0.9
    # Sparse training makes pruning cost less, and fine-tuning recovers both.
    assert acc["pruned"]["sparse"] > acc["pruned"]["direct"]
    assert acc["finetuned"]["sparse"] > 0.9 and acc["finetuned"]["direct"] > 0.9
    assert results["params"][1] < 0.3 * results["params"][0]
    assert results["verify"].exact
    assert "verify: exact" in out and "right after pruner.step()" in out and "GroupNormPruner" in out


def test_sparse_training_bn_scale(capsys: pytest.CaptureFixture) -> None:
    results, out = run_example("sparse_training", capsys, "--pruner", "bn_scale", "--reg", "1e-2", "--steps", "20")
    assert results["verify"].exact
    assert "BNScalePruner, reg 0.01, 20 it" in out


def test_save_and_load(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    results, out = run_example("save_and_load", capsys, "--out-dir", str(tmp_path))
    assert out.count("outputs equal") == 3
    assert results["verify"].exact
    assert set(results["loaded_params"].values()) == {results["params"]} and results["params"] < 11_689_512
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {"pruned_model.pth", "pruned_state.pth", "state_dict.pth", "history.json"}


def test_low_level(capsys: pytest.CaptureFixture) -> None:
    results, out = run_example("low_level", capsys)
    assert results["group_members"] == [
        "bn1", "conv1", "layer1.0.bn2", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.bn2",
        "layer1.1.conv1", "layer1.1.conv2", "layer2.0.conv1", "layer2.0.downsample.0",
    ]
    assert all(r.exact for r in results["verify"])
    assert "idxs (3) = [2, 6, 9] (root)" in out  # group.details()
    assert "first conv now has 61 output channels" in out
    assert "part 1 verify: exact" in out and "part 2 verify: exact" in out


def test_latency_benchmark_smoke(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    bench = load_script(ROOT / "benchmarks" / "latency.py")
    argv = ["--quick", "--ratios", "0.5", "--input-size", "32", "--repeat", "1", "--warmup", "0",
            "--no-step", "--no-cuda", "--output", str(tmp_path / "results.md")]
    text = bench.main(argv)
    assert (tmp_path / "results.md").read_text() == text
    rows = [line for line in text.splitlines() if re.match(r"\| \d\.\d\d \|", line)]
    assert [r.split(" | ")[:3] for r in rows] == [["| 0.00", "-", "25.56"], ["| 0.50", "-", "6.92"], ["| 0.50", "8", "6.92"]]
    assert "CPU speed-up" in capsys.readouterr().out
    if importlib.util.find_spec("onnxruntime") is not None:  # table 1 on the exported files
        text = bench.main(argv[:-2] + ["--runtime", "onnxruntime"])
        assert "latency (CPU: the exported file in onnxruntime)" in text and "| 0.50 | 8 | 6.92 |" in text


def test_graph_build_benchmark_llama_on_meta_smoke() -> None:
    """The Llama-7B-shaped rows of ``benchmarks/graph_build.py``, at 2 layers: built and pruned on meta."""
    pytest.importorskip("transformers")
    bench = load_script(ROOT / "benchmarks" / "graph_build.py")
    nodes, groups, *seconds = bench.time_llama_prune(2)
    assert nodes > 0 and groups > 0 and all(s >= 0 for s in seconds)
    model, inputs = bench.meta_llama(2)
    assert model.model.layers[0].mlp.down_proj.in_features == 11008 and inputs["input_ids"].is_meta


def test_latency_benchmark_per_layer_smoke(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """``--per-layer`` on ResNet-18 at 32x32, one round: every setting timed, the per-layer table and JSON written."""
    pytest.importorskip("onnxruntime")  # the onnxruntime setting (the test extra has it)
    bench = load_script(ROOT / "benchmarks" / "latency.py")
    argv = ["--per-layer", "--models", "resnet18", "--sizes", "32", "--rounds", "1", "--wall-rounds", "1",
            "--json", str(tmp_path / "layers.json")]
    text = bench.main(argv)
    settings = [line.split(" | ")[0] for line in text.splitlines()
                if re.match(r"\| (plain|fold_bn|channels_last|onnxruntime)", line)]
    assert settings == ["| plain", "| fold_bn", "| channels_last", "| fold_bn+channels_last", "| onnxruntime"]
    assert "| layer1.0.conv1 | 64→64 ⇒ 32→32 |" in text and "excess by module class" in text
    assert "*onnxruntime, per node of the optimised graph" in text  # the exported file, profiled by onnxruntime
    assert "| /layer1/layer1.0/relu/Relu_output_0_nchwc | 64→64 ⇒ 32→32 |" in text  # conv1 + bn1 + relu, fused
    data = json.loads((tmp_path / "layers.json").read_text())
    (case,) = data["cases"]
    assert case["model"] == "resnet18" and case["macs"][0] > case["macs"][1] > 0
    before = case["layers"]["fold_bn+channels_last"]["before"]["layers"]
    assert not any(t["kind"] == "BatchNorm2d" for t in before)  # folded into the convs
    ort = case["layers"]["onnxruntime"]["after"]["layers"]
    assert {t["kind"] for t in ort} >= {"Conv", "Gemm"} and "onnxruntime" in case["settings"]
    assert "load average" in data["environment"] and "per-layer latency" in capsys.readouterr().out
