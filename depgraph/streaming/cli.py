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

    Raises:
        OptionError: bad values (``--importance`` the streamed path cannot compute,
            a malformed ``--max-memory``).
        DepgraphError: the prune failed (nothing is written before the plan passes its checks).
    """
    from .api import prune_checkpoint

    importance = {"l2": "magnitude"}.get(args.importance, args.importance)
    output = args.output or f"{Path(args.model).resolve().name}_pruned"
    if output == "-":
        raise DepgraphError("--output - (do not save) makes no sense for a checkpoint folder: give a folder")
    report = prune_checkpoint(
        args.model, output, ratio=args.ratio, importance=importance, global_pruning=args.global_pruning,
        round_to=args.round_to, ignore=tuple(args.ignore or ()), seed=args.seed,
        max_memory=getattr(args, "max_memory", None), progress=not args.plain)
    for line in str(report).splitlines():
        out.line(line)
    return 0
