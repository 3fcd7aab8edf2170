"""Train the ResNet-20 that the vision benchmark prunes, on Fashion-MNIST, on the CPU.

    python benchmarks/quality/train_resnet.py              # 1 epoch, writes checkpoints/resnet20_fmnist.pt
    python benchmarks/quality/train_resnet.py --quick      # a few hundred images, a smoke run

The schedule is short on purpose (this benchmark machine has two shared cores): SGD
with Nesterov momentum, linear warm-up then cosine decay, random horizontal flips.
The test accuracy it prints is the "base" column of the benchmark table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
from resnet import resnet20  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "resnet20_fmnist.pt"


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, flip: bool = False,
            generator: torch.Generator | None = None):
    """Mini-batches of ``(x, y)``; with ``flip``, each image mirrored left-right with probability 1/2."""
    order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        xb = x[idx]
        if flip:
            mask = torch.rand(len(idx), generator=generator) < 0.5
            xb = torch.where(mask[:, None, None, None], xb.flip(3), xb)
        yield xb, y[idx]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent (model left in eval mode)."""
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches(x, y, batch_size, False))
    return 100.0 * correct / len(x)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: float, lr: float, batch_size: int = 128,
          weight_decay: float = 5e-4, seed: int = 0, log_every: int = 50) -> None:
    """SGD + Nesterov, warm-up then cosine, for ``epochs`` (may be fractional) passes over ``(x, y)``.

    Also the benchmark's fine-tune: the same loop, run for a fraction of an epoch at a lower peak rate.
    """
    g = torch.Generator().manual_seed(seed)
    per_epoch = (len(x) + batch_size - 1) // batch_size
    total = max(1, round(epochs * per_epoch))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    warm = max(1, total // 4)  # linear warm-up to ``lr``, then cosine to zero (a one-cycle shape)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    model.train()
    step, start = 0, time.perf_counter()
    while step < total:
        for xb, yb in batches(x, y, batch_size, True, flip=True, generator=g):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if log_every and step % log_every == 0:
                print(f"  step {step}/{total}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f} s", flush=True)
            if step >= total:
                break
    model.eval()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than one thread on a loaded machine spins and slows down)")
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    parser.add_argument("--quick", action="store_true", help="512 training images, 1 epoch, no checkpoint")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    x_train, y_train = data.load_fashion_mnist("train")
    x_test, y_test = data.load_fashion_mnist("test")
    if args.quick:
        x_train, y_train, x_test, y_test = x_train[:512], y_train[:512], x_test[:512], y_test[:512]
        args.epochs = 1.0
    model = resnet20()
    start = time.perf_counter()
    train(model, x_train, y_train, args.epochs, args.lr)
    acc = accuracy(model, x_test, y_test)
    print(f"ResNet-20 on Fashion-MNIST: {acc:.2f}% test accuracy after {args.epochs:g} epochs "
          f"({(time.perf_counter() - start) / 60:.1f} min)")
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "test_acc": acc, "epochs": args.epochs}, args.out)
        print(f"saved {args.out}")
    return acc


if __name__ == "__main__":
    main()
