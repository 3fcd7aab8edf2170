"""The ``depgraph`` command line: prune a model (to a ratio or a target), or list its groups.

    depgraph prune resnet50 --ratio 0.5            # prune, verify, save ./resnet50_pruned.pth (weights-only)
    depgraph prune resnet50 --weights r50.pth --target macs=0.5 --calib val/ --report r.md
    depgraph prune ./my-llama --target params=0.8 --calib corpus.txt --output ./my-llama-pruned
    depgraph groups resnet18 --input-size 64       # the prunable groups, one row each
    depgraph recover / export / average ...        # see depgraph.recovery.cli, export.cli, recovery.average_cli
    python -m depgraph --version

``prune`` is a thin layer over :mod:`depgraph.workflow` (load_source, prune_model).
Without ``--weights`` a torchvision/timm model has random weights: nothing is
downloaded, so the numbers show what pruning does to the architecture, not to
accuracy. The final classifier is always ignored (pruning its outputs would
change the number of classes); ``--ignore`` names more layers to keep.

Exit codes: 0 done; 1 pruning failed or ``verify`` found a difference;
2 bad arguments, an unknown model, a missing weights file, calibration data that
does not fit, an unreachable target or an unwritable output (all found before
the long work).

``rich`` (the ``cli`` extra) draws the tables when it is installed; without
it, or with ``--plain``, they are plain text.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import (
    CalibrationDataError,
    DepgraphError,
    OptionError,
    OutputError,
    SourceError,
    TargetUnreachableError,
)
from .workflow.sources import find_classifier
from .workflow.threads import cpu_threads, resolve_threads

__all__ = ["main", "build_parser", "load_model", "find_classifier", "Printer"]

#: Criteria that need no data or gradients; ``l1``/``l2`` are the group magnitude with that p.
IMPORTANCES = ("l2", "l1", "lamp", "fpgm", "bn_scale", "random")
#: Criteria calibrated on ``--calib`` data.
DATA_AWARE_IMPORTANCES = ("activation", "activation_weight", "fluctuation", "reconstruction", "taylor")
#: Errors in what the user gave (found before the long work): exit code 2.
_INPUT_ERRORS = (SourceError, CalibrationDataError, OutputError, OptionError, TargetUnreachableError)


class ArgumentError(DepgraphError):
    """A command-line value cannot be used; reported with exit code 2."""


# -- models ---------------------------------------------------------------------------------------
def load_model(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """Build ``name`` with random weights: torchvision first, then timm.

    Returns:
        The model in eval mode and its default input size ``(C, H, W)``.

    Raises:
        DepgraphError: no torchvision or timm model has that name (the message says how to list them).
    """
    from .workflow.sources import build_vision_model, unknown_model_message

    if importlib.util.find_spec("torchvision") is None and importlib.util.find_spec("timm") is None:
        raise ArgumentError(
            f"cannot build {name!r}: neither torchvision nor timm is installed; "
            "install them with: pip install 'depgraph[vision]'"
        )
    built = build_vision_model(name)
    if built is None:
        raise ArgumentError(unknown_model_message(name))
    return built[0], built[3]


def _layers_by_name(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        lines = []
        for n in missing:
            close = difflib.get_close_matches(n, list(modules), n=3)
            lines.append(f"  {n!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ArgumentError("--ignore names no layer of the model:\n" + "\n".join(lines))
    return [modules[n] for n in names]


# -- printing -------------------------------------------------------------------------------------
class Printer:
    """Lines and tables: through rich when it is installed and ``plain`` is False, plain aligned text otherwise.

    Example:
        >>> Printer(plain=True).table("sizes", ("layer", "channels"), [("conv1", 64), ("fc", 512)])
    """

    def __init__(self, plain: bool):
        self.console = None
        if not plain:
            try:
                from rich.console import Console
            except ImportError:  # the ``cli`` extra is not installed
                return
            self.console = Console(highlight=False, soft_wrap=True)

    def line(self, text: str = "") -> None:
        """Print one line, through rich when it is installed so colours and wrapping match the tables."""
        if self.console is not None:
            self.console.print(text, markup=False)
        else:
            print(text)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]],
              caption: str | None = None) -> None:
        """Print a titled table: a rich table when rich is installed, else aligned plain columns,
        so the command line works on a bare install and in logs. ``caption`` goes under it.
        """
        if self.console is not None:
            from rich.table import Table

            t = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
            for h in headers:
                t.add_column(h, overflow="fold")
            for r in rows:
                t.add_row(*map(str, r))
            self.console.print(t)
            return
        widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        print(title)
        print(fmt.format(*headers).rstrip())
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print(fmt.format(*map(str, r)).rstrip())
        if caption:
            print(caption)


# -- commands -------------------------------------------------------------------------------------
def _device(args: argparse.Namespace) -> torch.device:
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ArgumentError(f"--device {args.device!r} is not a device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    return device


def _setup(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, list[nn.Module], list[str]]:
    """Model on the device, example input, ignored layers and their names."""
    device = _device(args)
    torch.manual_seed(args.seed)
    model, (c, h, w) = load_model(args.model)
    if args.input_size is not None:
        h = w = args.input_size
    ignored = _layers_by_name(model, args.ignore or [])
    head = find_classifier(model)
    if head is not None and head not in ignored:
        ignored.insert(0, head)
    names = {m: n for n, m in model.named_modules()}
    x = torch.randn(args.batch_size, c, h, w, device=device)
    return model.to(device), x, ignored, [names[m] for m in ignored]


def _stream(args: argparse.Namespace) -> bool:
    """A checkpoint folder is streamed with ``--max-memory`` or when it is larger than the free memory."""
    from .streaming.cli import is_checkpoint_dir
    from .streaming.memory import available_memory

    if not is_checkpoint_dir(args.model):
        return False
    if args.max_memory is not None:
        return True
    size = sum(f.stat().st_size for f in Path(args.model).glob("*.safetensors"))
    return size > available_memory()


def _default_output(args: argparse.Namespace, fmt: str) -> str | None:
    if args.output == "-":
        return None
    if args.output:
        return args.output
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.model).name if os.path.exists(args.model) else args.model)
    return f"{stem}_pruned" if fmt == "hf" else f"{stem}_pruned.pth"


def _prune(args: argparse.Namespace, out: Printer) -> int:
    from .streaming.cli import is_checkpoint_dir
    from .streaming.memory import parse_size
    from .workflow import load_source, prune_model
    from .workflow.report import check_report_path
    from .workflow.save import check_output

    if args.calib_memory is not None:  # OptionError (exit 2) before any model loads
        parse_size(args.calib_memory)
    if _stream(args):  # out of core (depgraph.streaming): by --ratio, within --max-memory
        if args.target is not None:
            raise ArgumentError("--target needs the model in memory; a streamed checkpoint (--max-memory, or "
                                 "larger than the free memory) is pruned by --ratio")
        if args.blockwise:
            raise ArgumentError("--blockwise runs the calibration through the model in memory; a streamed "
                                 "checkpoint (--max-memory, or larger than the free memory) is pruned in one pass")
        if args.recalibrate_bn:
            raise ArgumentError("--recalibrate-bn runs the model in memory; a streamed checkpoint (--max-memory, "
                                 "or larger than the free memory) has no BatchNorm statistics to re-estimate")
        from .streaming.cli import run as run_checkpoint

        args.importance = args.importance or "l2"
        try:
            return run_checkpoint(args, out)
        except ValueError as e:
            raise ArgumentError(str(e)) from None
    fmt = {"auto": "hf" if is_checkpoint_dir(args.model) else "depgraph"}.get(args.save_format, args.save_format)
    path = _default_output(args, fmt)
    if path is not None:  # before the model is built and pruned: a bad path fails in a second
        check_output(path, fmt, args.model if os.path.isdir(args.model) else None)
    if args.report is not None:
        check_report_path(args.report)
    device = _device(args)
    torch.manual_seed(args.seed)
    source = load_source(args.model, args.weights, trust_pickle=args.trust_pickle, input_size=args.input_size,
                         input_shape=args.input_shape, batch_size=args.batch_size, seq_len=args.seq_len,
                         device=device)
    _layers_by_name(source.model, args.ignore or [])
    result = prune_model(
        source, ratio=args.ratio, target=args.target, importance=args.importance, compensation=args.compensation,
        global_pruning=args.global_pruning, round_to=args.round_to, head_ratio=args.head_ratio or 0.0,
        prune_hidden=args.prune_hidden, blockwise=args.blockwise, ignore=args.ignore or (), calib=args.calib, num_samples=args.calib_samples,
        calib_batch_size=args.calib_batch_size, seq_len=args.seq_len, calib_memory=args.calib_memory,
        recalibrate_bn=args.recalibrate_bn, output=path, save_format=fmt,
        report=args.report, latency=not args.no_latency, progress=not args.plain)
    _print_report(result.report, source, args, out)
    return 0 if result.report.verified else 1


def _print_report(rep: Any, source: Any, args: argparse.Namespace, out: Printer) -> None:
    scope = "global" if args.global_pruning else "per group"
    imp = rep.criterion.rsplit(",", 1)[0].replace("+ ", "+ ").strip()
    goal = f"pruning ratio {args.ratio}" if args.ratio is not None else f"target {rep.target}"
    title = f"{args.model}: {goal} ({scope}, importance {imp}"
    title += f", round_to {args.round_to})" if args.round_to else ")"
    out.table(title, ("", "before", "after", "change"), rep.summary_rows(),
              caption=f"criterion: {rep.criterion} ({rep.why})")
    if args.target is not None:
        out.line(f"result: {rep.result}")
    out.line(f"ignored layers: {', '.join(rep.kept_layers) or 'none'}")
    x = source.spec.unwrap(source.example_inputs)
    out.line(f"input: {tuple(x.shape) if x is not None else '?'} on {rep.device}; weights: {rep.weights}")
    if rep.calibration != "none":
        out.line(f"calibration: {rep.calibration}")
    if rep.batchnorm != "unchanged":
        out.line(f"BatchNorm: {rep.batchnorm}")
    out.line(rep.verify)
    for note in rep.notes:
        out.line(f"note: {note}")
    out.line("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in rep.seconds.items()))
    if rep.output is not None:
        if args.save_format == "pickle":
            out.line(f"saved the whole pickled model to {rep.output} (load it with torch.load({rep.output!r}, "
                     "weights_only=False), which runs pickled code: only for files you trust)")
        elif rep.how_to_load.startswith("import transformers"):
            out.line(f"saved the pruned model to {rep.output} (save_pretrained; load it without depgraph with:")
            out.line("  " + rep.how_to_load.replace("\n", "\n  ") + ")")
        else:
            out.line(f"saved the pruned model to {rep.output} (weights-only; load it into the unpruned definition with:")
            out.line("  " + rep.how_to_load.replace("\n", "\n  ") + ")")
    if args.report is not None:
        out.line(f"report written to {args.report}")


def _groups(args: argparse.Namespace, out: Printer) -> int:
    from .defaults import DEFAULT_ROOT_TYPES
    from .dependency import DependencyGraph

    model, x, ignored, ignored_names = _setup(args)
    dg = DependencyGraph().build_dependency(model, x, ignored_layers=ignored)
    groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=DEFAULT_ROOT_TYPES))
    rows = []
    for i, g in enumerate(groups):
        root = g[0].dep.target
        others = list(dict.fromkeys(it.dep.target.name for it in g.items[1:] if it.dep.target is not root))
        shown = ", ".join(others[:4]) + (f", +{len(others) - 4} more" if len(others) > 4 else "")
        exact = "no: " + "; ".join(g.inexact_reasons) if g.inexact_reasons else "yes"
        rows.append((i, f"{root.name} ({type(root.module).__name__})", len(g[0].idxs), len(g), exact, shown))
    out.table(f"{args.model}: {len(groups)} prunable groups", ("#", "root", "channels", "members", "exact", "coupled"), rows)
    out.line(f"ignored layers: {', '.join(ignored_names) or 'none'}")
    if args.details:
        for g in groups:
            out.line(g.details())
    return 0


# -- parser and entry point -----------------------------------------------------------------------
def positive_int(text: str) -> int:
    """An ``argparse`` type for counts and sizes, shared by every ``depgraph`` subcommand.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not an integer of at least 1, so argparse
            names the option and exits with code 2 before anything is loaded.
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An ``argparse`` type for counts where 0 means none (warm-up steps, evaluation batches).

    Raises:
        argparse.ArgumentTypeError: ``text`` is not an integer >= 0.
    """
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """An ``argparse`` type for weights and tolerances (0 allowed), shared by the subcommands.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not a number >= 0 (``nan`` included).
    """
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An ``argparse`` type for learning rates and temperatures, where 0 would be meaningless.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not a number > 0 (``nan`` included).
    """
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def threads_arg(text: str) -> str | int:
    """An ``argparse`` type for ``--threads``: ``auto`` or a positive integer."""
    if text.strip().lower() == "auto":
        return "auto"
    return positive_int(text)


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1] (e.g. 0.5), got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"must be positive integers separated by commas (e.g. 3,224,224), got {text!r}")
    return shape


