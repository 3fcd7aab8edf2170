"""ResNet-50 latency, MACs and parameters against the pruning ratio; and how long pruning itself takes.

    python benchmarks/latency.py                         # ratios 0.0 .. 0.95, 224x224, CPU (+ CUDA if present)
    python benchmarks/latency.py --quick                 # 3 ratios, 64x64, few runs (a smoke test)
    python benchmarks/latency.py --output results.md     # also write the markdown tables to a file
    python benchmarks/latency.py --no-cuda --threads 4   # CPU only, 4 intra-op threads

Table 1: for each ratio, a fresh ``resnet50(weights=None)`` is pruned by
``BasePruner`` (``GroupMagnitudeImportance(p=2)``, ``fc`` ignored, local
ranking), once without and once with ``round_to=8``, then timed with
``depgraph.utils.benchmark.measure_latency`` (mean +- std over ``--repeat``
runs after ``--warmup``). Ratio ``p`` removes ``p`` of the channels of every
group, so MACs and parameters fall roughly as ``(1 - p)**2``; latency falls
less, since small layers are bound by memory and per-op overheads rather than
arithmetic. ``round_to=8`` keeps widths multiples of 8, which vectorised CPU
kernels and tensor cores prefer.

The pruning itself is traced on a 64x64 input, whatever the benchmark's input
size: ResNet-50's layer widths do not depend on the resolution and the
importance only reads weights, so the pruned architecture is the same and the
benchmark spends its time measuring, not pruning.

Table 2: the wall-clock time of ``BasePruner(...)`` (recording the graph and
collecting groups) and of one ``pruner.step()`` at ratio 0.5, for ResNet-50
and torchvision's ViT-B/16. ``step()`` includes a forward pass after each
group's prune (the library's check that the model still runs), so it grows
with the input size.

Weights are random: only the architecture matters for these timings. CPU
latency is for ``--batch-size`` (default 1) images, CUDA latency for
``--cuda-batch-size`` (default 64) with ``cudnn.benchmark`` on. Tables are
printed as markdown (``--rich`` renders them with rich when it is installed).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

import depgraph as tp
from depgraph.utils.benchmark import measure_latency

FULL_RATIOS = tuple(round(0.05 * i, 2) for i in range(20))  # 0.0, 0.05, ..., 0.95
QUICK_RATIOS = (0.0, 0.5, 0.9)
PRUNE_INPUT = (1, 3, 64, 64)


@dataclass
class Measurement:
    ratio: float
    round_to: int | None
    params: int
    macs: int
    cpu: tuple[float, float]
    cuda: tuple[float, float] | None = None


def pruned_resnet50(ratio: float, round_to: int | None) -> nn.Module:
    """A fresh ResNet-50 (same random weights every time) with ``ratio`` of each group's channels removed."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    if ratio > 0:
        pruner = tp.pruner.BasePruner(
            model,
            torch.randn(PRUNE_INPUT),
            tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[model.fc],
            round_to=round_to,
        )
        pruner.step()
    return model


def latency(model: nn.Module, inputs: torch.Tensor, device: str, repeat: int, warmup: int) -> tuple[float, float]:
    model = model.to(device)
    try:
        return measure_latency(model, inputs.to(device), repeat=repeat, warmup=warmup)
    finally:
        model.cpu()
        if device == "cuda":
            torch.cuda.empty_cache()


def fmt_ms(t: tuple[float, float] | None) -> str:
    return "-" if t is None else f"{t[0]:.2f} ± {t[1]:.2f}"


def fmt_speedup(base: tuple[float, float] | None, t: tuple[float, float] | None) -> str:
    return "-" if base is None or t is None else f"{base[0] / t[0]:.2f}x"


