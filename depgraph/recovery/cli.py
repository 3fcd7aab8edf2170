"""``depgraph recover``: distil the unpruned model back into a pruned one, on the user's data.

    depgraph recover ./llama-pruned --teacher ./llama --data train.txt --steps 200 --output ./llama-recovered
    depgraph recover resnet18_pruned.pth --teacher resnet18 --teacher-weights resnet18.pth \\
        --data ./images --output resnet18_recovered.pth
    depgraph recover ./llama --data train.txt --kd-weight 0 --output ./llama-tuned   # a plain fine-tune
    accelerate launch --multi_gpu --num_processes 8 -m depgraph recover ...   # the same, on 8 processes

The result is written in the form the pruned model came in (see
:mod:`depgraph.recovery.sources`); the table shows the distillation gap
(KL to the teacher) and the task loss before and after. Without ``--teacher``
(and with ``--kd-weight 0``) it fine-tunes on the task loss alone, holding one model.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]


_SHARING = {"FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}  # how the table names a multi-process run; else DDP


def _layers(text: str) -> tuple[str | int, ...]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give module names or hidden_states indices, comma-separated")
    return tuple(int(t) if t.lstrip("-").isdigit() else t for t in items)


def _workers(text: str) -> int | str:
    """``--num-workers``: ``auto`` or an integer >= 0."""
    from ..cli import non_negative_int

    return "auto" if text == "auto" else non_negative_int(text)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``recover`` subcommand to the ``depgraph`` parser's subparsers."""
    from ..cli import (  # the shared checks and options of the command line
        add_saved_model_options,
        non_negative_float,
        non_negative_int,
        positive_float,
        positive_int,
    )

    p = sub.add_parser("recover", help="distil the unpruned model into a pruned one on your data, then save it")
    p.add_argument("model", help="the pruned model: a Hugging Face folder, a depgraph.save file (with --base) "
                                 "or a whole model saved with torch.save")
    p.add_argument("--teacher", default=None,
                   help="the unpruned model: a Hugging Face folder, a torchvision/timm name or a torch.save file; "
                        "leave it out with --kd-weight 0 for a fine-tune on the task loss alone (one model in memory)")
    p.add_argument("--teacher-weights", default=None, metavar="PATH",
                   help="state dict of a teacher given by name (a .pth/.pt or .safetensors file)")
    p.add_argument("--base", default=None,
                   help="unpruned definition of a depgraph.save file (default: --teacher; needed without it)")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="an image folder (one subfolder per class, or flat), a .txt file or a .jsonl file")
    p.add_argument("--output", required=True, metavar="PATH", help="where the recovered model goes (checked first)")
    p.add_argument("--steps", type=positive_int, default=100, help="optimizer steps (default: 100)")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default="constant",
                   help="learning rate after the warm-up: kept, or decayed to 0 at the last step (default: constant)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="batch size per process (default: 8)")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="batches per optimizer step (default: 1)")
    p.add_argument("--warmup-steps", type=non_negative_int, default=0,
                   help="steps of linear learning-rate warm-up (default: 0)")
    p.add_argument("--weight-decay", type=non_negative_float, default=0.0, help="AdamW weight decay (default: 0)")
    p.add_argument("--eval-data", default=None, metavar="PATH",
                   help="held-out data in the forms of --data, on which the gap and the task loss are measured "
                        "before and after (default: the first batches of --data, which training then sees)")
    p.add_argument("--eval-batches", type=positive_int, default=4,
                   help="batches on which the gap and the task loss are measured before and after (default: 4)")
    p.add_argument("--eval-every", type=non_negative_int, default=0, metavar="N",
                   help="also measure them every N steps, printed as a table at the end (default: 0, only "
                        "before and after)")
    p.add_argument("--keep-best", action="store_true",
                   help="write the weights of the measure with the lowest held-out loss (the task loss when the "
                        "data has labels, always for a causal LM; else the gap), not the last step's: a long run "
                        "on little data memorises it. Needs --eval-data and --eval-every")
    p.add_argument("--ema-decay", type=float, default=0.0, metavar="D",
                   help="keep an exponential moving average of the weights (decay D in [0, 1), e.g. 0.99 for a "
                        "few hundred steps, 0.999 for thousands) and write it, not the last step's weights; the "
                        "measures, --keep-best and --save-every see the average (default: 0, off)")
    p.add_argument("--temperature", type=positive_float, default=2.0, help="distillation temperature (default: 2)")
    p.add_argument("--kd-weight", type=non_negative_float, default=1.0,
                   help="weight of the logit distillation (default: 1). The teacher is a ceiling: from an "
                        "under-trained checkpoint that fine-tuning still improves, labels alone (0) recover "
                        "better over long runs (benchmarks/quality: ResNet-20, 2 epochs, 1.3 points). With 0 "
                        "and no --hidden-weight the teacher is not run in the steps: a plain fine-tune (leave "
                        "--teacher out and it is not loaded either)")
    p.add_argument("--task-weight", type=non_negative_float, default=None,
                   help="weight of the task loss (default: 1 when the data has labels or the model is a causal LM)")
    p.add_argument("--hidden-weight", type=non_negative_float, default=0.0,
                   help="weight of the hidden-state MSE (default: 0, off)")
    p.add_argument("--hidden-layers", type=_layers, default=None, metavar="A,B",
                   help="hidden states to match: module names, or hidden_states indices of a Hugging Face model "
                        "(default with --hidden-weight: all hidden_states)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None,
                   help="default: what accelerate launch / accelerate config set, else no")
    p.add_argument("--seq-len", type=positive_int, default=128, help="tokens per text sample (default: 128)")
    p.add_argument("--max-samples", type=positive_int, default=None,
                   help="use at most N samples, evenly spread over the data (each class folder's files, a text's "
                        "windows, a .jsonl's documents), not its first N")
    p.add_argument("--num-workers", type=_workers, default=0, metavar="N|auto",
                   help="DataLoader worker processes that read the data (images are decoded per batch) beside "
                        "the training step, each on its own core; auto: the cores the step leaves idle (CPU "
                        "threads, or one core feeding a GPU, per process), at most 8, none for text (default: "
                        "0, read in the training process)")
    p.add_argument("--compile", action="store_true",
                   help="run the student and the teacher through torch.compile: fewer, fused kernels a step, for a "
                        "deep, narrow model whose eager step is launch-bound on a GPU; the first steps compile "
                        "(one process or DDP)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order and initialisation (default: 0)")
    p.add_argument("--save-every", type=positive_int, default=None, metavar="N",
                   help="also write --output every N steps (single process or DDP), so that a run stopped early "
                        "leaves the latest model; each save prints 'checkpoint: step N'")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_saved_model_options(p)
    p.set_defaults(run=run)
    return p


