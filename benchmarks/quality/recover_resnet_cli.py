"""ResNet-20 / Fashion-MNIST at 2x fewer MACs through the command line: ``depgraph prune`` then ``depgraph recover``.

    python benchmarks/quality/recover_resnet_cli.py            # the rows in README (minutes on two shared cores)
    python benchmarks/quality/recover_resnet_cli.py --quick    # a smoke run

``recover_resnet.py`` runs this comparison through the Python functions; here
every step that changes a model is the command a user would type, run in a
subprocess, on files:

    teacher.pt   the checkpoint behind its normalisation (``resnet.Normalized``), saved whole
    train/       Fashion-MNIST training images as PNG, one subfolder per class (labels)
    depgraph prune teacher.pt --trust-pickle --target macs=0.5 --importance l2 --global ... --output pruned.pt
    depgraph recover pruned.pt  --teacher teacher.pt --data train/ --kd-weight 0|1 ...    --output *.pt
    depgraph recover teacher.pt --teacher teacher.pt --data train/ --kd-weight 0 ...     (the reference)

Test accuracy is measured here on the 10000 test images. Writes
``results/recover_resnet_cli.md`` and ``.json`` with each command's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import data  # noqa: E402
from resnet import Normalized  # noqa: E402
from train_resnet import accuracy  # noqa: E402
from vision import load_model, macs  # noqa: E402

RESULTS = HERE / "results"
REPO = HERE.parents[1]


def depgraph(*args: str) -> dict:
    """``python -m depgraph ARGS`` with this checkout and the benchmark's modules importable.

    Returns its wall time, and for ``recover`` the training time and CPU threads it reports.
    """
    print("$ depgraph " + shlex.join(args), flush=True)
    path = [str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "depgraph", *args], check=True, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    print(done.stdout, done.stderr, sep="", flush=True)
    return {"seconds": seconds, **recover_timing(done.stdout)}


def recover_timing(printed: str) -> dict:
    """The training seconds and CPU threads in ``depgraph recover``'s table title ({} if absent)."""
    found = re.search(r"(\d+) steps in ([\d.]+) s on .*?\((\d+) CPU threads? each[,)]", printed)
    return {"train_seconds": float(found[2]), "threads": int(found[3])} if found else {}