def markdown(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table, numeric columns right-aligned."""
    align = ["---"] + ["--:"] * (len(headers) - 1)
    lines = [f"**{title}**", "", "| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def latency_table(args: argparse.Namespace, size: int, use_cuda: bool) -> str:
    x_cpu = torch.randn(args.batch_size, 3, size, size)
    x_cuda = torch.randn(args.cuda_batch_size, 3, size, size) if use_cuda else None
    one = torch.randn(1, 3, size, size)
    results: list[Measurement] = []
    for ratio in args.ratios:
        for round_to in (None, 8):
            if ratio == 0.0 and round_to is not None:
                continue  # the unpruned model: one row
            t0 = time.perf_counter()
            model = pruned_resnet50(ratio, round_to)
            macs, params = tp.utils.count_ops_and_params(model, one)
            m = Measurement(ratio, round_to, params, macs, latency(model, x_cpu, "cpu", args.repeat, args.warmup))
            if use_cuda:
                m.cuda = latency(model, x_cuda, "cuda", args.cuda_repeat, args.cuda_warmup)
            results.append(m)
            cuda = f", cuda {fmt_ms(m.cuda)} ms" if use_cuda else ""
            print(f"  ratio {ratio:.2f} round_to {round_to or '-'}: {params:,} params, {macs / 1e9:.3f} GMACs, "
                  f"cpu {fmt_ms(m.cpu)} ms{cuda} ({time.perf_counter() - t0:.1f} s)", flush=True)

    base = results[0]
    headers = ["ratio", "round_to", "params (M)", "MACs (G)", f"CPU ms (B={args.batch_size})", "CPU speed-up"]
    if use_cuda:
        headers += [f"CUDA ms (B={args.cuda_batch_size})", "CUDA speed-up"]
    rows = []
    for m in results:
        row = [f"{m.ratio:.2f}", str(m.round_to or "-"), f"{m.params / 1e6:.2f}", f"{m.macs / 1e9:.3f}",
               fmt_ms(m.cpu), fmt_speedup(base.cpu, m.cpu)]
        if use_cuda:
            row += [fmt_ms(m.cuda), fmt_speedup(base.cuda, m.cuda)]
        rows.append(row)
    return markdown(f"ResNet-50, {size}x{size}: latency, MACs (per image) and params vs pruning ratio", headers, rows)


def step_table(size: int) -> str:
    """Seconds for ``BasePruner(...)`` and one ``step()`` at ratio 0.5, ResNet-50 and ViT-B/16."""
    get = torchvision.models.get_model
    models: list[tuple[str, Callable[[], nn.Module], Callable[[nn.Module], list[nn.Module]]]] = [
        ("resnet50", lambda: get("resnet50", weights=None), lambda m: [m.fc]),
        ("vit_b_16", lambda: get("vit_b_16", weights=None, image_size=size), lambda m: [m.heads]),
    ]
    rows = []
    for name, build, ignored in models:
        torch.manual_seed(0)
        model = build().eval()
        x = torch.randn(1, 3, size, size)
        params0 = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        pruner = tp.pruner.BasePruner(
            model, x, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=ignored(model)
        )
        t1 = time.perf_counter()
        pruner.step()
        t2 = time.perf_counter()
        params1 = sum(p.numel() for p in model.parameters())
        rows.append([name, f"1x3x{size}x{size}", f"{params0 / 1e6:.1f} => {params1 / 1e6:.1f}",
                     str(len(pruner.pruning_history())), f"{t1 - t0:.2f}", f"{t2 - t1:.2f}"])
        print(f"  {name}: build {t1 - t0:.2f} s, step {t2 - t1:.2f} s", flush=True)
    return markdown("Time of pruning itself (CPU, ratio 0.5)",
                    ["model", "input", "params (M)", "groups pruned", "BasePruner(...) s", "step() s"], rows)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def environment(use_cuda: bool) -> str:
    cpu = cpu_name()
    line = f"torch {torch.__version__}, depgraph {tp.__version__}, CPU {cpu} ({torch.get_num_threads()} threads)"
    if use_cuda:
        line += f", CUDA {torch.cuda.get_device_name()}"
    return line + "\n"


def show(text: str, rich: bool) -> None:
    if rich:
        try:
            from rich.console import Console
            from rich.markdown import Markdown
        except ImportError:  # the ``cli`` extra is not installed
            pass
        else:
            Console().print(Markdown(text))
            return
    print(text)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ratios 0, 0.5, 0.9 at 64x64 with few runs")
    parser.add_argument("--ratios", type=float, nargs="+", default=None, help="pruning ratios (default 0.0 .. 0.95)")
    parser.add_argument("--input-size", type=int, default=None, help="image side (default 224; 64 with --quick)")
    parser.add_argument("--batch-size", type=int, default=1, help="CPU batch size")
    parser.add_argument("--cuda-batch-size", type=int, default=64, help="CUDA batch size")
    parser.add_argument("--repeat", type=int, default=None, help="timed CPU runs (default 30; 5 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed CPU runs first (default 5; 1 with --quick)")
    parser.add_argument("--cuda-repeat", type=int, default=None, help="timed CUDA runs (default 100; 10 with --quick)")
    parser.add_argument("--cuda-warmup", type=int, default=None, help="untimed CUDA runs (default 20; 3 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-cuda", action="store_true", help="CPU only even when CUDA is available")
    parser.add_argument("--no-step", action="store_true", help="skip the pruning-time table")
    parser.add_argument("--rich", action="store_true", help="render the tables with rich")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown tables to this file")
    args = parser.parse_args(argv)
    q = args.quick
    args.ratios = tuple(args.ratios or (QUICK_RATIOS if q else FULL_RATIOS))
    if any(not 0.0 <= r < 1.0 for r in args.ratios):
        parser.error(f"--ratios must be in [0, 1), got {args.ratios}")
    args.ratios = tuple(sorted(set(args.ratios) | {0.0}))  # speed-ups are relative to the unpruned model
    size = args.input_size or (64 if q else 224)
    args.repeat = args.repeat or (5 if q else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 5)
    args.cuda_repeat = args.cuda_repeat or (10 if q else 100)
    args.cuda_warmup = args.cuda_warmup if args.cuda_warmup is not None else (3 if q else 20)
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = torch.cuda.is_available() and not args.no_cuda
    if use_cuda:
        torch.backends.cudnn.benchmark = True  # autotuned per shape during the warm-up runs

    print(f"measuring {len(args.ratios)} ratios x round_to (none, 8) on {'CPU and CUDA' if use_cuda else 'CPU'} ...")
    text = environment(use_cuda) + "\n" + latency_table(args, size, use_cuda)
    if not args.no_step:
        print("timing BasePruner construction and step() ...")
        text += "\n" + step_table(size)
    print()
    show(text, args.rich)
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return text


if __name__ == "__main__":
    main()
