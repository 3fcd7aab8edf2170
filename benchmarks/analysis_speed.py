"""How long the analysis takes (graph, groups, pruner set-up, one step): depgraph beside Torch-Pruning.

    python benchmarks/analysis_speed.py            # every case (tens of minutes on 2 cores)
    python benchmarks/analysis_speed.py --quick    # a short subset (a smoke test, a few minutes)
    python benchmarks/analysis_speed.py --only depgraph --cases llama-64,plan-70b

Each case runs in a fresh Python process (``--worker``), with one torch thread
and random weights, so that no case inherits another's caches or allocator
state and the peak RSS is the case's own. A worker times four stages, one after
the other, on the same model:

1. ``build``: ``DependencyGraph().build_dependency(model, example_inputs)``;
2. ``groups``: ``list(DG.get_all_groups(ignored_layers, root_module_types))``;
3. ``init``: ``BasePruner(model, example_inputs, importance, ...)`` (which
   builds its own graph);
4. ``step``: one ``pruner.step()``.

Cases:

* ``resnet50``, ``densenet121``, ``vit_b_16`` (torchvision, 1x3x224x224, the
  classifier ignored), ``GroupMagnitudeImportance(p=2)``, ratio 0.5;
* ``llama-N``: a Llama-style causal LM from transformers (``LlamaConfig``,
  hidden 512, MLP 1536, 8 query / 2 key-value heads, vocabulary 1024), N layers
  (8 to 128), 32 tokens, ``GroupMagnitudeImportance(p=2)``, ratio 0.5 of the
  MLP channels and of the key/value heads (whole heads with their query heads;
  embedding and LM head ignored, so the hidden size stays). Without RoPE and
  with eager attention, for both libraries: Torch-Pruning 1.6.1 loops forever
  on the query projection's group through transformers' ``rotate_half``;
* ``width-H``: the same (no RoPE) at 4 layers and hidden ``H`` (512 to 8192, MLP 3.5x,
  head size 128, key/value heads 1/8 of the query heads), on the meta device,
  ``RandomImportance``, ratio 0.2, ``round_to=128``;
* ``plan-70b``: the Llama-70B shape (80 layers, hidden 8192, MLP 28672, 64
  query / 8 key/value heads, vocabulary 32000) on the meta device, the same
  criterion and ratio as ``width-H``, with RoPE (so depgraph only); no weight
  exists, so the peak RSS is the analysis' own.

Torch-Pruning (``torch_pruning``, when installed) gets the same model, inputs
and options, plus the ``num_heads`` dict it needs to find attention heads;
it records the graph through autograd, so its stages run with gradients on.
A case that runs past ``--cap`` seconds is stopped and shown as ``timeout``
(with the stages it finished). Results go to
``benchmarks/results/analysis_speed.{md,json}`` with the machine they came from.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STAGES = ("build", "groups", "init", "step")
IMAGE_CASES = ("resnet50", "densenet121", "vit_b_16")
DEPTHS = (8, 16, 32, 64, 128)
WIDTHS = (512, 1024, 2048, 4096, 8192)
QUICK = ("resnet50", "vit_b_16", "llama-8", "llama-32", "width-512", "width-4096", "plan-70b-8")
RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------- the worker (one case, one process)

def _emit(**record: Any) -> None:
    print("@@" + json.dumps(record), flush=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _llama(layers: int, hidden: int, mlp: int, heads: int, kv: int, vocab: int, meta: bool, rope: bool = True):
    import torch
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=mlp, num_attention_heads=heads,
                                   num_key_value_heads=kv, num_hidden_layers=layers, vocab_size=vocab,
                                   head_dim=hidden // heads)
    if not rope:
        # Torch-Pruning 1.6.1 never closes the q_proj group through rotate_half (its index sets keep
        # changing round the cat of the two halves), so the side-by-side cases leave RoPE out, for
        # both libraries alike; eager attention shows it the key/value heads' repeat_kv.
        from transformers.models.llama import modeling_llama

        modeling_llama.apply_rotary_pos_emb = lambda q, k, *args, **kwargs: (q, k)
        cfg._attn_implementation = "eager"
    device = torch.device("meta" if meta else "cpu")
    with device:
        model = transformers.LlamaForCausalLM(cfg).eval()
    inputs = {"input_ids": torch.zeros(1, 32, dtype=torch.long, device=device)}
    return model, inputs


def _logits(model: Any, inputs: dict[str, Any]) -> Any:
    """The LM's logits: the original records its graph from one output tensor."""
    return model(**inputs).logits


