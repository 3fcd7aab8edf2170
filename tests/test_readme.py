"""README.md stays true: its python blocks run, its commands match CI, its lists match the registries.

* Every ```python block runs on its own, in a fresh namespace (the blocks assert
  the figures they show).
* The test command on README's first lines is the one ``.ci/run`` runs.
* Every layer named under "Supported layers and ops" has a pruning handler.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch.nn as nn

from depgraph.functional import get_handler

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

pytest.importorskip("torchvision")


def _python_blocks() -> list:
    """``pytest.param(code, id=<heading above the block>)`` for each python block."""
    params, heading = [], "top"
    for m in re.finditer(r"^(#+ [^\n]*)$|^```python\n(.*?)^```", README, flags=re.M | re.S):
        if m.group(1):
            heading = re.sub(r"[^a-z0-9]+", "-", m.group(1).lstrip("#").strip().lower()).strip("-")
        else:
            params.append(pytest.param(m.group(2), id=f"{heading}-{len(params)}"))
    return params


BLOCKS = _python_blocks()


def test_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", BLOCKS)
def test_python_block_runs(code: str, capsys) -> None:
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 - our own README
    capsys.readouterr()


def test_opening_commands_match_ci() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1).strip().splitlines()
    assert first_block == [
        "pip install -e '.[vision]' && depgraph prune resnet50 --ratio 0.5",
        "pip install -e '.[test]' && python -m pytest -m \"not slow\"",
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pip install -e '.[test,docs]'" in ci
    assert "mkdocs build --strict" in ci  # the API reference is built from the docstrings
    assert 'python -m pytest -m "not slow"' in ci


def test_supported_layers_have_handlers() -> None:
    section = README.split("## Supported layers and ops", 1)[1].split("Ops with a dimension rule", 1)[0]
    names = [n for n in re.findall(r"`(\w+)`", section) if hasattr(nn, n)]
    assert len(names) >= 20
    missing = []
    for name in names:
        try:
            get_handler(getattr(nn, name))
        except Exception:
            missing.append(name)
    assert not missing, f"README lists layers without a handler: {missing}"
