"""The ``depgraph`` command line: prune a torchvision or timm model, or list its groups.

    depgraph prune resnet50 --ratio 0.5            # prune, verify, save ./resnet50_pruned.pth (weights-only)
    depgraph groups resnet18 --input-size 64       # the prunable groups, one row each
    python -m depgraph --version

Models are built with random weights: nothing is downloaded, so the numbers
show what pruning does to the architecture, not to accuracy. The final
classifier is always ignored (pruning its outputs would change the number of
classes); ``--ignore`` names more layers to keep.

Exit codes: 0 done; 1 pruning failed or ``verify`` found a difference;
2 bad arguments or an unknown model name.

``rich`` (the ``cli`` extra) draws the tables when it is installed; without
it, or with ``--plain``, they are plain text.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib.util
import inspect
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .errors import DepgraphError

__all__ = ["main", "build_parser", "load_model", "find_classifier", "Printer"]

#: Criteria that need no data or gradients; ``l1``/``l2`` are the group magnitude with that p.
IMPORTANCES = ("l2", "l1", "lamp", "fpgm", "bn_scale", "random")

_FIND_NAMES = (
    "find model names with\n"
    "  python -c \"import torchvision; print(torchvision.models.list_models())\"\n"
    "  python -c \"import timm; print(timm.list_models('*vit*'))\""
)


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
    known: list[str] = []
    if importlib.util.find_spec("torchvision") is not None:
        import torchvision

        known = torchvision.models.list_models()
        if name in known:
            # segmentation and detection builders would download ImageNet backbone weights by default
            builder = torchvision.models.get_model_builder(name)
            extra = {"weights_backbone": None} if "weights_backbone" in inspect.signature(builder).parameters else {}
            return builder(weights=None, **extra).eval(), (3, 224, 224)
    if importlib.util.find_spec("timm") is not None:
        import timm

        if timm.is_model(name):
            model = timm.create_model(name, pretrained=False).eval()
            size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
            return model, size  # type: ignore[return-value]
        known += timm.list_models()
    elif not known:
        raise ArgumentError(
            f"cannot build {name!r}: neither torchvision nor timm is installed; "
            "install them with: pip install 'depgraph[vision]'"
        )
    close = difflib.get_close_matches(name, list(dict.fromkeys(known)), n=5)
    hint = f"did you mean: {', '.join(close)}?\n" if close else ""
    raise ArgumentError(f"unknown model {name!r}: not a torchvision or timm model name.\n{hint}{_FIND_NAMES}")


def find_classifier(model: nn.Module) -> nn.Module | None:
    """The layer producing the logits: timm's ``get_classifier()``, else the last Linear, else the last conv."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return head
    for kind in (nn.Linear, nn.modules.conv._ConvNd):
        layers = [m for m in model.modules() if isinstance(m, kind)]
        if layers:
            return layers[-1]
    return None


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


def _make_importance(name: str) -> Any:
    from .importance import GroupMagnitudeImportance, create_importance

    if name in ("l1", "l2"):
        return GroupMagnitudeImportance(p=int(name[1]))
    return create_importance(name)


# -- measuring and printing -----------------------------------------------------------------------
@dataclass
class _Stats:
    params: int
    macs: int
    shape: str  # every output tensor's shape, e.g. "(1, 1000)"


def _measure(model: nn.Module, x: torch.Tensor) -> _Stats:
    from .trace import call_model, flatten_tensors
    from .utils import count_ops_and_params

    macs, params = count_ops_and_params(model, x)
    with torch.no_grad():
        outputs = flatten_tensors(call_model(model, x))
    return _Stats(int(params), int(macs), ", ".join(str(tuple(t.shape)) for t in outputs))


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def _change(before: float, after: float) -> str:
    return f"{100.0 * (after - before) / before:+.1f}%" if before else ""


def _verify_line(result: Any) -> str:
    if result.applies or not result.shapes_match:
        return str(result)
    shown = "; ".join(result.reasons[:2]) + (f"; and {len(result.reasons) - 2} more" if len(result.reasons) > 2 else "")
    return (f"verify: exactness does not apply, the pruned channels are normalised over ({shown}); "
            f"output shapes match, max diff {result.max_diff:.3g}")


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
        if self.console is not None:
            self.console.print(text, markup=False)
        else:
            print(text)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if self.console is not None:
            from rich.table import Table

            t = Table(title=title, title_justify="left")
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