def _case(name: str, lib: Any) -> dict[str, Any]:
    """Model, inputs and pruner keyword arguments of a case."""
    import torch
    import torchvision

    if name in IMAGE_CASES:
        model = torchvision.models.get_model(name, weights=None).eval()
        last = {"resnet50": "fc", "densenet121": "classifier", "vit_b_16": "heads"}[name]
        return dict(model=model, inputs=torch.randn(1, 3, 224, 224), ignored=[getattr(model, last)],
                    importance=lib.importance.GroupMagnitudeImportance(p=2), kwargs=dict(pruning_ratio=0.5))
    if name.startswith("llama-"):
        model, inputs = _llama(int(name.split("-")[1]), 512, 1536, 8, 2, 1024, meta=False, rope=False)
        imp, ratio, extra = lib.importance.GroupMagnitudeImportance(p=2), 0.5, {}
    elif name.startswith("width-"):
        hidden = int(name.split("-")[1])
        model, inputs = _llama(4, hidden, hidden * 7 // 2, hidden // 128, max(hidden // 1024, 1), 32000, meta=True,
                               rope=False)
        imp, ratio, extra = lib.importance.RandomImportance(), 0.2, dict(round_to=128)
    elif name.startswith("plan-70b"):
        layers = int(name.split("-")[2]) if name.count("-") == 2 else 80
        model, inputs = _llama(layers, 8192, 28672, 64, 8, 32000, meta=True)
        imp, ratio, extra = lib.importance.RandomImportance(), 0.2, dict(round_to=128)
    else:
        raise SystemExit(f"unknown case {name!r}")
    attn = [layer.self_attn for layer in model.model.layers]
    num_heads = {}
    for a in attn:
        num_heads.update({a.q_proj: model.config.num_attention_heads, a.k_proj: model.config.num_key_value_heads,
                          a.v_proj: model.config.num_key_value_heads})
    kwargs = dict(pruning_ratio=ratio, num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
                  head_pruning_ratio=ratio, **extra)
    kwargs["forward_fn"] = _logits
    return dict(model=model, inputs=inputs, importance=imp, kwargs=kwargs,
                ignored=[model.get_input_embeddings(), model.get_output_embeddings()])


def worker(lib_name: str, case: str) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    warnings.simplefilter("ignore")
    lib = importlib.import_module(lib_name)
    c = _case(case, lib)
    model, inputs, ignored = c["model"], c["inputs"], c["ignored"]
    roots = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
    _emit(stage="setup", rss_mb=_peak_rss_mb())

    t = time.perf_counter()
    dg = lib.DependencyGraph().build_dependency(model, inputs, forward_fn=c["kwargs"].get("forward_fn"),
                                                verbose=False)
    _emit(stage="build", s=time.perf_counter() - t)
    t = time.perf_counter()
    n_groups = len(list(dg.get_all_groups(ignored_layers=ignored, root_module_types=roots)))
    _emit(stage="groups", s=time.perf_counter() - t, n=n_groups)
    del dg
    t = time.perf_counter()
    pruner = lib.pruner.BasePruner(model, inputs, c["importance"], ignored_layers=ignored, **c["kwargs"])
    _emit(stage="init", s=time.perf_counter() - t)
    t = time.perf_counter()
    pruner.step()
    _emit(stage="step", s=time.perf_counter() - t)
    params = sum(p.numel() for p in model.parameters())
    _emit(stage="done", rss_mb=_peak_rss_mb(), params=params)


# ---------------------------------------------------------------- the driver

