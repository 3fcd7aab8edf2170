"""``prune_model`` end to end: each source kind -> each target kind -> save -> reload -> same outputs.

Vision models come back with ``tp.load`` into the unpruned definition; Hugging Face checkpoints
with ``from_pretrained`` (once in a fresh process where importing depgraph is impossible).
Every file is written by the test; every refusal happens before the long work, which the tests
check by making the long steps fail if they are reached.

Markers:
    slow  the latency target (timed forward passes in every search trial) and the least-squares
          recipe named on the Llama (the default run covers it as the sized language-model default).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import depgraph as tp
from depgraph.errors import CalibrationDataError, OptionError, OutputError, TargetUnreachableError
from depgraph.workflow import load_source, prune_model
from depgraph.workflow import prune as prune_module

from ._files import write_images, write_text, write_tiny_llama

torchvision = pytest.importorskip("torchvision")


def _weights(tmp_path, name: str = "squeezenet1_1") -> str:
    torch.manual_seed(5)
    model = torchvision.models.get_model(name, weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def _same(a: torch.nn.Module, b: torch.nn.Module, x) -> None:
    with torch.no_grad():
        ya, yb = a.eval()(**x) if isinstance(x, dict) else a.eval()(x), b.eval()(**x) if isinstance(x, dict) else b.eval()(x)
    ya, yb = getattr(ya, "logits", ya), getattr(yb, "logits", yb)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)


@pytest.mark.parametrize(("metric", "round_to"), [("macs", None), ("params", 4)])
def test_torchvision_weights_file_to_target_then_tp_load(tmp_path, metric, round_to) -> None:
    source = load_source("squeezenet1_1", _weights(tmp_path), input_size=32)
    out = tmp_path / "pruned.pth"
    result = prune_model(source, target=f"{metric}=0.6", output=out, round_to=round_to, latency=False)
    rep = result.report
    kept = getattr(rep.after, metric) / getattr(rep.before, metric)
    assert kept <= 0.6 and rep.result.startswith(f"{metric} kept {kept:.3f} (target 0.6")
    if round_to is None:
        assert kept >= 0.6 * 0.95  # close: channels come off one at a time
    else:  # squeezenet's 16-channel squeezes move in steps of 4: the report says how far that left it
        assert all(r.out_after % 4 == 0 for r in rep.layers if r.changed and r.out_after != r.out_before)
    assert rep.verify.startswith("verify: exact")
    assert rep.how_to_load.endswith(f"depgraph.load(torchvision.models.get_model('squeezenet1_1', weights=None), "
                                    f"'{out}')")
    torch.load(out, weights_only=True)  # plain data
    reloaded = tp.load(torchvision.models.get_model("squeezenet1_1", weights=None), out)
    _same(reloaded, result.model, torch.randn(2, 3, 32, 32))
    # the source model is untouched
    assert source.model.features[0].out_channels == 64


def test_timm_global_params_target_with_calibration_images(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), tmp_path / "w.pth")
    source = load_source("resnet10t", tmp_path / "w.pth", input_size=32)
    images = write_images(tmp_path / "imgs", n=6, size=(48, 40))
    result = prune_model(source, target="params=0.5", calib=images, global_pruning=True, output=tmp_path / "p.pth",
                         latency=False)
    rep = result.report
    assert rep.criterion == "activation_weight, global" and "default for vision" in rep.why
    assert rep.calibration == f"6 samples from {images}"
    assert rep.after.params <= 0.5 * rep.before.params
    widths = {r.out_after / r.out_before for r in rep.layers if r.changed}
    assert len(widths) > 2  # a global ranking takes different shares from different layers
    reloaded = tp.load(timm.create_model("resnet10t", pretrained=False), tmp_path / "p.pth")
    _same(reloaded, result.model, torch.randn(2, 3, 32, 32))


def test_pickled_module_with_taylor_and_a_python_loader(tmp_path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(32, 10))
    torch.save(net, tmp_path / "net.pt")
    source = load_source(tmp_path / "net.pt", trust_pickle=True, input_size=16)
    loader = [(torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))) for _ in range(3)]
    result = prune_model(source, target="macs=0.5", calib=loader, importance="taylor", output=tmp_path / "p.pth",
                         latency=False)
    assert result.report.criterion == "taylor, per group" and result.report.verify.startswith("verify: exact")
    assert result.report.after.macs <= 0.5 * result.report.before.macs
    assert "depgraph.load(torch.load(" in result.report.how_to_load
    reloaded = tp.load(torch.load(tmp_path / "net.pt", weights_only=False), tmp_path / "p.pth")
    _same(reloaded, result.model, torch.randn(2, 3, 16, 16))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return write_tiny_llama(tmp_path_factory.mktemp("llama") / "ckpt")


_RELOAD = textwrap.dedent("""
    import importlib.abc, json, sys
    class NoDepgraph(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "depgraph":
                raise ImportError("depgraph must not be needed to load the pruned checkpoint")
    sys.meta_path.insert(0, NoDepgraph())
    import torch, transformers
    folder, ids, expected = sys.argv[1], sys.argv[2], sys.argv[3]
    model = getattr(transformers, json.load(open(folder + "/config.json"))["architectures"][0])
    model = model.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.load(ids)).logits
    torch.testing.assert_close(logits, torch.load(expected), rtol=0, atol=0)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    print("ok", model.config.intermediate_size, tok("the cat")["input_ids"], "depgraph" in sys.modules)
