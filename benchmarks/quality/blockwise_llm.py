"""SmolLM2-135M: one calibration pass against block by block, through the command line, no fine-tune.

    python benchmarks/quality/blockwise_llm.py --windows 64          # both orders, 64 calibration windows
    python benchmarks/quality/blockwise_llm.py --windows 512 --only blockwise
    python benchmarks/quality/blockwise_llm.py --quick               # a smoke run

Each prune is the ``depgraph prune`` command of ``recover_llm.py`` (reconstruction + lstsq,
``--target params=0.8``, the first and last three MLPs kept), with ``--blockwise`` or without,
run in a subprocess that reports its peak resident memory. Perplexity is measured in-process on
the held-out half of the articles, as in ``recover_llm.py``. Rows of earlier runs in WORK are
kept (``WORK/blockwise_runs.json``), so the table grows run by run; writes
``results/llm_blockwise.md`` and ``.json``. Needs ``setup.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
from recover_llm import REPO, RESULTS, machine, measure_models, prepare  # noqa: E402

#: Runs ``depgraph.cli.main`` and prints the peak resident memory (KiB on Linux) as its last line.
_RUN = ("import resource, sys\nfrom depgraph.cli import main\ncode = main(sys.argv[1:])\n"
        "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\nsys.exit(code)\n")
ORDERS = ("one pass", "blockwise")


def prune(args: list[str], threads: int) -> tuple[float, int]:
    """Run ``depgraph ARGS`` in a subprocess: wall seconds and peak resident bytes."""
    print("$ depgraph " + shlex.join(args), flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _RUN, *args], env=env, stdout=subprocess.PIPE, text=True,
                          check=True)
    seconds = time.perf_counter() - start
    print(done.stdout, end="", flush=True)
    peak = next(int(line.split()[1]) for line in reversed(done.stdout.splitlines()) if line.startswith("peak_rss"))
    return seconds, peak * 1024


def prune_args(base: Path, train: Path, out: Path, windows: int, seq_len: int, order: str,
               threads: int) -> list[str]:
    """The ``depgraph prune`` arguments of one row (``recover_llm.py``'s recipe)."""
    cmd = ["prune", str(base), "--target", "params=0.8", "--importance", "reconstruction", "--compensation", "lstsq",
           "--calib", str(train), "--calib-samples", str(windows), "--seq-len", str(seq_len), "--calib-batch-size",
           "4", "--no-latency", "--plain", "--device", "cpu", "--threads", str(threads), "--output", str(out),
           "--report", str(out.with_suffix(".json")), "--save-format", "depgraph"]
    cmd += [a for i in (0, 1, 2, 27, 28, 29) for a in ("--ignore", f"model.layers.{i}.mlp")]
    return cmd + (["--blockwise"] if order == "blockwise" else [])


def markdown(state: dict) -> str:
    s, rows = state["settings"], state["rows"]
    unpruned = state["unpruned"]
    lines = [f"SmolLM2-135M-Instruct, 20% of the parameters removed (reconstruction + lstsq, MLPs of layers 3-26, "
             f"the same width in each), no fine-tune; {s.get('machine', 'CPU')}, {s['threads']} threads. "
             f"Perplexity on {s['eval_tokens']} held-out Wikipedia tokens in windows of {s['context']} "
             f"(unpruned: {unpruned['ppl']:.2f}). Calibration windows of {s['seq_len']} tokens from the other "
             "articles. Peak memory: the prune process's resident set (the model, its copies, the statistics).",
             "", "| calibration windows | order | params | ppl | ppl / unpruned | prune time | peak memory |",
             "| ---: | :--- | ---: | ---: | ---: | ---: | ---: |"]
    for key in sorted(rows, key=lambda k: (rows[k]["windows"], ORDERS.index(rows[k]["order"]))):
        r = rows[key]
        lines.append(f"| {r['windows']} | {r['order']} | {r['params'] / 1e6:.1f} M | {r['ppl']:.2f} | "
                     f"{r['ppl'] / unpruned['ppl']:.2f}x | {r['seconds'] / 60:.1f} min | "
                     f"{r['peak_bytes'] / 1e9:.2f} GB |")
    lines += ["", "Commands:", ""] + [f"- `depgraph {r['command']}`" for r in rows.values()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", type=int, nargs="+", default=[64], help="calibration windows of each run")
    p.add_argument("--only", choices=ORDERS, default=None, help="run one order (default: both)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=512, help="tokens per perplexity window")
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "depgraph-blockwise-llm")
    p.add_argument("--quick", action="store_true", help="4 windows of 64 tokens, 256 measured tokens")
    args = p.parse_args(argv)
    if args.quick:
        args.windows, args.seq_len, args.context, args.eval_tokens = [4], 64, 64, 256
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    base, train, eval_text = prepare(args.work)
    runs_file = args.work / f"blockwise_runs{'_quick' if args.quick else ''}.json"
    runs = json.loads(runs_file.read_text()) if runs_file.is_file() else {}
    for windows in args.windows:
        for order in ORDERS if args.only is None else (args.only,):
            out = args.work / f"pruned{'_quick' if args.quick else ''}_{windows}_{order.replace(' ', '_')}.pth"
            cmd = prune_args(base, train, out, windows, args.seq_len, order, args.threads)
            seconds, peak = prune(cmd, args.threads)
            runs[f"{windows} {order}"] = {"windows": windows, "order": order, "command": shlex.join(cmd),
                                         "seconds": seconds, "peak_bytes": peak, "output": str(out)}
            runs_file.write_text(json.dumps(runs, indent=1))
    from transformers import AutoTokenizer

    rows = data.chunk_tokens(AutoTokenizer.from_pretrained(base)(eval_text, return_tensors="pt").input_ids,
                             args.context, args.eval_tokens)
    measured = measure_models({"unpruned": base, **{k: Path(r["output"]) for k, r in runs.items()}}, rows, base)
    for key, r in runs.items():
        r.update(ppl=measured[key]["ppl"], params=measured[key]["params"])
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["machine"] = machine()
    state = {"settings": settings, "unpruned": measured["unpruned"], "rows": runs}
    out_dir = RESULTS if not args.quick else Path(tempfile.gettempdir()) / "depgraph-quality-quick"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "llm_blockwise.json").write_text(json.dumps(state, indent=1))
    (out_dir / "llm_blockwise.md").write_text(markdown(state))
    print(markdown(state))
    return state


if __name__ == "__main__":
    main()
