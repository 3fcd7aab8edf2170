"""Every public name of torch-pruning 1.6 exists in depgraph and accepts the same calls.

The walk covers the modules a user imports (``tp``, ``tp.pruner``,
``tp.pruner.algorithms``, ``tp.importance``, ``tp.utils``, ``tp.pruner.function``,
``tp.dependency``), every class they define and each class's public methods
(plus ``__init__`` and ``__call__``). For each path depgraph must have the
same name; for each callable, every original parameter under the same name,
position and default, extra parameters keyword-only (see
``tests/compat/_signatures.py``). ``ALLOWED`` lists the deliberate exceptions,
each with its reason ("deliberate: ..."; README "Coming from Torch-Pruning"
lists them); an entry that no longer excuses anything fails
``test_allow_list_is_current`` so the list stays short.
"""

from __future__ import annotations

import types

import pytest

import depgraph

from ._signatures import public_paths, resolve, signature_problems

tp_orig = pytest.importorskip("torch_pruning")

MODULES = {
    "tp": tp_orig,
    "tp.pruner": tp_orig.pruner,
    "tp.pruner.algorithms": tp_orig.pruner.algorithms,
    "tp.importance": tp_orig.importance,
    "tp.utils": tp_orig.utils,
    "tp.utils.benchmark": tp_orig.utils.benchmark,
    "tp.utils.print_tool": tp_orig.utils.print_tool,
    "tp.pruner.function": tp_orig.pruner.function,
    "tp.dependency": tp_orig.dependency,
}

_IMPLEMENTATION = (
    "a file of the original's source tree, reachable only because its package uses `import *`; "
    "the names users take from it are checked where they are public"
)
#: path (or path prefix, ending in '.') -> why depgraph differs there.
ALLOWED: dict[str, str] = {
    # implementation modules leaked by `from ... import *`
    **{
        f"tp.{m}": _IMPLEMENTATION
        for m in (
            "algorithms", "base_pruner", "batchnorm_scale_pruner", "compatibility", "group_norm_pruner",
            "growing_reg_pruner", "scheduler", "ops",
            "pruner.base_pruner", "pruner.batchnorm_scale_pruner", "pruner.compatibility",
            "pruner.group_norm_pruner", "pruner.growing_reg_pruner",
            "pruner.algorithms.base_pruner", "pruner.algorithms.batchnorm_scale_pruner",
            "pruner.algorithms.compatibility", "pruner.algorithms.group_norm_pruner",
            "pruner.algorithms.growing_reg_pruner", "pruner.algorithms.scheduler",
            "importance.function", "importance.ops", "utils.utils", "utils.compute_mat_grad",
            "pruner.function.ops", "dependency.constants", "dependency.dependency",
            "dependency.index_mapping", "dependency.shape_infer",
        )
    },
    "tp.importance.Group": "an import the original's importance module uses, not its API: tp.Group is the path",
    # the original's autograd tracer
    "tp.INDEX_MAPPING_PLACEHOLDER": "constant of the original's autograd tracer; depgraph records ops instead",
    "tp.MAX_RECURSION_DEPTH": "constant of the original's autograd tracer; depgraph's propagation is iterative",
    "tp.MAX_VALID_DIM": "constant of the original's autograd tracer; depgraph records ops instead",
    "tp.dependency.INDEX_MAPPING_PLACEHOLDER": "see tp.INDEX_MAPPING_PLACEHOLDER",
    "tp.dependency.MAX_RECURSION_DEPTH": "see tp.MAX_RECURSION_DEPTH",
    "tp.dependency.MAX_VALID_DIM": "see tp.MAX_VALID_DIM",
    "tp.Node": "nodes are built by the graph from recorded ops, not from autograd's grad_fn; "
    "node.module and node.name are there",
    "tp.dependency.Node": "see tp.Node",
    "tp.DependencyGraph.get_all_groups": "root_module_types defaults to depgraph.defaults.DEFAULT_ROOT_TYPES "
    "(LSTMs too), the pruners' default, so it lists the groups a pruner ranks (README, Coming from Torch-Pruning)",
    "tp.dependency.DependencyGraph.get_all_groups": "see tp.DependencyGraph.get_all_groups",
    "tp.utils.print_tool": "an instance with the same before_pruning/after_pruning (the original's class "
    "keeps its snapshot in a class attribute); its methods are checked",
}


ALLOWED = {key: why if why.startswith("deliberate: ") else f"deliberate: {why}" for key, why in ALLOWED.items()}


def _covers(key: str, path: str) -> bool:
    """An entry covers its path and everything under it; one ending in '.' or '_' is a prefix."""
    return path == key or path.startswith(key + ".") or (key[-1] in "._" and path.startswith(key))


def _allowed(path: str) -> str | None:
    return next((why for key, why in ALLOWED.items() if _covers(key, path)), None)


def _walk() -> list[tuple[str, object]]:
    seen: dict[str, object] = {}
    for path, obj in public_paths(tp_orig, MODULES):
        seen.setdefault(path, obj)
    return sorted(seen.items())


PATHS = _walk()


def _problems(path: str, original: object) -> list[str]:
    try:
        ours = resolve(depgraph, path.split(".", 1)[1])
    except AttributeError:
        return ["missing in depgraph"]
    if isinstance(original, types.ModuleType):
        return [] if isinstance(ours, types.ModuleType) else ["not a module in depgraph"]
    return signature_problems(original, ours)


def test_the_walk_sees_the_original_api():
    paths = dict(PATHS)
    assert len(paths) > 400
    for path in ("tp.pruner.BasePruner.__init__", "tp.importance.GroupTaylorImportance.__call__",
                 "tp.utils.count_ops_and_params", "tp.DependencyGraph.get_pruning_group",
                 "tp.pruner.function.ConvPruner.prune_out_channels", "tp.utils.print_tool.after_pruning"):
        assert path in paths, path


@pytest.mark.parametrize("path", [p for p, _ in PATHS])
def test_public_name_and_signature(path):
    original = dict(PATHS)[path]
    problems = _problems(path, original)
    if problems and _allowed(path) is None:
        pytest.fail(f"{path}: " + "; ".join(problems))


def test_allow_list_is_current():
    """An entry that excuses nothing any more must be removed; none may be left "pending"."""
    excused: set[str] = set()
    for path, original in PATHS:
        if _problems(path, original):
            excused.update(key for key in ALLOWED if _covers(key, path))
    stale = [k for k in ALLOWED if k not in excused]
    assert not stale, f"allow-list entries that excuse nothing: {stale}"
    pending = [k for k, why in ALLOWED.items() if "pending" in why]
    assert not pending, f"allow-list entries still pending: {pending}"