def _dataset(args: argparse.Namespace, student: Any, path: str) -> Any:
    from .data import open_dataset
    from .sources import with_tokenizer

    spec = with_tokenizer(student.spec, args.model, args.teacher, args.base)
    return open_dataset(path, spec, seq_len=args.seq_len, max_samples=args.max_samples)


def _checkpoints(args: argparse.Namespace, student: Any, fmt: str, out: Any) -> Any:
    """``on_step`` that writes ``--output`` every ``--save-every`` steps (None without the option)."""
    if args.save_every is None:
        return None
    from ..workflow.save import save_pruned

    def save(step: int, model: Any) -> None:
        if step % args.save_every == 0 and step < args.steps:  # the last step is saved after training
            save_pruned(model, student, args.output, fmt)
            out.line(f"checkpoint: step {step} saved to {args.output}")
            sys.stdout.flush()  # seen at once by whoever watches a piped run

    return save


def _evaluations(result: Any, held_out: str, out: Any) -> None:
    """The measure of every ``--eval-every`` step, and which one ``--keep-best`` kept."""
    labels, kept = result.evaluations[0].task is not None, result.best_step
    gap = result.evaluations[0].kd is not None
    columns = ("step",) + ((f"KL to teacher{held_out}",) if gap else ()) + ((f"task loss{held_out}",) if labels else ()) \
        + (("",) if kept is not None else ())
    rows = [(str(e.step),) + ((f"{e.kd:.4f}",) if gap else ()) + ((f"{e.task:.4f}",) if labels else ())
            + ((("kept" if e.step == kept else ""),) if kept is not None else ()) for e in result.evaluations]
    out.table("held-out measures during training", columns, rows)
    if result.best_step is not None:
        what = "task loss" if labels else "distillation gap"
        out.line(f"kept the weights of step {result.best_step} of {result.steps} (lowest {what}{held_out})")


