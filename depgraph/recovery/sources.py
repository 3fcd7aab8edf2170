"""Loading the models ``depgraph recover`` / ``depgraph export`` work on, and saving them the same way.

A model comes in one of three forms, and is written back in the form it came in:

* ``hf``: a Hugging Face ``save_pretrained`` folder (has ``config.json``), loaded
  with the class in ``config.architectures`` (else ``AutoModel``); written with
  ``save_pretrained`` (safetensors), with the folder's tokenizer / processor files.
* ``depgraph``: a weights-only file from ``depgraph.save`` / ``depgraph prune``,
  re-created in a fresh unpruned ``base`` (a torchvision / timm name, or a
  Hugging Face folder); written with ``depgraph.save``.
* ``pickle``: a whole model from ``torch.save(model)`` (Torch-Pruning's
  ``tp.save``); reading it runs pickle, so only for trusted files; written
  with ``torch.save``.

A teacher can also be a torchvision / timm name (``name``), with its trained
weights from ``--teacher-weights`` (a state dict file).
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import RecoveryError

__all__ = ["Source", "load_source", "load_pruned", "save_like", "check_output", "is_hf_folder",
           "in_channels", "input_spec"]

#: Files of a Hugging Face folder that are neither weights nor config, copied next to a saved model.
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "vocab.txt",
               "merges.txt", "tokenizer.model", "added_tokens.json", "preprocessor_config.json",
               "chat_template.jinja", "generation_config.json")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class Source:
    """A loaded model and where it came from."""

    model: nn.Module
    kind: str  # "hf" | "depgraph" | "pickle" | "name"
    path: str
    base: str | None = None  # for "depgraph": what the unpruned definition was built from
    input_size: tuple[int, int, int] | None = None  # (C, H, W) of a vision model built by name


def is_hf_folder(spec: str) -> bool:
    """A folder written by ``save_pretrained`` (it has ``config.json``)."""
    return (Path(spec) / "config.json").is_file()


def _load_hf(folder: str, *, weights: bool = True) -> nn.Module:
    try:
        import transformers
    except ImportError:
        raise RecoveryError(f"{folder!r} is a Hugging Face folder; install transformers: "
                            "pip install 'depgraph[hf]'") from None
    config = transformers.AutoConfig.from_pretrained(folder)
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    cls = cls or transformers.AutoModel
    if not weights:
        return (cls.from_config(config) if cls is transformers.AutoModel else cls(config)).eval()
    return cls.from_pretrained(folder).eval()


def _build_named(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    from ..cli import load_model

    return load_model(name)


def load_source(spec: str, weights: str | None = None) -> Source:
    """The unpruned model ``spec``: a Hugging Face folder, a torchvision / timm name, or a ``torch.save`` file.

    Args:
        spec: folder, model name or file.
        weights: for a model name, a state dict file with its trained weights.

    Raises:
        RecoveryError: ``spec`` is none of these, or ``weights`` does not fit the model.
    """
    if is_hf_folder(spec):
        if weights is not None:
            raise RecoveryError(f"{spec!r} is a Hugging Face folder, which holds its weights; drop the weights file")
        return Source(_load_hf(spec), "hf", spec)
    if os.path.isfile(spec):
        return Source(_load_pickled(spec), "pickle", spec)
    if os.sep in spec or spec.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise RecoveryError(f"{spec!r} does not exist (expected a Hugging Face folder, a model file or a model name)")
    model, size = _build_named(spec)
    if weights is not None:
        _load_weights(model, weights, spec)
    return Source(model, "name", spec, input_size=size)


def _load_weights(model: nn.Module, path: str, name: str) -> None:
    if not os.path.isfile(path):
        raise RecoveryError(f"the weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise RecoveryError(f"{path!r} does not fit {name}: {str(e)[:400]}") from None


def _load_pickled(path: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the caller chose to load this file; say it once below
        from ..serialization import load

        obj = load(path)
    if not isinstance(obj, nn.Module):
        raise RecoveryError(f"{path!r} holds a {type(obj).__name__}, not a whole model; a depgraph weights-only "
                            "file needs its base model (--base NAME)")
    warnings.warn(f"{path!r} is a whole pickled model: loading it ran pickle; use only files you trust",
                  UserWarning, stacklevel=3)
    return obj.eval()


def load_pruned(spec: str, base: str | None = None) -> Source:
    """The pruned model ``spec``: a Hugging Face folder, a ``depgraph.save`` file (+ ``base``), or a pickled model.

    Raises:
        RecoveryError: the file is missing, or a weights-only file came without a base model.
        PrunedStateError: the file does not fit ``base``.
    """
    if is_hf_folder(spec):
        return Source(_load_hf(spec), "hf", spec)
    if not os.path.isfile(spec):
        raise RecoveryError(f"pruned model {spec!r} does not exist (expected a Hugging Face folder or a file)")
    try:
        state = torch.load(spec, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not weights-only: a whole pickled model
        return Source(_load_pickled(spec), "pickle", spec)
    if not (isinstance(state, dict) and "format" in state):
        raise RecoveryError(f"{spec!r} is not a depgraph pruned state nor a whole model; a plain state dict "
                            "cannot be loaded into a pruned architecture")
    if base is None:
        raise RecoveryError(f"{spec!r} holds weights only; name its unpruned model with --base "
                            "(a torchvision / timm name or a Hugging Face folder)")
    from ..serialization import load_state_dict

    size = None
    if is_hf_folder(base):
        fresh = _load_hf(base, weights=False)
    else:
        fresh, size = _build_named(base)
    return Source(load_state_dict(fresh, state).eval(), "depgraph", spec, base=base, input_size=size)


def check_output(path: str, kind: str) -> None:
    """Refuse, before any long work, an output that cannot be written.

    Raises:
        RecoveryError: the parent folder is missing or not writable, or a file is where a folder goes.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if kind == "hf":
        if target.exists() and not target.is_dir():
            raise RecoveryError(f"--output {path!r} is a file; a Hugging Face model is saved as a folder")
    elif target.is_dir():
        raise RecoveryError(f"--output {path!r} is a folder; give a file path")
    if not parent.is_dir():
        raise RecoveryError(f"--output {path!r}: the folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise RecoveryError(f"--output {path!r} is not writable")


def save_like(source: Source, model: nn.Module, output: str, state_dict: dict[str, Any] | None = None) -> str:
    """Write ``model`` to ``output`` in the form ``source`` came in; returns how to load it back."""
    if source.kind == "hf":
        model.save_pretrained(output, state_dict=state_dict)
        for name in _SIDE_FILES:
            f = Path(source.path) / name
            if f.is_file() and not (Path(output) / name).exists():
                shutil.copy2(f, Path(output) / name)
        cls = type(model).__name__
        return f"transformers.{cls}.from_pretrained({output!r})"
    if state_dict is not None:
        model.load_state_dict(state_dict)
    if source.kind == "pickle":
        torch.save(model, output)
        return f"torch.load({output!r}, weights_only=False)"
    from ..serialization import save

    save(model, output)
    base = source.base if source.kind == "depgraph" else source.path
    return f"depgraph.load(<unpruned {base}>, {output!r})"


def input_spec(source: Source, *folders: str | None, seq_len: int = 128, input_size: int | None = None) -> Any:
    """The :class:`~depgraph.workflow.InputSpec` of ``source``'s model: token ids or images.

    ``folders`` are searched, in order, for a tokenizer (the pruned folder, then the teacher's).
    """
    from ..workflow.inputs import IMAGENET_MEAN, IMAGENET_STD, InputSpec

    model = source.model
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None) if config is not None else None
    if main == "input_ids":
        tok = next((f for f in folders if f and any((Path(f) / n).is_file() for n in _TOKENIZER_FILES)), None)
        vocab = getattr(config, "vocab_size", None)
        return InputSpec("text", (seq_len,), key="input_ids", tokenizer=tok, vocab_size=vocab)
    if main == "pixel_values":
        size = input_size or getattr(config, "image_size", 224)
        return InputSpec("image", (getattr(config, "num_channels", 3), size, size), key="pixel_values",
                         mean=IMAGENET_MEAN, std=IMAGENET_STD)
    c, h, w = source.input_size or (in_channels(model), 224, 224)
    if input_size is not None:
        h = w = input_size
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or len(mean) != c:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else ((0.5,) * c, (0.5,) * c)
    return InputSpec("image", (c, h, w), mean=tuple(mean), std=tuple(std))


def in_channels(model: nn.Module) -> int:
    """Input channels of the first convolution (3 when there is none)."""
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return int(first.in_channels) if first is not None else 3

