"""Prune a Llama-shaped checkpoint from its files, with a memory budget far below its size.

    python benchmarks/out_of_core.py                       # ~2.2 GB bf16 (TinyLlama-1.1B shape)
    python benchmarks/out_of_core.py --size 13b --max-memory 1GB   # ~26 GB bf16 (Llama-2-13B shape), needs the disk
    python benchmarks/out_of_core.py --size tiny --plan      # a smoke run, no plan timings

Steps, each timed:

1. write a random-weight bf16 checkpoint of the chosen shape to a temporary
   folder, shard by shard and tensor by tensor (the model never exists in
   memory: shapes come from a meta-device model, bytes from a seeded generator);
2. read every shard once, sequentially, after evicting it from the page cache
   (``posix_fadvise(DONTNEED)``): the disk's raw read speed in this run;
3. ``depgraph.streaming.prune_checkpoint`` in a child process (its own peak
   RSS), 20% of the MLP channels and 20% of the key/value heads of every layer
   by L2 magnitude, with ``--max-memory`` (default 600 MB), cache evicted first;
4. the plan alone (graph, groups, head planner, random scores)
   of 13B- and 70B-shaped models on the meta device: what scoring costs on top
   of it is reading the weights.

Results go to ``benchmarks/results/out_of_core_<size>.json`` and print as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=1000),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "3b": dict(hidden_size=3200, intermediate_size=8640, num_hidden_layers=26, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),  # OpenLLaMA-3B
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=32000),
}
RESULTS = Path(__file__).parent / "results"


def llama_config(size: str):
    from transformers import LlamaConfig

    return LlamaConfig(**SHAPES[size], tie_word_embeddings=False, dtype="bfloat16", max_position_embeddings=4096)


def write_random_checkpoint(folder: Path, size: str, shard_bytes: int, seed: int = 0) -> int:
    """A bf16 checkpoint of ``size`` written tensor by tensor; returns its tensor bytes."""
    from depgraph.streaming.plan import build_meta_model
    from depgraph.streaming.writer import Entry, write_shard

    config = llama_config(size)
    model = build_meta_model(config)
    gen = torch.Generator().manual_seed(seed)

    def chunks(shape: tuple[int, ...]):
        rows = max(1, (1 << 24) // (2 * max(1, shape[-1])))  # ~16 MB per piece
        first = shape[0] if shape else 1
        for r in range(0, first, rows):
            n = min(rows, first - r)
            piece = (torch.randn((n, *shape[1:]), generator=gen) * 0.02).to(torch.bfloat16)
            yield piece.reshape(-1).view(torch.uint8).numpy().tobytes()

    shards: list[list[Entry]] = [[]]
    used = 0
    for name, t in model.state_dict().items():
        nbytes = t.numel() * 2
        if shards[-1] and used + nbytes > shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(Entry(name, "BF16", tuple(t.shape), nbytes, lambda s=tuple(t.shape): chunks(s)))
        used += nbytes
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i, entries in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_shard(folder / file, entries, {"format": "pt"})
        weight_map.update({e.name: file for e in entries})
    total = sum(e.nbytes for es in shards for e in es)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(folder)
    return total


def check_budget(size: str, max_memory: str) -> None:
    """Refuse a budget below one decoder layer before the checkpoint is written (minutes at 13B)."""
    from depgraph.streaming import parse_size
    from depgraph.streaming.plan import build_meta_model

    layer = build_meta_model(llama_config(size)).model.layers[0]
    need = sum(p.numel() * 2 for p in layer.parameters())  # bf16
    if parse_size(max_memory) < need:
        raise SystemExit(f"--max-memory {max_memory} cannot hold one decoder layer of the {size} shape "
                         f"({need / 1e6:.0f} MB in bf16): streaming materialises up to one layer; raise it")


def evict(folder: Path) -> None:
    """Drop the folder's files from the page cache, so the next read comes from the disk."""
    for p in folder.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def raw_read_speed(folder: Path) -> float:
    """Bytes per second of reading every shard once, sequentially, from the disk."""
    evict(folder)
    total, t0 = 0, time.perf_counter()
    for p in sorted(folder.glob("*.safetensors")):
        with open(p, "rb", buffering=0) as f:
            while piece := f.read(1 << 24):
                total += len(piece)
    return total / (time.perf_counter() - t0)


def prune_in_child(src: Path, out: Path, ratio: float, head_ratio: float | None, max_memory: str) -> dict:
    """Run prune_checkpoint in a fresh process: its peak RSS is the prune's alone."""
    code = (
        "import json, sys\n"
        "from depgraph.streaming import prune_checkpoint\n"
        f"r = prune_checkpoint({str(src)!r}, {str(out)!r}, ratio={ratio}, head_ratio={head_ratio!r}, "
        f"max_memory={max_memory!r}, "
        "progress=False)\n"
        "print(json.dumps(r.as_dict()))\n"
    )
    evict(src)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"prune_checkpoint failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["wall_seconds"] = wall
    return report


