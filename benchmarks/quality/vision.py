"""Prune a ResNet-20 trained on Fashion-MNIST to 2x fewer MACs with each criterion; accuracy before/after.

    python benchmarks/quality/vision.py            # the full table (an hour or more on two shared cores)
    python benchmarks/quality/vision.py --quick    # a few criteria on small slices: a smoke run

For every criterion and ranking mode (local: each group loses the same fraction;
global: one ranking over all groups; isomorphic: global within groups of the same
structure) the pruning ratio that gives a 2x MACs speed-up is searched by bisection,
the pruned model is evaluated on the 10k test images, fine-tuned briefly and
evaluated again. CPU latency is measured on one thread, batch 64. Writes
``results/vision.md`` (the table) and ``results/vision.png`` (a plot of it).
Needs ``setup.sh`` (the data) and ``train_resnet.py`` (the checkpoint).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
import report  # noqa: E402
from resnet import resnet20  # noqa: E402
from search import search_ratio  # noqa: E402
from train_resnet import CHECKPOINT, accuracy, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "depgraph-quality-quick"  # a smoke run never overwrites the results
# The default run, most telling first (a run cut short keeps the rows it finished): every criterion
# ranked locally, then the ones whose scores are comparable across layers ranked globally.
DEFAULT_PLAN = [("l2", "local"), ("taylor", "local"), ("act", "local"), ("fluct+bc", "local"), ("random", "local"),
                ("lamp", "global"), ("taylor", "global"), ("bn", "local"), ("fpgm", "local"), ("hessian", "local"),
                ("l2", "global"), ("act", "global"), ("l1", "local"), ("fluct", "local"), ("bn", "global"),
                ("l2", "isomorphic"), ("taylor", "isomorphic")]
MODES = {"local": {}, "global": {"global_pruning": True}, "isomorphic": {"global_pruning": True, "isomorphic": True}}


@dataclass
class Criterion:
    """How to build an importance and what it must see of the unpruned model before scoring.

    ``prepare(model, imp, calib)`` runs once on the unpruned model (gradients, Hessian
    statistics, activation statistics); trials then prune deep copies of the model and
    the importance taken together, so statistics keyed by parameters follow the copy.
    ``modes``: the ranking modes in which the criterion is meaningful (LAMP only changes
    rankings across layers; random scores are not comparable across groups).
    """

    label: str
    make: Callable[[], Any]
    prepare: Callable[[nn.Module, Any, list], None] | None = None
    modes: tuple[str, ...] = ("local", "global", "isomorphic")
    uses_grad: bool = False
    pruner_kwargs: dict = field(default_factory=dict)


def _taylor_grads(model: nn.Module, imp: Any, calib: list) -> None:
    model.zero_grad()
    for x, y in calib:
        (F.cross_entropy(model(x), y) / len(calib)).backward()


def _hessian_stats(model: nn.Module, imp: Any, calib: list, samples: int = 64) -> None:
    imp.zero_grad()
    x, y = calib[0]
    for i in range(min(samples, len(x))):  # one sample per backward: the empirical Fisher diagonal
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        imp.accumulate_grad(model)
    model.zero_grad()


def _calibrate(model: nn.Module, imp: Any, calib: list) -> None:
    imp.calibrate(model, [x for x, _ in calib])


CRITERION_LABELS: dict[str, str] = {}  # name -> label, filled by criteria()


def criteria() -> dict[str, Criterion]:
    """Every criterion depgraph has; the data-aware ones only where this version provides them."""
    imp = tp.importance
    out = {
        "l1": Criterion("group L1", lambda: imp.GroupMagnitudeImportance(p=1)),
        "l2": Criterion("group L2", lambda: imp.GroupMagnitudeImportance(p=2)),
        "bn": Criterion("BN scale", imp.BNScaleImportance),
        "lamp": Criterion("LAMP", lambda: imp.LAMPImportance(p=2), modes=("global", "isomorphic")),
        "fpgm": Criterion("FPGM", imp.FPGMImportance),
        "taylor": Criterion("Taylor", imp.GroupTaylorImportance, _taylor_grads, uses_grad=True),
        "hessian": Criterion("Hessian", imp.GroupHessianImportance, _hessian_stats),
        "random": Criterion("random", imp.RandomImportance, modes=("local",)),
    }
    if hasattr(imp, "ActivationWeightImportance"):
        out["act"] = Criterion("activation x weight", imp.ActivationWeightImportance, _calibrate)
    if hasattr(imp, "FluctuationImportance"):
        out["fluct"] = Criterion("fluctuation", imp.FluctuationImportance, _calibrate)
        out["fluct+bc"] = Criterion("fluctuation + bias comp.", imp.FluctuationImportance, _calibrate,
                                    pruner_kwargs={"bias_compensation": True})
    CRITERION_LABELS.update({name: c.label for name, c in out.items()})
    return out


@dataclass
class Row:
    criterion: str
    mode: str
    ratio: float
    base_acc: float
    pruned_acc: float
    ft_acc: float
    macs_speedup: float
    latency_speedup: float
    params: int
    seconds: float
    extra: dict = field(default_factory=dict)


def macs(model: nn.Module, example: torch.Tensor) -> float:
    return float(tp.utils.count_ops_and_params(model, example)[0])


def latency_ms(model: nn.Module, x: torch.Tensor, repeat: int = 5) -> float:
    model.eval()
    with torch.no_grad():
        return tp.utils.benchmark.measure_latency(model, x, repeat=repeat, warmup=2)[0]


def latency_speedup(base: nn.Module, pruned: nn.Module, x: torch.Tensor, rounds: int = 5) -> float:
    """Base over pruned latency, each the best of ``rounds`` means measured alternately.

    On a shared machine the load changes by the second: alternating keeps both models under
    the same conditions, and the minimum is the least disturbed measurement.
    """
    times = [(latency_ms(base, x), latency_ms(pruned, x)) for _ in range(rounds)]
    return min(t[0] for t in times) / min(t[1] for t in times)


def pruned_copy(base: nn.Module, imp: Any, ratio: float, mode: str, example: torch.Tensor,
                crit: Criterion) -> nn.Module:
    """A deep copy of ``base`` pruned at ``ratio`` (``base`` and ``imp`` are left untouched)."""
    model, imp = copy.deepcopy((base, imp))  # one memo: statistics keyed by parameters follow the copy
    if crit.uses_grad:  # deepcopy drops .grad of parameters
        for p, q in zip(base.parameters(), model.parameters(), strict=True):
            q.grad = None if p.grad is None else p.grad.clone()
    pruner = tp.pruner.BasePruner(model, example, imp, pruning_ratio=ratio, max_pruning_ratio=0.9,
                                  ignored_layers=[model.fc], **MODES[mode], **crit.pruner_kwargs)
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def run_one(name: str, crit: Criterion, mode: str, base: nn.Module, sets: dict, args: argparse.Namespace,
            base_stats: dict) -> Row:
    start = time.perf_counter()
    example = sets["test"][0][:1]
    base = copy.deepcopy(base)
    imp = crit.make()
    if crit.prepare is not None:
        crit.prepare(base, imp, sets["calib"])

    def trial(ratio: float) -> tuple[nn.Module, float]:
        model = pruned_copy(base, imp, ratio, mode, example, crit)
        return model, base_stats["macs"] / macs(model, example)

    found = search_ratio(trial, args.speedup, lo=0.0, hi=0.8, steps=args.search_steps)
    model = found.result
    x_test, y_test = sets["test"]
    pruned_acc = accuracy(model, x_test, y_test)
    speedup = latency_speedup(base, model, sets["latency"])
    train(model, *sets["train"], epochs=args.ft_epochs, lr=args.ft_lr, log_every=0)
    ft_acc = accuracy(model, x_test, y_test)
    return Row(crit.label, mode, found.ratio, base_stats["acc"], pruned_acc, ft_acc, found.value,
               speedup, sum(p.numel() for p in model.parameters()),
               time.perf_counter() - start)


def reference_row(base: nn.Module, sets: dict, args: argparse.Namespace, base_stats: dict) -> Row:
    """The unpruned model given the same fine-tune: how much of a row's change is the fine-tune alone."""
    start = time.perf_counter()
    model = copy.deepcopy(base)
    train(model, *sets["train"], epochs=args.ft_epochs, lr=args.ft_lr, log_every=0)
    ft_acc = accuracy(model, *sets["test"])
    return Row("unpruned (reference)", "-", 0.0, base_stats["acc"], base_stats["acc"], ft_acc, 1.0, 1.0,
               base_stats["params"], time.perf_counter() - start)


