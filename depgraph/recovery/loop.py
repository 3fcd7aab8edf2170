"""Recovery: train a pruned model back towards its unpruned teacher, on Hugging Face ``accelerate``.

Everything that depends on where it runs (device placement, mixed precision,
data sharding, gradient synchronisation, FSDP / DeepSpeed) is ``accelerate``'s:
the loop only calls ``prepare``, ``backward``, ``clip_grad_norm_``, ``reduce``
and ``gather``. The same call therefore runs on one CPU, one GPU, or many GPUs
and nodes when the script (or ``depgraph recover``) is started with
``accelerate launch``.

Call tree::

    recover(student, teacher, data, threads=None, **options)    options checked, CPU threads set for the call
      _probe                     one batch through both models: outputs fit? labels fit? hidden widths
      TrainingRun.evaluate       distillation gap (KL, T=1) and task loss before training
      TrainingRun.train          steps of: teacher forward (no grad; skipped when neither the logits nor the
                                 hidden states are distilled), student forward, losses, backward, step;
                                 with eval_every, TrainingRun.evaluate every N steps (BestWeights keeps the best)
      TrainingRun.evaluate       the same measures after training; with keep_best, the best weights come back

The per-batch steps (optimizer, schedule, losses, loop, evaluation) are in
:mod:`depgraph.recovery.steps`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .._caller import user_stacklevel
from ..errors import RecoveryError
from ..workflow.threads import cpu_threads, resolve_threads
from .batches import is_causal_lm, logits_of, split_batch
from .ema import WeightAverage
from .gather import load_full, meta_skeleton
from .hidden import HiddenTap
from .losses import HiddenProjection, channel_dim, task_loss
from .options import RecoverOptions, recover_options
from .steps import BestWeights, Evaluation, TrainingRun, adamw, call_with_tap, lr_factor
from .workers import resolve_workers

__all__ = ["recover", "RecoverResult"]


@dataclass
class RecoverResult:
    """What :func:`recover` did.

    Attributes:
        model: the trained student (the object passed in, unwrapped from any
            distributed wrapper), in eval mode. Under FSDP / DeepSpeed a new module of
            its class built from the gathered weights, on the CPU of the main process.
        steps: optimizer steps run.
        losses: the total training loss of each step, averaged over processes.
        kd_before / kd_after: the distillation gap, ``KL(teacher || student)`` of
            the logits at temperature 1, on the evaluation batches (None without a teacher).
        task_before / task_after: the task loss on the evaluation batches (None
            without labels).
        seconds: wall time of the training steps.
        is_main_process: whether this process should write files.
        num_processes: how many processes trained together.
        state_dict: under FSDP / DeepSpeed, the full gathered state dict of the
            student (on the main process); None otherwise (``model`` holds it all).
        device: the kind of device it trained on (``"cpu"``, ``"cuda"``, ...).
        distributed_type: how the processes shared the work, accelerate's name for it
            (``"NO"``, ``"MULTI_CPU"`` / ``"MULTI_GPU"`` for DDP, ``"FSDP"``, ``"DEEPSPEED"``).
        num_workers: DataLoader worker processes each process read its data with
            (what ``num_workers="auto"`` chose; a ``DataLoader`` given as ``data`` keeps its own).
        evaluations: every measure on the evaluation batches, in order: before training
            (step 0), every ``eval_every`` steps, and after the last step.
        best_step: with ``keep_best``, the step whose weights ``model`` holds (0: the
            untrained student); ``kd_after`` / ``task_after`` are that step's measures.
            None without ``keep_best``.
    """

    model: nn.Module
    steps: int
    losses: list[float] = field(default_factory=list)
    kd_before: float | None = None
    kd_after: float | None = None
    task_before: float | None = None
    task_after: float | None = None
    seconds: float = 0.0
    is_main_process: bool = True
    num_processes: int = 1
    state_dict: dict[str, torch.Tensor] | None = None
    device: str = "cpu"
    distributed_type: str = "NO"
    num_workers: int = 0
    evaluations: list[Evaluation] = field(default_factory=list)
    best_step: int | None = None


class _Student(nn.Module):
    """The student plus the hidden-state projections: one module, so ``prepare`` wraps and syncs both.

    The projections run inside ``forward``: under FSDP a wrapped module's parameters
    exist whole only during its forward and backward (FSDP1 frees the gathered flat
    parameter after the forward, FSDP2 keeps ``DTensor`` shards), so a projection
    called from outside sees an empty or sharded weight.
    """

    def __init__(self, model: nn.Module, projections: list[HiddenProjection], tap: HiddenTap | None):
        super().__init__()
        self.model = model
        self.projections = nn.ModuleList(projections)
        self.tap = tap  # the student's hidden states, read after its forward

    def forward(self, *args: Any, hidden_targets: list[torch.Tensor] | None = None, **kwargs: Any) -> Any:
        """The student's output; with the teacher's ``hidden_targets``, ``(output, mean hidden MSE)``."""
        out = self.model(*args, **kwargs)
        if hidden_targets is None or self.tap is None:
            return out
        pairs = zip(self.tap.take(out), hidden_targets, self.projections, strict=True)
        mse = [proj(s, t) for s, t, proj in pairs]
        return out, torch.stack(mse).mean() if mse else logits_of(out).new_zeros((), dtype=torch.float32)


def recover(student: nn.Module, teacher: nn.Module | None, data: Dataset | DataLoader, *,
            eval_data: Dataset | DataLoader | None = None, accelerator: Any = None, collate_fn: Any = None,
            on_step: Callable[[int, nn.Module], None] | None = None, threads: str | int | None = None,
            **options: Any) -> RecoverResult:
    """Distil the unpruned ``teacher`` into the pruned ``student`` on ``data``, plus the task loss.

    Why distillation: a pruned model has lost capacity, not its task; matching
    the teacher's full output distribution (and optionally its hidden states)
    recovers much more per step than the labels alone, and works on unlabelled
    data (text, images without classes).

    The loss is ``kd_weight * T^2 * KL(teacher/T || student/T)
    + task_weight * CE(student, labels) + hidden_weight * MSE(hidden states)``;
    see :mod:`depgraph.recovery.losses` for exactly what is matched and
    :mod:`depgraph.recovery.batches` for the batch forms accepted.

    Args:
        student: the pruned model; trained in place.
        teacher: the unpruned model, with the same outputs (same classes /
            vocabulary); never changed. None for a fine-tune on the task loss alone
            (``kd_weight=0``, ``hidden_weight=0``): no second model is held in memory or run,
            which at LLM scale halves what the recovery needs.
        data: a ``Dataset`` (batched here with ``batch_size``) or a ``DataLoader``.
        eval_data: held-out data (the same forms) on which the gap and the task loss
            are measured before and after training; default: the first batches of
            ``data``, which the training then sees, so "after" reads optimistic.
        accelerator: an ``accelerate.Accelerator`` to use; default: a new one
            (``mixed_precision``, ``grad_accum``; CPU when no accelerator device exists).
        collate_fn: passed to the ``DataLoader`` built for a ``Dataset``.
        on_step: called on the main process after every optimizer step as
            ``on_step(steps_done, student)`` (the unwrapped student, in train mode),
            e.g. to save a checkpoint so that a run cut off by a time limit still
            leaves a model. Refused under FSDP / DeepSpeed, whose parameters are sharded.
        threads: PyTorch CPU threads for this call, with the meaning of the command line's
            ``--threads``: ``"auto"`` takes the cores the load average leaves idle (an
            ``OMP_NUM_THREADS`` already set is kept), ``N`` takes N. The previous
            ``torch.get_num_threads()`` is restored when the call returns or fails. None
            (default) leaves the process's setting alone: a library call does not change
            global state unasked.
        **options: the fields of :class:`~depgraph.recovery.options.RecoverOptions`
            (steps, lr, batch_size, temperature, kd_weight, task_weight,
            hidden_weight, hidden_layers, mixed_precision, ...).

    Returns:
        A :class:`RecoverResult` with the losses and the distillation gap before / after.
        Under FSDP / DeepSpeed the ``student`` object is left sharded; ``model`` is a new
        module of its class holding the gathered weights on the main process, on the CPU
        (on the others its parameters are on the meta device).

    Raises:
        OptionError: an option is out of range or unknown, ``threads`` is neither ``"auto"``
            nor a positive integer, or ``teacher`` is None while ``kd_weight`` or ``hidden_weight`` is above 0.
        RecoveryError: the data does not fit the models (checked on one batch
            before training), the student's outputs differ in shape from the
            teacher's, or a hidden layer does not exist. The student is unchanged.

    Example:
        >>> result = depgraph.recover(pruned, original, dataset, steps=200, lr=1e-4)
        >>> result.kd_before, result.kd_after
    """
    opts = recover_options(options, eval_data is not None, has_teacher=teacher is not None)
    if student is teacher:
        raise RecoveryError("recover: student and teacher are the same object; pass the unpruned model as teacher")
    n_threads = resolve_threads(threads)  # refused here, before anything changes
    with cpu_threads(n_threads):  # the caller's count comes back after, also on error
        return _recover(student, teacher, data, eval_data, accelerator, collate_fn, on_step, opts)


def _recover(student: nn.Module, teacher: nn.Module | None, data: Any, eval_data: Any, accelerator: Any, collate_fn: Any,
             on_step: Callable[[int, nn.Module], None] | None, opts: RecoverOptions) -> RecoverResult:
    try:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
    except ImportError:
        raise RecoveryError("recover needs Hugging Face accelerate: pip install 'depgraph[train]'") from None

    if accelerator is None:
        accelerator = Accelerator(mixed_precision=opts.mixed_precision, gradient_accumulation_steps=opts.grad_accum,
                                  cpu=not _has_accelerator_device())
    set_seed(opts.seed)
    _warn_if_not_sharded(accelerator)
    workers = resolve_workers(opts.num_workers, data, on_accelerator=accelerator.device.type != "cpu",
                              processes=accelerator.num_processes)
    # the probe reads the unshuffled loader: an iterator opened and dropped on the shuffled one would
    # draw from its generator as far as its workers prefetched, so the training order would depend on them
    train_loader, data_loader = _loaders(data, opts, collate_fn, workers)
    eval_loader = data_loader if eval_data is None else _loaders(eval_data, opts, collate_fn, workers, "eval_data")[1]
    workers = train_loader.num_workers  # what reads the training data: a DataLoader given as data keeps its own
    causal = is_causal_lm(student)
    if teacher is not None:
        teacher.requires_grad_(False).eval().to(accelerator.device)
    student.to(accelerator.device)

    sharded = accelerator.distributed_type.name in ("FSDP", "DEEPSPEED")
    skeleton = meta_skeleton(student) if sharded else None  # before any hook; the result's module under sharding
    s_tap = t_tap = None
    snapshot = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()} \
        if opts.restore_on_error else None
    try:
        if opts.hidden_weight > 0:
            s_tap, t_tap = HiddenTap(student, opts.hidden_layers), HiddenTap(teacher, opts.hidden_layers)
        widths, has_labels = _probe(student, teacher, data_loader, causal, s_tap, t_tap, accelerator)
        if eval_data is not None and _probe(student, teacher, eval_loader, causal, s_tap, t_tap,
                                            accelerator)[1] != has_labels:
            raise RecoveryError("recover: eval_data and data differ in whether they carry labels; "
                                "give both (inputs, labels) batches or neither")
        task_weight = opts.task_weight if opts.task_weight is not None else (1.0 if has_labels else 0.0)
        if task_weight > 0 and not has_labels:
            raise RecoveryError("task_weight > 0 but the data has no labels (and the model is not a causal LM); "
                                "give (inputs, labels) batches or set task_weight=0")
        if opts.kd_weight == 0 and opts.hidden_weight == 0 and task_weight == 0:
            raise RecoveryError("nothing to train on: kd_weight and hidden_weight are 0 and the data has no labels")
        wrapped = _Student(student, [HiddenProjection(s, t) for s, t in widths], s_tap)
        optimizer = adamw([p for p in wrapped.parameters() if p.requires_grad], opts)
        # accelerate steps a prepared scheduler once per process per optimizer step (unless it splits batches)
        per_step = 1 if getattr(accelerator, "split_batches", False) else accelerator.num_processes
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda count: lr_factor(count // per_step, opts))
        if on_step is not None and sharded:
            raise RecoveryError("recover: on_step (a checkpoint every N steps) sees sharded parameters under "
                                "FSDP / DeepSpeed; run without it there")
        if opts.compile and sharded:
            raise RecoveryError("recover: compile is for one process or DDP; FSDP / DeepSpeed wrap the student "
                                "in their own way, so run without it there")
        if opts.keep_best and sharded:
            raise RecoveryError("recover: keep_best copies the student's weights, which FSDP / DeepSpeed shard; "
                                "run without it there (or with eval_every alone, and save checkpoints)")
        if opts.ema_decay and sharded:
            raise RecoveryError("recover: ema_decay averages the student's whole weights, which FSDP / DeepSpeed "
                                "shard; run without it there")
        if opts.compile:  # the wrapper, not the student: the student object the caller holds stays plain
            wrapped = torch.compile(wrapped)
        wrapped, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
            wrapped, optimizer, train_loader, eval_loader, scheduler)
        if sharded:  # the student now holds shards: its old weights cannot be loaded back
            snapshot = None
        compiled_teacher = torch.compile(teacher) if opts.compile and teacher is not None else teacher
        run = TrainingRun(accelerator, wrapped, compiled_teacher, causal, s_tap, t_tap, opts,
                          task_weight if has_labels else 0.0)
        run.on_step = on_step
        run.average = WeightAverage(wrapped, opts.ema_decay) if opts.ema_decay else None

        evaluations: list[Evaluation] = []
        best = BestWeights(wrapped) if opts.keep_best else None

        def measure(step: int) -> Evaluation:
            with run.averaged():
                kd, task = run.evaluate(eval_loader)
                evaluations.append(Evaluation(step, kd, task if has_labels else None))
                if best is not None and step < opts.steps:  # the last measure: compared below, not copied
                    best.offer(evaluations[-1])
            return evaluations[-1]

        before = measure(0)
        run.on_eval = measure if opts.eval_every else None
        t0 = time.perf_counter()
        losses = run.train(train_loader, optimizer, scheduler)
        seconds = time.perf_counter() - t0
        if run.average is not None:  # the run ends on the average: measured, compared and returned as such
            run.average.apply()
            run.average = None
        after = measure(opts.steps)
        if best is not None:  # every process: the measures were reduced across them, so all choose alike
            after = best.final(after)
        accelerator.wait_for_everyone()
    except BaseException:
        if snapshot is not None:
            with torch.no_grad():
                student.load_state_dict(snapshot)
        raise
    finally:
        for tap in (s_tap, t_tap):
            if tap is not None:
                tap.close()

    full_state = None
    if skeleton is not None:  # every process takes part in the gathering; the main process gets the weights
        full = accelerator.get_state_dict(wrapped)
        full_state = {k[len("model."):]: v for k, v in (full or {}).items() if k.startswith("model.")}
        # the gathered weights are on the CPU (a model sharded for its size may not fit one device); buffers follow
        model = (load_full(skeleton, full_state).cpu() if accelerator.is_main_process else skeleton).eval()
    else:
        model = accelerator.unwrap_model(wrapped).model.eval()
    return RecoverResult(model=model, steps=opts.steps, losses=losses, kd_before=before.kd, kd_after=after.kd,
                         task_before=before.task, task_after=after.task, seconds=seconds,
                         is_main_process=accelerator.is_main_process, num_processes=accelerator.num_processes,
                         state_dict=full_state, device=accelerator.device.type,
                         distributed_type=accelerator.distributed_type.name,
                         num_workers=workers, evaluations=evaluations,
                         best_step=after.step if opts.keep_best else None)


def _warn_if_not_sharded(accelerator: Any) -> None:
    """Warn (once, on the main process) when the launch asked for FSDP / DeepSpeed but accelerate runs otherwise.

    Why: accelerate 1.x chooses FSDP and DeepSpeed only on an accelerator device; on a CPU-only
    machine it turns such a launch into DDP (``MULTI_CPU``) without a word, so every process
    would hold the whole student where the user planned for shards.
    """
    for name in ("FSDP", "DEEPSPEED"):
        asked = os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() == "true"
        ran = accelerator.distributed_type.name
        if asked and ran != name and accelerator.is_main_process:
            warnings.warn(f"recover: the launch configuration asks for {name}, but accelerate runs {ran} on this "
                          f"machine ({accelerator.device.type}): it uses {name} on accelerator devices only, so each "
                          "process holds and trains a whole copy of the student", stacklevel=user_stacklevel())


def _has_accelerator_device() -> bool:
    acc = getattr(torch, "accelerator", None)
    return bool(acc.is_available()) if acc is not None else torch.cuda.is_available()


def _loaders(data: Any, opts: RecoverOptions, collate_fn: Any, workers: int,
             what: str = "data") -> tuple[DataLoader, DataLoader]:
    if isinstance(data, DataLoader):
        return data, data
    if not isinstance(data, Dataset) and not hasattr(data, "__getitem__"):
        raise RecoveryError(f"recover: {what} must be a torch Dataset or DataLoader, got {type(data).__name__}")
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        n = None
    if n == 0:
        raise RecoveryError(f"recover: the {what} dataset is empty" if what != "data" else "recover: the dataset is empty")
    g = torch.Generator().manual_seed(opts.seed)
    train = DataLoader(data, batch_size=opts.batch_size, shuffle=opts.shuffle, collate_fn=collate_fn,
                       num_workers=workers, drop_last=n is not None and n >= opts.batch_size, generator=g)
    evaluation = DataLoader(data, batch_size=opts.batch_size, shuffle=False, collate_fn=collate_fn,
                            num_workers=workers)
    return train, evaluation


def _probe(student: nn.Module, teacher: nn.Module | None, loader: DataLoader, causal: bool,
           s_tap: HiddenTap | None, t_tap: HiddenTap | None, accelerator: Any) -> tuple[list[tuple[int, int]], bool]:
    """Run one batch through both models (the student alone without a teacher) before training: every misfit
    is reported before anything changes."""
    from accelerate.utils import send_to_device

    try:
        batch = next(iter(loader))
    except StopIteration:
        raise RecoveryError("recover: the data yields no batch") from None
    b = split_batch(send_to_device(batch, accelerator.device), causal)
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            s_out = call_with_tap(student, b, s_tap)
            t_out = call_with_tap(teacher, b, t_tap) if teacher is not None else None
    except RecoveryError:
        raise
    except Exception as e:  # noqa: BLE001 - a model that cannot run the data: report it as such
        raise RecoveryError(f"recover: the model cannot run a batch of the data ({type(e).__name__}: "
                            f"{str(e)[:300]}); check that the data fits the model (input size, keys)") from None
    finally:
        student.train(was_training)
    s_logits = logits_of(s_out)
    if t_out is not None and s_logits.shape != logits_of(t_out).shape:
        raise RecoveryError(f"recover: student logits {tuple(s_logits.shape)} and teacher logits "
                            f"{tuple(logits_of(t_out).shape)} differ: the pruned model must keep its outputs "
                            "(classes / vocabulary); was the classifier pruned?")
    if b.labels is not None:
        task_loss(s_logits, b.labels, causal)  # raises when the labels do not fit
    widths: list[tuple[int, int]] = []
    if s_tap is not None and t_tap is not None:
        s_states, t_states = s_tap.take(s_out), t_tap.take(t_out)
        if len(s_states) != len(t_states):
            raise RecoveryError(f"recover: the student returns {len(s_states)} hidden states and the teacher "
                                f"{len(t_states)}; choose hidden_layers present in both")
        widths = [(s.shape[channel_dim(s)], t.shape[channel_dim(t)]) for s, t in zip(s_states, t_states, strict=True)]
    return widths, b.labels is not None
