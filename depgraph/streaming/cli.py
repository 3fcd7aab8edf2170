"""``depgraph prune CHECKPOINT_DIR``: the command-line face of :func:`prune_checkpoint`.

    depgraph prune ./llama-7b --ratio 0.2 --max-memory 600MB --output ./llama-7b-pruned

:func:`is_checkpoint_dir` tells the ``prune`` command that its argument is a
Hugging Face checkpoint folder rather than a torchvision/timm model name;
:func:`run` then prunes it (streamed with ``--max-memory`` or when it is larger
than the free memory) and prints the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import DepgraphError

__all__ = ["is_checkpoint_dir", "run", "MAX_MEMORY_HELP"]

MAX_MEMORY_HELP = ("for a checkpoint folder: the most weight bytes held at once, e.g. 600MB or 4GiB "
                   "(at least one decoder layer); default: stream only when the checkpoint is larger "
                   "than the free memory")


def is_checkpoint_dir(path: str) -> bool:
    """Whether ``path`` is a folder with a ``config.json`` (a ``save_pretrained`` checkpoint)."""
    return (Path(path) / "config.json").is_file()


def run(args: argparse.Namespace, out: Any) -> int:
    """Prune the checkpoint folder ``args.model`` into ``args.output``; 0 on success.

    ``--calib`` is read by the library's calibration loader
    (:func:`~depgraph.workflow.load_calibration`: a text file or a ``.jsonl`` tokenised by the
    checkpoint's own tokenizer, or ``module:attribute``), for ``--importance activation_weight``
    / ``fluctuation`` and ``--compensation bias`` / ``lstsq``. As in memory, ``fluctuation``
    compensates biases unless ``--compensation none``. ``--prune-hidden`` prunes the hidden size
    too (``prune_hidden=True``; the budget must hold the embedding). ``--calib-memory`` bounds the
    Gram matrices ``--compensation lstsq`` holds (``calib_memory=``; refused before any read when
    they do not fit).

    Raises:
        OptionError: bad values (``--importance`` the streamed path cannot compute,
            a malformed ``--max-memory``, ``--calib`` missing or given to nothing that reads it).
        CalibrationDataError: ``--calib`` is unreadable or not text the checkpoint's tokenizer reads.
        MemoryBudgetError: ``--max-memory`` cannot hold a decoder layer, or ``--calib-memory`` the
            least-squares Gram matrices.
        DepgraphError: the prune failed (nothing is written before the plan passes its checks).
    """
    from .api import prune_checkpoint

    importance = {"l2": "magnitude"}.get(args.importance, args.importance) or "magnitude"
    compensation = getattr(args, "compensation", None)
    if compensation is None and importance == "fluctuation":
        compensation = "bias"  # the in-memory CLI's default pairing
    compensation = None if compensation == "none" else compensation
    output = args.output or f"{Path(args.model).resolve().name}_pruned"
    if output == "-":
        raise DepgraphError("--output - (do not save) makes no sense for a checkpoint folder: give a folder")
    calib = _calibration(args) if getattr(args, "calib", None) else None
    report = prune_checkpoint(
        args.model, output, ratio=args.ratio, head_ratio=getattr(args, "head_ratio", None), importance=importance,
        global_pruning=args.global_pruning, round_to=args.round_to, ignore=tuple(args.ignore or ()),
        seed=args.seed, max_memory=getattr(args, "max_memory", None), calib=calib, compensation=compensation,
        prune_hidden=getattr(args, "prune_hidden", False), calib_memory=getattr(args, "calib_memory", None),
        progress=not args.plain)
    for line in str(report).splitlines():
        out.line(line)
    return 0


def _calibration(args: argparse.Namespace) -> list[Any]:
    """``--calib`` as token-id batches, read with the checkpoint's tokenizer (the model is never built)."""
    from ..workflow.calibration_data import load_calibration
    from ..workflow.inputs import input_spec_for_checkpoint

    seq_len = getattr(args, "seq_len", 32)
    spec = input_spec_for_checkpoint(args.model, seq_len=seq_len)
    return load_calibration(args.calib, spec, num_samples=getattr(args, "calib_samples", 32),
                            batch_size=getattr(args, "calib_batch_size", 8), seq_len=seq_len)
