"""Prune SmolLM2-135M-Instruct by 10/20/30% of its parameters; perplexity on held-out Wikipedia text.

    python benchmarks/quality/llm.py            # the full table (about an hour on two shared cores)
    python benchmarks/quality/llm.py --quick    # two criteria, one target, a few hundred tokens

No fine-tuning anywhere: what each criterion keeps is all the model has. Pruning is
uniform across layers (every decoder layer loses the same number of MLP channels,
and with ``--heads`` the same number of key/value heads together with their query
heads), so the pruned model's config can describe it: the benchmark saves it with
``save_pretrained``, reloads it with ``from_pretrained`` and compares logits. The
hidden size and the head size stay (RoPE pairs cannot be pruned into a config).

Perplexity uses independent windows of ``--context`` tokens from Wikipedia articles
that calibration never sees. Writes ``results/llm.md`` and ``results/llm.png``.
Needs ``setup.sh``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import depgraph as tp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
import report  # noqa: E402
from search import search_ratio  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "depgraph-quality-quick"
PROMPT = "The history of the city of London begins"
KV_HEADS = 3  # SmolLM2-135M's key/value heads per layer (each shared by 3 query heads)


def load_smollm2() -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct in float32 (de-quantised from the Q4_1 gguf) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = data.smollm2_gguf()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 tensors now; without this save_pretrained would claim a gguf file.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    return model.eval(), tokenizer


@torch.no_grad()
def perplexity(model: nn.Module, rows: torch.Tensor, batch_size: int = 4) -> float:
    """exp(mean next-token NLL) over every row (each row an independent window)."""
    model.eval()
    nll, count = 0.0, 0
    device = next((p.device for p in model.parameters()), rows.device)
    for batch in rows.to(device).split(batch_size):
        logits = model(input_ids=batch).logits[:, :-1].float()
        target = batch[:, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum"))
        count += target.numel()
    return math.exp(nll / count)


@torch.no_grad()
def generate(model: nn.Module, tokenizer: Any, prompt: str = PROMPT, tokens: int = 30) -> str:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip().replace("\n", " ")


def n_params(model: nn.Module) -> int:
    """Distinct parameters (the tied embedding and LM head counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ----------------------------------------------------------------------------- criteria
@dataclass
class Criterion:
    """An importance, what it must see of the unpruned model once, and extra pruner options."""

    label: str
    make: Callable[[], Any]
    prepare: Callable[[nn.Module, Any, torch.Tensor], None] | None = None
    pruner_kwargs: dict = field(default_factory=dict)
    uses_grad: bool = False


def _taylor_grads(model: nn.Module, imp: Any, calib: torch.Tensor) -> None:
    model.zero_grad()
    for row in calib.split(1):
        (model(input_ids=row, labels=row).loss / len(calib)).backward()


def _calibrate(model: nn.Module, imp: Any, calib: torch.Tensor) -> None:
    imp.calibrate(model, [{"input_ids": row} for row in calib.split(2)])


def criteria() -> dict[str, Criterion]:
    imp = tp.importance
    out = {
        "magnitude": Criterion("magnitude (group L2)", lambda: imp.GroupMagnitudeImportance(p=2)),
        "taylor": Criterion("Taylor", imp.GroupTaylorImportance, _taylor_grads, uses_grad=True),
        "random": Criterion("random", imp.RandomImportance),
    }
    if hasattr(imp, "ActivationWeightImportance"):
        out["act"] = Criterion("activation x weight", imp.ActivationWeightImportance, _calibrate)
        out["act+bc"] = Criterion("activation x weight + bias comp.", imp.ActivationWeightImportance,
                                  _calibrate, {"bias_compensation": True})
    if hasattr(imp, "FluctuationImportance"):
        out["fluct"] = Criterion("fluctuation", imp.FluctuationImportance, _calibrate)
        out["fluct+bc"] = Criterion("fluctuation + bias comp.", imp.FluctuationImportance, _calibrate,
                                    {"bias_compensation": True})
    return out


# ----------------------------------------------------------------------------- pruning
def attention_projections(model: nn.Module) -> list[nn.Module]:
    return [m for layer in model.model.layers for m in layer.self_attn.children() if isinstance(m, nn.Linear)]


def pruned_copy(base: nn.Module, imp: Any, ratio: float, head_ratio: float, example: torch.Tensor,
                crit: Criterion) -> nn.Module:
    """A deep copy of ``base`` with ``ratio`` of every MLP's channels (and ``head_ratio`` of the heads) removed.

    Local pruning with one ratio: every layer loses the same count, so the config can say it.
    """
    model, imp = copy.deepcopy((base, imp))  # one memo: statistics keyed by layers follow the copy
    if crit.uses_grad:  # deepcopy drops .grad of parameters
        for p, q in zip(base.parameters(), model.parameters(), strict=True):
            q.grad = None if p.grad is None else p.grad.clone()
    heads = head_options(head_ratio)
    # The embedding's output is the hidden size: ignoring it keeps the residual stream whole. Without
    # head pruning the attention projections are ignored too, so no head dim goes either.
    ignored = [model.lm_head, model.model.embed_tokens] + ([] if heads else attention_projections(model))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="depgraph: after this prune")  # layers differ mid-step
        pruner = tp.pruner.BasePruner(model, {"input_ids": example}, imp, pruning_ratio=ratio,
                                      ignored_layers=ignored, output_transform=lambda o: o.logits,
                                      **heads, **crit.pruner_kwargs)
        pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def head_options(head_ratio: float) -> dict:
    """Pruner options for whole-head pruning (empty: attention is left alone).

    A unit is a key/value head with the query heads that share it (GQA), so SmolLM2's 3 KV
    heads allow ratios of 1/3 and 2/3; head dims stay (RoPE pairs cannot be put in a config).
    """
    if head_ratio <= 0:
        return {}
    return {"prune_num_heads": True, "prune_head_dims": False, "head_pruning_ratio": head_ratio}