def write_images(folder: Path, images: torch.Tensor, labels: torch.Tensor, per_class: int) -> int:
    """The first ``per_class`` training images of each class as 8-bit PNGs in ``folder/<class>/`` (kept between runs)."""
    from PIL import Image

    if (folder / "done").is_file():
        return int((folder / "done").read_text())
    count = 0
    for c in range(10):
        sub = folder / f"{c:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate((labels == c).nonzero().flatten()[:per_class].tolist()):
            Image.fromarray(images[idx].numpy(), mode="L").save(sub / f"{i:05d}.png")
            count += 1
    (folder / "done").write_text(str(count))
    return count


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "depgraph-recover-resnet")
    p.add_argument("--steps", type=int, default=117, help="optimizer steps (vision.py: 0.25 epoch = 117)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default="constant",
                   help="after the warm-up (a quarter of the steps): depgraph recover --lr-schedule")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--runs", default="ref,labels,kd",
                   help="recoveries to run: ref (unpruned, labels), labels (pruned, labels), kd (pruned, both)")
    p.add_argument("--seed", type=int, default=0, help="seed of each recovery's data order (depgraph recover --seed)")
    p.add_argument("--name", default="recover_resnet_cli", help="stem of the results files (NAME.md, NAME.json)")
    p.add_argument("--reuse", action="store_true", help="keep outputs already in --work whose time is in "
                   "WORK/stages.json instead of running their command again")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size = 4, 32
    torch.manual_seed(0)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    # --- files a user would have: the whole model, an image folder with class subfolders
    raw_train = data.read_idx((data.fashion_mnist_dir() / "train-images-idx3-ubyte.gz").read_bytes())
    y_train = data.read_idx((data.fashion_mnist_dir() / "train-labels-idx1-ubyte.gz").read_bytes()).long()
    per_class = -(-args.steps * args.batch_size // 10)
    n_images = write_images(work / f"train{per_class}", raw_train, y_train, per_class)
    x_test, y_test = data.load_fashion_mnist("test")
    if args.quick:
        x_test, y_test = x_test[:1000], y_test[:1000]
    x_test01 = x_test * data.FMNIST_STD + data.FMNIST_MEAN  # the images in [0, 1], as the folder gives them
    teacher = Normalized(load_model(args.quick, (x_test, y_test)), data.FMNIST_MEAN, data.FMNIST_STD).eval()
    torch.save(teacher, work / "teacher.pt")

    stages_file = work / "stages.json"
    stages: dict[str, dict] = json.loads(stages_file.read_text()) if args.reuse and stages_file.is_file() else {}

    def run(stage: str, output: str, cmd: list[str]) -> None:
        if args.reuse and stage in stages and (work / output).is_file():
            return
        (work / output).unlink(missing_ok=True)
        stages[stage] = {"command": "depgraph " + shlex.join(cmd), **depgraph(*cmd)}
        stages_file.write_text(json.dumps(stages, indent=1))

    prune = ["prune", str(work / "teacher.pt"), "--trust-pickle", "--input-shape", "1,28,28", "--target", "macs=0.5",
             "--importance", "l2", "--global", "--save-format", "pickle", "--no-latency", "--plain",
             "--output", str(work / "pruned.pt")]
    run("prune", "pruned.pt", prune)
    # the same prune with the BatchNorm statistics re-measured on 256 training images: the quality the
    # pruned model really has before recovery (recovery trains BatchNorm on batch statistics either way)
    prune_bn = [*prune[:-1], str(work / "pruned_bn.pt"), "--calib", str(work / f"train{per_class}"),
                "--calib-samples", "256", "--calib-batch-size", "64", "--recalibrate-bn"]
    run("prune_bn", "pruned_bn.pt", prune_bn)
    common = ["--data", str(work / f"train{per_class}"), "--input-size", "28", "--trust-pickle",
              "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
              "--warmup-steps", str(max(1, args.steps // 4)), "--lr-schedule", args.lr_schedule,
              "--weight-decay", "5e-4",
              "--temperature", str(args.temperature), "--eval-batches", "2", "--seed", str(args.seed),
              "--no-progress", "--plain"]
    runs = [("unpruned", "teacher.pt", "0", "ref.pt"), ("pruned", "pruned.pt", "0", "labels.pt"),
            ("pruned", "pruned.pt", "1", "kd.pt")]
    chosen = {f"{r}.pt" for r in args.runs.split(",")}
    runs = [r for r in runs if r[3] in chosen]

    def load(name: str) -> torch.nn.Module:
        return torch.load(work / name, weights_only=False).eval()

    example = x_test01[:1]
    base_acc, base_macs = accuracy(teacher, x_test01, y_test), macs(teacher, example)
    pruned = load("pruned.pt")
    speedup = base_macs / macs(pruned, example)
    rows = [{"model": "unpruned", "recovery": "none", "acc": base_acc, "macs_speedup": 1.0},
            {"model": "pruned", "recovery": "none", "acc": accuracy(pruned, x_test01, y_test),
             "macs_speedup": speedup, "seconds": stages["prune"]["seconds"]},
            {"model": "pruned", "recovery": "none, BatchNorm re-estimated (--recalibrate-bn, 256 images)",
             "acc": accuracy(load("pruned_bn.pt"), x_test01, y_test), "macs_speedup": speedup,
             "seconds": stages["prune_bn"]["seconds"]}]
    settings = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "train_images": n_images, "test_images": len(x_test)}
    state = {"settings": settings, "stages": stages, "rows": rows}
    out_dir = RESULTS if not args.quick else Path(tempfile.gettempdir()) / "depgraph-quality-quick"
    out_dir.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every stage: a run cut off still leaves its numbers
        (out_dir / f"{args.name}.json").write_text(json.dumps(state, indent=1))
        (out_dir / f"{args.name}.md").write_text(markdown(state))

    write()
    for name, student, kd, out in runs:
        run(out, out, ["recover", str(work / student), "--teacher", str(work / "teacher.pt"), *common,
                       "--kd-weight", kd, "--output", str(work / out)])
        label = "labels only" if kd == "0" else f"distillation (T={args.temperature:g}) + labels"
        rows.append({"model": name, "recovery": label, "acc": accuracy(load(out), x_test01, y_test),
                     "macs_speedup": 1.0 if name == "unpruned" else speedup, "seconds": stages[out]["seconds"]})
        print(rows[-1], flush=True)
        write()
    print(markdown(state))
    return state


def markdown(state: dict) -> str:
    s, rows = state["settings"], state["rows"]
    base = rows[0]["acc"]
    ref = next((r["acc"] for r in rows if r["model"] == "unpruned" and not r["recovery"].startswith("none")), None)
    lines = [f"ResNet-20 on Fashion-MNIST ({s['test_images']} test images) through the command line: "
             f"`depgraph prune --target macs=0.5 --importance l2 --global`, then `depgraph recover` for "
             f"{s['steps']} AdamW steps of batch {s['batch_size']} (lr {s['lr']:g}, warm-up {max(1, s['steps'] // 4)} "
             f"steps, then {s.get('lr_schedule', 'constant')}, weight decay 5e-4) on {s['train_images']} training images written as a class-folder tree.", "",
             "| model | recovery | MACs speed-up | accuracy | vs unpruned | vs unpruned, same steps | time |",
             "| :--- | :--- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        same = f"{r['acc'] - ref:+.2f}" if not r["recovery"].startswith("none") and ref is not None else "-"
        t = f"{r['seconds']:.0f} s" if "seconds" in r else "-"
        lines.append(f"| {r['model']} | {r['recovery']} | {r['macs_speedup']:.2f}x | {r['acc']:.2f} | "
                     f"{r['acc'] - base:+.2f} | {same} | {t} |")
    lines += ["", "Commands (times include loading the images and the model; training: the optimizer steps "
              "alone, as `depgraph recover` reports them, on the CPU threads `--threads auto` chose):", ""]
    for v in state["stages"].values():
        timing = ""
        if "train_seconds" in v:
            steps = s["steps"]
            timing = (f" — {v['seconds']:.0f} s in all, training {v['train_seconds']:.0f} s "
                      f"({v['train_seconds'] / steps:.2f} s/step, {v['threads']} thread{'s' if v['threads'] > 1 else ''})")
        lines.append(f"- `{v['command']}`{timing}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
