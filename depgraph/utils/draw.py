"""Pictures of a dependency graph as adjacency matrices (PNG, via matplotlib).

matplotlib is an optional extra (``pip install depgraph[plot]``); it is
imported only when a picture is drawn.

Rows and columns are the graph's nodes (layers and bare parameters) in model
order, so structure shows up as blocks and bands:

* :func:`draw_computational_graph` - node i feeds node j in the forward pass
  (directly or through parameter-free ops such as ``add``, ``cat``, ``relu``);
* :func:`draw_dependency_graph` - every node has two slots, ``in`` (even
  index) and ``out`` (odd index); cell (a, b) is set when pruning one channel
  of slot a forces pruning slot b;
* :func:`draw_groups` - the same slots; the slots of each prunable group
  (``get_all_groups``) form a filled block.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

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


def _index(DG: Any) -> dict[int, int]:  # noqa: N803 - the original API's argument name
    """``id(module or tensor) -> row``, in the graph's (model) order."""
    return {id(m): i for i, m in enumerate(DG.module2node)}


def _is_out(DG: Any, fn: Any) -> int:  # noqa: N803
    return 1 if DG.is_out_channel_pruning_fn(fn) else 0


def _slot(index: dict[int, int], DG: Any, node: Any, fn: Any) -> int | None:  # noqa: N803
    k = index.get(id(node.module))
    return None if k is None else 2 * k + _is_out(DG, fn)


def _module_edges(DG: Any) -> set[tuple[int, int]]:  # noqa: N803
    """Forward edges between graph modules, looking through ops that are not graph nodes."""
    trace = getattr(DG, "trace", None)
    if trace is None:
        return set()
    index = _index(DG)
    edges = set()
    for op in trace.ops:
        dst = index.get(id(op.target)) if op.is_module else None
        if dst is None:
            continue
        stack, seen = list(op.inputs), set()
        while stack:
            v = stack.pop()
            if id(v) in seen:
                continue
            seen.add(id(v))
            if v.kind == "param" and id(v.tensor_ref) in index:
                edges.add((index[id(v.tensor_ref)], dst))
            prod = v.producer
            if prod is None:
                continue
            src = index.get(id(prod.target)) if prod.is_module else None
            if src is not None:
                edges.add((src, dst))
            else:
                stack.extend(prod.inputs)
    return edges


def draw_computational_graph(
    DG: Any,  # noqa: N803
    save_as: str,
    title: str | None = "Computational Graph",
    figsize: tuple = (16, 16),
    dpi: int = 200,
    cmap: Any = None,
) -> tuple:
    """Symmetric node-to-node adjacency of the forward pass; returns ``(fig, ax)``."""
    import numpy as np

    n = len(DG.module2node)
    g = np.zeros((n, n))
    for a, b in _module_edges(DG):
        g[a, b] = g[b, a] = 1
    return _save(g, save_as, title, figsize, dpi, cmap)


def _pruners(DG: Any, module: Any) -> list:  # noqa: N803
    node = DG.module2node[module]
    handler = node.handler
    if handler is None:
        return []
    fns = [handler.prune_out_channels]
    if not node.is_parameter:
        fns.append(handler.prune_in_channels)
    return fns


def draw_dependency_graph(
    DG: Any,  # noqa: N803
    save_as: str,
    title: str | None = "Group",
    figsize: tuple = (16, 16),
    dpi: int = 200,
    cmap: Any = None,
) -> tuple:
    """Slot-to-slot matrix: which slots a one-channel prune of each slot reaches; returns ``(fig, ax)``."""
    import numpy as np

    index = _index(DG)
    g = np.zeros((2 * len(index), 2 * len(index)))
    for module, node in DG.module2node.items():
        for fn in _pruners(DG, module):
            try:
                group = DG.get_pruning_group(module, fn, [0])
            except DepgraphError:
                continue  # no channels on that side, or a frozen dimension
            src = _slot(index, DG, node, fn)
            for dep, _ in group:
                dst = _slot(index, DG, dep.target, dep.handler)
                if src is not None and dst is not None:
                    g[src, dst] = 1
    return _save(g, save_as, title, figsize, dpi, cmap)


def draw_groups(
    DG: Any,  # noqa: N803
    save_as: str,
    title: str | None = "Group",
    figsize: tuple = (16, 16),
    dpi: int = 200,
    cmap: Any = None,
) -> tuple:
    """Slot-to-slot matrix where each prunable group is a filled block; returns ``(fig, ax)``."""
    import numpy as np

    index = _index(DG)
    g = np.zeros((2 * len(index), 2 * len(index)))
    for group in DG.get_all_groups(root_module_types=(nn.Module,)):
        slots = sorted(
            {s for dep, _ in group if (s := _slot(index, DG, dep.target, dep.handler)) is not None}
        )
        g[np.ix_(slots, slots)] = 1
    return _save(g, save_as, title, figsize, dpi, cmap)
