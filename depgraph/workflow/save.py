"""Write the pruned model in the form its family ships, and say how to load it back.

    hf (save_pretrained)   a folder: safetensors + the synced config (+ the source's tokenizer and
                           preprocessor files); ``from_pretrained`` loads it with no depgraph installed.
                           Refused (before pruning) when per-layer widths differ, which a config cannot
                           describe: prune per group (uniform) or save with the depgraph format.
    depgraph (tp.save)     one weights-only file (no pickle) with the pruned shapes; rebuilt with
                           ``tp.load(<the unpruned definition>, path)``.
    pickle                 the whole module with ``torch.save`` (loading runs pickle).

:func:`check_output` runs before any work, so a path that cannot be written fails in a second.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import OutputError
from .sources import Source

__all__ = ["check_output", "save_pruned", "default_format", "FORMATS"]

FORMATS = ("auto", "hf", "depgraph", "pickle")
_WEIGHT_FILES = (".safetensors", ".bin", ".pth", ".pt", ".h5", ".msgpack", ".ckpt")
_WRITTEN = ("config.json", "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def default_format(source: Source, save_format: str = "auto") -> str:
    """``hf`` for Hugging Face sources, ``depgraph`` for the others (``auto``); the given one otherwise."""
    if save_format not in FORMATS:
        raise OutputError(f"unknown save format {save_format!r}; choose from {', '.join(FORMATS)}")
    if save_format == "auto":
        return "hf" if source.family == "hf" else "depgraph"
    if save_format == "hf" and source.family != "hf":
        raise OutputError(f"save format 'hf' (save_pretrained) needs a Hugging Face model; {source.name} is "
                          f"{source.family}: use 'depgraph'")
    return save_format


def check_output(path: str | os.PathLike, save_format: str, source_folder: str | os.PathLike | None = None) -> Path:
    """The output path, refused now if it cannot be written (so no pruning is wasted).

    Args:
        path: where the pruned model goes (a folder for ``hf``, a file otherwise).
        save_format: ``hf``, ``depgraph`` or ``pickle`` (see :func:`default_format`).
        source_folder: the checkpoint being pruned, which must not be overwritten.

    Raises:
        OutputError: the parent folder is missing or not writable, a folder where a file goes (or
            the reverse), or the output would overwrite the source checkpoint.
    """
    out = Path(path)
    parent = out.resolve().parent
    if out.is_dir() and save_format != "hf":
        raise OutputError(f"output {os.fspath(out)!r} is a folder; give a file path such as "
                          f"{os.path.join(os.fspath(out), 'pruned.pth')!r}")
    if not parent.is_dir():
        raise OutputError(f"output {os.fspath(out)!r}: the folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output {os.fspath(out)!r}: the folder {parent} is not writable")
    if out.exists() and not os.access(out, os.W_OK):
        raise OutputError(f"output {os.fspath(out)!r} is not writable")
    if save_format == "hf":
        if out.is_file():
            raise OutputError(f"output {os.fspath(out)!r} is a file; save_pretrained writes a folder: give a "
                              "folder path")
        if source_folder is not None and out.resolve() == Path(source_folder).resolve():
            raise OutputError(f"output {os.fspath(out)!r} is the source checkpoint; give a new folder")
    return out


def save_pruned(model: nn.Module, source: Source, path: str | os.PathLike, save_format: str) -> str:
    """Write ``model`` to ``path`` in ``save_format`` (see the module docstring).

    Returns:
        Python that loads it back, for the report.

    Raises:
        DepgraphError: (``hf``) the config cannot describe the pruned model (``check_config``).
        OutputError: the files cannot be written.
    """
    out = Path(path)
    try:
        if save_format == "hf":
            return _save_hf(model, source, out)
        if save_format == "pickle":
            torch.save(model, out)
            return (f"import torch\nmodel = torch.load({os.fspath(out)!r}, weights_only=False)  "
                    "# runs pickle: only files you trust")
        from ..serialization import save

        save(model, out)
    except OSError as e:
        raise OutputError(f"cannot write {os.fspath(out)!r}: {e}") from None
    return _depgraph_loader(source, out)


def _depgraph_loader(source: Source, out: Path) -> str:
    if source.family == "hf":
        cls = source.task or "AutoModel"
        return (f"import depgraph, transformers\nmodel = depgraph.load(transformers.{cls}.from_pretrained("
                f"{os.fspath(source.folder)!r}), {os.fspath(out)!r})")
    module = {"torchvision": "torchvision", "timm": "timm", "module": "torch"}[source.family]
    return f"import depgraph, {module}\nmodel = depgraph.load({source.builder}, {os.fspath(out)!r})"


def _save_hf(model: nn.Module, source: Source, out: Path) -> str:
    from ..integrations.transformers import check_config

    check_config(model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if source.folder is not None:  # tokenizer, preprocessor, chat template ...: what the weights come with
        for f in Path(source.folder).iterdir():
            if f.is_file() and f.name not in _WRITTEN and not f.name.endswith(_WEIGHT_FILES) \
                    and not (out / f.name).exists():
                shutil.copy2(f, out / f.name)
    cls = type(model).__name__
    return f"import transformers\nmodel = transformers.{cls}.from_pretrained({os.fspath(out)!r})  # no depgraph needed"
