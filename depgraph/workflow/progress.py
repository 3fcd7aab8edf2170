"""Progress of a prune while it runs: one line per stage (rich spinner when installed), timed.

The stages are those of :func:`~depgraph.workflow.prune_model`: load, calibrate, score, search
(one update per trial), prune, verify, save. With ``enabled=False`` nothing is drawn; the
times are kept either way, for the report.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Stages"]


class Stages:
    """Times named stages and shows them on stderr (rich when installed, else plain lines).

    Example:
        >>> stages = Stages(enabled=True)
        >>> with stages.stage("calibrate"):
        ...     ...
        >>> stages.seconds
        {'calibrate': 0.12}
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.seconds: dict[str, float] = {}
        self._progress: Any = None
        self._task: Any = None
        if enabled:
            try:
                from rich.console import Console
                from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            except ImportError:
                return
            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                      console=Console(stderr=True), transient=True)

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        """Time the block as stage ``name`` (accumulated when a stage repeats)."""
        t0 = time.perf_counter()
        label = f"{name}: {detail}" if detail else name
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(label, total=None)
        elif self.enabled:
            print(f"depgraph: {label} ...", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            if self._progress is not None:
                self._progress.remove_task(self._task)
                self._progress.stop()
                self._task = None

    def update(self, text: str) -> None:
        """Say what the current stage is doing now (e.g. one search trial)."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=text)
        elif self.enabled:
            print(f"depgraph:   {text}", file=sys.stderr, flush=True)
