"""What a prune did: widths per layer, params/MACs/latency before and after, criterion, target, result.

:class:`PruneReport` is plain data (``as_dict``); it renders as a summary table (rich in the
command line), Markdown, JSON, or a PNG of the per-layer widths (matplotlib), chosen by the
suffix given to :meth:`PruneReport.save`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..errors import OutputError
from .targets import Measurement

__all__ = ["PruneReport", "LayerWidth", "layer_widths", "REPORT_SUFFIXES"]

REPORT_SUFFIXES = (".md", ".json", ".png")


@dataclass
class LayerWidth:
    """Input and output widths of one layer before and after the prune."""

    name: str
    kind: str
    in_before: int
    in_after: int
    out_before: int
    out_after: int

    @property
    def changed(self) -> bool:
        """Whether the prune changed either width of this layer."""
        return (self.in_before, self.out_before) != (self.in_after, self.out_after)


def _widths(module: nn.Module) -> tuple[int, int] | None:
    from ..functional.base import find_handler

    if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)) \
            and type(module).__name__ != "Conv1D":
        return None
    handler = find_handler(module)
    if handler is None:
        return None
    return int(handler.get_in_channels(module) or 0), int(handler.get_out_channels(module) or 0)


def layer_widths(before: nn.Module, after: nn.Module) -> list[LayerWidth]:
    """Every Linear / convolution / embedding of ``before`` with its widths in both models (same names)."""
    modules = dict(after.named_modules())
    rows = []
    for name, m in before.named_modules():
        w0, other = _widths(m), modules.get(name)
        w1 = _widths(other) if other is not None else None
        if w0 is not None and w1 is not None:
            rows.append(LayerWidth(name, type(m).__name__, w0[0], w1[0], w0[1], w1[1]))
    return rows


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g}"


def _change(before: float | None, after: float | None) -> str:
    return f"{100.0 * (after - before) / before:+.1f}%" if before and after is not None else ""


@dataclass
class PruneReport:
    """The record of one :func:`~depgraph.workflow.prune_model` run."""

    model: str
    family: str
    task: str | None
    weights: str
    criterion: str
    why: str
    target: str
    result: str
    ratio: float
    round_to: int | None
    before: Measurement
    after: Measurement
    verify: str
    device: str
    verified: bool = True
    calibration: str = "none"
    batchnorm: str = "unchanged"
    kept_layers: list[str] = field(default_factory=list)
    layers: list[LayerWidth] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    output: str | None = None
    how_to_load: str = ""
    notes: list[str] = field(default_factory=list)

    def summary_rows(self) -> list[tuple[str, str, str, str]]:
        """``(quantity, before, after, change)``: params, MACs, latency."""
        b, a = self.before, self.after
        rows = [("params", f"{b.params:,}", f"{a.params:,}", _change(b.params, a.params)),
                ("MACs", _human(b.macs), _human(a.macs), _change(b.macs, a.macs))]
        if b.latency_ms is not None and a.latency_ms is not None:
            rows.append((f"latency ({self.device})", f"{b.latency_ms:.2f} ms", f"{a.latency_ms:.2f} ms",
                         _change(b.latency_ms, a.latency_ms)))
        same = "same" if b.output_shape == a.output_shape else "CHANGED"
        rows.append(("output shape", b.output_shape, a.output_shape, same))
        return rows

    def title(self) -> str:
        """``"resnet18: macs=0.5 -> macs kept 0.495 ..."``: the target and the result."""
        return f"{self.model}: {self.target} -> {self.result}"

    def as_dict(self) -> dict[str, Any]:
        """Plain data (what the JSON report holds), with the count of changed layers."""
        data = asdict(self)
        data["layers_changed"] = sum(r.changed for r in self.layers)
        return data

    def to_markdown(self) -> str:
        """The report as Markdown: settings, the before/after table, every layer's widths, how to load."""
        lines = [f"# Pruning report: {self.model}", "",
                 f"- family: {self.family}" + (f" ({self.task})" if self.task else ""),
                 f"- weights: {self.weights}",
                 f"- criterion: {self.criterion} ({self.why})",
                 f"- calibration: {self.calibration}",
                 f"- BatchNorm statistics: {self.batchnorm}",
                 f"- target: {self.target}", f"- result: {self.result}",
                 f"- round_to: {self.round_to or 'none'}", f"- kept whole: {', '.join(self.kept_layers) or 'none'}",
                 f"- {self.verify}"]
        if self.output:
            lines.append(f"- saved to: {self.output}")
        lines += [f"- note: {n}" for n in self.notes]
        lines += ["", "| | before | after | change |", "| :--- | ---: | ---: | ---: |"]
        lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in self.summary_rows()]
        lines += ["", "## Layer widths", "", "| layer | type | in before | in after | out before | out after |",
                  "| :--- | :--- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r.name} | {r.kind} | {r.in_before} | {r.in_after} | {r.out_before} | {r.out_after} |"
                  for r in self.layers]
        if self.how_to_load:
            lines += ["", "## Loading", "", "```python", self.how_to_load, "```"]
        return "\n".join(lines) + "\n"

    def save_png(self, path: Path) -> None:
        """Plot every layer's output width before and after (matplotlib), the summary in the title.

        Raises:
            OutputError: matplotlib is not installed.
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise OutputError("a PNG report needs matplotlib: pip install 'depgraph[plot]', or use .md / .json") \
                from None
        rows = [r for r in self.layers if r.kind != "Embedding"] or self.layers
        fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(rows) + 2), 4.5))
        xs = range(len(rows))
        ax.bar(xs, [r.out_before for r in rows], color="#c8d4e3", label="before")
        ax.bar(xs, [r.out_after for r in rows], color="#2f6db5", label="after")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r.name for r in rows], rotation=90, fontsize=6)
        ax.set_ylabel("output channels")
        summary = "; ".join(f"{q} {b} -> {a} ({c})" for q, b, a, c in self.summary_rows()[:3])
        ax.set_title(f"{self.title()}\n{summary}", fontsize=8)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def save(self, path: str | Path) -> Path:
        """Write the report as Markdown, JSON or PNG, by ``path``'s suffix.

        Raises:
            OutputError: another suffix, or the file cannot be written.
        """
        path = Path(path)
        check_report_path(path)
        try:
            if path.suffix == ".md":
                path.write_text(self.to_markdown(), encoding="utf-8")
            elif path.suffix == ".json":
                path.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
            else:
                self.save_png(path)
        except OSError as e:
            raise OutputError(f"cannot write the report to {path}: {e}") from None
        return path


def check_report_path(path: str | Path) -> None:
    """Refuse a report path before any work: unknown suffix, missing or unwritable folder.

    Raises:
        OutputError: naming the problem.
    """
    import os

    path = Path(path)
    if path.suffix not in REPORT_SUFFIXES:
        raise OutputError(f"report {path}: the suffix says the format; use one of {', '.join(REPORT_SUFFIXES)}")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise OutputError(f"report {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK) or path.is_dir():
        raise OutputError(f"report {path} is not writable")