# -- commands -------------------------------------------------------------------------------------
def _setup(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, list[nn.Module], list[str]]:
    """Model on the device, example input, ignored layers and their names."""
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ArgumentError(f"--device {args.device!r} is not a device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"--device {args.device}: CUDA is not available here; use --device cpu")
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


def _output_path(args: argparse.Namespace) -> str | None:
    """Where the pruned model goes (None: not saved), checked before anything runs.

    Raises:
        ArgumentError: the folder is missing or not writable, or the path is a folder.
    """
    if args.output == "-":
        return None
    path = args.output or f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.model)}_pruned.pth"
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ArgumentError(f"--output {path!r} is a folder; give a file path such as {os.path.join(path, 'm.pth')!r}")
    if not os.path.isdir(folder):
        raise ArgumentError(f"--output {path!r}: the folder {folder!r} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ArgumentError(f"--output {path!r} is not writable")
    return path


def _builder_code(name: str) -> str:
    """Python that builds the unpruned ``name`` (what ``depgraph.load`` needs), as :func:`load_model` does."""
    if importlib.util.find_spec("torchvision") is not None:
        import torchvision

        if name in torchvision.models.list_models():
            builder = torchvision.models.get_model_builder(name)
            extra = ", weights_backbone=None" if "weights_backbone" in inspect.signature(builder).parameters else ""
            return f"torchvision.models.get_model({name!r}, weights=None{extra})"
    return f"timm.create_model({name!r}, pretrained=False)"


def _save(model: nn.Module, args: argparse.Namespace, path: str, out: Printer) -> None:
    from .serialization import save

    if args.save_format == "pickle":
        torch.save(model, path)
        out.line(f"saved the whole pickled model to {path} (load it with torch.load({path!r}, "
                 "weights_only=False), which runs pickled code: only for files you trust)")
        return
    save(model, path)
    module = "torchvision" if _builder_code(args.model).startswith("torchvision") else "timm"
    out.line(f"saved the pruned model to {path} (weights-only; load it into the unpruned definition with:\n"
             f"  import depgraph, {module}\n"
             f"  model = depgraph.load({_builder_code(args.model)}, {path!r}))")


def _prune(args: argparse.Namespace, out: Printer) -> int:
    from .streaming.cli import is_checkpoint_dir
    from .streaming.cli import run as run_checkpoint

    if is_checkpoint_dir(args.model):  # a HF checkpoint folder: pruned from its files (depgraph.streaming)
        try:
            return run_checkpoint(args, out)
        except ValueError as e:
            raise ArgumentError(str(e)) from None
    from . import verify
    from .pruner import BasePruner

    path = _output_path(args)  # before the model is built and pruned: a bad path fails in a second
    model, x, ignored, ignored_names = _setup(args)
    importance = _make_importance(args.importance)
    original = copy.deepcopy(model)
    before = _measure(model, x)

    t0 = time.perf_counter()
    pruner = BasePruner(
        model, x, importance,
        global_pruning=args.global_pruning,
        pruning_ratio=args.ratio,
        ignored_layers=ignored,
        round_to=args.round_to,
    )
    t1 = time.perf_counter()
    pruner.step()
    t2 = time.perf_counter()
    result = verify(original, model, x)
    t3 = time.perf_counter()
    after = _measure(model, x)

    rows = [
        ("params", f"{before.params:,}", f"{after.params:,}", _change(before.params, after.params)),
        ("MACs", _human(before.macs), _human(after.macs), _change(before.macs, after.macs)),
        ("output shape", before.shape, after.shape, "same" if before.shape == after.shape else "CHANGED"),
    ]
    scope = "global" if args.global_pruning else "per group"
    title = f"{args.model}: pruning ratio {args.ratio} ({scope}, importance {args.importance}"
    title += f", round_to {args.round_to})" if args.round_to else ")"
    out.table(title, ("", "before", "after", "change"), rows)
    out.line(f"ignored layers: {', '.join(ignored_names) or 'none'}")
    out.line(f"input: {tuple(x.shape)} on {x.device}")
    out.line(_verify_line(result))
    out.line(f"time: build graph {t1 - t0:.2f} s, prune {t2 - t1:.2f} s, verify {t3 - t2:.2f} s")
    if path is not None:
        _save(model, args, path, out)
    return 0 if result.ok else 1


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


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1] (e.g. 0.5), got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a torchvision model name (resnet50, vit_b_16, ...) or a timm one")
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
        description="Structural pruning for PyTorch: prune a torchvision/timm model with random weights, "
                    "or list its prunable groups.",
    )
    parser.add_argument("--version", action="version", version=f"depgraph {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{prune,groups,recover,export}")

    p = sub.add_parser("prune", help="prune a model, verify it, print before/after figures and save it")
    _add_model_arguments(p)
    p.add_argument("--ratio", type=_ratio, required=True, help="fraction of channels removed per group, in [0, 1]")
    p.add_argument("--round-to", type=positive_int, default=None, help="keep channel counts multiples of N")
    p.add_argument("--global", dest="global_pruning", action="store_true",
                   help="rank channels across all groups instead of within each group")
    p.add_argument("--importance", choices=IMPORTANCES, default="l2",
                   help="channel criterion (default: l2, the group magnitude with p=2)")
    p.add_argument("--output", default=None, metavar="PATH",
                   help="where to save the pruned model (default: ./<model>_pruned.pth; '-' to not save); "
                        "checked before pruning")
    p.add_argument("--save-format", choices=("depgraph", "pickle"), default="depgraph",
                   help="depgraph (default): weights-only, loaded with depgraph.load(<unpruned model>, PATH); "
                        "pickle: the whole model, loaded with torch.load(PATH, weights_only=False)")
    p.set_defaults(run=_prune)
    from .streaming.cli import MAX_MEMORY_HELP

    p.add_argument("--max-memory", default=None, metavar="SIZE", help=MAX_MEMORY_HELP)

    g = sub.add_parser("groups", help="list the prunable groups of a model")
    _add_model_arguments(g)
    g.add_argument("--details", action="store_true", help="also print every member of every group")
    g.set_defaults(run=_groups)

    from .export.cli import add_parser as add_export
    from .recovery.cli import add_parser as add_recover

    add_recover(sub)
    add_export(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Printer(args.plain)
    try:
        return args.run(args, out)
    except ArgumentError as e:
        print(f"depgraph {args.command}: error: {e}", file=sys.stderr)
        return 2
    except DepgraphError as e:
        print(f"depgraph {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