@dataclass
class Row:
    criterion: str
    target: float
    heads: float
    ratio: float
    removed: float
    ppl: float
    sample: str
    seconds: float


def run_one(crit: Criterion, base: nn.Module, imp: Any, target: float, head_ratio: float, ratio: float,
            sets: dict, base_params: int, tokenizer: Any) -> tuple[Row, nn.Module]:
    start = time.perf_counter()
    model = pruned_copy(base, imp, ratio, head_ratio, sets["example"], crit)
    removed = 1 - n_params(model) / base_params
    ppl = perplexity(model, sets["eval"])
    sample = generate(model, tokenizer)
    return Row(crit.label, target, head_ratio, ratio, removed, ppl, sample, time.perf_counter() - start), model


def find_ratio(base: nn.Module, target: float, head_ratio: float, example: torch.Tensor, base_params: int,
               steps: int) -> float:
    """The MLP ratio that removes ``target`` of the parameters (the same for every criterion under
    local pruning, which takes the same count from every layer: searched once, with random scores)."""
    crit = Criterion("random", tp.importance.RandomImportance)

    def trial(ratio: float) -> tuple[None, float]:
        model = pruned_copy(base, crit.make(), ratio, head_ratio, example, crit)
        return None, 1 - n_params(model) / base_params

    return search_ratio(trial, target, lo=0.0, hi=0.9, steps=steps, rel_tol=0.02).ratio


def check_reload(model: nn.Module, rows: torch.Tensor) -> float:
    """Save with save_pretrained, rebuild with from_pretrained; the largest logit difference."""
    from transformers import AutoModelForCausalLM

    from depgraph.integrations.transformers import check_config

    check_config(model)  # raises unless the config describes every pruned layer
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        reloaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        a, b = model(input_ids=rows).logits, reloaded(input_ids=rows).logits
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------- report
def markdown(rows: list[Row], base_ppl: float, base_params: int, base_sample: str, settings: dict,
             reload_note: str) -> str:
    head = (f"SmolLM2-135M-Instruct (float32 from the Q4_1 gguf, {base_params / 1e6:.1f} M parameters), "
            f"no fine-tune. Perplexity on {settings['eval_tokens']} held-out Wikipedia tokens in windows of "
            f"{settings['context']}; calibration: {settings['calib_tokens']} tokens of other articles. "
            f"Unpruned: ppl {base_ppl:.2f}.\n\n")
    cols = ["criterion", "params removed (target)", "KV heads removed per layer", "MLP ratio", "ppl",
            "ppl / unpruned"]
    body = [[r.criterion, f"{r.removed:.1%} ({r.target:.0%})", f"{math.floor(r.heads * KV_HEADS + 1e-9)} of {KV_HEADS}",
             f"{r.ratio:.3f}",
             f"{r.ppl:.2f}", f"{r.ppl / base_ppl:.2f}x"] for r in rows]
    samples = [f"- unpruned: {base_sample!r}"] + [
        f"- {r.criterion}, {r.target:.0%}{' (heads too)' if r.heads else ''}: {r.sample!r}"
        for r in rows if abs(r.target - 0.2) < 1e-9]
    return (head + report.markdown_table(cols, body) + f"\n\nGreedy continuations of {PROMPT!r}:\n\n"
            + "\n".join(samples) + ("\n\n" + reload_note if reload_note else ""))


