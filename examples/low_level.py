"""Low level: the dependency graph, one pruning group at a time.

    python examples/low_level.py                    # resnet18, 224x224
    python examples/low_level.py --quick            # 64x64 input
    python examples/low_level.py --ratio 0.25       # fraction removed from every group in part 2

A pruner is a loop over what this script does by hand. Use this level when
you want to choose channels yourself (from your own criterion, a mask you
learned, a hardware constraint) or to see what one decision drags along.

1. ``DependencyGraph().build_dependency(model, example_inputs)`` records one
   forward pass and works out, for every op, how channel indices map through
   it.
2. ``DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [2, 6, 9])``
   is a *plan*: every layer that must lose channels 2, 6 and 9 (or their images)
   when conv1 loses them - its BatchNorm, the residual branches of layer1, the
   first convs of layer2 - and which indices each loses. Nothing changes yet,
   so the plan can be printed (``group.details()``) and checked
   (``DG.check_pruning_group`` is False if it would empty a layer).
3. ``group.prune()`` applies it as one transaction: every member is checked
   first, and a failure part-way restores the model.
4. ``DG.get_all_groups()`` yields each prunable group once with all its
   channels; scoring it with an importance and pruning the lowest channels of
   each is, in a dozen lines, what ``BasePruner.step()`` does.

``tp.verify`` after each part proves the pruned model computes exactly what
the original computes with the removed channels set to zero.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
import torchvision

import depgraph as tp


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="torchvision model name (default: resnet18)")
    parser.add_argument("--ratio", type=float, default=0.3, help="fraction of each group removed in part 2")
    parser.add_argument("--weights", default=None, help="torchvision weights, e.g. DEFAULT (default: random)")
    parser.add_argument("--quick", action="store_true", help="64x64 input")
    args = parser.parse_args(argv)
    size = 64 if args.quick else 224

    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=args.weights).eval()
    example_inputs = torch.randn(1, 3, size, size)
    original = copy.deepcopy(model)
    macs0, params0 = tp.utils.count_ops_and_params(model, example_inputs)

    # -- part 1: one decision and everything it drags along ---------------------------------
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))  # resnet18: model.conv1
    group = DG.get_pruning_group(first_conv, tp.prune_conv_out_channels, idxs=[2, 6, 9])
    print(group.details())
    members = sorted({dep.target.name for dep, _ in group})
    print(f"{len(group)} members, {len(members)} layers: {', '.join(members)}")
    if DG.check_pruning_group(group):  # False if it would empty a layer or reach a frozen dim
        group.prune()
    print(f"first conv now has {first_conv.out_channels} output channels")
    proof1 = tp.verify(original, model, example_inputs)
    print(f"part 1 {proof1}\n")

    # -- part 2: every group, lowest-scoring channels first ---------------------------------
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]  # keep the classes
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    print(f"{'group root':<26}{'channels':>9}{'members':>9}{'pruned':>8}")
    for group in DG.get_all_groups(ignored_layers=[classifier], root_module_types=(nn.Conv2d, nn.Linear)):
        root = group[0].dep.target
        scores = importance(group)  # one score per root channel, over all members
        n = int(len(scores) * args.ratio)
        idxs = scores.argsort()[:n].tolist()  # the n least important channels
        print(f"{root.name:<26}{len(scores):>9}{len(group):>9}{n:>8}")
        plan = DG.get_pruning_group(root.module, group[0].dep.handler, idxs)  # (same as group.prune(idxs))
        if n and DG.check_pruning_group(plan):
            plan.prune()

    macs1, params1 = tp.utils.count_ops_and_params(model, example_inputs)
    with torch.no_grad():
        shape0, shape1 = tuple(original(example_inputs).shape), tuple(model(example_inputs).shape)
    print(f"\nparams {params0:,} => {params1:,} ({params1 / params0 - 1:.1%}), "
          f"MACs {macs0 / 1e9:.3f} G => {macs1 / 1e9:.3f} G ({macs1 / macs0 - 1:.1%}), output {shape0} => {shape1}")
    proof2 = tp.verify(original, model, example_inputs)
    print(f"part 2 {proof2}")
    print(f"pruning history: {len(DG.pruning_history())} groups (replay with DG.load_pruning_history)")
    return {"group_members": members, "verify": [proof1, proof2], "params": (params0, params1)}


if __name__ == "__main__":
    main()
