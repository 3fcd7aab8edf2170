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
    monkeypatch.setattr(_lazy, "_SEEN", None)
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


def test_lookups_look_for_awaited_modules_only_after_an_import(fake_module, monkeypatch):
    """A registry lookup calls resolve(); without a new import it must not check every awaited name."""
    from tests._checks import count_calls

    for i in range(50):
        _lazy.when_imported(f"depgraph_test_never_imported_{i}", lambda mod: None)
    seen = []
    _lazy.when_imported(fake_module, seen.append)
    looks = count_calls(monkeypatch, _lazy, "_imported")
    for _ in range(100):
        _lazy.resolve()
    assert looks == [1] and seen == []  # one look, then nothing changed in sys.modules
    mod = sys.modules[fake_module] = types.ModuleType(fake_module)
    for _ in range(100):
        _lazy.resolve()
    assert looks == [1, 1] and seen == [mod]


def test_resolve_is_run_by_every_layer_lookup_and_finds_a_late_import(fake_module, monkeypatch):
    from depgraph.layers.spec import find_layer_part

    class Late:
        pass

    seen = []
    _lazy.when_imported(fake_module, seen.append)
    assert find_layer_part(Late, "handler") is None and seen == []
    sys.modules[fake_module] = types.ModuleType(fake_module)
    find_layer_part(Late, "handler")
    assert len(seen) == 1
