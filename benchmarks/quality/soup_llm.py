"""SmolLM2-135M: weight averages of recoveries of one pruned model, through ``depgraph average``.

    python benchmarks/quality/soup_llm.py --work /tmp/llmtc \\
        --model ce=recovered_ce_t2.pth --model kd=recovered_kd_t1.pth --model kd2=recovered_kd_t1_cont.pth \\
        --soup ce,kd2 --soup kd,kd2 --name soup_llm

Every ``--model`` is a ``depgraph.save`` file in WORK made by ``recover_llm.py`` from the same
pruned model (its stages files say how). Every ``--soup A,B,...`` is the command a user would
type, with equal weights fixed before measuring:

    depgraph average WORK/A WORK/B ... --base WORK/corrected --output WORK/soup_N.pth

Each model and each average is measured twice: on the ``--keep-best`` text (WORK/val.txt, the
held-out articles after the measured tokens), which is where a soup may be chosen, and on the
8192 measured tokens that ``recover_llm.py`` reports, which nothing here chooses on. Writes
``results/NAME.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
from llm import n_params, perplexity  # noqa: E402
from recover_llm import RESULTS, depgraph, load_measured, machine, prepare  # noqa: E402
from report import markdown_table  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="recover_llm.py's WORK: base/, corrected/, val.txt")
    p.add_argument("--model", action="append", required=True, metavar="LABEL=FILE",
                   help="a recovery in WORK (repeatable)")
    p.add_argument("--soup", action="append", required=True, metavar="A,B,...",
                   help="labels of --model to average with equal weights (repeatable)")
    p.add_argument("--teacher", default="corrected", help="the folder in WORK the models were pruned from")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="soup_llm")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = dict(item.split("=", 1) for item in args.model)
    soups = [s.split(",") for s in args.soup]
    unknown = sorted({label for s in soups for label in s} - set(models))
    if unknown:
        p.error(f"--soup names {unknown}, which no --model labels")

    from transformers import AutoTokenizer

    base, _, eval_text = prepare(args.work)
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = data.chunk_tokens(tokenizer(eval_text, return_tensors="pt").input_ids, args.context, args.eval_tokens)
    val_text = (args.work / "val.txt").read_text(encoding="utf-8")
    val = data.chunk_tokens(tokenizer(val_text, return_tensors="pt").input_ids, args.context, args.eval_tokens)

    def measure(path: Path) -> dict:
        start = time.perf_counter()
        model = load_measured(path, base)  # loaded once for both texts
        ppl, val_ppl = perplexity(model, rows), perplexity(model, val)
        out = {"ppl": ppl, "val_ppl": val_ppl, "params": n_params(model), "eval_seconds": time.perf_counter() - start}
        print(f"{path.name}: val ppl {val_ppl:.3f}, measured ppl {ppl:.3f}", flush=True)
        return out

    measured = {"unpruned": measure(base)}
    for label, file in models.items():
        measured[label] = {"file": file, **measure(args.work / file)}
    stages = {}
    for i, labels in enumerate(soups, 1):
        out = args.work / f"soup_{i}.pth"
        cmd = ["average", *(str(args.work / models[label]) for label in labels), "--base",
               str(args.work / args.teacher), "--output", str(out), "--plain"]
        seconds = depgraph(*cmd, threads=args.threads)[0]
        name = "average of " + " + ".join(labels)
        stages[name] = {"command": "depgraph " + " ".join(cmd), "seconds": seconds}
        measured[name] = measure(out)
    state = {"settings": {**{k: str(v) for k, v in vars(args).items()}, "machine": machine()},
             "stages": stages, "models": measured}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(state, indent=1))
    (RESULTS / f"{args.name}.md").write_text(markdown(state))
    print(markdown(state))
    return state


def markdown(state: dict) -> str:
    m, s = state["models"], state["settings"]
    unpruned = m["unpruned"]["ppl"]
    soups = [name for name in m if name.startswith("average of ")]
    chosen = min(soups, key=lambda name: m[name]["val_ppl"]) if soups else None
    rows = [(name + (" (lowest on the choice text)" if name == chosen else ""), m[name].get("file", ""),
             f"{m[name]['val_ppl']:.2f}", f"{m[name]['ppl']:.2f}", f"{m[name]['ppl'] / unpruned:.2f}x")
            for name in m]
    head = (f"SmolLM2-135M-Instruct recoveries of one pruned model (WORK {s['work']}) and their equal-weight "
            f"averages through `depgraph average`, {s['machine']}. Perplexity in windows of {s['context']}: "
            f"\"choice\" on the first {s['eval_tokens']} tokens of the --keep-best text (val.txt), \"measured\" on "
            f"the {s['eval_tokens']} held-out tokens every recover_llm.py row reports; the ratio is to the "
            f"unpruned model on the measured tokens.")
    commands = [(name, f"`{r['command']}`", f"{r['seconds']:.0f} s") for name, r in state["stages"].items()]
    return "\n\n".join([head, markdown_table(("model", "file", "choice ppl", "measured ppl", "/ unpruned"), rows),
                        markdown_table(("average", "command", "wall time"), commands)]) + "\n"


if __name__ == "__main__":
    main()
