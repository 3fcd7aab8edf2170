"""ResNet-20 / Fashion-MNIST at 2x fewer MACs, recovered with ``depgraph.recover`` (distillation + labels).

    python benchmarks/quality/recover_resnet.py            # the rows below (minutes on two shared cores)
    python benchmarks/quality/recover_resnet.py --quick    # small slices: a smoke run

The vision benchmark (``vision.py``) fine-tunes every pruned model with plain
cross-entropy SGD for a quarter epoch. This one takes its best 2x-MACs recipe
(group L2, global ranking), prunes the checkpoint the same way, and recovers it
through ``depgraph.recover`` for the same number of steps and batch size, once
with the task loss only (``kd_weight=0``: what the engine adds by itself) and
once with distillation from the unpruned checkpoint added; the unpruned model
is given the same task-only steps as the reference. Writes
``results/recover_resnet.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import depgraph as tp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import search_ratio  # noqa: E402
from train_resnet import accuracy  # noqa: E402
from vision import criteria, load_model, load_sets, macs, pruned_copy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=117, help="optimizer steps (vision.py: 0.25 epoch = 117)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--temperature", type=float, default=4.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sets = load_sets(args.quick, calib_batches=1, latency_batch=64)
    teacher = load_model(args.quick, sets["train"])
    x_test, y_test = sets["test"]
    example = x_test[:1]
    base_acc, base_macs = accuracy(teacher, x_test, y_test), macs(teacher, example)
    crit = criteria()["l2"]

    def trial(ratio: float):
        model = pruned_copy(teacher, crit.make(), ratio, "global", example, crit)
        return model, base_macs / macs(model, example)

    found = search_ratio(trial, 2.0, lo=0.0, hi=0.8, steps=4 if args.quick else 8)
    pruned = found.result
    pruned_acc = accuracy(pruned, x_test, y_test)
    train_set = torch.utils.data.TensorDataset(*sets["train"])
    steps = 8 if args.quick else args.steps
    common = dict(steps=steps, lr=args.lr, batch_size=args.batch_size, warmup_steps=max(1, steps // 4),
                  temperature=args.temperature, weight_decay=5e-4, eval_batches=2, progress=False)
    rows = [{"model": "unpruned", "recovery": "none", "acc": base_acc, "macs_speedup": 1.0}]
    runs = [("unpruned", copy.deepcopy(teacher), {"kd_weight": 0.0}),
            ("pruned", copy.deepcopy(pruned), {"kd_weight": 0.0}),
            ("pruned", copy.deepcopy(pruned), {"kd_weight": 1.0})]
    rows.append({"model": "pruned", "recovery": "none", "acc": pruned_acc, "macs_speedup": found.value})
    for name, student, extra in runs:
        start = time.perf_counter()
        result = tp.recover(student, teacher, train_set, **common, **extra)
        label = "labels only" if extra["kd_weight"] == 0 else f"distillation (T={args.temperature:g}) + labels"
        rows.append({"model": name, "recovery": label, "acc": accuracy(result.model, x_test, y_test),
                     "macs_speedup": 1.0 if name == "unpruned" else found.value, "steps": steps,
                     "kd_before": result.kd_before, "kd_after": result.kd_after,
                     "seconds": time.perf_counter() - start})
        print(rows[-1], flush=True)
    settings = {**vars(args), "ratio": found.ratio, "test_images": len(x_test), "steps": steps}
    out = RESULTS if not args.quick else Path("/tmp/depgraph-quality-quick")
    out.mkdir(parents=True, exist_ok=True)
    (out / "recover_resnet.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    (out / "recover_resnet.md").write_text(markdown(rows, settings))
    print(markdown(rows, settings))
    return rows


def markdown(rows: list[dict], s: dict) -> str:
    lines = [f"ResNet-20 on Fashion-MNIST ({s['test_images']} test images), group L2 global at ratio "
             f"{s['ratio']:.3f}; recovery: depgraph.recover, {s['steps']} AdamW steps of batch {s['batch_size']}, "
             f"lr {s['lr']:g} (warm-up then constant), one thread.", "",
             "| model | recovery | MACs speed-up | accuracy | vs unpruned | KL to teacher before -> after | time |",
             "| :--- | :--- | ---: | ---: | ---: | :--- | ---: |"]
    base = rows[0]["acc"]
    for r in rows:
        kd = f"{r['kd_before']:.3f} -> {r['kd_after']:.3f}" if "kd_before" in r else "-"
        t = f"{r['seconds']:.0f} s" if "seconds" in r else "-"
        lines.append(f"| {r['model']} | {r['recovery']} | {r['macs_speedup']:.2f}x | {r['acc']:.2f} | "
                     f"{r['acc'] - base:+.2f} | {kd} | {t} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
