"""The recovery losses alone: distillation KL, task cross-entropy, hidden-state projections, batch forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from depgraph.errors import RecoveryError
from depgraph.recovery.batches import IGNORE_INDEX, logits_of, split_batch
from depgraph.recovery.losses import HiddenProjection, channel_dim, distillation_kl, task_loss


def test_kl_is_zero_for_equal_logits_and_matches_the_definition() -> None:
    s, t = torch.randn(4, 7), torch.randn(4, 7)
    assert distillation_kl(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    expected = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True,
                        reduction="batchmean") * 4
    torch.testing.assert_close(distillation_kl(s, t, 2.0), expected)


def test_kl_ignores_masked_positions() -> None:
    s, t = torch.randn(2, 5, 9), torch.randn(2, 5, 9)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    s_pad = s.clone()
    s_pad[0, 3:] = 50 * torch.randn(2, 9)  # garbage under the padding must not count
    torch.testing.assert_close(distillation_kl(s_pad, t, 1.0, mask), distillation_kl(s, t, 1.0, mask))
    assert distillation_kl(s_pad, t, 1.0, None) > distillation_kl(s, t, 1.0, None)


def test_causal_task_loss_predicts_the_next_token() -> None:
    logits = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    labels[1, 4:] = IGNORE_INDEX
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(task_loss(logits, labels, causal_lm=True), expected)
    with pytest.raises(RecoveryError, match=r"labels \(2, 6\) \(torch.float32\) do not fit logits \(2, 6, 11\)"):
        task_loss(logits, labels.float(), causal_lm=False)


def test_causal_task_loss_is_the_models_own_loss_and_gradient() -> None:
    """The labels are shifted, not the logits: the value and the gradient are a Llama's own ``labels=`` loss."""
    pytest.importorskip("transformers")
    from ._models import llama_pair, token_data

    _, model = llama_pair()
    ids = token_data()[0]["input_ids"].reshape(1, -1).repeat(2, 1)
    out = model(input_ids=ids)
    ours = task_loss(out.logits, ids, causal_lm=True)
    theirs = model(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(ours, theirs)
    g_ours = torch.autograd.grad(ours, model.lm_head.weight)[0]
    g_theirs = torch.autograd.grad(theirs, model.lm_head.weight)[0]
    torch.testing.assert_close(g_ours, g_theirs)


def test_hidden_projection_identity_and_learned() -> None:
    same = HiddenProjection(8, 8)
    assert same.proj is None and not list(same.parameters())
    x = torch.randn(2, 8, 4, 4)
    assert same(x, x).item() == 0.0
    wider = HiddenProjection(4, 8)  # pruned feature map (N, 4, H, W) against the teacher's (N, 8, H, W)
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3)
    padded = torch.cat([s, torch.zeros(2, 4, 3, 3)], 1)  # starts as "copy the first channels"
    torch.testing.assert_close(wider(s, t), F.mse_loss(padded, t))
    wider(s, t).backward()
    assert wider.proj.weight.grad is not None
    assert channel_dim(torch.zeros(2, 5, 7)) == 2 and channel_dim(s) == 1
    with pytest.raises(RecoveryError, match="hidden widths changed"):
        wider(t, t)


def test_batch_forms() -> None:
    ids = torch.randint(0, 9, (2, 5))
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    b = split_batch({"input_ids": ids, "attention_mask": mask}, causal_lm=True)
    assert b.kwargs.keys() == {"input_ids", "attention_mask"} and b.mask is mask
    assert (b.labels[0, 3:] == IGNORE_INDEX).all() and torch.equal(b.labels[1], ids[1])
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    b = split_batch((x, y), causal_lm=False)
    assert b.args[0] is x and b.labels is y and not b.kwargs
    assert split_batch([x], causal_lm=False).labels is None
    with pytest.raises(RecoveryError, match="cannot read a batch of type str"):
        split_batch("text", causal_lm=False)
    assert logits_of({"logits": x, "loss": None}) is x and logits_of((x, y)) is x
    with pytest.raises(RecoveryError, match="cannot find logits"):
        logits_of((None,))


def _plain_kl(s: torch.Tensor, t: torch.Tensor, temperature: float, mask: torch.Tensor | None) -> torch.Tensor:
    log_p_s, log_p_t = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    per_position = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    if mask is None:
        return per_position.mean() * temperature ** 2
    return (per_position * mask).sum() / mask.sum() * temperature ** 2


@pytest.mark.parametrize("masked", [False, True])
def test_chunked_kl_matches_the_textbook_formula_and_its_gradient(monkeypatch: pytest.MonkeyPatch,
                                                                   masked: bool) -> None:
    """The row-chunked loss (teacher without gradient) equals the plain formula, value and student gradient,
    with chunks that do not divide the rows."""
    from depgraph.recovery import losses

    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 3 * 11)  # 3 rows per chunk, 10 rows: a ragged last chunk
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11, dtype=torch.float64), 3 * torch.randn(2, 5, 11, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.float64) if masked else None
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    got = distillation_kl(s1, t, 2.5, mask)
    want = _plain_kl(s2, t, 2.5, mask)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)
    (3 * got).backward()
    (3 * want).backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-5, atol=1e-7)
    assert s1.grad.abs().max() > 1e-3  # a real gradient, not zeros on both sides


def test_kl_with_a_teacher_that_needs_gradients_sends_them_to_both() -> None:
    s, t = torch.randn(3, 7, requires_grad=True), torch.randn(3, 7, requires_grad=True)
    distillation_kl(s, t, 2.0).backward()
    assert t.grad is not None and t.grad.abs().max() > 0 and s.grad.abs().max() > 0
