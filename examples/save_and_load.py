"""Save a pruned model and load it back: three ways, each checked output for output.

    python examples/save_and_load.py                   # resnet18, ratio 0.5, 224x224
    python examples/save_and_load.py --quick           # 64x64 input
    python examples/save_and_load.py --out-dir ckpt    # keep the files (default: a temporary folder)

A pruned model no longer matches its class definition: ``resnet18()`` builds
64-channel convs, the pruned one has 32. A plain ``model.state_dict()`` therefore
cannot be loaded into a freshly built model. Pick one of:

1. **Whole model**: ``torch.save(model, path)`` and
   ``torch.load(path, weights_only=False)``. Simplest, but it pickles
   references to your code: the file loads only where the same classes can be
   imported, and ``weights_only=False`` means you must trust the file.
2. **depgraph state**: ``tp.save(model, path)`` then
   ``tp.load(fresh_unpruned_model, path)``. The file holds tensors, the pruned
   shapes and the changed layer attributes (``out_channels``, ...) as plain data,
   loadable with ``weights_only=True``; loading reshapes the fresh model.
3. **Pruning history**: store ``pruner.pruning_history()`` (a small list of
   ``[layer name, out/in, indices]``, e.g. as JSON) next to an ordinary
   ``state_dict()``. To load, build the unpruned model, replay the history with
   ``DG.load_pruning_history``, then ``load_state_dict(strict=True)``. This
   re-runs the very same prunes, so it also works for code that keeps sizes in
   places depgraph records during the trace.

Each loaded model is compared with the pruned one on the same input and
must give identical outputs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

import depgraph as tp


def build(name: str, weights: str | None = None) -> nn.Module:
    return torchvision.models.get_model(name, weights=weights).eval()


def check_same(label: str, reference: torch.Tensor, model: nn.Module, example_inputs: torch.Tensor, path: Path) -> int:
    """Assert ``model`` reproduces ``reference`` exactly, print one line about it, return its parameter count."""
    with torch.no_grad():
        out = model.eval()(example_inputs)
    assert torch.equal(out, reference), f"{label}: outputs differ by {(out - reference).abs().max():.3g}"
    params = sum(p.numel() for p in model.parameters())
    print(f"{label:<36} {os.path.getsize(path) / 2**20:7.1f} MiB  {params:>11,} params  outputs equal")
    return params


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="torchvision model name (default: resnet18)")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per group")
    parser.add_argument("--weights", default=None, help="torchvision weights, e.g. DEFAULT (default: random)")
    parser.add_argument("--out-dir", default=None, help="where to write the files (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="64x64 input")
    args = parser.parse_args(argv)
    size = 64 if args.quick else 224

    torch.manual_seed(0)
    model = build(args.model, args.weights)
    example_inputs = torch.randn(1, 3, size, size)
    original = copy.deepcopy(model)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.BasePruner(
        model, example_inputs, tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=args.ratio, ignored_layers=[classifier], round_to=8,
    )
    pruner.step()
    macs0, params0 = tp.utils.count_ops_and_params(original, example_inputs)
    macs1, params1 = tp.utils.count_ops_and_params(model, example_inputs)
    with torch.no_grad():
        reference = model(example_inputs)
    print(f"{args.model} pruned at ratio {args.ratio}: params {params0:,} => {params1:,}, "
          f"MACs {macs0 / 1e9:.3f} G => {macs1 / 1e9:.3f} G, output {tuple(reference.shape)}")
    proof = tp.verify(original, model, example_inputs)
    print(f"{proof}\n")
    loaded_params = {}

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)

        # 1. the whole pickled model
        torch.save(model, out / "pruned_model.pth")
        loaded = torch.load(out / "pruned_model.pth", weights_only=False)  # unpickles code: trusted files only
        loaded_params["torch.save"] = check_same("1. torch.save(model) / torch.load", reference, loaded, example_inputs, out / "pruned_model.pth")

        # 2. depgraph's state: weights + pruned shapes + changed attributes, as plain data
        tp.save(model, out / "pruned_state.pth")
        fresh = build(args.model)  # unpruned, random weights: everything comes from the file
        tp.load(fresh, out / "pruned_state.pth")
        loaded_params["tp.save"] = check_same("2. tp.save / tp.load(fresh model)", reference, fresh, example_inputs, out / "pruned_state.pth")

        # 3. an ordinary state_dict plus the pruning history
        torch.save(model.state_dict(), out / "state_dict.pth")
        (out / "history.json").write_text(json.dumps(pruner.pruning_history()))
        fresh = build(args.model)
        DG = tp.DependencyGraph().build_dependency(fresh, example_inputs=example_inputs)
        DG.load_pruning_history(json.loads((out / "history.json").read_text()))  # the same prunes, replayed
        fresh.load_state_dict(torch.load(out / "state_dict.pth", weights_only=True), strict=True)
        loaded_params["history"] = check_same("3. history replay + load_state_dict", reference, fresh, example_inputs, out / "state_dict.pth")
        print(f"   ({len(pruner.pruning_history())} pruned groups in history.json, "
              f"{os.path.getsize(out / 'history.json') / 1024:.1f} KiB)")
        if args.out_dir:
            print(f"\nfiles written to {out}/")
    return {"params": params1, "macs": macs1, "verify": proof, "loaded_params": loaded_params}


if __name__ == "__main__":
    main()