def markdown(rows: list[Row], base_stats: dict, settings: dict) -> str:
    head = (f"ResNet-20 on Fashion-MNIST (28x28, {settings['test_images']} test images), pruned to "
            f"{settings['speedup']:g}x fewer MACs; fine-tune: {settings['ft_epochs']:g} epoch(s) of SGD at peak lr "
            f"{settings['ft_lr']:g}. Base: {base_stats['acc']:.2f}% accuracy, {base_stats['macs'] / 1e6:.1f} M MACs, "
            f"{base_stats['params'] / 1e3:.0f} k params, {base_stats['latency']:.1f} ms per batch of "
            f"{settings['latency_batch']} (1 thread).\n\n")
    cols = ["criterion", "mode", "ratio", "base", "pruned", "delta", "fine-tuned", "delta (ft)",
            "MACs speed-up", "latency speed-up", "params"]
    body = [[r.criterion, r.mode, f"{r.ratio:.3f}", f"{r.base_acc:.2f}", f"{r.pruned_acc:.2f}",
             f"{r.pruned_acc - r.base_acc:+.2f}", f"{r.ft_acc:.2f}", f"{r.ft_acc - r.base_acc:+.2f}",
             f"{r.macs_speedup:.2f}x", f"{r.latency_speedup:.2f}x", f"{r.params / 1e3:.0f} k"] for r in rows]
    return head + report.markdown_table(cols, body)


