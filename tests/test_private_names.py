"""No depgraph module uses another module's private names (STYLE: "no reading another module's
``_private`` names").

Checked statically over the source: a ``from x import _name`` of a depgraph module, an import
of a private module (``pkg._mod``) from outside the package ``pkg``, and an attribute read
``obj._name`` on anything but ``self``/``cls`` where ``_name`` is defined by depgraph itself.
Torch's own underscored API (``module._parameters``, ``_buffers``, ...) is torch's contract
with ``nn.Module`` code and is not depgraph's to rename, so it is not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import depgraph

ROOT = Path(depgraph.__file__).parent

#: torch.nn.Module internals depgraph reads or restores (the transaction, serialization, RNNs).
TORCH_PRIVATE = frozenset({
    "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_init_flat_weights",
    "_get_no_batch_dim", "_qkv_same_embed_dim", "_asdict",
    "_version",  # Tensor._version: the in-place write counter (the trace memo's key)
})


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), ast.parse(path.read_text(), str(path))))
    return out


def _absolute(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private_owner(module: str) -> str | None:
    """The package a private module belongs to (``depgraph.integrations`` for
    ``depgraph.integrations._hooks``), or None when no part of the path is private."""
    parts = module.split(".")
    for i, p in enumerate(parts):
        if p.startswith("_") and not p.startswith("__"):
            return ".".join(parts[:i])
    return None


def _defined_private_names(trees: list[tuple[str, ast.Module]]) -> set[str]:
    """Underscored names depgraph itself defines (functions, classes, attributes it assigns)."""
    names = set()
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")} - TORCH_PRIVATE


def test_no_module_uses_another_modules_private_names():
    trees = _modules()
    ours = _defined_private_names(trees)
    problems = []
    for name, tree in trees:
        is_package = (ROOT.parent / name.replace(".", "/") / "__init__.py").exists()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(name, is_package, node)
                if not target.startswith("depgraph"):
                    continue
                owner = _private_owner(target)
                if owner is not None and not (name == owner or name.startswith(owner + ".")):
                    problems.append(f"{name} imports the private module {target}")
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        problems.append(f"{name} imports {target}.{alias.name}")
            elif isinstance(node, ast.Attribute) and node.attr in ours:
                base = node.value
                if not (isinstance(base, ast.Name) and base.id in ("self", "cls")):
                    problems.append(f"{name}:{node.lineno} reads .{node.attr} of another object")
    assert not problems, "\n".join(problems)