def plan_time(size: str, layers: int | None = None) -> dict:
    """Seconds to plan a 20% prune of a ``size``-shaped model on meta (random scores: no weights)."""
    import warnings

    from depgraph.streaming.options import PruneOptions
    from depgraph.streaming.plan import build_meta_model, example_inputs

    config = llama_config(size)
    if layers is not None:
        config.num_hidden_layers = layers
    t0 = time.perf_counter()
    model = build_meta_model(config)
    opts = PruneOptions(ratio=0.2, importance="random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = opts.make_pruner(model, example_inputs("meta"), opts.make_importance())
        t1 = time.perf_counter()
        pruner.step()
    t2 = time.perf_counter()
    params = sum(p.numel() for p in model.parameters())
    return {"size": size, "layers": config.num_hidden_layers, "build_s": t1 - t0, "step_s": t2 - t1,
            "params_after": params}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--ratio", type=float, default=0.2, help="fraction of MLP channels removed per layer")
    parser.add_argument("--head-ratio", type=float, default=None,
                        help="fraction of key/value heads removed per layer (default: --ratio; the 1b shape "
                             "has 4, so 0.2 removes none: use 0.5)")
    parser.add_argument("--max-memory", default="600MB")
    parser.add_argument("--shard-size", type=int, default=1 << 30, help="bytes per source shard")
    parser.add_argument("--workdir", type=Path, default=None, help="where the checkpoints go (default: a temp dir)")
    parser.add_argument("--plan", nargs="*", default=["13b", "70b"], choices=sorted(SHAPES),
                        help="shapes whose plan alone is timed on meta (default: 13b 70b; none: --plan)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints")
    parser.add_argument("--save", action="store_true", help=f"write the results to {RESULTS}/")
    args = parser.parse_args(argv)
    check_budget(args.size, args.max_memory)

    work = Path(tempfile.mkdtemp(prefix="ooc-", dir=args.workdir))
    src, out = work / "src", work / "out"
    result: dict = {"size": args.size, "shape": SHAPES[args.size], "ratio": args.ratio, "head_ratio": args.head_ratio,
                    "max_memory": args.max_memory, "torch": torch.__version__, "cpus": os.cpu_count()}
    try:
        t0 = time.perf_counter()
        total = write_random_checkpoint(src, args.size, args.shard_size)
        result["generate_s"] = time.perf_counter() - t0
        result["checkpoint_bytes"] = total
        result["raw_read_Bps"] = raw_read_speed(src)
        report = prune_in_child(src, out, args.ratio, args.head_ratio, args.max_memory)
        result["prune"] = report
        read_s = report["seconds"]["plan"] + report["seconds"]["score"] + report["seconds"]["write"]
        result["prune_read_Bps"] = report["bytes_read"] / read_s
        result["prune_write_Bps"] = report["bytes_written"] / report["seconds"]["write"]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    save(result, args)  # before the plan timings, which can take long on a busy machine
    for size in args.plan:
        result.setdefault("plan", []).append(plan_time(size))
        save(result, args)
    print(render(result))
    return result


def save(result: dict, args: argparse.Namespace) -> None:
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"out_of_core_{args.size}.json").write_text(json.dumps(result, indent=2) + "\n")


def render(r: dict) -> str:
    p = r["prune"]
    gb = 1e9
    lines = [
        f"| checkpoint | {r['size']} Llama shape, bf16, {r['checkpoint_bytes'] / gb:.2f} GB |",
        "|---|---|",
        f"| max_memory | {r['max_memory']} |",
        f"| pruned | {r['ratio']:.0%} of MLP channels, {r.get('head_ratio') or r['ratio']:.0%} of KV heads per layer "
        f"({p['groups_pruned']} groups) |",
        f"| parameters | {p['params_before'] / 1e9:.3f} G -> {p['params_after'] / 1e9:.3f} G |",
        f"| time (plan / score / write) | {p['seconds']['plan']:.1f} s / {p['seconds']['score']:.1f} s / "
        f"{p['seconds']['write']:.1f} s (process {p['wall_seconds']:.1f} s) |",
        f"| read / written | {p['bytes_read'] / gb:.2f} GB / {p['bytes_written'] / gb:.2f} GB |",
        f"| disk raw read (same run) | {r['raw_read_Bps'] / 1e6:.0f} MB/s |",
        f"| prune read / write throughput | {r['prune_read_Bps'] / 1e6:.0f} MB/s / "
        f"{r['prune_write_Bps'] / 1e6:.0f} MB/s |",
        f"| peak weights held | {p['peak_materialized'] / 1e6:.0f} MB |",
        f"| peak RSS of the prune process | {p['peak_rss'] / 1e6:.0f} MB |",
    ]
    for plan in r.get("plan", []):
        lines.append(f"| plan only, {plan['size']} shape ({plan['layers']} layers, meta) | "
                     f"build {plan['build_s']:.1f} s + step {plan['step_s']:.1f} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
