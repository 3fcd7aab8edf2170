"""Quickstart: halve the channels of a ResNet-18 with one call to ``pruner.step()``.

    python examples/quickstart.py                     # resnet18, random weights, 224x224
    python examples/quickstart.py --quick             # 64x64 input, a few seconds
    python examples/quickstart.py --weights DEFAULT   # start from torchvision's trained weights

The workflow, and why each piece is there:

1. **Importance**: ``GroupMagnitudeImportance(p=2)`` scores every channel by
   the L2 norm of *all* the weights that would disappear with it - the conv
   filter, the BatchNorm scale after it and the input slices of every layer
   that reads it. Scoring the whole coupled group, not one conv alone, is what
   makes the ranking meaningful for residual networks.
2. **Pruner**: ``BasePruner`` builds the dependency graph from one forward
   pass on ``example_inputs``, then removes ``pruning_ratio`` of the channels
   of every group. ``ignored_layers=[model.fc]`` keeps the 1000 outputs (the
   classes); ``round_to=8`` keeps every width a multiple of 8, which is what
   GPU kernels and vectorised CPU kernels run fastest on.
3. **Report**: parameters and MACs before and after, the module tree with
   ``old => new`` widths (``print_tool``), and ``tp.verify``: the pruned model
   computes exactly what the original computes with the removed channels set to
   zero. That is the proof that no coupled layer was forgotten; accuracy after
   pruning (and fine-tuning) is a separate question this script does not answer.

With random weights the numbers describe the architecture only. The README's
figures (1.82 GMACs / 11.7 M params -> 0.49 GMACs / 3.06 M params at 224x224)
come out of exactly this script.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
import torchvision

import depgraph as tp


def build_model(name: str, weights: str | None) -> nn.Module:
    """A torchvision classifier; ``weights=None`` gives random weights and downloads nothing."""
    return torchvision.models.get_model(name, weights=weights).eval()


def report(original: nn.Module, pruned: nn.Module, example_inputs: torch.Tensor) -> dict:
    """Print params, MACs and output shape before and after, then the ``tp.verify`` verdict; return them."""
    macs0, params0 = tp.utils.count_ops_and_params(original, example_inputs)
    macs1, params1 = tp.utils.count_ops_and_params(pruned, example_inputs)
    with torch.no_grad():
        shape0, shape1 = tuple(original(example_inputs).shape), tuple(pruned(example_inputs).shape)
    print(f"{'':<13}{'before':>14}{'after':>14}{'change':>9}")
    print(f"{'params':<13}{params0:>14,}{params1:>14,}{params1 / params0 - 1:>9.1%}")
    print(f"{'MACs':<13}{macs0 / 1e9:>12.4f} G{macs1 / 1e9:>12.4f} G{macs1 / macs0 - 1:>9.1%}")
    print(f"{'output shape':<13}{str(shape0):>14}{str(shape1):>14}")
    proof = tp.verify(original, pruned, example_inputs)
    print(proof)
    return {
        "before": {"params": params0, "macs": macs0, "shape": shape0},
        "after": {"params": params1, "macs": macs1, "shape": shape1},
        "verify": proof,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="torchvision model name (default: resnet18)")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per group")
    parser.add_argument("--round-to", type=int, default=8, help="keep widths multiples of this (0: off)")
    parser.add_argument("--weights", default=None, help="torchvision weights, e.g. DEFAULT (default: random)")
    parser.add_argument("--input-size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--quick", action="store_true", help="64x64 input and a short tree printout")
    args = parser.parse_args(argv)
    size = 64 if args.quick else args.input_size

    torch.manual_seed(0)
    model = build_model(args.model, args.weights)
    example_inputs = torch.randn(1, 3, size, size)
    original = copy.deepcopy(model)  # kept only for the report and tp.verify

    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]  # resnet18: model.fc
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=args.ratio,
        ignored_layers=[classifier],  # keep the number of classes
        round_to=args.round_to or None,
    )
    tp.utils.print_tool.before_pruning(model)
    pruner.step()
    # Without --quick the whole tree is shown; with it only the changed layers.
    tp.utils.print_tool.after_pruning(model, show_identical=not args.quick)

    print(f"\n{args.model}: pruning ratio {args.ratio}, round_to {args.round_to}, input {tuple(example_inputs.shape)}")
    return report(original, model, example_inputs)


if __name__ == "__main__":
    main()
