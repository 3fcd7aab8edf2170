"""Sparse training, then pruning: make channels unimportant *before* removing them.

    python examples/sparse_training.py                    # small CNN, synthetic 10-class images
    python examples/sparse_training.py --quick            # 16x16 images, fewer iterations (seconds)
    python examples/sparse_training.py --pruner bn_scale  # network slimming instead of group lasso

Pruning a trained network removes channels that still carry signal, so
accuracy drops and fine-tuning has to win it back. Sparse training shrinks
that drop: for a while a regulariser pushes whole groups of weights towards
zero, so by the time ``pruner.step()`` runs, the channels it removes are
already nearly silent and the rest of the network has learned to do without.

The loop is an ordinary training loop plus one line::

    loss.backward()
    pruner.regularize(model)   # adds the sparsity gradient to .grad
    optimizer.step()

* ``GroupNormPruner`` (DepGraph's group lasso): ``grad(w_k) += reg * a_k * w_k``
  on *every* weight of channel ``k`` in every coupled layer (convs, norms, the
  layers that read it), with ``a_k`` growing up to ``alpha`` (``regularize(model, alpha=2**4)``) for the weakest
  channels: weak groups fade as a unit, across residual additions too.
* ``BNScalePruner`` (network slimming): an L1 penalty on BatchNorm scales only.

The script runs two branches from the same trained model and prints their
accuracies side by side: pruning straight away, and pruning after sparse
training; both are then fine-tuned for the same number of iterations.

Notes on the set-up:

* The data is synthetic so nothing is downloaded: each class is a random
  smooth colour pattern, shown at a random shift under strong noise.
* ``--reg`` is far larger than the pruners' defaults (1e-4 / 1e-5), which
  are meant for sparse training over whole epochs; this phase lasts about a
  hundred iterations.
* Before every evaluation the BatchNorm running statistics are re-estimated
  on a few training batches (no labels, no gradients). After a prune they
  describe a network that no longer exists, and during short, strongly
  regularised training they lag behind the weights; re-estimating them is
  cheap and makes the numbers comparable.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

Data = tuple[torch.Tensor, torch.Tensor]


class SmallNet(nn.Module):
    """Conv-BN-ReLU stages with one residual block, so groups couple several layers."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()

        def cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = cbr(3, width)
        self.block = nn.Sequential(cbr(width, width), cbr(width, width))
        self.down1 = cbr(width, 2 * width, stride=2)
        self.down2 = cbr(2 * width, 4 * width, stride=2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, W, S, S)
        x = x + self.block(x)  # stem, block.1 and down1's input: one group, pruned together
        x = self.down2(self.down1(x))  # (B, 4W, S/4, S/4)
        return self.fc(x.mean(dim=(2, 3)))