def run_case(lib: str, case: str, cap: float) -> dict[str, Any]:
    """Run one case in a fresh process; stages it finished, ``status`` ok / timeout / error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", lib, case]
    out: dict[str, Any] = {"lib": lib, "case": case, "status": "ok"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cap, env=env)
        text, err = proc.stdout, proc.stderr
        if proc.returncode:
            out["status"] = "error"
            out["error"] = (err.strip().splitlines() or ["?"])[-1][:200]
    except subprocess.TimeoutExpired as exc:
        text = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out["status"] = "timeout"
    for line in text.splitlines():
        if line.startswith("@@"):
            rec = json.loads(line[2:])
            stage = rec.pop("stage")
            if stage in STAGES:
                out[stage] = rec["s"]
                if "n" in rec:
                    out["n_groups"] = rec["n"]
            elif stage == "done":
                out["rss_mb"], out["params"] = rec["rss_mb"], rec["params"]
    return out


def cases(quick: bool) -> list[str]:
    if quick:
        return list(QUICK)
    return [*IMAGE_CASES, *(f"llama-{d}" for d in DEPTHS), *(f"width-{w}" for w in WIDTHS), "plan-70b"]


def total(r: dict[str, Any]) -> float | None:
    return sum(r[s] for s in STAGES) if r.get("status") == "ok" else None


def cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "–"
    t = total(r)
    if t is not None:
        return f"{t:.2f}"
    done = sum(r.get(s, 0.0) for s in STAGES)
    return f"{r['status']} ({done:.1f} s done)" if done else r["status"]


def stages(r: dict[str, Any]) -> str:
    return " / ".join(f"{r[s]:.2f}" if s in r else "–" for s in STAGES)


def table(results: list[dict[str, Any]], libs: Sequence[str]) -> str:
    by = {(r["lib"], r["case"]): r for r in results}
    names = list(dict.fromkeys(r["case"] for r in results))
    lines = ["| case | torch-pruning s | depgraph s | speed-up | depgraph build / groups / init / step s "
             "| depgraph peak RSS MB | torch-pruning peak RSS MB |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for name in names:
        ours, theirs = by.get(("depgraph", name)), by.get(("torch_pruning", name))
        ratio = "–"
        if ours and theirs and total(ours) is not None:
            if total(theirs) is not None:
                ratio = f"{total(theirs) / total(ours):.1f}x"
            elif theirs["status"] == "timeout":
                ratio = f">{args_cap / total(ours):.0f}x"
        rss = lambda r: f"{r['rss_mb']:.0f}" if r and "rss_mb" in r else "–"  # noqa: E731
        lines.append(f"| {name} | {cell(theirs) if 'torch_pruning' in libs else '–'} | {cell(ours)} | {ratio} | "
                     f"{stages(ours) if ours else '–'} | {rss(ours)} | {rss(theirs)} |")
    return "\n".join(lines)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    tp_version = "not installed"
    try:
        from importlib.metadata import version

        tp_version = version("torch-pruning")
    except Exception:  # noqa: BLE001 - only for the description line
        pass
    return (f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}, torch {torch.__version__}, "
            f"torch-pruning {tp_version}, 1 torch thread, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


args_cap = 300.0


def main(argv: Sequence[str] | None = None) -> None:
    global args_cap
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--cases", help="comma-separated case names (default: all, or the --quick subset)")
    parser.add_argument("--only", choices=("depgraph", "torch_pruning"), help="run one library")
    parser.add_argument("--cap", type=float, default=None, help="seconds per case before 'timeout' "
                        "(default 300; 120 with --quick)")
    parser.add_argument("--label", default="", help="a heading for this run in the results file (e.g. 'before')")
    parser.add_argument("--output", type=Path, default=RESULTS / "analysis_speed.md",
                        help="markdown file to append to ('-' for none); a .json beside it gets the raw records")
    parser.add_argument("--worker", nargs=2, metavar=("LIB", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return
    args_cap = args.cap or (120.0 if args.quick else 300.0)
    names = args.cases.split(",") if args.cases else cases(args.quick)
    libs = ["depgraph"]
    if args.only != "depgraph" and importlib.util.find_spec("torch_pruning") is not None:
        libs = ["torch_pruning", "depgraph"] if args.only is None else ["torch_pruning"]
    results = []
    for name in names:
        for lib in libs:
            if lib == "torch_pruning" and name.startswith("plan-70b"):
                continue  # it keeps RoPE, which the original cannot close a group through (see llama-N)
            r = run_case(lib, name, args_cap)
            results.append(r)
            print(f"{lib:14s} {name:12s} {r['status']:8s} {stages(r)}  total {cell(r)}", flush=True)
    desc = machine()
    text = f"### {args.label or 'run'}\n\n{desc}\n\n{table(results, libs)}\n"
    print("\n" + text)
    if str(args.output) != "-":
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("a") as f:
            f.write(text + "\n")
        raw = args.output.with_suffix(".json")
        old = json.loads(raw.read_text()) if raw.exists() else []
        old.append({"label": args.label, "machine": desc, "results": results})
        raw.write_text(json.dumps(old, indent=1) + "\n")


if __name__ == "__main__":
    main()