def run(args: argparse.Namespace, out: Any) -> int:
    """Load, check, recover, report and save; the exit code (0 done)."""
    from pathlib import Path

    import torch

    from ..workflow import load_source
    from ..workflow.save import check_output, save_pruned
    from . import recover
    from .options import recover_options
    from .sources import load_pruned, output_format

    options = dict(
        steps=args.steps, lr=args.lr, lr_schedule=args.lr_schedule, batch_size=args.batch_size, grad_accum=args.grad_accum,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, eval_batches=args.eval_batches,
        eval_every=args.eval_every, keep_best=args.keep_best, ema_decay=args.ema_decay, temperature=args.temperature, kd_weight=args.kd_weight,
        task_weight=args.task_weight, hidden_weight=args.hidden_weight, hidden_layers=args.hidden_layers,
        mixed_precision=args.mixed_precision, seed=args.seed, num_workers=args.num_workers,
        progress=not args.no_progress, compile=args.compile)
    recover_options(options, args.eval_data is not None, args.teacher is not None)  # refused before any model loads
    if args.teacher is None and args.teacher_weights is not None:
        from ..errors import OptionError

        raise OptionError(f"--teacher-weights {args.teacher_weights!r} is the state dict of a teacher given by name: "
                          "name it with --teacher")
    load = {"trust_pickle": args.trust_pickle, "input_size": args.input_size, "seq_len": args.seq_len}
    for option, path in (("--data", args.data), ("--eval-data", args.eval_data)):
        if path is not None and not Path(path).exists():  # refused before any model loads
            from ..errors import CalibrationDataError

            raise CalibrationDataError(f"{option} {path!r} does not exist")
    # refuse a bad output before anything loads: a folder model gives a folder, a file model a file
    folder = Path(args.model).is_dir()
    check_output(args.output, "hf" if folder else "depgraph", args.model if folder else None)
    teacher = load_source(args.teacher, args.teacher_weights, **load) if args.teacher is not None else None
    base = args.base or (args.teacher if teacher is not None and teacher.family != "module" else None)
    student = load_pruned(args.model, base, **load)
    fmt = output_format(student, args.model)
    check_output(args.output, fmt, student.folder if student.family == "hf" else None)
    data = _dataset(args, student, args.data)
    eval_data = _dataset(args, student, args.eval_data) if args.eval_data is not None else None
    result = recover(student.model, teacher.model if teacher is not None else None, data, eval_data=eval_data,
                     on_step=_checkpoints(args, student, fmt, out), **options)
    if not result.is_main_process:
        return 0
    held_out = " on --eval-data" if eval_data is not None else ""
    rows = []
    if result.kd_before is not None:
        rows.append((f"distillation gap (KL to teacher){held_out}", f"{result.kd_before:.4f}", f"{result.kd_after:.4f}"))
    if result.task_before is not None:
        rows.append((f"task loss{held_out}", f"{result.task_before:.4f}", f"{result.task_after:.4f}"))
    rows.append(("training loss (first / last step)", f"{result.losses[0]:.4f}", f"{result.losses[-1]:.4f}"))
    procs = f"{result.num_processes} process" + ("es" if result.num_processes > 1 else "")
    notes = [_SHARING.get(result.distributed_type, "DDP")] if result.num_processes > 1 else []
    if result.device == "cpu":
        notes.append(f"{torch.get_num_threads()} CPU thread{'s' if torch.get_num_threads() > 1 else ''} each")
    else:
        notes.append(f"{result.device} each" if result.num_processes > 1 else result.device)
    if args.compile:
        notes.append("compiled")
    if args.ema_decay:
        notes.append(f"weights: moving average, decay {args.ema_decay:g}")
    if result.num_workers:
        notes.append(f"{result.num_workers} data worker{'s' if result.num_workers > 1 else ''} each")
    if notes:
        procs += f" ({', '.join(notes)})"
    out.table(f"recover {args.model}: {result.steps} steps in {result.seconds:.1f} s on {procs}, "
              f"{len(data)} samples", ("", "before", "after"), rows)
    if args.eval_every:
        _evaluations(result, held_out, out)
    how = save_pruned(result.model.cpu(), student, args.output, fmt)  # under FSDP / DeepSpeed: the gathered weights
    out.line(f"saved the recovered model to {args.output}; load it with:\n{how}")
    return 0
