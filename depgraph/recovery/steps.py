"""The steps of a recovery: the optimizer and its schedule, the losses of one batch, the
training loop and the held-out evaluation, over models ``accelerate`` has prepared.

:func:`depgraph.recovery.recover` checks the options and data, probes one batch and
prepares the models; what runs per batch is here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..errors import RecoveryError
from .batches import Batch, logits_of, split_batch
from .ema import WeightAverage
from .hidden import HiddenTap
from .losses import distillation_kl, task_loss
from .options import RecoverOptions

__all__ = ["adamw", "lr_factor", "call_with_tap", "TrainingRun", "cycle_batches", "Evaluation", "BestWeights"]


class Evaluation(NamedTuple):
    """One measure on the evaluation batches: after ``step`` optimizer steps (0: before training)."""

    step: int
    kd: float | None  #: distillation gap, KL(teacher || student) at temperature 1 (None without a teacher)
    task: float | None  #: task loss (None without labels)

    def loss(self) -> float:
        """What ``keep_best`` minimises: the task loss when there are labels, else the distillation gap."""
        return self.task if self.task is not None else self.kd


class BestWeights:
    """The weights of the lowest-loss :class:`Evaluation` so far, copied to the CPU, and put back on demand.

    Why the module's own tensors rather than a state dict: they are what training changes
    (the student and its hidden-state projections, unwrapped or under DDP), and copying
    them back in place keeps every reference the optimizer and accelerate hold valid.
    """

    def __init__(self, module: nn.Module):
        self.tensors = [*module.parameters(), *module.buffers()]
        self.best: Evaluation | None = None
        self.saved: list[torch.Tensor] = []

    def beats(self, evaluation: Evaluation) -> bool:
        """Whether ``evaluation`` is lower than the best so far (ties keep the earlier step)."""
        return self.best is None or evaluation.loss() < self.best.loss()

    @torch.no_grad()
    def offer(self, evaluation: Evaluation) -> bool:
        """Keep the current weights when ``evaluation`` beats the best so far."""
        if not self.beats(evaluation):
            return False
        self.best = evaluation
        self.saved = [t.detach().to("cpu", copy=True) for t in self.tensors]
        return True

    def final(self, last: Evaluation) -> Evaluation:
        """The measure a run ends on: ``last`` when it beats the best (the module holds its weights, nothing
        is copied), else the best, whose weights are copied back."""
        if self.beats(last):
            return last
        self.restore()
        return self.best  # type: ignore[return-value]  # not None: beats() is True without a best

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the kept weights back into the module (nothing kept: nothing to do)."""
        for t, saved in zip(self.tensors, self.saved, strict=True):
            t.copy_(saved.to(t.device))


