"""Calibration batches from files the tests write: image folders, text, .jsonl, Python loaders.

Each source is read into batches of the model's form and then run through a real model
(resnet18 at 32x32, a tiny Hugging Face Llama) or its data-aware criterion; each misfit is a
``CalibrationDataError`` raised before any calibration pass.
"""

from __future__ import annotations

import json

import pytest
import torch

import depgraph as tp
from depgraph.errors import CalibrationDataError
from depgraph.workflow import InputSpec, check_calibration, input_spec_for_checkpoint, load_calibration

from ._files import WORDS, corpus, write_images, write_jsonl, write_text, write_tiny_llama, write_tokenizer

torchvision = pytest.importorskip("torchvision")
pytest.importorskip("PIL")

RGB32 = InputSpec("image", (3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return write_tiny_llama(tmp_path_factory.mktemp("llama") / "ckpt")


def test_image_folder_is_resized_normalised_batched_and_calibrates_resnet(tmp_path) -> None:
    folder = write_images(tmp_path / "imgs", n=7, size=(40, 30))
    batches = load_calibration(folder, RGB32, num_samples=5, batch_size=2)
    assert [tuple(b.shape) for b in batches] == [(2, 3, 32, 32), (2, 3, 32, 32), (1, 3, 32, 32)]
    x = torch.cat(batches)
    # uint8 pixels / 255 then (x - 0.5) / 0.25: inside [-2, 2], not all one value
    assert x.min() >= -2.0 and x.max() <= 2.0 and x.std() > 0.3
    model = torchvision.models.resnet18(weights=None).eval()
    check_calibration(model, batches, RGB32)
    imp = tp.importance.ActivationWeightImportance().calibrate(model, batches)
    assert imp.stats.lookup(model.fc, torch.arange(512)).count > 0  # every sample reached the classifier


def test_grey_images_become_the_channels_the_model_takes(tmp_path) -> None:
    folder = write_images(tmp_path / "grey", n=3, mode="L")
    (batch,) = load_calibration(folder, RGB32)
    assert batch.shape == (3, 3, 32, 32)  # converted to RGB, as the model reads
    grey = load_calibration(folder, InputSpec("image", (1, 16, 16), key="pixel_values"))
    assert set(grey[0]) == {"pixel_values"} and grey[0]["pixel_values"].shape == (3, 1, 16, 16)


def test_text_file_and_jsonl_are_tokenised_in_windows_for_a_checkpoint(llama_dir, tmp_path) -> None:
    import transformers

    spec = input_spec_for_checkpoint(llama_dir, seq_len=16)
    assert spec.kind == "text" and spec.vocab_size == 64
    txt = load_calibration(write_text(tmp_path / "c.txt"), spec, num_samples=5, batch_size=4)
    assert [tuple(b["input_ids"].shape) for b in txt] == [(4, 16), (1, 16)]
    tok = transformers.AutoTokenizer.from_pretrained(llama_dir)
    assert txt[0]["input_ids"][0].tolist() == tok(corpus(400), add_special_tokens=False)["input_ids"][:16]
    js = load_calibration(write_jsonl(tmp_path / "d.jsonl"), spec, num_samples=3, batch_size=8)
    assert tuple(js[0]["input_ids"].shape) == (3, 16)
    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    check_calibration(model, txt + js, spec)


def test_text_windows_and_jsonl_documents_are_spread_over_the_whole_corpus(llama_dir, tmp_path) -> None:
    """A sorted corpus calibrates on all of it: the first windows or documents describe one corner."""
    import transformers

    spec = input_spec_for_checkpoint(llama_dir, seq_len=16)
    tok = transformers.AutoTokenizer.from_pretrained(llama_dir)
    ids = tok(corpus(400), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    (txt,) = load_calibration(write_text(tmp_path / "c.txt"), spec, num_samples=5, batch_size=8)
    n = len(ids) // 16
    assert txt["input_ids"].tolist() == [ids[16 * (i * n // 5):][:16] for i in range(5)]  # from start to end

    # 64 documents sorted by topic: one word each, WORDS[0] first, WORDS[15] last
    docs = [" ".join([WORDS[i // 4]] * 12) for i in range(64)]
    (tmp_path / "sorted.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (js,) = load_calibration(tmp_path / "sorted.jsonl", spec, num_samples=4, batch_size=8)
    topics = {tok.convert_ids_to_tokens(t) for t in js["input_ids"].flatten().tolist()} - {tok.eos_token}
    first_four = set(WORDS[:4])
    assert topics & first_four and topics - set(WORDS[:8])  # both halves of the sorted file, not its head
    assert len(topics) >= 4


def test_python_loaders_pairs_and_datasets(tmp_path, monkeypatch) -> None:
    pairs = [(torch.randn(4, 3, 32, 32), torch.zeros(4)) for _ in range(5)]
    batches = load_calibration(pairs, RGB32, num_samples=8)
    assert len(batches) == 2 and all(b.shape == (4, 3, 32, 32) for b in batches)  # labels dropped, 8 samples
    dataset = torch.utils.data.TensorDataset(torch.randn(10, 3, 32, 32), torch.zeros(10))
    assert [b.shape[0] for b in load_calibration(dataset, RGB32, num_samples=10, batch_size=4)] == [4, 4, 2]
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "def make():\n"
        "    return [torch.randn(2, 3, 32, 32) for _ in range(3)]\n")
    by_file = load_calibration(f"{tmp_path / 'mydata.py'}:make", RGB32)
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module = load_calibration("mydata:make", RGB32)
    assert len(by_file) == len(by_module) == 3


def test_data_that_does_not_fit_is_refused_before_calibration(llama_dir, tmp_path) -> None:
    images = write_images(tmp_path / "imgs", n=2)
    text = write_text(tmp_path / "c.txt")
    spec = input_spec_for_checkpoint(llama_dir)
    with pytest.raises(CalibrationDataError, match=r"holds images, but the model takes token ids"):
        load_calibration(images, spec)
    with pytest.raises(CalibrationDataError, match=r"is text, but the model takes images \(3, 32, 32\)"):
        load_calibration(text, RGB32)
    with pytest.raises(CalibrationDataError, match=r"is text, but no tokenizer goes with the model"):
        load_calibration(text, InputSpec("text", (8,), key="input_ids"))
    bare = write_tiny_llama(tmp_path / "no_tok", tokenizer=False)
    with pytest.raises(CalibrationDataError, match=r"holds no tokenizer transformers can load"):
        load_calibration(text, input_spec_for_checkpoint(bare))
    with pytest.raises(CalibrationDataError, match=r"does not exist"):
        load_calibration(tmp_path / "missing.txt", RGB32)
    (tmp_path / "texts").mkdir()
    write_text(tmp_path / "texts" / "a.txt")
    with pytest.raises(CalibrationDataError, match=r"holds no image .*; it holds text \(a.txt\): give the file"):
        load_calibration(tmp_path / "texts", RGB32)
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(CalibrationDataError, match=r"bad.jsonl:1 has no string field 'text' \(it has \['body'\]\)"):
        load_calibration(tmp_path / "bad.jsonl", spec)
    with pytest.raises(CalibrationDataError, match=r"cannot import 'no_such_module_xyz'"):
        load_calibration("no_such_module_xyz:data", RGB32)
    model = torchvision.models.resnet18(weights=None).eval()
    with pytest.raises(CalibrationDataError, match=r"batch 0 has 1 channels; the model takes images \(3, 32, 32\)"):
        check_calibration(model, [torch.randn(2, 1, 32, 32)], RGB32)
    vocab = write_tokenizer(tmp_path / "tok")
    wide = InputSpec("text", (8,), key="input_ids", vocab_size=vocab - 5)
    with pytest.raises(CalibrationDataError, match=r"outside the vocabulary \(0 to \d+\): another tokenizer\?"):
        check_calibration(model, load_calibration(text, InputSpec("text", (8,), key="input_ids",
                                                                  tokenizer=str(tmp_path / "tok"))), wide)
    fc_only = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    with pytest.raises(CalibrationDataError, match=r"cannot run on the calibration data \(RuntimeError"):
        check_calibration(fc_only, [torch.randn(2, 3, 16, 16)], RGB32)
