"""Recipes for SmolLM2-135M-Instruct with 20% of its parameters removed, no fine-tune: which gets closest to 2x ppl.

    python benchmarks/quality/llm_recipes.py                    # every recipe (1-5 min each on two cores)
    python benchmarks/quality/llm_recipes.py --recipes U-fluct-bias G-recon-lstsq
    python benchmarks/quality/llm_recipes.py --calib-tokens 65536 --recipes U-recon-lstsq-p6 \
        --append --reload-check U-recon-lstsq-p6                # the best recipe, checked through tp.save/tp.load

Each recipe is a criterion, a compensation, an allocation and a head count:

- criterion: ``fluct`` (:class:`~depgraph.importance.FluctuationImportance`, per-layer ``mean``
  normaliser), ``fluct-z`` (the same, z-scored per layer) or ``recon``
  (:class:`~depgraph.importance.ReconstructionImportance`: greedy least-squares removal
  order, scores are fractions of each layer's output energy);
- compensation: ``bias`` (``bias_compensation=True``) or ``lstsq``
  (``lstsq_compensation=cov``: the kept columns and the bias of the consumer refit by
  least squares);
- allocation: ``U`` uniform (every layer loses the same count: the HF config can say it,
  ``save_pretrained`` works) or ``G`` global (one ranking over all layers: per-layer widths
  differ, the model is saved with ``tp.save`` / ``tp.load``);
- heads: how many of the 90 key/value units (one KV head + its 3 query heads) go, ranked
  globally; the MLP gives the rest of the 20%;
- protect (``-p*``): decoder layers left whole, the others lose the same count (the widths
  then differ, so the model is saved with ``tp.save`` / ``tp.load``).

Measured (``results/llm_recipes.md``): least-squares refit beats bias compensation, keeping
the first and last layers whole beats any global ranking tried, and more calibration
tokens help; ``recon + lstsq``, 6 layers kept, 65536 calibration tokens is at 1.97x.

One calibration pass (``--calib-tokens`` of Wikipedia articles the evaluation never
sees) measures the input covariance of every down and output projection; the channel
means and variances of the fluctuation criterion are read off it. The covariances, the
unpruned perplexity and each recipe's result are cached under ``data.CACHE_DIR`` (a
rerun only measures recipes not measured yet). Perplexity is measured as in ``llm.py`` (its helpers are imported).
Writes ``results/llm_recipes.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import depgraph as tp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
import llm  # noqa: E402
import report  # noqa: E402
from search import search_ratio  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HEAD_UNIT_PARAMS = 3 * 576 * 64 + 2 * 576 * 64 + 3 * 64 * 576  # q (3 heads), k, v, o columns
MLP_CHANNEL_PARAMS = 3 * 576  # gate row, up row, down column


@dataclass(frozen=True)
class Recipe:
    name: str
    criterion: str  # fluct | fluct-z | recon
    compensation: str  # bias | lstsq
    global_rank: bool
    head_units: int = 0  # of 90
    protect: tuple[int, ...] = ()  # decoder layers left whole
    max_ratio: float = 1.0  # no layer loses more than this fraction of its MLP channels (global ranking)

    @property
    def label(self) -> str:
        alloc = "global" if self.global_rank else "uniform"
        heads = f", {self.head_units}/90 KV units" if self.head_units else ", MLP only"
        prot = f", layers {list(self.protect)} kept" if self.protect else ""
        cap = f" (each layer <= {self.max_ratio:.0%})" if self.max_ratio < 1 else ""
        return f"{self.criterion} + {self.compensation}, {alloc}{cap}{heads}{prot}"


def recipes() -> dict[str, Recipe]:
    out = [
        Recipe("U-fluct-bias", "fluct", "bias", False),
        Recipe("G-recon-lstsq", "recon", "lstsq", True),
        Recipe("U-fluct-lstsq", "fluct", "lstsq", False),
        Recipe("G-fluct-bias", "fluct", "bias", True),
        Recipe("U-recon-lstsq", "recon", "lstsq", False),
        Recipe("G-fluct-lstsq", "fluct", "lstsq", True),
        Recipe("G-recon-lstsq-h9", "recon", "lstsq", True, head_units=9),
        Recipe("G-fluctz-bias", "fluct-z", "bias", True),
        Recipe("G-recon-lstsq-h18", "recon", "lstsq", True, head_units=18),
        Recipe("G-fluct-lstsq-h9", "fluct", "lstsq", True, head_units=9),
        Recipe("G-recon-lstsq-p", "recon", "lstsq", True, protect=(0, 29)),
        Recipe("U-fluct-lstsq-h9", "fluct", "lstsq", False, head_units=9),
        Recipe("U-fluct-lstsq-h18", "fluct", "lstsq", False, head_units=18),
        Recipe("U-recon-lstsq-h9", "recon", "lstsq", False, head_units=9),
        Recipe("U-recon-lstsq-h18", "recon", "lstsq", False, head_units=18),
        Recipe("G-fluct-lstsq-c50", "fluct", "lstsq", True, max_ratio=0.5),
        Recipe("G-recon-lstsq-c50", "recon", "lstsq", True, max_ratio=0.5),
        Recipe("G-recon-lstsq-c40", "recon", "lstsq", True, max_ratio=0.4),
        Recipe("U-recon-lstsq-p", "recon", "lstsq", False, protect=(0, 29)),
        Recipe("U-recon-lstsq-p3", "recon", "lstsq", False, protect=(0, 1, 29)),
        Recipe("U-recon-lstsq-p4", "recon", "lstsq", False, protect=(0, 1, 28, 29)),
        Recipe("U-fluct-lstsq-p", "fluct", "lstsq", False, protect=(0, 29)),
        Recipe("U-recon-lstsq-p6", "recon", "lstsq", False, protect=(0, 1, 2, 27, 28, 29)),
        Recipe("U-recon-lstsq-p8", "recon", "lstsq", False, protect=(0, 1, 2, 3, 26, 27, 28, 29)),
        Recipe("U-fluct-lstsq-p4", "fluct", "lstsq", False, protect=(0, 1, 28, 29)),
        Recipe("U-fluct-lstsq-p6", "fluct", "lstsq", False, protect=(0, 1, 2, 27, 28, 29)),
        Recipe("U-fluct-bias-p6", "fluct", "bias", False, protect=(0, 1, 2, 27, 28, 29)),
    ]
    return {r.name: r for r in out}


# ----------------------------------------------------------------------------- calibration
def calibrated(model: nn.Module, calib: torch.Tensor, cache: Path) -> tp.importance.InputCovariance:
    """Input covariances of every down/output projection (cached by name: one pass per machine)."""
    if cache.exists():
        named = torch.load(cache, weights_only=False)
        return tp.importance.InputCovariance.from_named(model, named)
    layers = [m for layer in model.model.layers for m in (layer.mlp.down_proj, layer.self_attn.o_proj)]
    start = time.perf_counter()
    cov = tp.importance.collect_input_covariance(model, [{"input_ids": r} for r in calib.split(2)], layers=layers)
    print(f"calibration: {calib.numel()} tokens in {time.perf_counter() - start:.0f} s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cov.named(model), cache)
    return cov


def importance(recipe: Recipe, recon: tp.importance.ReconstructionImportance) -> Any:
    if recipe.criterion == "recon":
        return recon
    normalizer = "gaussian" if recipe.criterion == "fluct-z" else "mean"
    return tp.importance.FluctuationImportance(normalizer=normalizer, stats=recon.cov.channel_stats())


def prune(base: nn.Module, recon: tp.importance.ReconstructionImportance, recipe: Recipe, example: torch.Tensor,
          base_params: int, target: float) -> tuple[nn.Module, float]:
    """A pruned copy and the seconds pruning took.

    ``recon`` holds the covariances and the greedy costs of ``base``'s layers; copying it with
    the model (one memo) re-keys both onto the copy, so the greedy pass runs once per process.
    """
    import copy

    model, recon = copy.deepcopy((base, recon))
    cov = recon.cov
    layers = model.model.layers
    kept = [layers[i] for i in recipe.protect]
    ignored = [model.lm_head, model.model.embed_tokens] + kept
    if not recipe.head_units:
        ignored += llm.attention_projections(model)
    n_layers = len(layers) - len(recipe.protect)
    width = layers[0].mlp.gate_proj.out_features
    # parameters to remove: the target, plus the biases compensation adds (down: every layer; o: where heads go)
    added = n_layers * 576 + (min(recipe.head_units, n_layers) * 576 if recipe.head_units else 0)
    need = target * base_params + added - recipe.head_units * HEAD_UNIT_PARAMS
    channels = math.ceil(need / MLP_CHANNEL_PARAMS)
    if recipe.global_rank:
        ratio = channels / (n_layers * width)
    else:
        ratio = math.ceil(channels / n_layers) / width
    heads = llm.head_options(recipe.head_units / (3 * n_layers)) if recipe.head_units else {}
    attn: tuple = ()
    if heads and not recipe.global_rank:  # heads still ranked over all layers: one pooled scope
        attn = tuple(m for layer in layers if layer not in kept for m in layer.self_attn.children()
                     if isinstance(m, nn.Linear))
        heads["head_pruning_ratio_dict"] = {attn: heads.pop("head_pruning_ratio")}
    comp = {"lstsq_compensation": cov} if recipe.compensation == "lstsq" else {"bias_compensation": True}
    imp = importance(recipe, recon)

    def at(r: float) -> tuple[nn.Module, float]:
        m, i, c = copy.deepcopy((model, imp, comp)) if capped else (model, imp, comp)
        ign = [m.get_submodule(n) for n in ignored_names]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="depgraph: after this prune")
            h = dict(heads)
            if "head_pruning_ratio_dict" in h:
                h["head_pruning_ratio_dict"] = {tuple(m.get_submodule(n) for n in attn_names): heads_ratio}
            tp.pruner.BasePruner(m, {"input_ids": example}, i, pruning_ratio=r, global_pruning=recipe.global_rank,
                                 ignored_layers=ign, max_pruning_ratio=recipe.max_ratio,
                                 output_transform=lambda o: o.logits, **h, **c).step()
        return m, 1 - llm.n_params(m) / base_params

    names = {mod: n for n, mod in model.named_modules()}
    ignored_names = [names[mod] for mod in ignored]
    attn_names = [names[mod] for mod in attn] if heads and not recipe.global_rank else []
    heads_ratio = next(iter(heads["head_pruning_ratio_dict"].values())) if attn_names else 0.0
    # a capped layer keeps what the global ranking would have taken from it (that count is not
    # handed to other layers), so capped recipes search the ratio that reaches the target
    capped = recipe.global_rank and recipe.max_ratio < 1
    start = time.perf_counter()
    if capped:  # each trial prunes a copy; the best one is kept
        pruned = search_ratio(at, target, lo=ratio, hi=min(0.9, 1.6 * ratio), steps=7, rel_tol=0.002).result
    else:
        pruned, _ = at(ratio)
    return pruned, time.perf_counter() - start


def widths(model: nn.Module) -> str:
    mlp = [layer.mlp.gate_proj.out_features for layer in model.model.layers]
    kv = [layer.self_attn.k_proj.out_features // 64 for layer in model.model.layers]
    return f"MLP {min(mlp)}-{max(mlp)} (mean {sum(mlp) / len(mlp):.0f}), KV heads {''.join(map(str, kv))}"


def check_tp_reload(pruned: nn.Module, rows: torch.Tensor) -> float:
    """``tp.save`` the pruned model, ``tp.load`` it into a fresh unpruned one; the largest logit difference."""
    fresh, _ = llm.load_smollm2()
    with tempfile.TemporaryDirectory() as d:
        tp.save(pruned, Path(d) / "pruned.pth")
        tp.load(fresh, Path(d) / "pruned.pth")
    with torch.no_grad():
        return float((pruned(input_ids=rows).logits - fresh.eval()(input_ids=rows).logits).abs().max())


@dataclass
class Row:
    recipe: Recipe
    removed: float
    ppl: float
    ratio: float
    widths: str
    prune_s: float


def markdown(rows: list[Row], base_ppl: float, args: argparse.Namespace, notes: list[str]) -> str:
    head = (f"SmolLM2-135M-Instruct, {args.target:.0%} of parameters removed, no fine-tune. Perplexity on "
            f"{args.eval_tokens} held-out Wikipedia tokens (windows of {args.context}); calibration: "
            f"{args.calib_tokens} tokens of other articles. Unpruned: ppl {base_ppl:.2f}. Target: ppl / "
            "unpruned <= 2.\n\n")
    cols = ["recipe", "what", "params removed", "ppl", "ppl / unpruned", "widths", "prune s"]
    body = [[r.recipe.name, r.recipe.label, f"{r.removed:.1%}", f"{r.ppl:.2f}", f"{r.ratio:.2f}x", r.widths,
             f"{r.prune_s:.0f}"] for r in rows]
    return head + report.markdown_table(cols, body) + ("\n\n" + "\n".join(notes) if notes else "")


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", help="names among: " + ", ".join(recipes()))
    parser.add_argument("--target", type=float, default=0.2)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--calib-tokens", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reload-check", metavar="RECIPE",
                        help="prune RECIPE again and check that tp.save / tp.load into a fresh model gives its logits")
    parser.add_argument("--out", type=Path, default=RESULTS / "llm_recipes.md")
    parser.add_argument("--append", action="store_true",
                        help="add this table to --out (e.g. the same recipes with more calibration tokens)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    available = recipes()
    names = args.recipes or list(available)
    unknown = sorted(set(names + ([args.reload_check] if args.reload_check else [])) - set(available))
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose among {sorted(available)}")

    model, tokenizer = llm.load_smollm2()
    calib, evals = data.wikipedia_token_slices(tokenizer, args.context, args.calib_tokens, args.eval_tokens)
    cache = data.CACHE_DIR / f"smollm2-cov-{calib.numel()}x{args.context}.pt"
    cov = calibrated(model, calib, cache)
    base_params = llm.n_params(model)
    base_cache = data.CACHE_DIR / f"smollm2-ppl-{evals.numel()}x{args.context}.txt"
    if base_cache.exists():
        base_ppl = float(base_cache.read_text())
    else:
        base_ppl = llm.perplexity(model, evals)
        base_cache.write_text(repr(base_ppl))
    print(f"unpruned: {base_params / 1e6:.1f} M params, ppl {base_ppl:.2f}", flush=True)
    # blocks of 128: 12 OBS rounds per 1536-wide layer; computed once, on the first recipe that needs
    # them, and reused by every later one (the copies of the criterion carry them)
    recon = tp.importance.ReconstructionImportance(cov, block_size=128)
    warmed: list[bool] = []

    def warm() -> None:
        if warmed:
            return
        warmed.append(True)
        start = time.perf_counter()
        for layer in cov:
            recon.costs(layer)
        print(f"greedy reconstruction costs of {len(cov)} layers: {time.perf_counter() - start:.0f} s", flush=True)

    rows: list[Row] = []
    notes: list[str] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = data.CACHE_DIR / f"smollm2-recipes-{calib.numel()}-{evals.numel()}x{args.context}-{args.target}.json"
    results = json.loads(done.read_text()) if done.exists() else {}
    for name in names:
        recipe = available[name]
        if name in results:
            r = results[name]
            rows.append(Row(recipe, r["removed"], r["ppl"], r["ppl"] / base_ppl, r["widths"], r["prune_s"]))
            print(f"{name:20s} (measured before) ppl {r['ppl']:.2f}", flush=True)
            continue
        if recipe.criterion == "recon":
            warm()
        pruned, seconds = prune(model, recon, recipe, evals[:1, :16], base_params, args.target)
        removed = 1 - llm.n_params(pruned) / base_params
        ppl = llm.perplexity(pruned, evals)
        rows.append(Row(recipe, removed, ppl, ppl / base_ppl, widths(pruned), seconds))
        results[name] = {"removed": removed, "ppl": ppl, "widths": widths(pruned), "prune_s": seconds}
        done.write_text(json.dumps(results, indent=1))
        print(f"{name:20s} {removed:6.1%} removed  ppl {ppl:8.2f}  {ppl / base_ppl:5.2f}x  {widths(pruned)}  "
              f"(prune {seconds:.0f} s)", flush=True)
        if not args.append:
            args.out.write_text(markdown(rows, base_ppl, args, notes) + "\n")
    if args.reload_check:
        if available[args.reload_check].criterion == "recon":
            warm()
        pruned, _ = prune(model, recon, available[args.reload_check], evals[:1, :16], base_params, args.target)
        diff = check_tp_reload(pruned, evals[:1])
        notes.append(f"Reload check ({args.reload_check}: {widths(pruned)}): tp.save -> tp.load into a fresh "
                     f"unpruned model gives logits within {diff:.2e} of the pruned model.")
        print(notes[-1], flush=True)
    table = markdown(rows, base_ppl, args, notes)
    before = args.out.read_text() + "\n" if args.append and args.out.exists() else ""
    args.out.write_text(before + table + "\n")
    print(table)
    return rows


if __name__ == "__main__":
    main()
