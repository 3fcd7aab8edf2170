"""Global pruning: let one ranking across all layers decide where channels go.

    python examples/global_pruning.py                    # resnet50, ratio 0.5, 4 steps, 224x224
    python examples/global_pruning.py --quick            # resnet18, 64x64, 2 steps
    python examples/global_pruning.py --model mobilenet_v3_large --max-ratio 0.7

The same model is pruned three ways, each from the same starting weights:

* ``local``: every group loses ``ratio`` of its channels. Uniform and safe, but
  it treats a redundant layer and an essential one alike.
* ``global``: ``global_pruning=True`` pools the (per-group normalised) scores
  of all groups and removes the lowest ``ratio`` of *all* channels, so layers
  with weak channels shrink more. ``max_pruning_ratio`` caps any one group, so
  no layer is cut to a sliver that would bottleneck the network.
* ``isomorphic``: ``isomorphic=True`` also ranks globally, but only among groups
  of identical structure (the same kinds of member layers, in the same order,
  with the same widths). Scores of a 3x3 conv group and of a wide residual
  group measure different things; comparing them directly can starve one kind
  of layer. Isomorphic ranking keeps comparisons fair while still moving
  channels between the blocks of one kind.

Every pruner runs ``--steps`` iterative steps. ``linear_scheduler`` gives the
ratio to reach after each step (0, r/n, 2r/n, ..., r), so with real training
you would fine-tune between steps and the model adapts gradually instead of
losing half its channels at once. The script prints params/MACs after every
step, the width of each group's root layer at the end, and ``tp.verify``.

With random weights (the default) global rankings reflect the initialisation,
not learned importance; pass ``--weights DEFAULT`` to rank trained weights.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
import torchvision

import depgraph as tp

STRATEGIES = {
    "local": {},
    "global": {"global_pruning": True},
    "isomorphic": {"global_pruning": True, "isomorphic": True},
}


def out_width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="torchvision model name (default: resnet50; resnet18 with --quick)")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of all channels to remove")
    parser.add_argument("--max-ratio", type=float, default=0.8, help="max_pruning_ratio: no group loses more")
    parser.add_argument("--steps", type=int, default=None, help="iterative steps (default 4; 2 with --quick)")
    parser.add_argument("--round-to", type=int, default=8, help="keep widths multiples of this (0: off)")
    parser.add_argument("--weights", default=None, help="torchvision weights, e.g. DEFAULT (default: random)")
    parser.add_argument("--quick", action="store_true", help="resnet18 at 64x64 in 2 steps")
    args = parser.parse_args(argv)
    name = args.model or ("resnet18" if args.quick else "resnet50")
    steps = args.steps or (2 if args.quick else 4)
    size = 64 if args.quick else 224

    torch.manual_seed(0)
    base = torchvision.models.get_model(name, weights=args.weights).eval()
    example_inputs = torch.randn(1, 3, size, size)
    classifier_name = [n for n, m in base.named_modules() if isinstance(m, nn.Linear)][-1]
    macs0, params0 = tp.utils.count_ops_and_params(base, example_inputs)
    schedule = tp.pruner.linear_scheduler(args.ratio, steps)
    print(f"{name}: {params0:,} params, {macs0 / 1e9:.3f} GMACs at {size}x{size}")
    print(f"ratio {args.ratio}, max_pruning_ratio {args.max_ratio}, {steps} steps, "
          f"schedule {[round(r, 3) for r in schedule]}, classifier {classifier_name} ignored\n")

    widths: dict[str, dict[str, int]] = {}
    proofs: dict[str, tp.VerifyResult] = {}
    for strategy, options in STRATEGIES.items():
        model = copy.deepcopy(base)
        modules = dict(model.named_modules())
        classifier = modules[classifier_name]
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=args.ratio,
            max_pruning_ratio=args.max_ratio,
            iterative_steps=steps,
            iterative_pruning_ratio_scheduler=tp.pruner.linear_scheduler,
            ignored_layers=[classifier],
            round_to=args.round_to or None,
            **options,
        )
        if not widths:  # the rows of the width table: each group's root layer, before pruning
            groups = pruner.DG.get_all_groups(ignored_layers=[classifier], root_module_types=(nn.Conv2d, nn.Linear))
            widths["before"] = {g[0].dep.target.name: len(g[0].idxs) for g in groups}
        for k in range(1, steps + 1):
            pruner.step()
            # (fine-tune here in a real run: each step removes a little, training recovers it)
            macs, params = tp.utils.count_ops_and_params(model, example_inputs)
            print(f"{strategy:<11} step {k}/{steps} (target {schedule[k]:.3f}): "
                  f"params {params:>11,} ({params / params0:6.1%}), MACs {macs / 1e9:7.3f} G ({macs / macs0:6.1%})")
        widths[strategy] = {root: out_width(modules[root]) for root in widths["before"]}
        proofs[strategy] = tp.verify(base, model, example_inputs)
        print(f"{strategy:<11} {proofs[strategy]}\n")

    columns = list(widths)
    print("per-layer widths (output channels of each group's root layer):")
    print(f"{'group root':<28}" + "".join(f"{c:>11}" for c in columns))
    for root in widths["before"]:
        print(f"{root:<28}" + "".join(f"{widths[c][root]:>11}" for c in columns))
    return {"widths": widths, "verify": proofs}


if __name__ == "__main__":
    main()
