"""``depgraph export``: write a (pruned) model as ONNX and/or a ``torch.export`` program, checked against eager.

    depgraph export resnet18_pruned.pth --base resnet18 --onnx resnet18.onnx --torch-export resnet18.pt2
    depgraph export ./llama-pruned --torch-export llama.pt2 --seq-len 32
    depgraph export ./llama-pruned --onnx llama.onnx --dynamic     # any batch and sequence length

Each program is run on the example inputs and compared with the eager model;
a difference above ``--atol + --rtol * |eager|`` is refused (exit 1, no file).
With ``--dynamic`` the batch (and a text model's sequence length) are dynamic
axes of the program, checked at two sizes of each.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to the ``depgraph`` parser's subparsers."""
    from ..cli import add_saved_model_options, non_negative_float, positive_int  # shared by the subcommands

    p = sub.add_parser("export", help="export a model to ONNX / torch.export and check it against eager")
    p.add_argument("model", help="a Hugging Face folder, a depgraph.save file (with --base), a whole model saved "
                                 "with torch.save, or a torchvision/timm name (random weights)")
    p.add_argument("--base", default=None, help="unpruned definition of a depgraph.save file: a torchvision/timm "
                                                "name or a Hugging Face folder")
    p.add_argument("--onnx", default=None, metavar="PATH", help="write an ONNX file")
    p.add_argument("--torch-export", default=None, metavar="PATH", help="write a torch.export program (.pt2)")
    p.add_argument("--onnx-legacy", action="store_true", help="use the TorchScript-based ONNX exporter (dynamo=False)")
    p.add_argument("--opset", type=positive_int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--dynamic", action="store_true",
                   help="dynamic batch (and sequence length for text models), checked at two sizes of each")
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch of the example input (default: 1)")
    p.add_argument("--seq-len", type=positive_int, default=16, help="tokens of a text model's example input (default: 16)")
    p.add_argument("--atol", type=non_negative_float, default=1e-4, help="absolute tolerance (default: 1e-4)")
    p.add_argument("--rtol", type=non_negative_float, default=1e-4, help="relative tolerance (default: 1e-4)")
    add_saved_model_options(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace, out: Any) -> int:
    """Load, export each requested format, check it, report; the exit code (0 done)."""
    from ..recovery.sources import load_pruned
    from ..workflow import load_source
    from ..workflow.save import check_output
    from . import export_onnx, export_program

    if not args.onnx and not args.torch_export:
        from ..cli import ArgumentError

        raise ArgumentError("give --onnx PATH and/or --torch-export PATH")
    for path in (args.onnx, args.torch_export):
        if path:
            check_output(path, "depgraph")
    load = {"trust_pickle": args.trust_pickle, "input_size": args.input_size, "seq_len": args.seq_len,
            "batch_size": args.batch_size}
    is_path = os.path.exists(args.model) or os.sep in args.model or args.model.endswith((".pth", ".pt", ".bin"))
    source = load_pruned(args.model, args.base, **load) if is_path else load_source(args.model, **load)
    model, inputs = source.model.eval(), source.example_inputs
    rows = []
    jobs = []
    if args.torch_export:
        jobs.append(("torch.export", args.torch_export,
                     lambda: export_program(model, inputs, args.torch_export, atol=args.atol, rtol=args.rtol,
                                                    dynamic=args.dynamic)))
    if args.onnx:
        jobs.append(("onnx", args.onnx, lambda: export_onnx(model, inputs, args.onnx, atol=args.atol, rtol=args.rtol,
                                                           dynamo=not args.onnx_legacy, opset_version=args.opset,
                                                           dynamic=args.dynamic)))
    for fmt, path, job in jobs:
        t0 = time.perf_counter()
        result = job()
        at = "; ".join(", ".join(f"{k} {v}" for k, v in size.items()) for size in result.sizes) or "example shape"
        rows.append((fmt, path, f"{result.max_abs_diff:.3g}", result.checked_with, at,
                     f"{time.perf_counter() - t0:.1f} s"))
    shape = {k: tuple(v.shape) for k, v in inputs.items()} if isinstance(inputs, dict) else tuple(inputs.shape)
    out.table(f"export {args.model} (example input {shape}; tolerance atol {args.atol:g} + rtol {args.rtol:g})",
              ("format", "file", "max abs diff vs eager", "checked with", "checked at", "time"), rows)
    return 0
