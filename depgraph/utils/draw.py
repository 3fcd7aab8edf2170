"""Pictures of a dependency graph as adjacency matrices (PNG, via matplotlib).

matplotlib is an optional extra (``pip install depgraph[plot]``); it is
imported only when a picture is drawn.

Each picture is a square matrix whose rows and columns are the graph's
modules, so structure shows up as blocks and bands:

* :func:`draw_computational_graph` - module i feeds module j in the forward pass;
* :func:`draw_dependency_graph` - every module has two slots, ``in`` (even
  index) and ``out`` (odd index); a cell is set when pruning one slot triggers
  pruning the other;
* :func:`draw_groups` - two slots per module as well; the slots of each
  pruning group form a filled block.
"""

from __future__ import annotations

from typing import Any

from ..errors import DepgraphError

__all__ = ["draw_computational_graph", "draw_dependency_graph", "draw_groups"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DepgraphError(
            "drawing needs matplotlib, an optional extra: pip install 'depgraph[plot]'"
        ) from e
    return plt


def _save(matrix: Any, save_as: str, title: str | None, figsize: tuple, dpi: int, cmap: Any) -> tuple:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=figsize)
    ax.imshow(matrix, cmap=cmap if cmap is not None else plt.get_cmap("Blues"), interpolation="nearest")
    if title is not None:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(save_as, dpi=dpi)
    plt.close(fig)
    return fig, ax


def _node_index(DG: Any) -> dict[Any, int]:  # noqa: N803 - the original API's argument name
    return {node: i for i, node in enumerate(DG.module2node.values())}


def _neighbours(node: Any, attr: str) -> list[Any]:
    return list(getattr(node, attr, None) or ())


def draw_computational_graph(
    DG: Any,  # noqa: N803
    save_as: str,
    title: str | None = "Computational Graph",
    figsize: tuple = (16, 16),
    dpi: int = 200,
    cmap: Any = None,
) -> tuple:
    """Symmetric module-to-module adjacency of the forward pass; returns ``(fig, ax)``."""
    import numpy as np

    index = _node_index(DG)
    g = np.zeros((len(index), len(index)))
    for node, i in index.items():
        for other in _neighbours(node, "inputs") + _neighbours(node, "outputs"):
            j = index.get(other)
            if j is not None:
                g[i, j] = g[j, i] = 1
    return _save(g, save_as, title, figsize, dpi, cmap)


def _is_out(DG: Any, fn: Any) -> bool:  # noqa: N803
    return bool(DG.is_out_channel_pruning_fn(fn))


def draw_dependency_graph(
    DG: Any,  # noqa: N803
    save_as: str,
    title: str | None = "Dependency Graph",
    figsize: tuple = (16, 16),
    dpi: int = 200,
    cmap: Any = None,
) -> tuple:
    """Slot-to-slot matrix of the direct pruning dependencies; returns ``(fig, ax)``."""
    import numpy as np

    index = _node_index(DG)
    g = np.zeros((2 * len(index), 2 * len(index)))
    for node in index:
        for dep in _neighbours(node, "dependencies"):
            src, dst = index.get(dep.source), index.get(dep.target)
            if src is None or dst is None:
                continue
            g[2 * src + _is_out(DG, dep.trigger), 2 * dst + _is_out(DG, dep.handler)] = 1
    return _save(g, save_as, title, figsize, dpi, cmap)


def draw_groups(
    DG: Any,  # noqa: N803
    save_as: str,
    title: str | None = "Groups",
    figsize: tuple = (16, 16),
    dpi: int = 200,
    cmap: Any = None,
) -> tuple:
    """Slot-to-slot matrix where each pruning group is a filled block; returns ``(fig, ax)``."""
    import numpy as np

    index = _node_index(DG)
    g = np.zeros((2 * len(index), 2 * len(index)))
    for module in DG.module2node:
        width = DG.get_out_channels(module)
        handler = DG.get_pruner_of_module(module)
        if not width or handler is None:
            continue
        try:
            group = DG.get_pruning_group(module, handler.prune_out_channels, [0])
        except DepgraphError:
            continue  # a frozen dimension has no group to draw
        slots = set()
        for dep, _ in group:
            for end, fn in ((dep.source, dep.trigger), (dep.target, dep.handler)):
                k = index.get(end)
                if k is not None:
                    slots.add(2 * k + _is_out(DG, fn))
        slots_list = sorted(slots)
        g[np.ix_(slots_list, slots_list)] = 1
    return _save(g, save_as, title, figsize, dpi, cmap)
