"""``load_source``: every kind of model a user has, from files the tests write, and each refusal.

torchvision/timm names with a weights file (state dict, checkpoint dict, depgraph pruned file,
whole pickled model), a Hugging Face folder (the class its config names) and a hub id in a local
cache built by the test, a module saved whole with ``torch.save``. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import depgraph as tp
from depgraph.errors import SourceError
from depgraph.workflow import load_source

from ._files import write_tiny_llama

torchvision = pytest.importorskip("torchvision")


def _trained_like(name: str = "squeezenet1_1") -> torch.nn.Module:
    torch.manual_seed(3)
    model = torchvision.models.get_model(name, weights=None).eval()
    with torch.no_grad():  # weights that differ from the builder's seed-0 init, so loading them shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


@pytest.mark.parametrize("form", ["state_dict", "checkpoint_dict", "ddp_prefixed", "depgraph_file", "whole_model"])
def test_vision_weights_file_forms_load_into_the_named_architecture(tmp_path, form) -> None:
    model = _trained_like()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "w.pth"
    if form == "state_dict":
        torch.save(model.state_dict(), path)
    elif form == "checkpoint_dict":
        torch.save({"epoch": 3, "state_dict": model.state_dict()}, path)
    elif form == "ddp_prefixed":
        torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    elif form == "depgraph_file":
        tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.25,
                             ignored_layers=[model.classifier[1]]).step()
        tp.save(model, path)
    else:
        torch.save(model, path)
    trust = form == "whole_model"
    if trust:
        with pytest.raises(SourceError, match=r"holds pickled objects .* pass trust_pickle=True \(--trust-pickle\)"):
            load_source("squeezenet1_1", path)
    source = load_source("squeezenet1_1", path, trust_pickle=trust, input_size=32, batch_size=2)
    model2, family, example = source
    assert family == "torchvision" and example.shape == (2, 3, 32, 32)
    assert source.keep == [model2.classifier[1]]  # the classifier conv is never pruned
    assert source.builder == "torchvision.models.get_model('squeezenet1_1', weights=None)"
    with torch.no_grad():
        torch.testing.assert_close(model2(x), model.eval()(x), rtol=0, atol=0)


def test_weights_trained_for_other_classes_size_the_classifier(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    source = load_source("resnet10t", tmp_path / "w.pth", input_size=32)
    assert source.builder == "timm.create_model('resnet10t', pretrained=False, num_classes=10)"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(source.model(x), model(x), rtol=0, atol=0)
    vision = torchvision.models.resnet18(num_classes=7)
    torch.save({"state_dict": vision.state_dict()}, tmp_path / "r18.pth")
    assert load_source("resnet18", tmp_path / "r18.pth").builder == \
        "torchvision.models.get_model('resnet18', weights=None, num_classes=7)"
    # weights of another model are still refused, every difference listed
    sd = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("layer4.1")}
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.raises(SourceError, match=r"does not fit ResNet .*\n  missing \(\d+\): layer4.1.conv1.weight"):
        load_source("resnet18", tmp_path / "cut.pth")
    with pytest.raises(SourceError, match=r"pretrained weights of resnet10t are not in the local Hugging Face cache"):
        load_source("resnet10t", "pretrained")


def test_pickled_module_needs_trust_and_its_input_is_guessed(tmp_path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4))
    torch.save(net, tmp_path / "net.pt")
    with pytest.raises(SourceError, match=r"unpickling runs code from the file"):
        load_source(tmp_path / "net.pt")
    source = load_source(tmp_path / "net.pt", trust_pickle=True, input_size=16)
    assert source.family == "module" and source.example_inputs.shape == (1, 1, 16, 16)
    assert source.keep == [source.model[4]]
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(SourceError, match=r"holds a state dict \(weights without the architecture\), not a whole model: give the model's name and this file"):
        load_source(tmp_path / "sd.pt")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return write_tiny_llama(tmp_path_factory.mktemp("llama") / "ckpt")


def test_hf_folder_and_cached_hub_id(llama_dir, tmp_path, monkeypatch) -> None:
    source = load_source(llama_dir, seq_len=8)
    assert (source.family, source.task) == ("hf", "LlamaForCausalLM")
    assert source.example_inputs["input_ids"].shape == (1, 8) and source.spec.tokenizer == str(llama_dir)
    assert source.model.get_input_embeddings() in source.keep and source.model.lm_head in source.keep
    # a hub cache laid out as huggingface_hub writes it, with this checkpoint as its only snapshot
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in llama_dir.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = load_source("tiny-org/tiny-llama")
    assert cached.task == "LlamaForCausalLM" and cached.folder == snap
    with pytest.raises(SourceError, match=r"not a Hugging Face hub id in the local cache \(nothing is downloaded\)"):
        load_source("tiny-org/not-cached")
    with pytest.raises(SourceError, match=r"is a folder, which holds its own weights"):
        load_source(llama_dir, weights="x.pth")


@pytest.mark.parametrize(("family", "task", "key"), [("bert", "BertForMaskedLM", "input_ids"),
                                                     ("vit", "ViTForImageClassification", "pixel_values")])
def test_hf_class_comes_from_the_config(tmp_path, family, task, key) -> None:
    from tests.integrations._hf import FAMILIES

    FAMILIES[family].build().save_pretrained(tmp_path / family)
    source = load_source(tmp_path / family)
    assert source.task == task and set(source.example_inputs) == {key}
    if key == "pixel_values":
        assert source.spec.shape == (3, 32, 32) and source.model.classifier in source.keep


def test_unknown_names_and_missing_files(tmp_path) -> None:
    with pytest.raises(SourceError, match=r"unknown model 'resnet5'.*\ndid you mean: resnet50"):
        load_source("resnet5")
    with pytest.raises(SourceError, match=r"weights file '.*nope.pth' does not exist"):
        load_source("resnet18", tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_text("not a torch file")
    with pytest.raises(SourceError, match=r"cannot read '.*junk.pth' as a torch file"):
        load_source("resnet18", tmp_path / "junk.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"folder without config.json"):
        load_source(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForThings"]}))
    with pytest.raises(SourceError, match=r"names the class 'NoSuchModelForThings'"):
        load_source(tmp_path / "odd")


# -- the library's own weights file, from the local caches only (written here; nothing is downloaded) -------
def test_torchvision_pretrained_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(SourceError, match=r"pretrained weights of squeezenet1_1 are not in the local cache "
                                          r"\(.*torch/hub/checkpoints/squeezenet1_1-\w+\.pth\); nothing is downloaded"):
        load_source("squeezenet1_1", "pretrained", input_size=32)
    weights = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT
    file = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    file.parent.mkdir(parents=True)
    trained = _trained_like()
    torch.save(trained.state_dict(), file)
    source = load_source("squeezenet1_1", "pretrained", input_size=32)
    assert source.weights == f"pretrained ({file})"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(source.model(x), trained(x), rtol=0, atol=0)


def _hf_cache_file(cache: Path, repo_id: str, filename: str) -> Path:
    """Where ``huggingface_hub`` keeps ``filename`` of ``repo_id`` at ``main`` (refs/main -> snapshots/<commit>)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    file = repo / "snapshots" / commit / filename
    file.parent.mkdir(parents=True)
    return file


