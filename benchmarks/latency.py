"""ResNet-50 latency, MACs and parameters against the pruning ratio; and how long pruning itself takes.

    python benchmarks/latency.py                         # ratios 0.0 .. 0.95, 224x224, CPU (+ CUDA if present)
    python benchmarks/latency.py --quick                 # 3 ratios, 64x64, few runs (a smoke test)
    python benchmarks/latency.py --output results.md     # also write the markdown tables to a file
    python benchmarks/latency.py --no-cuda --threads 4   # CPU only, 4 intra-op threads
    python benchmarks/latency.py --quick --runtime onnxruntime   # table 1 timed on the exported ONNX file
    python benchmarks/latency.py --per-layer             # where the speed-up goes, layer by layer (CPU)
    python benchmarks/latency.py --per-layer --quick --json out.json   # ResNet-50 at 64x64 only

Table 1: for each ratio, a fresh ``resnet50(weights=None)`` is pruned by
``BasePruner`` (``GroupMagnitudeImportance(p=2)``, ``fc`` ignored, local
ranking), once without and once with ``round_to=8``, then timed on CPU (mean
+- std and best over ``--repeat`` runs after ``--warmup``; the speed-up is of
the best runs, which a loaded machine disturbs least; efficiency is the CPU
speed-up divided by the MACs speed-up) and on CUDA with
``depgraph.utils.benchmark.measure_latency``. Ratio ``p`` removes ``p`` of the channels of every
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

Table 3 (``--per-layer``, instead of tables 1 and 2): why the CPU speed-up
falls short of the MACs speed-up. ResNet-50 and MobileNet-V2, unpruned and at
``--layer-ratio`` (0.5) with ``round_to=8``, at 64x64 and 224x224, batch 1 (``--batch-size``), are
timed under five deployment settings: as pruned (``plain``), BatchNorm folded
into the convolutions (``fold_bn``, torch.fx's ``fuse``), ``channels_last``
memory format, both, and ``onnxruntime`` (the model exported by
``depgraph.export_onnx``, checked against eager, and run by onnxruntime with
every graph optimisation: BN, ReLU and residual adds fused into the
convolutions, a blocked channel layout; when onnxruntime is installed), plus
``torch.compile`` of the folded ``channels_last`` model with ``--compile`` (it
takes minutes). Each setting is timed on one thread by the thread's CPU time
(``time.thread_time``: the machine's other processes do not inflate it) and on
torch's default threads by wall clock, base and pruned models interleaved and
the best of ``--rounds`` (``--wall-rounds`` for the default threads: on a
loaded machine their OpenMP barriers wait on preempted threads, so those runs
are slow and noisy) kept. The one-thread time is taken twice: interleaved run
by run (each run follows the other model's, which has evicted its weights from
the caches) and five runs in a row per round (the steady state of a
deployment that serves one model, where a pruned model's smaller weights stay
cached). *Efficiency* is the time speed-up divided by the MACs speed-up (1.0 =
as fast as the MACs say). Then ``depgraph.utils.profile_layers`` times every
leaf module (one thread) for ``plain`` and the folded ``channels_last``
setting, and ``depgraph.export.profile_onnx`` every node of onnxruntime's
optimised graph: the per-layer tables (channels, MACs, ms, both speed-ups,
the ATen kernel that ran) and the excess over the MACs' promise per module
class or operator (``gap_by_kind``). Table 4
(``--channel-sweep``): GMAC/s of a single ``C -> C`` convolution against its
width ``C``, NCHW and ``channels_last``, to see which channel counts the
kernels dislike.

Weights are random: only the architecture matters for these timings. CPU
latency is for ``--batch-size`` (default 1) images, CUDA latency for
``--cuda-batch-size`` (default 64) with ``cudnn.benchmark`` on. Tables are
printed as markdown (``--rich`` renders them with rich when it is installed).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

import depgraph as tp
from depgraph.export.profile import feeds, onnx_session, profile_onnx
from depgraph.utils.benchmark import measure_latency
from depgraph.utils.layer_latency import (
    LayerProfile,
    best_of,
    compare_profiles,
    gap_by_kind,
    layer_table,
    profile_layers,
)

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
    cpu_best: float
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


def cpu_times(model: nn.Module, inputs: torch.Tensor, repeat: int, warmup: int) -> tuple[tuple[float, float], float]:
    """``((mean, std), best)`` CPU ms: the best run is the one least disturbed by other processes."""
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(inputs)
        for _ in range(repeat):
            t0 = time.perf_counter()
            model(inputs)
            times.append((time.perf_counter() - t0) * 1000.0)
    t = torch.tensor(times, dtype=torch.float64)
    return (t.mean().item(), t.std().item() if len(times) > 1 else 0.0), t.min().item()


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
            runner = OnnxRuntimeModel(model.eval(), x_cpu) if args.runtime == ORT else model.eval()
            m = Measurement(ratio, round_to, params, macs, *cpu_times(runner, x_cpu, args.repeat, args.warmup))
            if use_cuda:
                m.cuda = latency(model, x_cuda, "cuda", args.cuda_repeat, args.cuda_warmup)
            results.append(m)
            cuda = f", cuda {fmt_ms(m.cuda)} ms" if use_cuda else ""
            print(f"  ratio {ratio:.2f} round_to {round_to or '-'}: {params:,} params, {macs / 1e9:.3f} GMACs, "
                  f"cpu {fmt_ms(m.cpu)} ms{cuda} ({time.perf_counter() - t0:.1f} s)", flush=True)

    base = results[0]
    headers = ["ratio", "round_to", "params (M)", "MACs (G)", f"CPU ms (B={args.batch_size})", "CPU best ms",
               "CPU speed-up", "MACs speed-up", "efficiency"]
    if use_cuda:
        headers += [f"CUDA ms (B={args.cuda_batch_size})", "CUDA speed-up"]
    rows = []
    for m in results:
        row = [f"{m.ratio:.2f}", str(m.round_to or "-"), f"{m.params / 1e6:.2f}", f"{m.macs / 1e9:.3f}",
               fmt_ms(m.cpu), f"{m.cpu_best:.2f}", f"{base.cpu_best / m.cpu_best:.2f}x", f"{base.macs / m.macs:.2f}x",
               f"{(base.cpu_best / m.cpu_best) / (base.macs / m.macs):.2f}"]
        if use_cuda:
            row += [fmt_ms(m.cuda), fmt_speedup(base.cuda, m.cuda)]
        rows.append(row)
    on = " (CPU: the exported file in onnxruntime)" if args.runtime == ORT else ""
    return markdown(f"ResNet-50, {size}x{size}: latency{on}, MACs (per image) and params vs pruning ratio", headers, rows)


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


# --- Table 3: where the speed-up goes (--per-layer) -----------------------------------------

LAYER_MODELS = ("resnet50", "mobilenet_v2")
ORT = "onnxruntime"
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None  # the ``export`` extra
SETTINGS = ("plain", "fold_bn", "channels_last", "fold_bn+channels_last") + ((ORT,) if HAS_ORT else ())
RECIPE = "fold_bn+channels_last"
STEADY_BLOCK = 5  # runs in a row per round for the steady-state column
MAC_KINDS = ("Conv1d", "Conv2d", "Conv3d", "Linear", "Conv", "Gemm", "MatMul")  # modules, and ONNX operators


class OnnxRuntimeModel:
    """``model`` exported by ``depgraph.export_onnx`` (checked against eager) and run by onnxruntime.

    Callable like the module, so it times beside the eager settings. It runs on
    as many intra-op threads as torch is set to use at the call (one session per
    count), so the one-thread and default-thread columns compare like with like.
    The legacy exporter is used because its node names carry the module path.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="depgraph-latency-")
        self.path = os.path.join(self._dir.name, "model.onnx")
        tp.export_onnx(model, (x,), self.path, dynamo=False)
        self._sessions: dict[int, object] = {}

    def __call__(self, x: torch.Tensor) -> list:
        threads = torch.get_num_threads()
        if threads not in self._sessions:
            self._sessions[threads] = onnx_session(self.path, threads)
        session = self._sessions[threads]
        return session.run(None, feeds(session, x))


