"""Registering an integration's after-prune hook on a graph, once per model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["attach_once"]


def attach_once(
    graph: Any,
    hook_type: type,
    applies: Callable[[Any], bool],
    wanted: Callable[[Any], bool] = lambda hook: True,
) -> Any | None:
    """The ``hook_type(model)`` among ``graph.prune_hooks("after")``, registered unless one is there already.

    Integrations attach lazily from several places (graph build, the pruner's options), so a
    second call must return the hook in place rather than sync the model twice after a prune.

    Args:
        graph: the built ``DependencyGraph``.
        hook_type: a class taking the model; its instances keep a weak ``model_ref`` reference.
        applies: whether the model is one this integration serves.
        wanted: checked on a new hook before it is added (e.g. it found layers to sync).

    Returns:
        The attached hook, or None when the model is not served or the hook is not wanted.
    """
    model = graph.model
    if model is None or not applies(model):
        return None
    for hook in graph.prune_hooks("after"):
        if isinstance(hook, hook_type) and hook.model_ref() is model:
            return hook
    hook = hook_type(model)
    if not wanted(hook):
        return None
    hook.handle = graph.register_prune_hook(hook, when="after")
    return hook