def plot(rows: list[Row], base_ppl: float, path: Path) -> None:
    labels = sorted({(r.criterion, r.heads) for r in rows}, key=lambda k: (k[1], k[0]))
    targets = sorted({r.target for r in rows})
    by = {(r.criterion, r.heads, r.target): r.ppl for r in rows}
    series = {f"{t:.0%} params removed": [by.get((c, h, t), float("nan")) for c, h in labels] for t in targets}
    report.bar_plot([c + (" +heads" if h else "") for c, h in labels], series, ylabel="perplexity (log)",
                    title="SmolLM2-135M pruned without fine-tune (Wikipedia)", path=path,
                    reference=(base_ppl, "unpruned"), log_y=True)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two criteria at 20%% on a few hundred tokens")
    parser.add_argument("--criteria", nargs="*", help="names among: " + ", ".join(criteria()))
    parser.add_argument("--targets", type=float, nargs="*", default=[0.1, 0.2, 0.3],
                        help="fractions of the parameters to remove")
    parser.add_argument("--heads", type=float, nargs="*", default=[0.0],
                        help="fractions of key/value heads to remove as well (e.g. 0 0.34)")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--calib-tokens", type=int, default=8192)
    parser.add_argument("--search-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than one thread on a loaded machine spins and slows down)")
    parser.add_argument("--out-dir", type=Path, help=f"default: {RESULTS} ({QUICK_RESULTS} with --quick)")
    parser.add_argument("--base-ppl", type=float, help="the unpruned perplexity from an earlier run with the same "
                        "text settings (skips measuring it again)")
    parser.add_argument("--name", default="llm", help="stem of the output files (NAME.md, NAME.png)")
    parser.add_argument("--render", action="store_true", help="only rewrite NAME.md and NAME.png from NAME.json")
    args = parser.parse_args(argv)
    args.out_dir = args.out_dir or (QUICK_RESULTS if args.quick else RESULTS)
    if args.render:
        print(render(args.out_dir, args.name))
        return []
    if args.quick:
        args.context, args.eval_tokens, args.calib_tokens, args.targets, args.search_steps = 128, 512, 256, [0.2], 4
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    available = criteria()
    names = args.criteria or (["magnitude", "act"] if args.quick else list(available))
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"unknown criteria {unknown}; choose among {sorted(available)}")

    model, tokenizer = load_smollm2()
    calib, evals = data.wikipedia_token_slices(tokenizer, args.context, args.calib_tokens, args.eval_tokens)
    sets = {"calib": calib, "eval": evals, "example": evals[:1, :16]}
    base_params = n_params(model)
    base_ppl = args.base_ppl or perplexity(model, evals)
    base_sample = generate(model, tokenizer)
    print(f"unpruned: {base_params / 1e6:.1f} M params, ppl {base_ppl:.2f}\n  {base_sample!r}", flush=True)

    ratios = {(t, h): find_ratio(model, t, h, sets["example"], base_params, args.search_steps)
              for h in args.heads for t in args.targets}
    print("ratios:", {f"{t:.0%}/{h:.0%} heads": round(r, 4) for (t, h), r in ratios.items()}, flush=True)

    state = {"base_ppl": base_ppl, "base_params": base_params, "base_sample": base_sample, "reload_note": "",
             "settings": {k: getattr(args, k) for k in ("eval_tokens", "context", "calib_tokens")}, "rows": []}
    rows: list[Row] = []
    table = ""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        crit = available[name]
        base = copy.deepcopy(model)
        imp = crit.make()
        if crit.prepare is not None:
            crit.prepare(base, imp, calib)
        for (target, head_ratio), ratio in ratios.items():
            row, pruned = run_one(crit, base, imp, target, head_ratio, ratio, sets, base_params, tokenizer)
            rows.append(row)
            print(f"{row.criterion:34s} {row.removed:6.1%} removed (heads {head_ratio:.0%})  ppl {row.ppl:9.2f}  "
                  f"({row.seconds:.0f} s)\n  {row.sample!r}", flush=True)
            if not state["reload_note"] and abs(target - 0.2) < 1e-9 and not crit.pruner_kwargs:
                diff = check_reload(pruned, evals[:1])
                state["reload_note"] = (f"Reload check ({row.criterion}, {row.removed:.1%} removed): save_pretrained"
                                        f" -> from_pretrained gives logits within {diff:.2e} of the pruned model.")
                print(state["reload_note"], flush=True)
            # Saved and rendered after every row: a run cut short keeps what it finished.
            state["rows"] = [asdict(r) for r in rows]
            (args.out_dir / f"{args.name}.json").write_text(json.dumps(state, indent=1))
            table = render(args.out_dir, args.name)
        del base
    print(table)
    return rows


def render(out_dir: Path, name: str) -> str:
    """``NAME.md`` and ``NAME.png`` from ``NAME.json`` (what a run saved after each row)."""
    state = json.loads((out_dir / f"{name}.json").read_text())
    rows = [Row(**r) for r in state["rows"]]
    table = markdown(rows, state["base_ppl"], state["base_params"], state["base_sample"], state["settings"],
                     state["reload_note"])
    (out_dir / f"{name}.md").write_text(table + "\n")
    plot(rows, state["base_ppl"], out_dir / f"{name}.png")
    return table


if __name__ == "__main__":
    main()
