"""The pruned model ``depgraph recover`` / ``depgraph export`` read, and where the result goes.

Models are loaded by :func:`depgraph.workflow.load_source` (what ``depgraph prune``
reads) and written by :func:`depgraph.workflow.save_pruned`. This module adds the
one form a pruned model has that an unpruned one does not: a weights-only
``depgraph.save`` file, re-created in a fresh copy of its unpruned ``base``
(a torchvision / timm name or a Hugging Face folder). The result is written in
the form the pruned model came in: ``save_pretrained`` folder, ``depgraph.save``
file, or pickled module.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import RecoveryError

__all__ = ["load_pruned", "output_format", "with_tokenizer"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _depgraph_state(path: Path) -> dict[str, Any] | None:
    """The pruned state in a ``depgraph.save`` file; None for any other file (read weights-only, no pickle)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not weights-only data: a pickled module, left to load_source
        return None
    return state if isinstance(state, dict) and "format" in state and "state_dict" in state else None


def load_pruned(spec: str, base: str | None = None, **load_options: Any) -> Any:
    """The pruned model ``spec`` as a :class:`depgraph.workflow.Source`.

    Args:
        spec: a Hugging Face folder, a ``depgraph.save`` file, or a pickled whole module.
        base: the unpruned definition of a ``depgraph.save`` file.
        **load_options: passed to :func:`depgraph.workflow.load_source` (``trust_pickle``,
            ``input_size``, ``seq_len``, ``batch_size``).

    Raises:
        RecoveryError: ``spec`` does not exist, or is a weights-only file without ``base``.
        SourceError: ``load_source`` refuses ``spec`` or ``base``.
        PrunedStateError: the file does not fit ``base``.
    """
    from ..serialization import load_state_dict
    from ..workflow import load_source

    path = Path(spec)
    if not path.exists():
        raise RecoveryError(f"pruned model {spec!r} does not exist (expected a Hugging Face folder or a file)")
    state = _depgraph_state(path) if path.is_file() else None
    if state is None:
        return load_source(spec, **load_options)
    if base is None:
        raise RecoveryError(f"{spec!r} holds weights only; name its unpruned model with --base "
                            "(a torchvision / timm name or a Hugging Face folder)")
    source = load_source(base, **load_options)
    load_state_dict(source.model, state)
    source.model.eval()
    source.weights = os.fspath(spec)
    return source


def output_format(source: Any, spec: str | os.PathLike | None = None) -> str:
    """The save format of the form ``source`` came in: pickled in, pickled out; a ``depgraph.save`` file in
    (``spec``, a file that is not a pickled module), a ``depgraph.save`` file out, whatever the family (a
    Hugging Face model pruned to per-layer widths has no ``save_pretrained`` form); else the family's."""
    from ..workflow.save import default_format

    if source.family == "module":
        return "pickle"
    if spec is not None and Path(spec).is_file():
        return "depgraph"
    return default_format(source)


def with_tokenizer(spec: Any, *folders: str | os.PathLike | None) -> Any:
    """``spec`` with a tokenizer folder when its own folder has none (a pruned copy saved without one)."""
    if spec.kind != "text" or (spec.tokenizer is not None and _has_tokenizer(spec.tokenizer)):
        return spec
    folder = next((f for f in folders if f and _has_tokenizer(f)), None)
    return dataclasses.replace(spec, tokenizer=os.fspath(folder)) if folder is not None else spec


def _has_tokenizer(folder: Any) -> bool:
    return isinstance(folder, (str, os.PathLike)) and any((Path(folder) / n).is_file() for n in _TOKENIZER_FILES)
