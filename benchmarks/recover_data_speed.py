"""How long ``depgraph recover`` takes to read an image folder before, and while, it trains.

    python benchmarks/recover_data_speed.py                 # 3000 28x28 greyscale PNGs in 10 class folders
    python benchmarks/recover_data_speed.py --images 15000  # the Fashion-MNIST benchmark's size

Writes the folder itself (kept in ``--work`` between runs), then times, on one
torch thread, best of ``--repeat``:

* ``open``: :func:`depgraph.recovery.data.open_dataset` (what the command does before
  its first step);
* ``first batch``: the first shuffled batch of 128 out of a ``DataLoader`` over it;
* ``epoch``: every batch of one shuffled pass (the reading a one-epoch recovery does in all),
  with ``--workers`` DataLoader worker processes as well as with none.

The sum ``open + first batch`` is the wait before the first training step.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from depgraph.recovery.data import open_dataset  # noqa: E402
from depgraph.workflow import InputSpec  # noqa: E402


def write_folder(folder: Path, images: int, size: int) -> None:
    from PIL import Image

    if (folder / "done").is_file():
        return
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        sub = folder / f"{c:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(images // 10):
            pixels = torch.randint(0, 256, (size, size), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy(), mode="L").save(sub / f"{i:05d}.png")
    (folder / "done").write_text(str(images))


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="also print cProfile's top functions of open + epoch")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "depgraph-recover-data-speed")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    folder = args.work / f"png{args.images}x{args.size}"
    write_folder(folder, args.images, args.size)
    spec = InputSpec("image", (1, args.size, args.size))

    def loader(workers: int) -> torch.utils.data.DataLoader:
        data = open_dataset(folder, spec)
        return torch.utils.data.DataLoader(data, batch_size=128, shuffle=True, num_workers=workers,
                                           generator=torch.Generator().manual_seed(0))

    rows = {"open": best(lambda: open_dataset(folder, spec), args.repeat),
            "open + first batch": best(lambda: next(iter(loader(0))), args.repeat),
            "open + epoch, no worker": best(lambda: list(loader(0)), args.repeat)}
    if args.workers:
        rows[f"open + epoch, {args.workers} worker(s)"] = best(lambda: list(loader(args.workers)), args.repeat)
    print(f"{args.images} PNGs of {args.size}x{args.size} in 10 class folders, 1 torch thread, best of {args.repeat}:")
    for name, seconds in rows.items():
        print(f"  {name:<28} {seconds:7.3f} s")
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(lambda: list(loader(0)))
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
