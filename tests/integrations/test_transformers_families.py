"""Every Hugging Face family of issue 4: prune heads, head dims, MLP and hidden dims, then reload.

Markers:
    zoo   every test here (real architectures from transformers, tiny random weights, offline).

Each case prunes one kind of channel the same way in every layer (see
``prune_uniformly``), then checks, with one function:

* the model runs and keeps its output shapes, and ``depgraph.verify`` proves the
  prune exact (heads, head dims, MLP) or, through norms (hidden), that shapes match;
* where the family's config can describe the result: ``check_config`` passes,
  ``save_pretrained`` then ``from_pretrained`` gives the same logits, and causal
  LMs generate the same tokens before and after the reload;
* where it cannot (``INEXPRESSIBLE``): ``check_config`` raises and says why.

``xfail(strict=True)`` marks what depgraph cannot prune yet, with the reason.
"""

from __future__ import annotations

import copy

import pytest
import torch

import depgraph as tp
from tests.integrations._hf import FAMILIES, KINDS, Family, logits, output_of, prune_uniformly

transformers = pytest.importorskip("transformers")
from depgraph.integrations.transformers import check_config  # noqa: E402

# Pruning layer by layer passes through uneven states; the one warning about them is tested elsewhere.
pytestmark = [pytest.mark.zoo, pytest.mark.filterwarnings("ignore:depgraph. after this prune")]

# Families whose config derives the head size as width // heads (transformers 5 reads no head_dim
# for them and dropped pruned_heads): pruning heads, head dims or the hidden size *alone* leaves
# heads x head dim != width. check_config says so (the text below) and how to prune so that the
# config can describe it; pruning them *together* round-trips (test_head_size_configs.py).
_HEAD_SIZE_FROM_HIDDEN = "can only describe attention whose heads x head dim equals the layer width"
INEXPRESSIBLE: dict[tuple[str, str], str] = {
    **{(f, k): _HEAD_SIZE_FROM_HIDDEN for f in ("bert", "roberta", "clip_vision", "gpt2", "opt", "swin")
       for k in ("heads", "head_dims", "hidden")},
    ("swin", "hidden"): "are not embed_dim * 2**stage, as SwinConfig requires",  # only stage 0 shrank
}
NOT_PRUNABLE: dict[tuple[str, str], str] = {
}
EXACT = {"heads": True, "head_dims": True, "mlp": True, "hidden": False}


def _case(family: str, kind: str):
    reason = NOT_PRUNABLE.get((family, kind))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(family, kind, marks=marks, id=f"{family}-{kind}")


def check_hf_prune(fam: Family, kind: str, tmp_path) -> torch.nn.Module:
    """Prune ``kind`` uniformly, prove it, and check the reload (or the refusal to describe it)."""
    model, inputs = fam.build(), fam.example_inputs()
    original = copy.deepcopy(model)
    shape = tuple(output_of(model(**inputs)).shape)
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, inputs, output_transform=output_of)
    prune_uniformly(DG, model, kind)

    assert tuple(output_of(model(**inputs)).shape) == shape
    result = tp.verify(original, model, inputs, output_transform=output_of)
    assert result.shapes_match, str(result)
    if EXACT[kind]:
        assert result.applies and result.exact, str(result)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in original.parameters())

    why = INEXPRESSIBLE.get((fam.name, kind))
    if why is not None:
        with pytest.raises(tp.DepgraphError, match="config cannot describe the pruned model") as refusal:
            check_config(model)
        assert why in str(refusal.value) and "depgraph.save(model, path)" in str(refusal.value), str(refusal.value)
        return model
    check_config(model)
    model.save_pretrained(tmp_path)
    reloaded = getattr(transformers, fam.model_cls).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, inputs), logits(model, inputs), rtol=1e-5, atol=1e-5)
    if fam.causal_lm:
        ids = inputs["input_ids"][:1]
        kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            assert torch.equal(model.generate(ids, **kwargs), reloaded.generate(ids, **kwargs))
    return model


@pytest.mark.parametrize("family,kind", [_case(f, k) for f in FAMILIES for k in KINDS])
def test_prune_and_reload(family: str, kind: str, tmp_path) -> None:
    check_hf_prune(FAMILIES[family], kind, tmp_path)


def test_every_family_builds_offline() -> None:
    for fam in FAMILIES.values():
        model = fam.build()
        assert output_of(model(**fam.example_inputs())).ndim >= 2
