"""The recovery losses: distillation on logits, matching of hidden states, and the task loss.

What is matched, precisely:

* **logits**: ``T**2 * KL(softmax(teacher / T) || softmax(student / T))`` over the
  last (class / vocabulary) dimension, averaged over samples, and over token
  positions where the mask is 1 for sequence outputs. The ``T**2`` keeps the
  gradient scale independent of the temperature (Hinton et al., 2015).
* **hidden states**: for each matched pair, the mean squared error between the
  teacher's tensor and the student's tensor mapped to the teacher's width.
  The width is the channel dimension: dim 1 for 4-D and larger tensors
  (``N, C, H, W`` feature maps), the last dim otherwise (``B, T, D`` token
  states). Equal widths are compared directly (identity); different widths
  go through a learned linear map ``student width -> teacher width`` (a bias-free
  ``nn.Linear``), trained with the student and dropped afterwards.
* **task**: cross-entropy against the labels: ``(B, C)`` logits with ``(B,)``
  class labels, ``(B, T, V)`` logits with ``(B, T)`` token labels (shifted by one
  for causal LMs), -100 ignored.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import RecoveryError
from .batches import IGNORE_INDEX

__all__ = ["distillation_kl", "task_loss", "HiddenProjection", "channel_dim"]


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """``T**2 * KL(teacher || student)`` of temperature-scaled logits, averaged over samples/positions.

    Why chunked: a language model's logits are ``(batch, tokens, vocabulary)``; at a
    vocabulary of 50k-150k the textbook formula allocates several such tensors (two
    log-softmaxes, an exponential, a difference, a product, and as many in the
    backward pass), which costs more time in memory traffic than the arithmetic. When
    the teacher's logits need no gradient (the usual case) the loss runs row chunk by
    row chunk and its backward recomputes ``softmax(student / T) - softmax(teacher / T)``
    per chunk, so only the gradient itself is a full-size tensor.

    Args:
        student: logits ``(..., C)``.
        teacher: logits of the same shape.
        temperature: softens both distributions; 1 gives the plain KL.
        mask: ``(...)`` with 1 where a position counts (padding 0); None counts every position.
    """
    t = temperature
    rows = student.shape[:-1]
    if mask is not None and mask.shape == rows:
        m = mask.to(torch.float32)
        weights = m / m.sum().clamp_min(1.0)
    else:
        weights = torch.full(rows, 1.0 / max(rows.numel(), 1), device=student.device)
    if teacher.requires_grad:  # gradients into the teacher too: the plain formula
        log_p_s = F.log_softmax(student.float() / t, dim=-1)
        log_p_t = F.log_softmax(teacher.float() / t, dim=-1)
        per_position = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
        return (per_position * weights.to(per_position.device)).sum() * t * t
    return _ChunkedKL.apply(student, teacher, weights.to(student.device), float(t))


_CHUNK_ELEMENTS = 1 << 21  # logits handled at once by the chunked KL (8 MB of float32)


def _row_chunks(n_rows: int, width: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    return [slice(a, min(a + step, n_rows)) for a in range(0, n_rows, step)]


class _ChunkedKL(torch.autograd.Function):
    """``T**2 * sum_i w_i KL_i(teacher || student)`` over rows; gradient to the student only."""

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor,
                t: float) -> torch.Tensor:
        s2, t2, w = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1]), weights.reshape(-1)
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        for rows in _row_chunks(s2.shape[0], s2.shape[1]):
            log_p_s = F.log_softmax(s2[rows].float() / t, dim=-1)
            log_p_t = F.log_softmax(t2[rows].float() / t, dim=-1)
            total += ((log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * w[rows]).sum()
        ctx.save_for_backward(student, teacher, weights)
        ctx.t = t
        return total * t * t

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        student, teacher, weights = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        t = ctx.t
        s2, t2, w = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1]), weights.reshape(-1)
        out = torch.empty_like(s2)
        scale = grad.float() * t  # d/ds of T^2 * KL(softmax(t/T) || softmax(s/T)) = T * (p_s - p_t)
        for rows in _row_chunks(s2.shape[0], s2.shape[1]):
            diff = F.softmax(s2[rows].float() / t, dim=-1) - F.softmax(t2[rows].float() / t, dim=-1)
            out[rows] = (diff * (w[rows] * scale).unsqueeze(-1)).to(out.dtype)
        return out.reshape(student.shape), None, None, None


def task_loss(logits: torch.Tensor, labels: torch.Tensor, causal_lm: bool) -> torch.Tensor:
    """Cross-entropy of ``logits`` against ``labels`` (the task loss; see the module docstring).

    Raises:
        RecoveryError: the labels' shape or type does not fit the logits.
    """
    if causal_lm:
        if logits.dim() != 3 or labels.shape != logits.shape[:2]:
            raise RecoveryError(f"causal-LM labels {tuple(labels.shape)} do not fit logits {tuple(logits.shape)}: "
                                "labels must be (batch, sequence) token ids")
        # position t predicts token t + 1; the labels move, not the logits: slicing (B, T, V) would copy
        # them (a vocabulary-wide tensor) and its backward fill another; the last position has no target
        labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    if labels.is_floating_point() or labels.shape != logits.shape[:-1]:
        raise RecoveryError(f"labels {tuple(labels.shape)} ({labels.dtype}) do not fit logits {tuple(logits.shape)}: "
                            "classification takes integer class ids of shape logits.shape[:-1]")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(),
                           ignore_index=IGNORE_INDEX)


def channel_dim(t: torch.Tensor) -> int:
    """The width dimension of a hidden tensor: 1 for ``(N, C, H, W, ...)``, the last one otherwise."""
    return 1 if t.dim() >= 4 else t.dim() - 1


class HiddenProjection(nn.Module):
    """Maps one student hidden tensor to the teacher's width and returns its MSE to the teacher's.

    Identity when the widths are equal; otherwise a learned bias-free linear map
    along :func:`channel_dim`, initialised to copy the first ``min`` channels
    (the kept channels of a pruned layer are a subset of the teacher's, so this
    starts near a selection and learns which).
    """

    def __init__(self, student_width: int, teacher_width: int):
        super().__init__()
        self.student_width, self.teacher_width = student_width, teacher_width
        self.proj: nn.Linear | None = None
        if student_width != teacher_width:
            self.proj = nn.Linear(student_width, teacher_width, bias=False)
            with torch.no_grad():
                self.proj.weight.zero_()
                n = min(student_width, teacher_width)
                self.proj.weight[:n, :n] = torch.eye(n)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        d = channel_dim(student)
        if student.shape[d] != self.student_width or teacher.shape[channel_dim(teacher)] != self.teacher_width:
            raise RecoveryError(f"hidden widths changed: expected student {self.student_width} / teacher "
                                f"{self.teacher_width}, got {tuple(student.shape)} / {tuple(teacher.shape)}")
        if self.proj is not None:
            student = self.proj(student.movedim(d, -1).to(self.proj.weight.dtype)).movedim(-1, d)
        if student.shape != teacher.shape:
            raise RecoveryError(f"a student hidden state {tuple(student.shape)} cannot be matched with the "
                                f"teacher's {tuple(teacher.shape)}: only the width may differ")
        return F.mse_loss(student.float(), teacher.float())
