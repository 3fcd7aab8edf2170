"""The cyclic collector is paused inside depgraph's allocation-heavy calls and given back exactly as found
(depgraph/trace/gc_pause.py)."""

from __future__ import annotations

import gc
import threading
import traceback

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.errors import TraceError
from depgraph.trace import memo
from depgraph.trace.gc_pause import gc_paused


@pytest.fixture
def collector_state():
    """Put the collector back as the test found it, whatever the test did."""
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_pauses_and_restores_an_enabled_collector(collector_state):
    gc.enable()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled(collector_state):
    gc.disable()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_nested_pauses_restore_only_at_the_outermost_exit(collector_state):
    gc.enable()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner exit must not re-enable under the outer block
    assert gc.isenabled()


def test_restores_when_the_block_raises(collector_state):
    gc.enable()
    with pytest.raises(KeyError, match="boom"), gc_paused():
        raise KeyError("boom")
    assert gc.isenabled()

    @gc_paused()
    def fails():
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        fails()
    assert gc.isenabled()


def test_overlapping_threads_pause_once_and_the_last_one_out_restores(collector_state):
    gc.enable()
    inside, leave = threading.Event(), threading.Event()

    def other():
        with gc_paused():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    with gc_paused():
        t.start()
        inside.wait(10)
    assert not gc.isenabled()  # the other thread is still inside
    leave.set()
    t.join(10)
    assert gc.isenabled()


def test_an_explicit_collection_still_runs_inside(collector_state):
    gc.enable()

    class Cycle:
        pass

    with gc_paused():
        a = Cycle()
        a.me = a
        del a
        assert gc.collect() >= 1


def _net():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()


@pytest.mark.parametrize("enabled", [True, False])
def test_build_init_and_step_leave_the_collector_as_found(collector_state, enabled):
    (gc.enable if enabled else gc.disable)()
    x = torch.randn(1, 3, 8, 8)
    model = _net()
    tp.DependencyGraph().build_dependency(model, x)
    assert gc.isenabled() is enabled
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                                  ignored_layers=[model[2]])
    assert gc.isenabled() is enabled
    pruner.step()
    assert gc.isenabled() is enabled
    assert model[0].out_channels == 4
    with pytest.raises(TraceError, match="failed on the example inputs"):
        tp.DependencyGraph().build_dependency(model, torch.randn(1, 5, 8, 8))
    assert gc.isenabled() is enabled
    memo.forget(model)


def test_no_automatic_collection_while_tracing_or_building_the_graph(collector_state):
    gc.enable()
    starts: list[int] = []

    def log(phase, info):  # an automatic collection starts from whatever frame allocated
        if phase == "start" and any(f.name in ("_record", "build") for f in traceback.extract_stack()):
            starts.append(info["generation"])

    model = _net()
    x = torch.randn(1, 3, 8, 8)
    gc.collect()
    thresholds = gc.get_threshold()
    gc.callbacks.append(log)
    try:
        gc.set_threshold(1)  # would collect at every allocation of a tracked object
        tp.DependencyGraph().build_dependency(model, x)
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks.remove(log)
    assert starts == []
    memo.forget(model)

    def _record():  # the control: a frame of the recorder's name, allocating with the collector on
        return [[i] for i in range(100)]

    gc.callbacks.append(log)
    try:
        gc.set_threshold(1)
        _record()
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks.remove(log)
    assert starts