def pruned_model(arch: str, ratio: float, round_to: int | None) -> nn.Module:
    """A fresh torchvision ``arch`` (same random weights every time) pruned like ``pruned_resnet50``."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None).eval()
    head = model.fc if hasattr(model, "fc") else model.classifier[-1]
    if ratio > 0:
        imp = tp.importance.GroupMagnitudeImportance(p=2)
        tp.pruner.BasePruner(
            model, torch.randn(PRUNE_INPUT), imp, pruning_ratio=ratio, ignored_layers=[head], round_to=round_to
        ).step()
    return model


def deploy(model: nn.Module, x: torch.Tensor, setting: str) -> tuple[nn.Module, torch.Tensor]:
    """A copy of ``model`` prepared for inference as ``setting`` says, and the input in its memory format."""
    from torch.fx.experimental.optimization import fuse

    model = copy.deepcopy(model).eval()
    if "fold_bn" in setting or setting == "compile":
        model = fuse(model)  # conv + BN -> one conv with the BN's affine folded into weight and bias
    if "channels_last" in setting or setting == "compile":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if setting == "compile":
        model = torch.compile(model)
    if setting == ORT:
        model = OnnxRuntimeModel(model, x)  # onnxruntime folds BN and picks its own layout
    return model, x


def best_times(variants: dict[str, tuple[nn.Module, torch.Tensor]], rounds: int, clock: Callable[[], float],
               block: int = 1) -> dict:
    """Best ms per variant over ``rounds`` rounds, the variants interleaved so load bursts hit all of them.

    Each round runs every variant ``block`` times in a row. With ``block=1``
    each run follows another model's, which has evicted this one's weights
    from the caches; with a few runs in a row the later ones see the caches a
    deployment serving this one model sees.
    """
    best = dict.fromkeys(variants, float("inf"))
    with torch.no_grad():
        for model, x in variants.values():  # warm-up: allocator, oneDNN primitive caches, compilation
            model(x)
            model(x)
        for _ in range(rounds):
            for key, (model, x) in variants.items():
                for _ in range(block):
                    t0 = clock()
                    model(x)
                    best[key] = min(best[key], (clock() - t0) * 1000.0)
    return best


def layer_profiles(base: nn.Module, pruned: nn.Module, x: torch.Tensor, rounds: int) -> tuple[LayerProfile, ...]:
    """Per-layer (per-node for onnxruntime) profiles of both models, one thread, CPU time, in short interleaved rounds."""
    runs: tuple[list[LayerProfile], list[LayerProfile]] = ([], [])
    for r in range(rounds):
        for model, out in zip((base, pruned), runs, strict=True):
            if isinstance(model, OnnxRuntimeModel):
                out.append(profile_onnx(model.path, x, repeat=3, warmup=1, clock="thread"))
            else:
                out.append(profile_layers(model, x, repeat=3, warmup=1, kernels=r == 0, clock="thread"))
    return best_of(runs[0]), best_of(runs[1])


def per_layer_case(arch: str, size: int, args: argparse.Namespace, settings: Sequence[str]) -> dict:
    """All measurements of one model at one input size (see the module docstring, table 3)."""
    default_threads = torch.get_num_threads()
    base = pruned_model(arch, 0.0, None)
    pruned = pruned_model(arch, args.layer_ratio, 8)
    x = torch.randn(args.batch_size, 3, size, size)
    macs0, params0 = tp.utils.count_ops_and_params(base, x)
    macs1, params1 = tp.utils.count_ops_and_params(pruned, x)
    case: dict = {"model": arch, "input": [args.batch_size, 3, size, size], "ratio": args.layer_ratio, "round_to": 8,
                  "macs": [macs0, macs1], "params": [params0, params1], "settings": {}, "layers": {}}
    variants = {}
    for setting in settings:
        for tag, model in (("base", base), ("pruned", pruned)):
            variants[(setting, tag)] = deploy(model, x, setting)
    try:
        torch.set_num_threads(1)
        one = best_times(variants, args.rounds, time.thread_time)
        steady = best_times(variants, args.rounds, time.thread_time, block=STEADY_BLOCK)
        torch.set_num_threads(default_threads)
        many = best_times(variants, args.wall_rounds, time.perf_counter)
        torch.set_num_threads(1)
        for setting in ("plain", RECIPE) + ((ORT,) if ORT in settings else ()):
            b, p = layer_profiles(*(variants[(setting, t)][0] for t in ("base", "pruned")), variants[(setting, "base")][1],
                                  max(2, args.rounds // 3))
            case["layers"][setting] = {"before": b, "after": p}
    finally:
        torch.set_num_threads(default_threads)
    for setting in settings:
        case["settings"][setting] = {
            "cpu_ms_1_thread": [one[(setting, "base")], one[(setting, "pruned")]],
            "cpu_ms_1_thread_steady": [steady[(setting, "base")], steady[(setting, "pruned")]],
            f"wall_ms_{default_threads}_threads": [many[(setting, "base")], many[(setting, "pruned")]],
        }
    return case


def efficiency(base_ms: float, pruned_ms: float, macs: Sequence[float]) -> float:
    return (base_ms / pruned_ms) / (macs[0] / macs[1])


def case_markdown(case: dict) -> str:
    """The settings table, the gap per module class and the per-layer table of one case."""
    macs, size = case["macs"], case["input"][-1]
    s = macs[0] / macs[1]
    batch = case["input"][0]
    name = f"{case['model']}, {size}x{size}" + (f", batch {batch}" if batch != 1 else "") + \
        f", ratio {case['ratio']}, round_to 8"
    plain_base = case["settings"]["plain"]["cpu_ms_1_thread"][0]
    rows = []
    for setting, t in case["settings"].items():
        one, (wall_key, many) = t["cpu_ms_1_thread"], [kv for kv in t.items() if kv[0].startswith("wall")][0]
        steady = t["cpu_ms_1_thread_steady"]
        rows.append([setting, f"{one[0]:.2f} ⇒ {one[1]:.2f}", f"{one[0] / one[1]:.2f}x", f"{efficiency(*one, macs):.2f}",
                     f"{plain_base / one[1]:.2f}x", f"{steady[0]:.2f} ⇒ {steady[1]:.2f}",
                     f"{efficiency(*steady, macs):.2f}", f"{many[0]:.2f} ⇒ {many[1]:.2f}", f"{efficiency(*many, macs):.2f}"])
    threads = wall_key.split("_")[2]
    text = markdown(
        f"{name}: MACs {macs[0] / 1e6:.0f}M ⇒ {macs[1] / 1e6:.0f}M ({s:.2f}x fewer), params "
        f"{case['params'][0] / 1e6:.2f}M ⇒ {case['params'][1] / 1e6:.2f}M",
        ["setting", "CPU ms, 1 thread", "speed-up", "efficiency", "vs plain unpruned",
         f"{STEADY_BLOCK} in a row, CPU ms", "efficiency", f"wall ms, {threads} threads", "efficiency"], rows)
    for setting, prof in case["layers"].items():
        b, a = prof["before"], prof["after"]
        gap = gap_by_kind(b, a)
        total_gap = sum(gap.values())  # gap_by_kind's shares add up to the whole excess
        parts = ", ".join(f"{k} {v:+.2f} ms ({v / total_gap:.0%})" for k, v in gap.items() if abs(v) >= 0.005)
        mac_layers = [c for c in compare_profiles(b, a) if c.kind in MAC_KINDS and c.after is not None]
        t0, t1 = sum(c.before.ms for c in mac_layers), sum(c.after.ms for c in mac_layers)
        m0, m1 = sum(c.before.macs for c in mac_layers), sum(c.after.macs for c in mac_layers)
        unit, by = (("per node of the optimised graph", "operator (a Conv carries its BatchNorm, ReLU and add)")
                    if setting == ORT else ("per layer", "module class"))
        text += (f"\n*{setting}, {unit} (1 thread, CPU time, best of runs)*: {b.total_ms:.2f} ⇒ {a.total_ms:.2f} ms, "
                 f"{a.total_ms - total_gap:.2f} ms if it went as the MACs; the {total_gap:.2f} ms excess by {by}: "
                 f"{parts}. Conv/linear layers alone: {t0:.2f} ⇒ {t1:.2f} ms for {m0 / m1:.2f}x fewer MACs, "
                 f"efficiency {(t0 / t1) / (m0 / m1):.2f}.\n\n")
        text += layer_table(compare_profiles(b, a), kinds=MAC_KINDS)
    return text


def profile_json(p: LayerProfile) -> dict:
    return {"total_ms": p.total_ms, "macs": p.macs, "untimed_ms": p.untimed_ms,
            "layers": [dict(vars(t)) for t in p.layers]}


SWEEP_WIDTHS = (56, 60, 62, 63, 64, 65, 66, 68, 72, 80, 96)
SWEEP_SHAPES = ((56, 3), (56, 1), (14, 3), (14, 1))  # (image side, kernel size)


def channel_sweep(rounds: int) -> tuple[str, dict]:
    """GMAC/s of one ``C -> C`` convolution against ``C``, NCHW and channels_last, one thread, batch 1.

    Isolates the kernels' taste in channel counts from everything else in a
    network: the same arithmetic per channel, only the width changes.
    """
    rows, data = [], []
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for side, k in SWEEP_SHAPES:
            for fmt in ("NCHW", "channels_last"):
                row = [f"{side}x{side}, {k}x{k}, {fmt}"]
                for c in SWEEP_WIDTHS:
                    conv = nn.Conv2d(c, c, k, padding=k // 2, bias=False).eval()
                    x = torch.randn(1, c, side, side)
                    if fmt == "channels_last":
                        conv = conv.to(memory_format=torch.channels_last)
                        x = x.contiguous(memory_format=torch.channels_last)
                    ms = best_times({"conv": (conv, x)}, rounds, time.thread_time)["conv"]
                    gmacs = c * c * k * k * side * side / (ms * 1e6)
                    row.append(f"{gmacs:.0f}")
                    data.append({"side": side, "kernel": k, "format": fmt, "channels": c, "ms": ms, "gmac_per_s": gmacs})
                rows.append(row)
    finally:
        torch.set_num_threads(default_threads)
    text = markdown("One C -> C convolution, batch 1, one thread: GMAC/s against C (CPU time, best of runs)",
                    ["shape, layout"] + [str(c) for c in SWEEP_WIDTHS], rows)
    return text, {"channel_sweep": data}


def per_layer_report(args: argparse.Namespace) -> tuple[str, dict]:
    settings = SETTINGS + (("compile",) if args.compile else ())
    cases = []
    text = ""
    for arch in args.models:
        for size in args.sizes:
            t0 = time.perf_counter()
            print(f"  {arch} {size}x{size} ...", flush=True)
            case = per_layer_case(arch, size, args, settings)
            cases.append(case)
            text += "\n" + case_markdown(case)
            print(f"    done in {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
    data = {"cases": [{**c, "layers": {k: {side: profile_json(p) for side, p in v.items()} for k, v in c["layers"].items()}}
                      for c in cases]}
    if args.channel_sweep:
        print("  channel sweep ...", flush=True)
        sweep_text, sweep = channel_sweep(args.rounds)
        text += "\n" + sweep_text
        data.update(sweep)
    return text, data


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
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    line = (f"torch {torch.__version__}, depgraph {tp.__version__}, CPU {cpu} ({os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads), load average {load} (1/5/15 min)")
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
    parser.add_argument("--runtime", choices=("torch", ORT), default="torch",
                        help="table 1's CPU timings: eager PyTorch, or the file depgraph.export_onnx writes run by "
                             "onnxruntime (on torch's thread count)")
    parser.add_argument("--no-step", action="store_true", help="skip the pruning-time table")
    parser.add_argument("--rich", action="store_true", help="render the tables with rich")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown tables to this file")
    parser.add_argument("--per-layer", action="store_true", help="table 3 (where the speed-up goes) instead of 1 and 2")
    parser.add_argument("--models", nargs="*", default=None,
                        help="--per-layer torchvision models (default resnet50 mobilenet_v2; none: the sweep only)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="--per-layer image sides (default 64 224)")
    parser.add_argument("--layer-ratio", type=float, default=0.5, help="--per-layer pruning ratio (round_to 8)")
    parser.add_argument("--rounds", type=int, default=None, help="--per-layer interleaved runs (default 15; 5 --quick)")
    parser.add_argument("--wall-rounds", type=int, default=None,
                        help="--per-layer interleaved runs on the default threads (default 5; 3 --quick)")
    parser.add_argument("--channel-sweep", action="store_true",
                        help="--per-layer: also GMAC/s of one conv against its width (table 4)")
    parser.add_argument("--compile", action="store_true", help="--per-layer: also time torch.compile (slow)")
    parser.add_argument("--json", type=Path, default=None, help="--per-layer: write every number to this JSON file")
    args = parser.parse_args(argv)
    q = args.quick
    args.ratios = tuple(args.ratios or (QUICK_RATIOS if q else FULL_RATIOS))
    if any(not 0.0 <= r < 1.0 for r in args.ratios):
        parser.error(f"--ratios must be in [0, 1), got {args.ratios}")
    if args.runtime == ORT and not HAS_ORT:
        parser.error("--runtime onnxruntime needs onnxruntime: pip install -e '.[export]'")
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

    if args.per_layer:
        if not 0.0 < args.layer_ratio < 1.0:
            parser.error(f"--layer-ratio must be in (0, 1), got {args.layer_ratio}")
        if args.models is None:
            args.models = ["resnet50"] if q else list(LAYER_MODELS)
        args.sizes = args.sizes or ([64] if q else [64, 224])
        args.rounds = args.rounds or (5 if q else 15)
        args.wall_rounds = args.wall_rounds or (3 if q else 5)
        if args.models:
            print(f"per-layer latency of {', '.join(args.models)} at {args.sizes} ...")
        body, data = per_layer_report(args)
        text = environment(False) + body
        if args.json is not None:
            data["environment"] = environment(False).strip()
            args.json.write_text(json.dumps(data) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
    else:
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
