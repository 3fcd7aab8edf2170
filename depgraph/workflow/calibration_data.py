"""Calibration batches from the user's own data: an image folder, a text file, a ``.jsonl``, or Python.

    load_calibration("photos/", spec)           images evenly spread over the sorted files (every class
                                                folder in proportion), in a fixed shuffled order, RGB/L,
                                                resized to (H, W), normalised
    load_calibration("corpus.txt", spec)        tokenised with spec.tokenizer, cut in windows of T tokens,
                                                the windows evenly spread over the whole file
    load_calibration("docs.jsonl", spec)        the "text" field of each line, documents evenly spread
                                                over the file, joined by EOS, cut as a text file
    load_calibration("my_pkg.data:loader", spec)  an attribute of a module (called if callable)
    load_calibration(my_loader, spec)           an iterable of batches (its first ones), or a map-style
                                                Dataset (samples evenly spread over its indices, shuffled)

Every source gives a list of batches in the form the model is called with
(``spec.wrap``: ``{"input_ids": ids}`` for a Hugging Face LM, a bare tensor for
a torchvision model), at most ``num_samples`` samples in all.
:func:`check_calibration` then refuses data that cannot fit the model (wrong
channel count, ids outside the vocabulary, a forward that fails on one sample)
before any calibration pass runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn

from ..errors import CalibrationDataError
from .images import IMAGE_SUFFIXES, check_image_spec, list_images, read_image
from .inputs import InputSpec

__all__ = ["load_calibration", "check_calibration", "IMAGE_SUFFIXES", "TEXT_SUFFIXES"]

T = TypeVar("T")
TEXT_SUFFIXES = (".txt", ".text", ".md")


def load_calibration(
    data: Any,
    spec: InputSpec,
    *,
    num_samples: int = 32,
    batch_size: int = 8,
    seq_len: int | None = None,
    text_field: str = "text",
) -> list[Any]:
    """Read calibration data into batches ``spec`` says the model takes.

    Args:
        data: a folder of images, a text file (``.txt``), a ``.jsonl`` file, ``"module:attr"`` /
            ``"path/file.py:attr"`` naming a dataset, loader or a function returning one, or such an
            object itself (an iterable of batches, or a map-style ``torch.utils.data.Dataset`` of
            samples). Items may be tensors, dicts of keyword inputs, or ``(inputs, labels)`` pairs.
        spec: what the model reads (from :func:`~depgraph.workflow.load_source`).
        num_samples: the most samples (images, token windows) kept in all.
        batch_size: samples per batch for files and map-style datasets.
        seq_len: tokens per text window (default: ``spec.shape[0]``).
        text_field: the key holding the text in each ``.jsonl`` line.

    Returns:
        A list of batches, each ready for ``model(**batch)`` / ``model(batch)``.

    Raises:
        CalibrationDataError: the path does not exist, holds no usable samples, is of a kind the model
            cannot read (images for a language model, text without a tokenizer), or a named Python
            object cannot be imported.

    Example:
        >>> batches = load_calibration("val_images/", InputSpec("image", (3, 224, 224)), num_samples=64)
    """
    if num_samples < 1 or batch_size < 1:
        raise CalibrationDataError(f"need num_samples >= 1 and batch_size >= 1, got {num_samples}, {batch_size}")
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir():
            return _image_folder(path, spec, num_samples, batch_size)
        if path.is_file():
            if path.suffix.lower() == ".jsonl":
                return _text(_jsonl_texts(path, text_field), path, spec, num_samples, batch_size, seq_len)
            if path.suffix.lower() in IMAGE_SUFFIXES:
                return _images([path], path, spec, num_samples, batch_size)
            return _text([_read_text(path)], path, spec, num_samples, batch_size, seq_len)
        if isinstance(data, str) and ":" in data and not path.exists():
            return _python(_import_object(data), spec, num_samples, batch_size)
        raise CalibrationDataError(f"calibration data {str(data)!r} does not exist (give an image folder, a text "
                                   "file, a .jsonl file or 'module:attribute' naming a dataset or loader)")
    return _python(data, spec, num_samples, batch_size)


# -- images -----------------------------------------------------------------------------------------
def _image_folder(folder: Path, spec: InputSpec, num_samples: int, batch_size: int) -> list[Any]:
    return _images(list_images(folder), folder, spec, num_samples, batch_size)


def _images(files: list[Path], where: Path, spec: InputSpec, num_samples: int, batch_size: int) -> list[Any]:
    mode = check_image_spec(spec, where)
    x = torch.stack([read_image(f, spec, mode) for f in mixed(spread(files, num_samples))])  # (N, C, H, W)
    return [spec.wrap(chunk) for chunk in x.split(batch_size)]


def spread(items: Sequence[T], count: int) -> list[T]:
    """``count`` of ``items``, evenly spaced over the whole sequence (all of them when fewer).

    The first ``count`` files of a class-per-folder tree (or samples of a dataset sorted by
    class, as torchvision's ``ImageFolder`` is) are all of its first class, whose statistics
    (activations, BatchNorm means) describe one class, not the data; evenly spaced picks take
    every class in proportion to its size, and the same samples on every run.
    """
    if count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def mixed(items: list[T]) -> list[T]:
    """``items`` in a fixed pseudo-random order (seed 0), so that each batch mixes the classes.

    Batches of one class each would make anything measured per batch (a BatchNorm layer in
    training mode, a per-batch loss) describe that class instead of the data.
    """
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
    return [items[i] for i in order]


# -- text -------------------------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CalibrationDataError(f"{path} is not UTF-8 text (for images give their folder)") from None


def _jsonl_texts(path: Path, field: str) -> list[str]:
    texts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CalibrationDataError(f"{path}:{n} is not JSON: {e}") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            keys = list(record) if isinstance(record, dict) else type(record).__name__
            raise CalibrationDataError(f"{path}:{n} has no string field {field!r} (it has {keys}); "
                                       "name the field holding the text")
        texts.append(record[field])
    return texts


def _tokenizer(spec: InputSpec, where: Path) -> Any:
    if spec.tokenizer is not None and not isinstance(spec.tokenizer, (str, Path)):
        return spec.tokenizer
    folder = spec.tokenizer
    if folder is None:
        raise CalibrationDataError(f"{where} is text, but no tokenizer goes with the model: save one next to "
                                   "the checkpoint (tokenizer.save_pretrained(folder)) or pass token ids in Python")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CalibrationDataError(f"{where} is text, but {folder} holds no tokenizer transformers can load "
                                   f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); save one with "
                                   "tokenizer.save_pretrained(folder)") from None


def _text(texts: list[str], where: Path, spec: InputSpec, num_samples: int, batch_size: int,
          seq_len: int | None) -> list[Any]:
    if spec.kind != "text":
        raise CalibrationDataError(f"{where} is text, but the model takes {spec.describe()}: "
                                   "give calibration data of that kind")
    tokenizer = _tokenizer(spec, where)
    length = seq_len or (spec.shape[0] if spec.shape else 128)
    ids = _token_stream(tokenizer, texts, length * num_samples)
    if len(ids) < 2:
        raise CalibrationDataError(f"{where} holds no text to calibrate on")
    length = min(length, len(ids))
    rows = torch.tensor(ids[: length * (len(ids) // length)]).view(-1, length)
    windows = rows[spread(range(len(rows)), num_samples)]
    return [spec.wrap(chunk) for chunk in windows.split(batch_size)]


def _token_stream(tokenizer: Any, texts: Sequence[str], tokens: int) -> list[int]:
    """Token ids of documents evenly spread over ``texts``, in corpus order, joined by EOS.

    Why spread: corpora are often sorted (by source, topic or date), so the first documents
    describe one corner of the data. Documents are taken at evenly spaced indices, doubling
    their number until they hold at least ``tokens`` ids (or all are taken): each round keeps
    the documents of the last, so a large ``.jsonl`` is tokenised only as far as the budget
    needs, and the same documents are read on every run. One document (a ``.txt`` file) is
    tokenised whole.
    """
    docs = [t for t in texts if t.strip()]
    sep = [tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else []
    taken: dict[int, list[int]] = {}
    count = 1
    while True:
        new = [i for i in spread(range(len(docs)), count) if i not in taken]
        if new:
            encoded = tokenizer([docs[i] for i in new], add_special_tokens=False)["input_ids"]
            taken.update((i, e + sep) for i, e in zip(new, encoded, strict=True))
        if count >= len(docs) or sum(map(len, taken.values())) >= tokens:
            return [t for i in sorted(taken) for t in taken[i]]
        count *= 2


# -- Python objects ---------------------------------------------------------------------------------
def _import_object(ref: str) -> Any:
    """``"pkg.mod:attr"`` or ``"path/to/file.py:attr"``: the attribute (importing runs that code)."""
    module_name, _, attr = ref.rpartition(":")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise CalibrationDataError(f"calibration data {ref!r}: {file} does not exist")
            spec = importlib.util.spec_from_file_location(f"_depgraph_calib_{file.stem}", file)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[spec.name] = module  # type: ignore[union-attr]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise CalibrationDataError(f"calibration data {ref!r}: cannot import {module_name!r} ({e})") from None
    if not hasattr(module, attr):
        raise CalibrationDataError(f"calibration data {ref!r}: {module_name} has no attribute {attr!r}")
    obj = getattr(module, attr)
    return obj() if callable(obj) and not isinstance(obj, (torch.utils.data.Dataset, Iterable)) else obj


def _python(obj: Any, spec: InputSpec, num_samples: int, batch_size: int) -> list[Any]:
    if isinstance(obj, torch.Tensor):
        obj = [obj]
    elif isinstance(obj, dict):
        obj = [obj]
    elif isinstance(obj, torch.utils.data.Dataset) and not isinstance(obj, torch.utils.data.IterableDataset):
        if hasattr(obj, "__len__"):
            obj = torch.utils.data.Subset(obj, mixed(spread(range(len(obj)), num_samples)))
        obj = torch.utils.data.DataLoader(obj, batch_size=batch_size, shuffle=False)
    if not isinstance(obj, Iterable):
        raise CalibrationDataError(f"calibration data of type {type(obj).__name__} is not an iterable of batches "
                                   "nor a Dataset")
    batches, seen = [], 0
    for item in obj:
        batch = _model_form(item, spec)
        batches.append(batch)
        seen += _batch_len(batch, spec)
        if seen >= num_samples:
            break
    if not batches:
        raise CalibrationDataError("the calibration dataset is empty")
    return batches


def _model_form(item: Any, spec: InputSpec) -> Any:
    """A loader item as the model is called with it: pairs lose their labels, tensors get the key."""
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], (torch.Tensor, dict)):
        item = item[0]  # (inputs, labels)
    if isinstance(item, torch.Tensor):
        return spec.wrap(item)
    if isinstance(item, dict):
        return item
    raise CalibrationDataError(f"a calibration item is a {type(item).__name__}; give tensors, dicts of keyword "
                               "inputs or (inputs, labels) pairs")


def _batch_len(batch: Any, spec: InputSpec) -> int:
    x = spec.unwrap(batch)
    return int(x.shape[0]) if x is not None and x.dim() > 0 else 1


# -- fit --------------------------------------------------------------------------------------------
def check_calibration(model: nn.Module, batches: list[Any], spec: InputSpec) -> None:
    """Refuse data that cannot fit ``model`` before any long pass: shapes, ids, one sample's forward.

    Raises:
        CalibrationDataError: naming the first misfit (channels, rank, ids, or the forward's error).
    """
    from ..trace.recorder import call_model

    for i, batch in enumerate(batches):
        x = spec.unwrap(batch)
        if x is None:
            continue
        if spec.kind == "image" and (x.dim() != 4 or x.shape[1] != spec.shape[0]):
            got = f"{x.shape[1]} channels" if x.dim() == 4 else f"a {x.dim()}-D tensor {tuple(x.shape)}"
            raise CalibrationDataError(f"calibration batch {i} has {got}; the model takes {spec.describe()}")
        if spec.kind == "text":
            if x.dtype.is_floating_point or x.dim() != 2:
                raise CalibrationDataError(f"calibration batch {i} is {x.dtype} of shape {tuple(x.shape)}; the model "
                                           "takes integer token ids (B, T)")
            if spec.vocab_size is not None and x.numel() and (int(x.min()) < 0 or int(x.max()) >= spec.vocab_size):
                raise CalibrationDataError(f"calibration batch {i} holds token ids in [{int(x.min())}, {int(x.max())}], "
                                           f"outside the vocabulary (0 to {spec.vocab_size - 1}): another tokenizer?")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    first = _first_sample(batches[0], device)
    try:
        with torch.no_grad():
            call_model(model.eval(), first)
    except Exception as e:  # noqa: BLE001 - any failure here means the data does not fit
        raise CalibrationDataError(f"the model cannot run on the calibration data ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}); it takes {spec.describe()}") from e


def _first_sample(batch: Any, device: torch.device) -> Any:
    def one(v: Any) -> Any:
        return v[:1].to(device) if isinstance(v, torch.Tensor) and v.dim() > 0 else v

    if isinstance(batch, dict):
        return {k: one(v) for k, v in batch.items()}
    return one(batch)
