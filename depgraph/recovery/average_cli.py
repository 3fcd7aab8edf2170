"""``depgraph average``: the weighted mean of recoveries of one pruned model (a model soup), saved.

    depgraph average ./llama-rec-a ./llama-rec-b --output ./llama-soup
    depgraph average rec_a.pth rec_b.pth rec_c.pth --base resnet50 --weights 2,1,1 --output soup.pth \\
        --data ./images          # re-measure the BatchNorm statistics of the average on these images

The models are loaded one after the other (one model and the running sum in memory)
and must have the same architecture and widths; see :mod:`depgraph.recovery.average`
for when averaging helps. The result is written in the form the first model came in,
after a forward pass on an example input has checked that it runs and stays finite.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["add_parser", "run"]


def _weights(text: str) -> list[float]:
    """``--weights``: comma-separated numbers >= 0."""
    from ..cli import non_negative_float

    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"give one number per model, comma-separated, got {text!r}")
    return [non_negative_float(t) for t in items]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``average`` subcommand to the ``depgraph`` parser's subparsers."""
    from ..cli import add_saved_model_options, positive_int  # shared by the subcommands

    p = sub.add_parser("average", help="average the weights of recoveries of one pruned model (a model soup), "
                                       "then save it")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="two or more recoveries of one pruned model: Hugging Face folders, depgraph.save files "
                        "(with --base) or whole models saved with torch.save")
    p.add_argument("--output", required=True, metavar="PATH", help="where the average goes (checked first)")
    p.add_argument("--weights", type=_weights, default=None, metavar="W,W,...",
                   help="one weight >= 0 per model, normalised to sum 1 (default: equal weights)")
    p.add_argument("--base", default=None,
                   help="unpruned definition of depgraph.save files: a torchvision/timm name or a Hugging Face folder")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="images or text in the forms of depgraph recover --data, on which the average's BatchNorm "
                        "statistics are re-measured (as SWA does); without it they are the average of the models'")
    p.add_argument("--max-samples", type=positive_int, default=256,
                   help="samples of --data, evenly spread over it (default: 256)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="batch size on --data (default: 32)")
    p.add_argument("--seq-len", type=positive_int, default=128, help="tokens per text sample (default: 128)")
    add_saved_model_options(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace, out: Any) -> int:
    """Check, load and average one model at a time, re-measure BatchNorm, check a forward, save; the exit code."""
    from ..errors import CalibrationDataError, OptionError, RecoveryError
    from ..trace import call_model
    from ..utils.batchnorm import batchnorm_layers
    from ..workflow.save import check_output, save_pruned
    from .average import average_state_dicts, check_weights
    from .batches import logits_of
    from .sources import load_pruned, output_format

    # everything that can be refused without a model is refused before the first one loads
    if len(args.models) < 2:
        raise OptionError(f"average needs two or more models, got {len(args.models)}")
    check_weights(args.weights, len(args.models))
    for spec in args.models:
        if not Path(spec).exists():
            raise RecoveryError(f"model {spec!r} does not exist (expected a Hugging Face folder or a file)")
    if args.data is not None and not Path(args.data).exists():
        raise CalibrationDataError(f"--data {args.data!r} does not exist")
    folder = Path(args.models[0]).is_dir()
    check_output(args.output, "hf" if folder else "depgraph", args.models[0] if folder else None)

    load = {"trust_pickle": args.trust_pickle, "input_size": args.input_size, "seq_len": args.seq_len}
    first = load_pruned(args.models[0], args.base, **load)
    fmt = output_format(first, args.models[0])
    check_output(args.output, fmt, first.folder if first.family == "hf" else None)
    for spec in args.models[1:]:  # another folder of the same model must not be overwritten either
        if Path(spec).is_dir():
            check_output(args.output, fmt, spec)
    with torch.no_grad():
        shape = tuple(logits_of(call_model(first.model, first.example_inputs)).shape)

    def states() -> Iterator[dict[str, torch.Tensor]]:
        yield first.model.state_dict()
        for spec in args.models[1:]:
            yield load_pruned(spec, args.base, **load).model.state_dict()  # dropped before the next loads

    averaged = average_state_dicts(states(), args.weights, names=args.models)
    with torch.no_grad():
        first.model.load_state_dict(averaged)
    del averaged
    has_batchnorm = bool(batchnorm_layers(first.model))
    measured = _recalibrate(args, first) if args.data is not None and has_batchnorm else 0
    with torch.no_grad():
        output = logits_of(call_model(first.model, first.example_inputs))
    problem = f"an output of shape {tuple(output.shape)}, not {shape}," if tuple(output.shape) != shape else \
        None if torch.isfinite(output).all() else "non-finite outputs"
    if problem is not None:
        raise RecoveryError(f"average: the averaged model gives {problem} on the example input; nothing was written")
    total = sum(args.weights) if args.weights is not None else len(args.models)
    rows = [(spec, f"{(args.weights[i] if args.weights is not None else 1.0) / total:.4f}")
            for i, spec in enumerate(args.models)]
    out.table(f"average of {len(args.models)} models", ("model", "weight"), rows)
    if measured:
        out.line(f"re-measured the running statistics of {measured} BatchNorm layers on {args.data}")
    elif has_batchnorm:
        out.line("the BatchNorm running statistics are the models' average; give --data to re-measure them")
    how = save_pruned(first.model.cpu(), first, args.output, fmt)
    out.line(f"saved the average to {args.output}; load it with:\n{how}")
    return 0


def _recalibrate(args: argparse.Namespace, source: Any) -> int:
    """Re-measure the average's BatchNorm statistics on ``--data``; the number of layers re-measured."""
    from torch.utils.data import DataLoader

    from ..utils.batchnorm import recalibrate_batchnorm
    from .batches import is_causal_lm, split_batch
    from .data import open_dataset

    data = open_dataset(args.data, source.spec, seq_len=args.seq_len, max_samples=args.max_samples)
    causal = is_causal_lm(source.model)

    def inputs() -> Iterator[Any]:
        for batch in DataLoader(data, batch_size=args.batch_size):
            b = split_batch(batch, causal)
            yield b.kwargs if b.kwargs else b.args

    return recalibrate_batchnorm(source.model, inputs())