def plot(rows: list[Row], base_acc: float, path: Path) -> None:
    """Accuracies on a full scale (top) and the points lost after fine-tuning, zoomed (bottom)."""
    labels = [f"{r.criterion}\n{r.mode}" for r in rows]
    fig, axes = report.figure(len(labels), 2, rows=2)
    report.bar_plot(labels, {"pruned, no fine-tune": [r.pruned_acc for r in rows],
                             "after fine-tune": [r.ft_acc for r in rows]},
                    ylabel="test accuracy (%)", title="ResNet-20 / Fashion-MNIST at 2x fewer MACs",
                    reference=(base_acc, "unpruned"), ax=axes[0][0])
    report.bar_plot(labels, {"after fine-tune": [r.ft_acc - base_acc for r in rows]},
                    ylabel="points vs unpruned", title="after the short fine-tune",
                    reference=(-0.5, "target: -0.5"), ax=axes[1][0])
    report.save(fig, path)


def load_sets(quick: bool, calib_batches: int, latency_batch: int) -> dict:
    x_train, y_train = data.load_fashion_mnist("train")
    x_test, y_test = data.load_fashion_mnist("test")
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(len(x_train), generator=g)
    calib_idx = order[: 128 * calib_batches]
    if quick:
        x_train, y_train = x_train[order[:512]], y_train[order[:512]]
        x_test, y_test = x_test[:1000], y_test[:1000]
    calib = [(x_train[i], y_train[i]) for i in calib_idx.split(128)] if not quick else \
        [(x_train[:128], y_train[:128])]
    return {"train": (x_train, y_train), "test": (x_test, y_test), "calib": calib,
            "latency": x_test[:latency_batch]}


