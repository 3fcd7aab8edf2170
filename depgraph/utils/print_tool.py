"""Show what pruning changed: the module tree with ``old => new`` on changed lines.

Usage::

    from depgraph.utils import print_tool
    print_tool.before_pruning(model)   # snapshot
    pruner.step()
    print_tool.after_pruning(model)    # prints the tree, changed lines as "old => new"

Modules are matched by qualified name, so the snapshot holds strings only and
never keeps the unpruned weights alive.
"""

from __future__ import annotations

import torch.nn as nn

from ..errors import DepgraphError

__all__ = ["PrintTool", "print_tool", "before_pruning", "after_pruning"]


def _line(module: nn.Module) -> str:
    """One-line description of a module without its children."""
    extra = module.extra_repr()
    return f"{type(module).__name__}({extra})" if extra else type(module).__name__


def _snapshot(model: nn.Module) -> dict[str, str]:
    return {name: _line(m) for name, m in model.named_modules()}


class PrintTool:
    """Remembers the module tree before pruning and prints the diff after.

    One instance holds one snapshot per model (keyed by ``id``), so two models
    can be compared in the same script.
    """

    def __init__(self) -> None:
        self._before: dict[int, dict[str, str]] = {}

    def before_pruning(self, model: nn.Module) -> None:
        """Record the tree of ``model`` to compare against later."""
        self._before[id(model)] = _snapshot(model)

    def after_pruning(
        self, model: nn.Module, do_print: bool = True, *, show_identical: bool = True, print_fn=print  # noqa: ANN001
    ) -> str:
        """Print (and return) the tree of ``model`` with ``old => new`` on changed lines.

        Args:
            model: the model given to :meth:`before_pruning`, now pruned.
            do_print: False to only return the text (Torch-Pruning's spelling of ``print_fn=None``).
            show_identical: **(new)** also print the unchanged modules (indented tree);
                with False only the changed ones are listed.
            print_fn: **(new)** where to write the text; ``None`` to only return it.

        Raises:
            DepgraphError: :meth:`before_pruning` was not called on this model.
        """
        before = self._before.get(id(model))
        if before is None:
            raise DepgraphError(
                f"print_tool.after_pruning: no snapshot of this {type(model).__name__}; "
                "call print_tool.before_pruning(model) before pruning it"
            )
        lines = []
        for name, module in model.named_modules():
            depth = name.count(".") + (1 if name else 0)
            label = f"({name.rsplit('.', 1)[-1]}): " if name else ""
            now, then = _line(module), before.get(name)
            if then is None:
                text = f"{now}  [new]"
            elif then != now:
                text = f"{then} => {now}"
            elif show_identical:
                text = now
            else:
                continue
            lines.append("  " * depth + label + text)
        for name in before.keys() - {n for n, _ in model.named_modules()}:
            lines.append(f"({name}): {before[name]}  [removed]")
        report = "\n".join(lines)
        if do_print and print_fn is not None:
            print_fn(report)
        return report


#: The shared instance the original API exposes as ``tp.utils.print_tool``.
print_tool = PrintTool()
before_pruning = print_tool.before_pruning
after_pruning = print_tool.after_pruning
