"""The public surface: lean imports and names that resolve.

Optional extras stay optional: ``import depgraph`` (and the command-line
module) must not import timm, transformers, matplotlib or rich; they are
imported only where a feature needs them. Checked in a fresh interpreter,
since the test process itself has imported them.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import depgraph

OPTIONAL = ("timm", "transformers", "matplotlib", "rich")


@pytest.mark.parametrize("module", ["depgraph", "depgraph.cli"])
def test_import_pulls_in_no_optional_dependency(module: str) -> None:
    code = (
        f"import json, sys, {module}; "
        f"print(json.dumps([m for m in {OPTIONAL!r} if m in sys.modules]))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("module", ["depgraph", "depgraph.importance", "depgraph.pruner", "depgraph.utils"])
def test_all_names_resolve(module: str) -> None:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    assert names, f"{module} has no __all__"
    assert len(names) == len(set(names)), f"{module}.__all__ lists a name twice"
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{module}.__all__ names that do not resolve: {missing}"


def test_version_comes_from_metadata() -> None:
    from importlib.metadata import version

    assert depgraph.__version__ == version("depgraph")
