"""The options of :func:`depgraph.recover`, collected and validated once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import OptionError

__all__ = ["RecoverOptions", "LR_SCHEDULES", "recover_options"]

MIXED_PRECISION = ("no", "fp16", "bf16")
#: Learning rate after the warm-up: held, or decayed to 0 at the last step along a cosine or a line.
LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class RecoverOptions:
    """How a pruned model is trained back towards its unpruned teacher.

    Attributes:
        steps: optimizer steps (each of ``grad_accum`` batches per process).
        lr: AdamW learning rate, reached after a linear warm-up of ``warmup_steps``.
        lr_schedule: after the warm-up, ``"constant"`` keeps ``lr``; ``"cosine"`` and
            ``"linear"`` decay it towards 0 at the last step (a short recovery ends
            closer to a minimum when the steps shrink at the end).
        batch_size: samples per batch and process.
        temperature: softens both logit distributions in the distillation loss.
        kd_weight: weight of the logit distillation loss (0 disables it).
        task_weight: weight of the task loss on the labels; None: 1 when the data
            has labels (or the model is a causal LM), else 0.
        hidden_weight: weight of the hidden-state loss (0 disables it).
        hidden_layers: which hidden states to match: module names (hooked in both
            models, any model), or indices into a Hugging Face model's
            ``hidden_states`` output; None with ``hidden_weight > 0``: every
            ``hidden_states`` entry of a Hugging Face model.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping norm (None: no clipping).
        grad_accum: batches accumulated per optimizer step.
        warmup_steps: linear warm-up length.
        mixed_precision: "no", "fp16" or "bf16"; None: what ``accelerate launch``
            / ``accelerate config`` set.
        eval_batches: batches (per process) on which the distillation gap and the
            task loss are measured before and after training.
        eval_every: also measure them every N optimizer steps (0: only before and
            after); each measure is kept in ``RecoverResult.evaluations``.
        keep_best: end with the weights of the measure with the lowest held-out loss
            instead of the last step's: the task loss when the data has labels (always for
            a causal LM: the held-out perplexity), else the distillation gap. The untrained
            student takes part. Why: on a small data set a long run memorises it and its
            held-out loss rises again. Needs ``eval_every`` and held-out ``eval_data``;
            keeps one CPU copy of the best weights; refused under FSDP / DeepSpeed.
        ema_decay: keep an exponential moving average of the trainable weights (and floating-point
            buffers), updated after every optimizer step with this decay (ramped up over the first
            steps, see :func:`depgraph.recovery.ema.ema_factor`), and end with it rather than with the
            last step's weights; every measure (``eval_every``, ``keep_best``, after) and every
            ``on_step`` call sees the average. 0 (default): off. Why: an average of the recent steps
            sits nearer the centre of the minimum than the last one. A memory of about
            ``1 / (1 - ema_decay)`` steps: 0.99 for a few hundred steps, 0.999 for thousands. Costs one
            more copy of the trainable weights on their device; refused under FSDP / DeepSpeed.
        seed: seeds the data order and any random initialisation.
        shuffle: shuffle the training data.
        num_workers: DataLoader worker processes, or ``"auto"``: the cores the training
            step leaves idle (at most 8 per process), none for data already in memory
            (:func:`depgraph.recovery.workers.auto_workers`).
        progress: show a progress bar on the main process.
        compile: run the student (forward and backward) and the teacher's forward through
            ``torch.compile``: fewer, fused kernels a step. Why: the eager step of a deep,
            narrow model is launch-bound on a GPU (SmolLM2-135M: 8,960 ATen operations a
            step, 190-200 ms on an H200 at 0.5k and at 2k tokens alike). The first steps pay
            for the compilation; the losses match eager ones to rounding, not bit for bit.
            Refused under FSDP / DeepSpeed.
        restore_on_error: keep a CPU copy of the student's weights and put them
            back when training fails or is interrupted (costs one copy of the
            weights in host memory). Under FSDP / DeepSpeed only until ``prepare``
            shards the student: a failure after that leaves it sharded.
    """

    steps: int = 100
    lr: float = 1e-4
    lr_schedule: str = "constant"
    batch_size: int = 8
    temperature: float = 2.0
    kd_weight: float = 1.0
    task_weight: float | None = None
    hidden_weight: float = 0.0
    hidden_layers: tuple[str | int, ...] | None = None
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    grad_accum: int = 1
    warmup_steps: int = 0
    mixed_precision: str | None = None
    eval_batches: int = 4
    eval_every: int = 0
    keep_best: bool = False
    ema_decay: float = 0.0
    seed: int = 0
    shuffle: bool = True
    num_workers: int | str = 0
    progress: bool = True
    compile: bool = False
    restore_on_error: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("steps", "batch_size", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_batches", "eval_every", "num_workers"):
            value = getattr(self, name)
            if name == "num_workers" and value == "auto":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                also = " or 'auto'" if name == "num_workers" else ""
                problems.append(f"{name} must be an integer >= 0{also}, got {value!r}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not _finite(value) or value <= 0:
                problems.append(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("kd_weight", "hidden_weight", "weight_decay"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                problems.append(f"{name} must be a finite number >= 0, got {value!r}")
        if not _finite(self.ema_decay) or not 0 <= self.ema_decay < 1:
            problems.append(f"ema_decay must be a number in [0, 1) (0: off), got {self.ema_decay!r}")
        if self.task_weight is not None and (not _finite(self.task_weight) or self.task_weight < 0):
            problems.append(f"task_weight must be None or a finite number >= 0, got {self.task_weight!r}")
        if self.max_grad_norm is not None and (not _finite(self.max_grad_norm) or self.max_grad_norm <= 0):
            problems.append(f"max_grad_norm must be None or a number > 0, got {self.max_grad_norm!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision must be one of {MIXED_PRECISION} or None, got {self.mixed_precision!r}")
        if self.hidden_layers is not None:
            if isinstance(self.hidden_layers, (str, int)) or not isinstance(self.hidden_layers, Sequence):
                problems.append(f"hidden_layers must be a sequence of module names or indices, got {self.hidden_layers!r}")
            elif not self.hidden_layers or not all(isinstance(h, (str, int)) for h in self.hidden_layers):
                problems.append(f"hidden_layers must hold module names or hidden_states indices, got {self.hidden_layers!r}")
            elif len({type(h) for h in self.hidden_layers}) > 1:
                problems.append(f"hidden_layers mixes names and indices: {self.hidden_layers!r}")
        if not isinstance(self.compile, bool):
            problems.append(f"compile must be True or False, got {self.compile!r}")
        if not isinstance(self.keep_best, bool):
            problems.append(f"keep_best must be True or False, got {self.keep_best!r}")
        elif self.keep_best and self.eval_every == 0:
            problems.append("keep_best chooses among the measures taken every eval_every steps: set eval_every > 0")
        if self.kd_weight == 0 and self.hidden_weight == 0 and self.task_weight == 0:
            problems.append("kd_weight, hidden_weight and task_weight are all 0: nothing to train on")
        if problems:
            raise OptionError("recover: " + "; ".join(problems))


def recover_options(options: dict, has_eval_data: bool, has_teacher: bool = True) -> RecoverOptions:
    """The options of one :func:`depgraph.recover` call, checked against each other, the data and the teacher.

    Why here and not in ``recover`` alone: the command line calls it before any model
    loads, so a bad combination is refused in a second, not after minutes of loading.

    Raises:
        OptionError: an unknown option, a value out of range, ``keep_best`` without held-out data, or
            distillation (``kd_weight`` or ``hidden_weight`` above 0) without a teacher.
    """
    unknown = sorted(set(options) - set(RecoverOptions.__dataclass_fields__))
    if unknown:
        raise OptionError(f"recover: unknown option(s) {unknown}; known: {sorted(RecoverOptions.__dataclass_fields__)}")
    if isinstance(options.get("hidden_layers"), list):
        options = {**options, "hidden_layers": tuple(options["hidden_layers"])}
    opts = RecoverOptions(**options)
    if opts.keep_best and not has_eval_data:
        raise OptionError("recover: keep_best chooses on held-out data: give eval_data (--eval-data); on the "
                          "training batches it would pick the weights that memorised them best")
    if not has_teacher and (opts.kd_weight > 0 or opts.hidden_weight > 0):
        raise OptionError(f"recover: distillation (kd_weight {opts.kd_weight:g}, hidden_weight {opts.hidden_weight:g}) "
                          "needs a teacher: give the unpruned model (--teacher), or set kd_weight (--kd-weight) and "
                          "hidden_weight to 0 for a fine-tune on the task loss alone")
    return opts


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