def test_timm_pretrained_weights_come_from_the_hf_cache_set_by_hf_home(tmp_path, monkeypatch) -> None:
    timm = pytest.importorskip("timm")
    safetensors = pytest.importorskip("safetensors.torch")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # read at each call, not when huggingface_hub was imported
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(SourceError, match=r"pretrained weights of resnet10t are not in the local Hugging Face cache "
                                          r"\(timm/resnet10t\.\w+ in the Hugging Face cache, .*resnet10t_\w+-\w+\.pth\)"):
        load_source("resnet10t", "pretrained", input_size=32)
    torch.manual_seed(5)
    trained = timm.create_model("resnet10t", pretrained=False).eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    hub_id = trained.pretrained_cfg["hf_hub_id"]
    file = _hf_cache_file(tmp_path / "hf" / "hub", hub_id, "model.safetensors")
    safetensors.save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, file)
    source = load_source("resnet10t", "pretrained", input_size=32)
    assert source.weights == f"pretrained ({file})"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(source.model(x), trained(x), rtol=0, atol=0)


def test_timm_pretrained_weights_from_the_torch_hub_cache_by_their_url(tmp_path, monkeypatch) -> None:
    timm = pytest.importorskip("timm")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    trained = timm.create_model("resnet10t", pretrained=False).eval()
    with torch.no_grad():
        trained.fc.bias.add_(1.0)
    file = tmp_path / "torch" / "hub" / "checkpoints" / trained.pretrained_cfg["url"].rsplit("/", 1)[-1]
    file.parent.mkdir(parents=True)
    torch.save(trained.state_dict(), file)
    source = load_source("resnet10t", "pretrained", input_size=32)
    assert source.weights == f"pretrained ({file})"
    torch.testing.assert_close(source.model.fc.bias, trained.fc.bias, rtol=0, atol=0)
