"""Tests of depgraph/utils/benchmark.py (CPU; the CUDA branch runs where a GPU exists)."""

import pytest
import torch
import torch.nn as nn

from depgraph.utils import benchmark


@pytest.fixture
def model():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).train()


def test_latency_fps_throughput(model):
    x = torch.randn(8, 16)
    mean, std = benchmark.measure_latency(model, x, repeat=5, warmup=1)
    assert mean > 0 and std >= 0
    assert model.training  # flags restored
    fps = benchmark.measure_fps(model, x, repeat=3, warmup=0)
    thr = benchmark.measure_throughput(model, x, repeat=3, warmup=0)
    assert fps > 0 and thr > 0


def test_memory_cpu_counts_weights_and_outputs(model):
    x = torch.randn(8, 16)
    weights = sum(p.numel() for p in model.parameters()) * 4
    assert benchmark.measure_memory(model, x) == weights + 8 * 4 * 4


def test_bad_counts_raise(model):
    with pytest.raises(ValueError, match="repeat >= 1"):
        benchmark.measure_latency(model, torch.randn(1, 16), repeat=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_latency_and_memory(model):
    model = model.cuda()
    x = torch.randn(8, 16, device="cuda")
    assert benchmark.measure_latency(model, x, repeat=3, warmup=1)[0] > 0
    assert benchmark.measure_memory(model, x) > 0
