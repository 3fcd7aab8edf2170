"""SmolLM2-135M pruned by the command with no recipe named: which default it picks, and its perplexity.

    python benchmarks/quality/default_llm.py              # the row in README (needs setup.sh)

Runs, in a subprocess, the command a user would type with nothing but the data::

    depgraph prune BASE --target params=0.8 --calib train.txt --calib-samples 128 --seq-len 512 \
        --output PRUNED --report report.json

so the sized language-model default (``depgraph.workflow.calib_memory``) decides between
reconstruction + lstsq and fluctuation + bias. BASE and ``train.txt`` are those of
``recover_llm.py`` (SmolLM2-135M-Instruct de-quantised from the gguf, the calibration half of the
Wikipedia articles); 128 windows of 512 are the 65536 calibration tokens of the 2.19x row of
``results/llm_recipes.md``, and the perplexity is measured as there, on 16384 tokens of the
held-out half in windows of 512. Writes ``results/default_llm.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import data  # this folder is on the path: the script's own
import torch
from recover_llm import RESULTS, depgraph, measure_models, prepare


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "depgraph-recover-llm",
                   help="where BASE and train.txt are (shared with recover_llm.py) and PRUNED goes")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--context", type=int, default=512, help="tokens per calibration and perplexity window")
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the prune command")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    base, train, eval_text = prepare(args.work)
    pruned, report = args.work / "pruned-default", args.work / "prune_default_report.json"
    shutil.rmtree(pruned, ignore_errors=True)
    cmd = ["prune", str(base), "--target", "params=0.8", "--calib", str(train), "--calib-samples",
           str(args.calib_samples), "--seq-len", str(args.context), "--calib-batch-size", "4", "--no-latency",
           "--plain", "--output", str(pruned), "--report", str(report)]
    seconds, _ = depgraph(*cmd, threads=args.threads)
    rep = json.loads(report.read_text())

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = data.chunk_tokens(tokenizer(eval_text, return_tensors="pt").input_ids, args.context, args.eval_tokens)
    models = measure_models({"unpruned": base, "pruned": pruned}, rows, base)
    state = {"command": "depgraph " + " ".join(cmd), "seconds": seconds, "threads": args.threads,
             "criterion": rep["criterion"], "why": rep["why"], "result": rep["result"],
             "stages": rep["seconds"], "eval_tokens": int(rows.numel()), "context": args.context, "models": models}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "default_llm.json").write_text(json.dumps(state, indent=1))
    (RESULTS / "default_llm.md").write_text(markdown(state))
    print(markdown(state))
    return state


def markdown(s: dict) -> str:
    base, pruned = s["models"]["unpruned"], s["models"]["pruned"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in s["stages"].items())
    return "\n".join([
        "SmolLM2-135M-Instruct (float32 from the Q4_1 gguf) pruned by the command with no criterion named "
        f"({s['threads']} threads, 2 shared CPU cores). Perplexity on {s['eval_tokens']} held-out Wikipedia "
        f"tokens in windows of {s['context']}.", "",
        f"- command: `{s['command']}`",
        f"- chosen: {s['criterion']}",
        f"- why: {s['why']}",
        f"- result: {s['result']}",
        f"- wall time: {s['seconds'] / 60:.1f} min ({stages})", "",
        "| model | params | ppl | ppl / unpruned |", "| :--- | ---: | ---: | ---: |",
        f"| unpruned | {base['params'] / 1e6:.1f} M | {base['ppl']:.2f} | 1.00x |",
        f"| pruned (default recipe) | {pruned['params'] / 1e6:.1f} M ({pruned['params'] / base['params']:.1%}) | "
        f"{pruned['ppl']:.2f} | {pruned['ppl'] / base['ppl']:.2f}x |",
    ]) + "\n"


if __name__ == "__main__":
    main()
