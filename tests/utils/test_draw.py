"""Tests of depgraph/utils/draw.py on a real dependency graph."""

import pytest
import torch
import torchvision

import depgraph as tp
from depgraph.utils import draw_computational_graph, draw_dependency_graph, draw_groups

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def DG():  # noqa: N802
    model = torchvision.models.resnet18(weights=None).eval()
    return tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))


def _matrix(fig_ax):
    return fig_ax[1].images[0].get_array()


@pytest.mark.parametrize("draw", [draw_computational_graph, draw_dependency_graph, draw_groups])
def test_pictures_are_written(DG, draw, tmp_path):  # noqa: N803
    out = tmp_path / "picture.png"
    fig_ax = draw(DG, str(out), figsize=(4, 4), dpi=50)
    assert out.stat().st_size > 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = _matrix(fig_ax)
    assert m.sum() > 0


def test_computational_graph_edges(DG):  # noqa: N803
    m = _matrix(draw_computational_graph(DG, "/dev/null", figsize=(2, 2), dpi=10))
    names = [n.name for n in DG.module2node.values()]
    conv1, bn1 = names.index("conv1"), names.index("bn1")
    block_conv1 = names.index("layer1.0.conv1")
    assert m[conv1, bn1] == 1 and m[bn1, block_conv1] == 1  # through relu and maxpool
    assert m[conv1, block_conv1] == 0


def test_groups_block_links_coupled_slots(DG):  # noqa: N803
    m = _matrix(draw_groups(DG, "/dev/null", figsize=(2, 2), dpi=10))
    names = [n.name for n in DG.module2node.values()]
    stem_out = 2 * names.index("conv1") + 1
    res_out = 2 * names.index("layer1.0.conv2") + 1  # the residual couples it to the stem
    other = 2 * names.index("layer1.0.conv1") + 1
    assert m[stem_out, res_out] == 1 and m[stem_out, other] == 0