""")


@pytest.mark.parametrize("kwargs", [
    dict(target="params=0.8"),
    pytest.param(dict(target="macs=0.7", importance="reconstruction"), marks=pytest.mark.slow),
])
def test_hf_llama_folder_to_target_reloads_without_depgraph(llama_dir, tmp_path, kwargs) -> None:
    source = load_source(llama_dir, seq_len=16)
    corpus = write_text(tmp_path / "corpus.txt")
    out = tmp_path / "pruned"
    result = prune_model(source, calib=corpus, output=out, latency=False, **kwargs)
    rep = result.report
    metric, kept = kwargs["target"].split("=")
    assert getattr(rep.after, metric) <= float(kept) * getattr(rep.before, metric)
    # named, or the language-model default: this Llama's Gram matrices fit any machine's budget
    assert rep.criterion.startswith("reconstruction + lstsq")
    assert rep.why == "chosen" if "importance" in kwargs else rep.why.startswith("language-model default")
    assert "compensation changes the kept weights" in rep.verify and rep.verified
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"} <= {
        p.name for p in out.iterdir()}
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        expected = result.model(input_ids=ids).logits
    torch.save(ids, tmp_path / "ids.pt")
    torch.save(expected, tmp_path / "expected.pt")
    run = subprocess.run([sys.executable, "-c", _RELOAD, str(out), str(tmp_path / "ids.pt"),
                          str(tmp_path / "expected.pt")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    width = result.model.model.layers[0].mlp.down_proj.in_features
    assert run.stdout.split()[:2] == ["ok", str(width)] and run.stdout.split()[-1] == "False"
    assert width < 64


@pytest.mark.parametrize("head_ratio", [0.0, 0.5])
def test_blockwise_llama_keeps_the_one_pass_widths_and_reloads(tmp_path, head_ratio) -> None:
    folder = write_tiny_llama(tmp_path / "llama", num_hidden_layers=3)
    source = load_source(folder, seq_len=16)
    before = {k: v.clone() for k, v in source.model.state_dict().items()}
    corpus = write_text(tmp_path / "corpus.txt", 2000)
    kwargs = dict(target="params=0.8", head_ratio=head_ratio, calib=corpus, latency=False)
    one = prune_model(source, importance="reconstruction", **kwargs)
    out = tmp_path / "pruned"
    blk = prune_model(source, blockwise=True, output=out, **kwargs)
    rep = blk.report
    # heads go per layer, inside a block; the head-dim groups a shared rotary table couples stay whole
    assert not rep.notes
    assert {layer.self_attn.q_proj.out_features for layer in blk.model.model.layers} == {32 - int(32 * head_ratio)}
    assert rep.criterion == "reconstruction + lstsq compensation, per group, block by block"
    assert rep.why.startswith("block by block") and rep.verified
    # the search runs on a stand-in with the refit's biases: the same ratio, widths and parameter count
    assert rep.result == one.report.result and rep.after.params == one.report.after.params
    assert [(r.name, r.in_after, r.out_after) for r in rep.layers] == \
        [(r.name, r.in_after, r.out_after) for r in one.report.layers]
    assert blk.model.model.layers[0].mlp.down_proj.in_features < 64
    # block 0 is measured as in one pass, the later blocks on the pruned blocks' outputs
    assert torch.equal(blk.model.model.layers[0].mlp.down_proj.weight, one.model.model.layers[0].mlp.down_proj.weight)
    assert not torch.allclose(blk.model.model.layers[2].mlp.down_proj.weight,
                              one.model.model.layers[2].mlp.down_proj.weight)
    assert all(torch.equal(v, source.model.state_dict()[k]) for k, v in before.items())  # the source is untouched
    import transformers

    reloaded = transformers.LlamaForCausalLM.from_pretrained(out)
    _same(reloaded, blk.model, {"input_ids": torch.randint(0, 64, (2, 12))})


def test_blockwise_timm_vit_prunes_inside_blocks_and_keeps_the_residual_stream(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8).state_dict(),
               tmp_path / "w.pth")
    images = write_images(tmp_path / "imgs", n=6, size=(48, 40))
    # timm names need the architecture's own arguments: a pickled module carries them
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8)
    model.load_state_dict(torch.load(tmp_path / "w.pth"))
    torch.save(model, tmp_path / "vit.pt")
    source = load_source(str(tmp_path / "vit.pt"), trust_pickle=True, input_size=32)
    one = prune_model(source, ratio=0.25, importance="reconstruction", calib=images, latency=False)
    blk = prune_model(source, ratio=0.25, blockwise=True, calib=images, latency=False)
    assert blk.report.verified and blk.report.criterion.endswith("block by block")
    fc1 = [b.mlp.fc1.out_features for b in blk.model.blocks]
    assert fc1 == [b.mlp.fc1.out_features for b in one.model.blocks] == [576] * 12
    # the residual stream runs through every block: one pass prunes it, block by block keeps it and says so
    assert one.model.patch_embed.proj.out_channels == 144 and blk.model.patch_embed.proj.out_channels == 192
    assert any("1 group(s) across blocks (e.g. the residual stream) kept whole" in n for n in blk.report.notes)
    assert blk.model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    assert not torch.equal(blk.model.blocks[5].mlp.fc2.weight, one.model.blocks[5].mlp.fc2.weight)


def test_hf_vit_classifier_and_heads(tmp_path) -> None:
    pytest.importorskip("transformers")
    from tests.integrations._hf import FAMILIES

    FAMILIES["vit"].build().save_pretrained(tmp_path / "vit")
    source = load_source(tmp_path / "vit")
    result = prune_model(source, ratio=0.5, head_ratio=0.5, output=tmp_path / "out", latency=False,
                         report=tmp_path / "r.json")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (cfg["intermediate_size"], cfg["num_attention_heads"], len(cfg["id2label"])) == (24, 2, 5)
    import transformers

    reloaded = transformers.ViTForImageClassification.from_pretrained(tmp_path / "out")
    _same(reloaded, result.model, {"pixel_values": torch.randn(2, 3, 32, 32)})
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["family"] == "hf" and data["task"] == "ViTForImageClassification" and data["layers_changed"] > 0


def test_refusals_come_before_the_long_work(llama_dir, tmp_path, monkeypatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the long work started before the refusal")

    monkeypatch.setattr(prune_module, "build_scoring", never)
    vision = load_source("squeezenet1_1", input_size=32)
    with pytest.raises(TargetUnreachableError, match=r"target params=0.01 cannot be met: pruning at ratio 0.95"):
        prune_model(vision, target="params=0.01", calib=[torch.randn(2, 3, 32, 32)], latency=False)
    with pytest.raises(CalibrationDataError, match=r"is text, but the model takes images \(3, 32, 32\)"):
        prune_model(vision, ratio=0.3, calib=write_text(tmp_path / "c.txt"))
    with pytest.raises(OutputError, match=r"the folder '.*missing' does not exist"):
        prune_model(vision, ratio=0.3, output=tmp_path / "missing" / "p.pth")
    with pytest.raises(OutputError, match=r"is a folder; give a file path"):
        prune_model(vision, ratio=0.3, output=tmp_path)
    with pytest.raises(OutputError, match=r"the suffix says the format; use one of .md, .json, .png"):
        prune_model(vision, ratio=0.3, report=tmp_path / "r.html")
    with pytest.raises(OptionError, match=r"importance 'fluctuation' is calibrated on data: give calibration data"):
        prune_model(vision, ratio=0.3, importance="fluctuation")
    with pytest.raises(OptionError, match=r"give a pruning ratio or a target"):
        prune_model(vision, ratio=0.3, target="macs=0.5")
    with pytest.raises(OptionError, match=r"write METRIC=FRACTION_KEPT"):
        prune_model(vision, target="macs")
    with pytest.raises(OptionError, match=r"unknown target 'flops'"):
        prune_model(vision, target="flops=0.5")
    with pytest.raises(OptionError, match=r"ignore names no layer of the model \(SqueezeNet\): 'features.99'"):
        prune_model(vision, ratio=0.3, ignore=["features.99"])
    with pytest.raises(OptionError, match=r"block-by-block pruning is calibrated on data"):
        prune_model(vision, ratio=0.3, blockwise=True)
    with pytest.raises(OptionError, match=r"block-by-block pruning is reconstruction \+ lstsq compensation, per "
                                          r"group; it cannot use importance 'fluctuation', global pruning"):
        prune_model(vision, ratio=0.3, blockwise=True, importance="fluctuation", global_pruning=True,
                    calib=[torch.randn(2, 3, 32, 32)])
    llama = load_source(llama_dir)
    with pytest.raises(OptionError, match=r"the hidden size runs through every block"):
        prune_model(llama, ratio=0.3, blockwise=True, prune_hidden=True, calib=write_text(tmp_path / "t.txt"))
    with pytest.raises(OptionError, match=r"global pruning gives each layer its own width, which a Hugging Face"):
        prune_model(llama, ratio=0.3, global_pruning=True, output=tmp_path / "o")
    with pytest.raises(OutputError, match=r"is the source checkpoint"):
        prune_model(llama, ratio=0.3, output=llama_dir)
    with pytest.raises(CalibrationDataError, match=r"holds images, but the model takes token ids"):
        prune_model(llama, ratio=0.3, calib=write_images(tmp_path / "imgs", n=2))


def test_reports_in_markdown_and_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    source = load_source("squeezenet1_1", _weights(tmp_path), input_size=32)
    result = prune_model(source, ratio=0.4, report=tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "- criterion: l2, per group (default without calibration data)" in text
    width = result.model.features[0].out_channels
    assert width < 64 and f"| features.0 | Conv2d | 3 | 3 | 64 | {width} |" in text and "| latency (cpu) |" in text
    result.report.save(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_latency_target_is_measured_on_the_device(tmp_path) -> None:
    source = load_source("squeezenet1_1", _weights(tmp_path), input_size=96)
    result = prune_model(source, target="latency=0.8", output=tmp_path / "p.pth")
    rep = result.report
    assert rep.result.startswith("latency kept") and "(target 0.8" in rep.result
    kept = float(rep.result.split()[2])
    assert kept <= 0.8
    assert rep.before.latency_ms is not None and rep.after.latency_ms is not None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "nope.pth"], r"SourceError: weights file 'nope.pth' does not exist"),
        (["--target", "params=0.01", "--no-latency"], r"TargetUnreachableError: target params=0.01 cannot be met"),
        (["--ratio", "0.3", "--calib", "corpus.txt"], r"CalibrationDataError: corpus.txt is text, but the model takes"),
        (["--ratio", "0.3", "--importance", "fluctuation"], r"OptionError: importance 'fluctuation' is calibrated"),
        (["--ratio", "0.3", "--report", "r.txt"], r"OutputError: report r.txt: the suffix says the format"),
    ],
)
def test_cli_refusals_exit_2_before_the_long_work(tmp_path, monkeypatch, capsys, extra, message) -> None:
    from depgraph.cli import main

    monkeypatch.chdir(tmp_path)
    write_text(tmp_path / "corpus.txt")
    monkeypatch.setattr(prune_module, "build_scoring", lambda *a, **k: pytest.fail("scoring started"))
    goal = [] if any(a in extra for a in ("--ratio", "--target")) else ["--ratio", "0.3"]
    argv = ["prune", "squeezenet1_1", "--input-size", "32", "--plain", "--output", "-", *goal, *extra]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)


def test_per_layer_widths_saved_as_depgraph_raise_no_config_warning(llama_dir, tmp_path) -> None:
    """A layer kept whole gives per-layer widths no Llama config holds: the depgraph format stores them, so
    the pruning passes' warning about the config (meant for callers of the pruner) is not shown here."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = prune_model(load_source(llama_dir, seq_len=16), target="params=0.8", ignore=["model.layers.0.mlp"],
                             save_format="depgraph", output=tmp_path / "p.pth", latency=False)
    assert not [w for w in seen if "config cannot describe" in str(w.message)], [str(w.message) for w in seen]
    widths = {m.mlp.down_proj.in_features for m in result.model.model.layers}
    assert len(widths) == 2 and 64 in widths  # layer 0 whole, layer 1 pruned
    reloaded = tp.load(_causal_lm(llama_dir), tmp_path / "p.pth")
    assert [m.mlp.down_proj.in_features for m in reloaded.model.layers] == [
        m.mlp.down_proj.in_features for m in result.model.model.layers]


def _causal_lm(folder):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder)