def adamw(params: list[nn.Parameter], opts: RecoverOptions) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where the parameters' device has one (CPU included), else the default.

    Why: the default CPU implementation loops over the tensors in Python; for a 100M-parameter
    student its step took 1.6 s against 0.1 s fused (one thread), a sizeable share of a
    recovery step on CPU.
    """
    try:
        return torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):  # a device, dtype or tensor kind without the fused kernel
        return torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)


def lr_factor(step: int, opts: RecoverOptions) -> float:
    """The fraction of ``opts.lr`` used by optimizer step ``step`` (0-based): warm-up, then the schedule."""
    warm = opts.warmup_steps
    if warm and step < warm:
        return (step + 1) / warm
    if opts.lr_schedule == "constant":
        return 1.0
    progress = min(max(step - warm, 0) / max(opts.steps - warm, 1), 1.0)
    if opts.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def call_with_tap(model: nn.Module, b: Batch, tap: HiddenTap | None) -> Any:
    """``model`` on batch ``b``, with the keyword arguments a hidden-state tap needs."""
    extra = tap.extra_kwargs() if tap is not None else {}
    return model(*b.args, **b.kwargs, **extra)


class TrainingRun:
    """The training and evaluation steps, sharing the models, taps and weights."""

    def __init__(self, accelerator: Any, wrapped: nn.Module, teacher: nn.Module | None, causal: bool,
                 s_tap: HiddenTap | None, t_tap: HiddenTap | None, opts: RecoverOptions, task_weight: float):
        self.acc, self.wrapped, self.teacher, self.causal = accelerator, wrapped, teacher, causal
        self.s_tap, self.t_tap, self.opts, self.task_weight = s_tap, t_tap, opts, task_weight
        self.on_step: Callable[[int, nn.Module], None] | None = None
        self.on_eval: Callable[[int], None] | None = None  # after every ``opts.eval_every`` steps but the last
        self.average: WeightAverage | None = None  # updated after every optimizer step (``opts.ema_decay``)

    def averaged(self) -> AbstractContextManager:
        """The student holding the moving average inside the block, its own weights again after it; without
        ``ema_decay`` (or once the average is the weights for good) nothing changes."""
        return self.average.applied() if self.average is not None else nullcontext()

    def losses(self, batch: Any, temperature: float, hidden: bool,
               distil: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(kd, task, hidden) losses of the student on ``batch``; each is 0 when unused.

        With neither ``distil`` nor ``hidden`` the teacher is not run at all: a task-loss-only fine-tune
        (``kd_weight=0``, or no teacher) then costs the student's forward and backward alone. No default:
        every caller says whether a teacher runs, since without one it must not.
        """
        b = split_batch(batch, self.causal)
        taps = hidden and self.s_tap is not None
        t_out = None
        if distil or taps:
            with torch.no_grad(), self.acc.autocast():
                t_out = call_with_tap(self.teacher, b, self.t_tap if taps else None)
        if taps:  # the teacher first: the student's forward takes its hidden states (see _Student)
            s_out, mse = self.wrapped(*b.args, **b.kwargs, **self.s_tap.extra_kwargs(),
                                      hidden_targets=self.t_tap.take(t_out))
        else:
            s_out = call_with_tap(self.wrapped, b, None)
        s_logits = logits_of(s_out)
        if t_out is None:
            kd = s_logits.new_zeros((), dtype=torch.float32)
        else:
            mask = b.mask if s_logits.dim() == 3 else None
            kd = distillation_kl(s_logits, logits_of(t_out), temperature, mask)
        zero = kd.new_zeros(())
        task = task_loss(s_logits, b.labels, self.causal) if b.labels is not None else zero
        if not taps:
            mse = zero
        return kd, task, mse

    def train(self, loader: DataLoader, optimizer: Any, scheduler: Any) -> list[float]:
        """Run ``opts.steps`` optimizer steps; the loss of each, averaged over the processes.

        Raises:
            RecoveryError: the loss became NaN or infinite (the caller restores the student).
        """
        from tqdm.auto import tqdm

        o, losses = self.opts, []
        self.wrapped.train()
        bar = tqdm(total=o.steps, desc="recover", disable=not (o.progress and self.acc.is_local_main_process))
        batches = cycle_batches(loader)
        try:
            for _ in range(o.steps):
                for _ in range(o.grad_accum):
                    with self.acc.accumulate(self.wrapped):
                        kd, task, mse = self.losses(next(batches), o.temperature, hidden=o.hidden_weight > 0,
                                                    distil=o.kd_weight > 0)
                        loss = o.kd_weight * kd + self.task_weight * task + o.hidden_weight * mse
                        self.acc.backward(loss)
                        if self.acc.sync_gradients and o.max_grad_norm is not None:
                            self.acc.clip_grad_norm_(self.wrapped.parameters(), o.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad()
                if self.average is not None:
                    self.average.update()
                mean = self.acc.gather(loss.detach().float().reshape(1)).mean().item()
                if not math.isfinite(mean):
                    raise RecoveryError(f"recover: the loss became {mean} at step {len(losses) + 1}; "
                                        "lower lr or use mixed_precision='no'")
                losses.append(mean)
                if self.on_step is not None and self.acc.is_main_process:
                    with self.averaged():
                        self.on_step(len(losses), self.acc.unwrap_model(self.wrapped).model)
                if self.on_eval is not None and o.eval_every and len(losses) % o.eval_every == 0 \
                        and len(losses) < o.steps:  # every process: the measure is reduced across them
                    self.on_eval(len(losses))
                    self.wrapped.train()
                bar.update(1)
                bar.set_postfix(loss=f"{mean:.4f}", kd=f"{kd.item():.4f}")
        finally:
            bar.close()
        return losses

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> tuple[float | None, float]:
        """Mean distillation KL (T=1; None without a teacher) and task loss over the first ``eval_batches``
        batches, all processes."""
        self.wrapped.eval()
        total = torch.zeros(3, device=self.acc.device)  # kd sum, task sum, batches
        for i, batch in enumerate(loader):
            if i >= self.opts.eval_batches:
                break
            kd, task, _ = self.losses(batch, 1.0, hidden=False, distil=self.teacher is not None)
            total += torch.stack([kd.float(), task.float(), kd.new_ones((), dtype=torch.float32)])
        total = self.acc.reduce(total, reduction="sum")
        n = total[2].clamp_min(1.0)
        return (total[0] / n).item() if self.teacher is not None else None, (total[1] / n).item()


def cycle_batches(loader: DataLoader):
    """Cycle through ``loader`` (a new epoch, reshuffled, whenever it runs out)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RecoveryError("recover: the data yields no batch")
        epoch += 1