def synthetic_data(n: int, size: int, num_classes: int = 10, seed: int = 0) -> Data:
    """``n`` noisy, randomly shifted copies of ``num_classes`` smooth random patterns."""
    g = torch.Generator().manual_seed(1234)  # the same class patterns for every split
    patterns = F.interpolate(torch.randn(num_classes, 3, 4, 4, generator=g), size=size, mode="bilinear")
    g.manual_seed(seed)
    labels = torch.randint(num_classes, (n,), generator=g)
    shifts = torch.randint(-size // 8, size // 8 + 1, (n, 2), generator=g).tolist()
    images = torch.stack(
        [patterns[c].roll((dy, dx), dims=(1, 2)) for c, (dy, dx) in zip(labels.tolist(), shifts, strict=True)]
    )
    return images + 1.5 * torch.randn(images.shape, generator=g), labels


def batches(data: Data, batch_size: int, iterations: int) -> Iterator[Data]:
    """``iterations`` random mini-batches (an endless shuffled loader, truncated)."""
    x, y = data
    for _ in range(iterations):
        idx = torch.randint(len(x), (batch_size,))
        yield x[idx], y[idx]


def train(model: nn.Module, data: Data, iterations: int, lr: float, pruner: tp.pruner.BasePruner | None = None) -> None:
    """SGD with momentum; with a ``pruner``, its sparsity gradient is added after every backward."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for x, y in batches(data, 64, iterations):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if pruner is not None:
            pruner.regularize(model)  # after backward(), before step(): it edits .grad
        optimizer.step()


@torch.no_grad()
def evaluate(model: nn.Module, train_data: Data, test_data: Data) -> float:
    """Test accuracy, after re-estimating the BatchNorm statistics (see the module docstring)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
    model.train()
    for x, _ in batches(train_data, 64, 10):
        model(x)
    model.eval()
    x, y = test_data
    return (model(x).argmax(1) == y).float().mean().item()


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruner", choices=("group_norm", "bn_scale"), default="group_norm")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per group")
    parser.add_argument("--reg", type=float, default=3e-2, help="regularisation strength")
    parser.add_argument("--steps", type=int, default=None, help="sparse-training iterations (default 200; 100 with --quick)")
    parser.add_argument("--lr", type=float, default=0.02, help="learning rate of the sparse phase")
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage")
    parser.add_argument("--quick", action="store_true", help="16x16 images instead of 32x32, fewer iterations")
    args = parser.parse_args(argv)
    size, n_train, dense = (16, 1024, 100) if args.quick else (32, 4096, 200)
    sparse = args.steps or (100 if args.quick else 200)
    finetune = sparse // 2

    torch.manual_seed(0)
    train_data, test_data = synthetic_data(n_train, size, seed=1), synthetic_data(512, size, seed=2)
    example_inputs = train_data[0][:1]
    model = SmallNet(width=args.width)
    train(model, train_data, dense, lr=0.05)
    dense_acc = evaluate(model, train_data, test_data)
    print(f"SmallNet(width={args.width}): {sum(p.numel() for p in model.parameters()):,} params; "
          f"{n_train} training / {len(test_data[1])} test images of {size}x{size}, 10 classes")
    print(f"dense training ({dense} it): accuracy {dense_acc:.1%}\n")

    def make_pruner(net: SmallNet, sparse_training: bool) -> tp.pruner.BasePruner:
        common = {"pruning_ratio": args.ratio, "ignored_layers": [net.fc]}  # keep the 10 classes
        if not sparse_training:
            return tp.pruner.BasePruner(net, example_inputs, tp.importance.GroupMagnitudeImportance(p=2), **common)
        if args.pruner == "group_norm":
            imp = tp.importance.GroupMagnitudeImportance(p=2)
            return tp.pruner.GroupNormPruner(net, example_inputs, imp, reg=args.reg, **common)
        # slimming ranks channels by their BN scale, the quantity it regularises
        return tp.pruner.BNScalePruner(net, example_inputs, tp.importance.BNScaleImportance(), reg=args.reg, **common)

    acc: dict = {"dense": dense_acc, "sparse": None, "pruned": {}, "finetuned": {}}
    for branch in ("direct", "sparse"):
        net = copy.deepcopy(model)
        pruner = make_pruner(net, sparse_training=branch == "sparse")
        if branch == "sparse":
            train(net, train_data, sparse, args.lr, pruner=pruner)
            acc["sparse"] = evaluate(net, train_data, test_data)
        net.eval()
        original = copy.deepcopy(net)
        pruner.step()
        proof = tp.verify(original, net, example_inputs)  # before BN re-estimation and fine-tuning
        acc["pruned"][branch] = evaluate(net, train_data, test_data)
        train(net, train_data, finetune, args.lr / 2)  # the pruned model trains like any other
        acc["finetuned"][branch] = evaluate(net, train_data, test_data)

    macs0, params0 = tp.utils.count_ops_and_params(model, example_inputs)
    macs1, params1 = tp.utils.count_ops_and_params(net, example_inputs)
    with torch.no_grad():
        shape0, shape1 = tuple(model(example_inputs).shape), tuple(net(example_inputs).shape)
    print(f"pruning ratio {args.ratio}: params {params0:,} => {params1:,} ({params1 / params0 - 1:.1%}), "
          f"MACs {macs0 / 1e6:.2f} M => {macs1 / 1e6:.2f} M ({macs1 / macs0 - 1:.1%}), output {shape0} => {shape1}")
    print(f"{proof}  (the sparse-trained model against its pruned self)\n")

    name = {"group_norm": "GroupNormPruner", "bn_scale": "BNScalePruner"}[args.pruner]
    headers = ("accuracy", "no sparse training", f"{name}, reg {args.reg:g}, {sparse} it")
    print(f"{headers[0]:<28}{headers[1]:>20}{headers[2]:>36}")
    rows = [
        ("after dense training", f"{dense_acc:.1%}", f"{dense_acc:.1%}"),
        ("after sparse training", "-", f"{acc['sparse']:.1%}"),
        ("right after pruner.step()", f"{acc['pruned']['direct']:.1%}", f"{acc['pruned']['sparse']:.1%}"),
        ("after fine-tuning", f"{acc['finetuned']['direct']:.1%}", f"{acc['finetuned']['sparse']:.1%}"),
    ]
    for label, direct, sparse_trained in rows:
        print(f"{label:<28}{direct:>20}{sparse_trained:>36}")
    print(f"(fine-tuning: {finetune} it for both)")
    return {"accuracy": acc, "params": (params0, params1), "macs": (macs0, macs1), "verify": proof}


if __name__ == "__main__":
    main()
