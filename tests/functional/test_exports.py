"""The ``prune_*`` functions: generated in depgraph/functional/__init__.py, re-exported everywhere the original has them."""

from __future__ import annotations

import pytest

import depgraph as tp
import depgraph.functional as F


def _prune_fns(module: object) -> set[str]:
    return {n for n in dir(module) if n.startswith("prune_") and n != "prune_tensor" and callable(getattr(module, n))}


def test_every_handler_name_exports_a_pair_of_bound_methods():
    for cls in F.EXPORTED_HANDLERS:
        for name in cls.names:
            assert getattr(F, f"prune_{name}_out_channels") is cls.INSTANCE.prune_out_channels
            assert getattr(F, f"prune_{name}_in_channels") is cls.INSTANCE.prune_in_channels


@pytest.mark.parametrize("where", ["tp", "tp.pruner", "tp.function", "tp.pruner.function"])
def test_every_namespace_agrees_with_functional(where):
    module = {"tp": tp, "tp.pruner": tp.pruner, "tp.function": tp.function,
              "tp.pruner.function": tp.pruner.function}[where]
    assert _prune_fns(module) == _prune_fns(F)
    for name in _prune_fns(F):
        assert getattr(module, name) is getattr(F, name), name
        assert name in module.__all__, name
    assert {"prune_rmsnorm_out_channels", "prune_gru_in_channels", "prune_rnn_out_channels"} <= _prune_fns(module)


def test_the_originals_names_all_exist():
    torch_pruning = pytest.importorskip("torch_pruning")
    for module, ours in [(torch_pruning, tp), (torch_pruning.pruner, tp.pruner), (torch_pruning.function, tp.function)]:
        missing = _prune_fns(module) - _prune_fns(ours)
        assert not missing, f"{module.__name__}: {sorted(missing)}"
    handler_classes = {n for n in dir(torch_pruning.function) if n.endswith("Pruner") or n == "BasePruningFunc"}
    assert handler_classes <= set(dir(tp.function)), handler_classes - set(dir(tp.function))
    assert {"BasePruningFunc", "PrunerBox"} <= set(dir(tp.pruner)) & set(dir(tp))
