"""Markdown tables and matplotlib plots shared by the quality benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers right-aligned, text left-aligned (judged from the first row)."""
    align = ["---:" if rows and _numeric(str(v)) else ":---" for v in (rows[0] if rows else columns)]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    return text.strip().lstrip("+-").rstrip("x%k ").replace(".", "", 1).isdigit()


def figure(n_labels: int, n_series: int, rows: int = 1):
    """A matplotlib figure (Agg backend, no display needed) wide enough for the bars, and its axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, 1, figsize=(max(6.0, 0.55 * n_labels * max(n_series, 1) + 2), 4.5 * rows),
                        squeeze=False)


def save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bar_plot(labels: Sequence[str], series: dict[str, Sequence[float]], ylabel: str, title: str,
             path: Path | None = None, reference: tuple[float, str] | None = None,
             ylim_bottom: float | None = None, log_y: bool = False, ax=None) -> None:
    """Grouped bars, one group per label and one bar per series, with an optional horizontal reference line.

    Draws on ``ax`` when given (the caller saves the figure), else on a new figure saved to ``path``.
    """
    n = len(series)
    width = 0.8 / max(n, 1)
    fig = None
    if ax is None:
        fig, axes = figure(len(labels), n)
        ax = axes[0][0]
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, values, width, label=name)
    if reference is not None:
        ax.axhline(reference[0], color="black", linestyle="--", linewidth=1, label=reference[1])
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    if ylim_bottom is not None:
        ax.set_ylim(bottom=ylim_bottom)
    ax.legend(fontsize=8)
    if fig is not None:
        save(fig, path)