def load_model(quick: bool, train_set: tuple) -> nn.Module:
    model = resnet20()
    if CHECKPOINT.exists():
        model.load_state_dict(torch.load(CHECKPOINT, weights_only=True)["state_dict"])
    elif quick:  # a smoke run without the real checkpoint: a model trained for a few steps
        train(model, *train_set, epochs=1, lr=0.1, log_every=0)
    else:
        raise FileNotFoundError(f"{CHECKPOINT} is missing: run benchmarks/quality/train_resnet.py first")
    return model.eval()


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three configurations on small slices")
    parser.add_argument("--criteria", nargs="*", help="names among: " + ", ".join(criteria()))
    parser.add_argument("--modes", nargs="*", choices=list(MODES), help="with --criteria (default: all)")
    parser.add_argument("--speedup", type=float, default=2.0, help="MACs speed-up to reach")
    parser.add_argument("--ft-epochs", type=float, default=0.25)
    parser.add_argument("--ft-lr", type=float, default=0.02)
    parser.add_argument("--search-steps", type=int, default=10)
    parser.add_argument("--calib-batches", type=int, default=4, help="batches of 128 for data-driven criteria")
    parser.add_argument("--latency-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, help=f"default: {RESULTS} ({QUICK_RESULTS} with --quick)")
    parser.add_argument("--reference", action="store_true",
                        help="only fine-tune the unpruned model the same way (a reference row)")
    parser.add_argument("--part", default="1/1", help="K/N: run every N-th configuration from the K-th (1-based), "
                        "so N processes share the plan; the table and plot gather all parts in --out-dir")
    args = parser.parse_args(argv)
    k, n = (int(v) for v in args.part.split("/"))
    args.out_dir = args.out_dir or (QUICK_RESULTS if args.quick else RESULTS)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    available = criteria()
    unknown = sorted(set(args.criteria or ()) - set(available))
    if unknown:
        parser.error(f"unknown criteria {unknown}; choose among {sorted(available)}")
    if args.criteria or args.modes:
        modes = args.modes or list(MODES)
        plan = [(n, m) for n in args.criteria or list(available) for m in modes if m in available[n].modes]
    else:
        plan = [(n, m) for n, m in DEFAULT_PLAN if n in available]
    if args.quick:
        plan = [p for p in plan if p in {("l2", "local"), ("taylor", "global"), ("random", "local")}] or plan[:3]
        args.ft_epochs, args.search_steps = 1.0, 4
    plan = plan[k - 1 :: n]

    sets = load_sets(args.quick, args.calib_batches, args.latency_batch)
    base = load_model(args.quick, sets["train"])
    example = sets["test"][0][:1]
    base_macs, base_params = tp.utils.count_ops_and_params(base, example)
    base_stats = {"acc": accuracy(base, *sets["test"]), "macs": float(base_macs), "params": base_params,
                  "latency": min(latency_ms(base, sets["latency"]) for _ in range(3))}
    print(f"base: {base_stats['acc']:.2f}% | {base_macs / 1e6:.1f} M MACs | {base_stats['latency']:.1f} ms", flush=True)

    settings = {"speedup": args.speedup, "ft_epochs": args.ft_epochs, "ft_lr": args.ft_lr,
                "latency_batch": args.latency_batch, "test_images": len(sets["test"][0])}
    rows: list[Row] = []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    part_file = args.out_dir / ("vision-part0reference.json" if args.reference else f"vision-part{k}of{n}.json")
    for name, mode in [("reference", "-")] if args.reference else plan:
        if args.reference:
            row = reference_row(base, sets, args, base_stats)
        else:
            row = run_one(name, available[name], mode, base, sets, args, base_stats)
        rows.append(row)
        print(f"{row.criterion:20s} {row.mode:10s} ratio {row.ratio:.3f}  pruned {row.pruned_acc:.2f}  "
              f"ft {row.ft_acc:.2f}  MACs {row.macs_speedup:.2f}x  latency {row.latency_speedup:.2f}x  "
              f"({row.seconds:.0f} s)", flush=True)
        # Saved and rendered after every row: a run cut short keeps what it finished.
        part_file.write_text(json.dumps({"base": base_stats, "settings": settings,
                                         "rows": [asdict(r) for r in rows]}, indent=1))
        print(render(args.out_dir))
    return rows


def render(out_dir: Path) -> str:
    """``vision.md`` and ``vision.png`` from every part's rows in ``out_dir`` (in plan order)."""
    parts = [json.loads(p.read_text()) for p in sorted(out_dir.glob("vision-part*.json"))]
    order = {(CRITERION_LABELS.get(c, c), m): i for i, (c, m) in enumerate(DEFAULT_PLAN)}
    order[("unpruned (reference)", "-")] = -1
    rows = sorted((Row(**r) for p in parts for r in p["rows"]), key=lambda r: order.get((r.criterion, r.mode), 99))
    base, settings = dict(parts[0]["base"]), parts[0]["settings"]
    base["latency"] = min(p["base"]["latency"] for p in parts)  # the least disturbed of the processes' measurements
    table = markdown(rows, base, settings)
    (out_dir / "vision.md").write_text(table + "\n")
    plot(rows, base["acc"], out_dir / "vision.png")
    return table


if __name__ == "__main__":
    main()