def add_saved_model_options(p: argparse.ArgumentParser) -> None:
    """``--input-size``, ``--trust-pickle`` and ``--plain``, as the commands that read saved models (recover,
    export, average) take them: one wording and one meaning each."""
    p.add_argument("--input-size", type=positive_int, default=None, help="image height and width (default: the model's)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling a model saved whole with torch.save (runs code from the file)")
    p.add_argument("--plain", action="store_true", help="plain-text tables even when rich is installed")


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a torchvision or timm model name (resnet50, vit_b_16, ...), a Hugging Face "
                                 "checkpoint folder or cached hub id, or a model file saved with torch.save")
    p.add_argument("--input-size", type=positive_int, default=None,
                   help="height and width of the random example input (default: 224, or the timm model's)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch of the example input (default: 1)")
    p.add_argument("--ignore", action="append", metavar="LAYER",
                   help="qualified name of a layer whose outputs are kept (repeatable); "
                        "the final classifier is always kept")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default: 0)")
    p.add_argument("--plain", action="store_true", help="plain-text tables even when rich is installed")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``depgraph`` (``prune`` and ``groups`` subcommands)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="depgraph",
        description="Structural pruning for PyTorch: prune a model (torchvision/timm with its weights, a "
                    "Hugging Face checkpoint, a saved module) to a ratio or a target, or list its prunable groups.",
    )
    parser.add_argument("--version", action="version", version=f"depgraph {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{prune,groups,recover,export,average}")

    p = sub.add_parser("prune", help="prune a model to a ratio or a target, verify it, print before/after "
                                     "figures and save it")
    _add_model_arguments(p)
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--ratio", type=_ratio, help="fraction of channels removed per group, in [0, 1]")
    goal.add_argument("--target", metavar="METRIC=KEPT",
                      help="a cost to reach, as the fraction KEPT: macs=0.5, params=0.7 or latency=0.5 "
                           "(latency measured on --device); the pruner ratio is searched")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="weights of a torchvision/timm model: a state dict, a depgraph.save file, a checkpoint "
                        "dict, or 'pretrained' (the library's own weights, from the local cache only)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a whole model saved with torch.save (unpickling runs code from the file)")
    p.add_argument("--input-shape", type=_shape, default=None, metavar="C,H,W",
                   help="per-sample input shape of a model saved whole (default: guessed from its first layer)")
    p.add_argument("--round-to", type=positive_int, default=None, help="keep channel counts multiples of N")
    p.add_argument("--global", dest="global_pruning", action="store_true",
                   help="rank channels across all groups instead of within each group")
    p.add_argument("--importance", choices=IMPORTANCES + DATA_AWARE_IMPORTANCES, default=None,
                   help="channel criterion (default: l2, the group magnitude with p=2; with --calib the best "
                        "measured for the family: activation_weight for vision; for language models "
                        "reconstruction + lstsq when its Gram matrices fit --calib-memory, else fluctuation + bias)")
    p.add_argument("--compensation", choices=("none", "bias", "lstsq"), default=None,
                   help="after each prune, fold removed channels' mean into the next bias (bias) or refit the "
                        "next Linear by least squares (lstsq); needs --calib (default: fluctuation -> bias, "
                        "reconstruction -> lstsq, else none)")
    p.add_argument("--head-ratio", type=_ratio, default=None,
                   help="Hugging Face models: fraction of attention heads removed per layer (default: 0 in "
                        "memory; a streamed checkpoint's default is --ratio)")
    p.add_argument("--prune-hidden", action="store_true",
                   help="Hugging Face models: also prune the hidden size (embedding, norms, every projection on "
                        "the residual stream) at --ratio; the vocabulary is kept")
    p.add_argument("--blockwise", action="store_true",
                   help="prune the stack of blocks (a transformer's layers) one block at a time, each calibrated "
                        "on the already pruned blocks' outputs: reconstruction + lstsq per group holding one "
                        "block's Gram matrices at a time; needs --calib (the language-model default picks it "
                        "when one pass does not fit --calib-memory)")
    p.add_argument("--calib", default=None, metavar="DATA",
                   help="calibration data: an image folder, a text file, a .jsonl (\"text\" field), or "
                        "module:attribute naming a dataset or loader")
    p.add_argument("--calib-samples", type=positive_int, default=32, help="calibration samples read (default: 32)")
    p.add_argument("--calib-batch-size", type=positive_int, default=8, help="calibration batch size (default: 8)")
    p.add_argument("--calib-memory", default=None, metavar="SIZE",
                   help="the most memory the calibration statistics may take, e.g. 8GB or 1.5GiB (default: half "
                        "the free memory of --device). In memory, language models without --importance/"
                        "--compensation: reconstruction + lstsq is the default when its float64 Gram matrices "
                        "fit, fluctuation + bias otherwise. A streamed checkpoint with --compensation lstsq holds "
                        "all its Gram matrices at once (beside --max-memory) and is refused before any read "
                        "when they do not fit")
    p.add_argument("--recalibrate-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="after the verified prune, re-measure every BatchNorm layer's running statistics on "
                        "the --calib data: the unpruned model's are stale once a convolution's inputs are "
                        "pruned, which costs most of a CNN's eval-mode accuracy until recovery (default: on "
                        "when --calib is given and the model has BatchNorm layers)")
    p.add_argument("--seq-len", type=positive_int, default=32,
                   help="tokens per example input and calibration window of a language model (default: 32)")
    p.add_argument("--output", default=None, metavar="PATH",
                   help="where to save the pruned model (default: ./<model>_pruned.pth, or a <name>_pruned "
                        "folder for a Hugging Face checkpoint; '-' to not save); checked before pruning")
    p.add_argument("--save-format", choices=("auto", "hf", "depgraph", "pickle"), default="auto",
                   help="auto (default): save_pretrained for Hugging Face checkpoints, depgraph otherwise; "
                        "depgraph: weights-only, loaded with depgraph.load(<unpruned model>, PATH); "
                        "pickle: the whole model, loaded with torch.load(PATH, weights_only=False)")
    p.add_argument("--report", default=None, metavar="PATH",
                   help="write the report (widths per layer, params/MACs/latency, criterion, target, result) "
                        "to a .md, .json or .png file")
    p.add_argument("--no-latency", action="store_true", help="do not measure latency before and after")
    p.set_defaults(run=_prune)
    from .streaming.cli import MAX_MEMORY_HELP

    p.add_argument("--max-memory", default=None, metavar="SIZE", help=MAX_MEMORY_HELP)

    g = sub.add_parser("groups", help="list the prunable groups of a model")
    _add_model_arguments(g)
    g.add_argument("--details", action="store_true", help="also print every member of every group")
    g.set_defaults(run=_groups)

    from .export.cli import add_parser as add_export
    from .recovery.average_cli import add_parser as add_average
    from .recovery.cli import add_parser as add_recover

    add_recover(sub)
    add_export(sub)
    add_average(sub)
    for command in sub.choices.values():  # every subcommand computes on the CPU threads chosen here
        command.add_argument("--threads", type=threads_arg, default="auto", metavar="N|auto",
                             help="CPU threads for PyTorch (default: auto, the cores the load average "
                                  "leaves idle, at least 1; OMP_NUM_THREADS, when set, is kept)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Printer(args.plain)
    try:
        with cpu_threads(resolve_threads(args.threads)):  # restored after: main() may run in-process
            return args.run(args, out)
    except ArgumentError as e:
        print(f"depgraph {args.command}: error: {e}", file=sys.stderr)
        return 2
    except _INPUT_ERRORS as e:  # what the user gave cannot work; found before the long work
        code = 2 if args.command in ("prune", "groups") else 1  # recover/export document 1 for these
        print(f"depgraph {args.command}: {'error: ' if code == 2 else ''}{type(e).__name__}: {e}", file=sys.stderr)
        return code
    except DepgraphError as e:
        print(f"depgraph {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
