"""Tests for depgraph/_lazy.py: registrations that wait for a module someone else imports."""

from __future__ import annotations

import sys
import types

import pytest

from depgraph import _lazy


@pytest.fixture
def fake_module(monkeypatch):
    name = "depgraph_test_fake_pkg.layers"
    monkeypatch.setattr(_lazy, "_PENDING", {})
    yield name
    sys.modules.pop(name, None)


def test_callback_waits_until_the_module_is_imported(fake_module):
    seen = []
    _lazy.when_imported(fake_module, seen.append)
    _lazy.resolve()
    assert seen == []  # never imports it itself
    mod = sys.modules[fake_module] = types.ModuleType(fake_module)
    _lazy.resolve()
    _lazy.resolve()
    assert seen == [mod]  # once


def test_callback_returning_false_runs_again(fake_module):
    calls = []

    def register(mod):
        calls.append(mod)
        return hasattr(mod, "Layer") or False  # not defined yet: a module still being initialised

    _lazy.when_imported(fake_module, register)
    mod = sys.modules[fake_module] = types.ModuleType(fake_module)
    _lazy.resolve()
    mod.Layer = object
    _lazy.resolve()
    _lazy.resolve()
    assert len(calls) == 2 and not _lazy._PENDING
